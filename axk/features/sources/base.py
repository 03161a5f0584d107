"""The feature source interface, and what the sources that run CLAP and AST share.

`FeatureSource` is the interface that the package docstring (`axk.features.sources`)
describes; `register` makes a subclass available by name, `make` builds one. `to_part` is
a batch's arrays in the form parts and shards store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
from typing import ClassVar

import numpy as np

from axk import hub
from axk.data.rows import normalise
from axk.data.types import Example
from axk.data.types import Span
from axk.features import parts

# Stored as float16 in the parts and the shards.
FLOAT16_FIELDS = ("clap_text", "clap_audio", "ast_pooled", "ast_tokens")


@dataclasses.dataclass(frozen=True)
class Setup:
  """What identifies one source's run; computed without loading any model.

  Attributes:
    source: the source's registered name.
    models: role -> manifest entry (`axk.hub.describe`: name, path, fingerprint).
    paths: role -> local model directory.
    params: every parameter that changes a key's arrays.
    features_dir: the output folder, relative to the workdir.
    run_key: a hash of the source, the models' fingerprints and `params`; no absolute
      path goes into it, so a copied or moved workdir keeps its parts.
  """

  source: str
  models: Mapping[str, Mapping]
  paths: Mapping[str, str]
  params: Mapping
  features_dir: str
  run_key: str = dataclasses.field(init=False)

  def __post_init__(self):
    key = hub.digest({"source": self.source,
                      "models": {k: v["fingerprint"] for k, v in self.models.items()},
                      "params": self.params})
    object.__setattr__(self, "run_key", key)

  def run_info(self) -> dict:
    """The run's description, as written beside its parts and into the manifest."""
    return {"source": self.source, "models": dict(self.models), "params": dict(self.params),
            "run_key": self.run_key}


SOURCES: dict[str, type["FeatureSource"]] = {}


def register(cls: type["FeatureSource"]) -> type["FeatureSource"]:
  """Class decorator: makes `cls` available as `config.source=<cls.name>`."""
  SOURCES[cls.name] = cls
  return cls


def make(name: str, config, workdir: str, model_paths: Mapping[str, str]) -> "FeatureSource":
  """The registered source `name` for this config and workdir."""
  return SOURCES[name](config, workdir, model_paths)


def empty_arrays(n: int, clap_dim: int, ast_dim: int, num_tokens: int) -> dict[str, np.ndarray]:
  """The common per-key arrays of `n` keys, all without audio."""
  return {
      "has_audio": np.zeros(n, bool),
      "clap_score": np.zeros(n, np.float32),
      "source": np.array([""] * n, dtype=object),
      "clap_text": np.zeros((n, clap_dim), np.float32),
      "clap_audio": np.zeros((n, clap_dim), np.float32),
      "ast_pooled": np.zeros((n, ast_dim), np.float32),
      "ast_tokens": np.zeros((n, num_tokens, ast_dim), np.float32),
  }


def to_part(batch: Sequence[str], out: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Results of a batch in storage form: features as float16, strings as unicode."""
  part = {"text": np.array(list(batch), dtype=str)}
  for k, v in out.items():
    v = np.asarray(v)
    if v.dtype == object:
      v = v.astype(str)
    elif k in FLOAT16_FIELDS:
      v = v.astype(np.float16)
    part[k] = v
  return part


class FeatureSource:
  """The interface (see the module docstring), with what CLAP+AST sources share.

  Attributes:
    name: registered name, `config.source` value and config section.
    stages: pipeline stages of this source's own (run by `prepare` alone).
    config, workdir: the run's.
    setup: `describe()`, computed once.
    parts_dir: where this run's part files go (`axk.features.parts`).
  """

  name: ClassVar[str] = ""
  stages: ClassVar[tuple[str, ...]] = ()

  def __init__(self, config, workdir: str, model_paths: Mapping[str, str]):
    self.config = config
    self.workdir = workdir
    self.section = config[self.name]
    self._model_paths = dict(model_paths)
    self._clap = self._ast = None
    self.setup = self.describe()
    self.parts_dir = parts.folder(workdir, self.name, self.setup.run_key)

  # -- the interface ------------------------------------------------------------------------
  @classmethod
  def check(cls, config) -> None:
    """Raises ValueError (one line naming the field) for a config this source cannot run;
    called before any stage. Nothing to check by default."""
    del config

  def describe(self) -> Setup:
    models, paths = {}, {}
    for role in self.model_roles():
      what = f"models.{role}"
      paths[role] = hub.resolve(self._model_paths[role], what, ignore_patterns=hub.NOT_PYTORCH)
      models[role] = hub.describe(self._model_paths[role], paths[role])
    params = {"ast": ast_params(self.config.ast),
              **self.params()}
    return Setup(self.name, models, paths, params, self.section.features_dir)

  def keys(self, example: Example, spans: Sequence[Span]) -> list[str]:
    """The acquisition key of each span of `example`: its normalised text."""
    del example
    return [normalise(s.text) for s in spans]

  def prepare(self) -> None:
    """Work before acquisition; nothing by default."""

  def acquire(self, batch: Sequence[str]) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def manifest(self) -> dict:
    """Entries of `manifest.json` of this source's own; none by default."""
    return {}

  def record(self, row: Mapping[str, np.ndarray]) -> dict:
    """Extras of one key's `acquisitions.jsonl` line; none by default."""
    del row
    return {}

  def clip_file(self, source: str) -> str | None:
    """The playable audio file of an acquisition's `source` (None when it has none)."""
    del source
    return None

  # -- for subclasses -------------------------------------------------------------------------
  @classmethod
  def model_roles(cls) -> tuple[str, ...]:
    return ("clap", "ast")

  def params(self) -> dict:
    """This source's parameters for the run key (beside the AST ones)."""
    return {}

  @property
  def clap(self):
    """The CLAP encoder, loaded on first use."""
    if self._clap is None:
      from axk.features import clap as clap_lib  # pylint: disable=g-import-not-at-top
      self._clap = clap_lib.ClapEncoder(self.setup.paths["clap"], device=self.config.device,
                                        batch_size=self.config.clap.batch_size)
      self._clap.info = dict(self.setup.models["clap"])
    return self._clap

  @property
  def ast(self):
    """The AST encoder, loaded on first use."""
    if self._ast is None:
      from axk.features import ast as ast_lib  # pylint: disable=g-import-not-at-top
      c = self.config
      self._ast = ast_lib.AstEncoder(self.setup.paths["ast"], num_tokens=c.ast.num_audio_tokens,
                                     token_layout=c.ast.token_layout, grid=tuple(c.ast.grid),
                                     device=c.device, batch_size=c.ast.batch_size)
      self._ast.info = dict(self.setup.models["ast"])
    return self._ast

  def empty(self, n: int) -> dict[str, np.ndarray]:
    return empty_arrays(n, self.clap.dim, self.ast.dim, self.ast.num_tokens)


def ast_params(ast) -> dict:
  """`config.ast`'s fields that change the stored tokens (the run key, the manifest),
  checked (ValueError naming the field) before any model loads."""
  from axk.features import ast as ast_lib  # pylint: disable=g-import-not-at-top
  ast_lib.check_layout(ast.token_layout, int(ast.num_audio_tokens), tuple(ast.grid))
  return {"token_layout": ast.token_layout, "num_audio_tokens": int(ast.num_audio_tokens),
          "grid": [int(g) for g in ast.grid]}
