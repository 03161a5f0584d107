"""The oracle source: features built from the gold answers instead of audio (a diagnostic)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from axk import hub
from axk import tasks as tasks_lib
from axk.data.types import Example
from axk.data.types import Span
from axk.features.inputs import load_data
from axk.features.sources.base import FeatureSource
from axk.features.sources.base import Setup
from axk.features.sources.base import empty_arrays
from axk.features.sources.base import register

# What every manifest, results file and model card of an oracle run says about its features.
ORACLE_NOTE = (
    "ORACLE features: built from the gold answers, not from audio (pitch: span 1 and span 2 "
    "get a fixed 'higher-sounding' or 'lower-sounding' vector as the answer says; animal: a "
    "fixed random vector per gold animal), at the gold spans of every split. A diagnostic "
    "upper bound of what perfect audio knowledge gives through this fusion, not a result.")
ORACLE_SHUFFLED_NOTE = (
    "ORACLE features, SHUFFLED: the oracle vectors permuted across the examples of each "
    "task and split, so they carry no information about a row's answer (a control: such a "
    "run must do no better than text only).")
ORACLE_NO_ROLE = tasks_lib.NO_ROLE  # A span whose role cannot be told.


def oracle_vector(role: str, dim: int, *, seed: int, scale: float) -> np.ndarray:
  """The fixed random vector of an oracle role ("high", "low", "animal=<name>").

  A function of (seed, role) alone, so every span with that role in every split and run
  gets the same vector. Gaussian, rescaled to norm `scale * sqrt(dim)`: entries of RMS
  `scale`, the scale of layer-normalised features such as AST's hidden states.
  """
  digest = hub.digest({"oracle_seed": int(seed), "role": role})
  v = np.random.default_rng(int(digest[:16], 16)).standard_normal(dim)
  return (v * (scale * np.sqrt(dim) / np.linalg.norm(v))).astype(np.float32)


def oracle_roles(example: Example, answer: str, spans: Sequence[Span]) -> list[str]:
  """The oracle role of each span of `example` when its gold answer is `answer`: its task's
  (`axk.tasks.Task.oracle_roles`; pitch: "high"/"low" by the gold spans, animal:
  "animal=<name>" for every span)."""
  return tasks_lib.get(example.task).oracle_roles(example, answer, spans)


@register
class OracleSource(FeatureSource):
  """Audio features from the gold answers (`ORACLE_NOTE`), no model at all.

  Keys are per example and span (`<example id>#<span index>=<role>`): the same span text
  can be higher in one row and lower in another. The role is in the key, so that a key's
  arrays follow from the key alone. With `oracle.shuffle`, each example that gets vectors
  takes the answer of another such example of its task and split (a fixed permutation drawn
  from `oracle.seed`), so the same multiset of vectors is handed out in another assignment.
  """

  name = "oracle"

  def __init__(self, config, workdir: str, model_paths: Mapping[str, str]):
    self.check(config)
    self._answers: dict[str, str] | None = None
    super().__init__(config, workdir, model_paths)

  @classmethod
  def check(cls, config) -> None:
    if config.spans.source != "gold":
      raise ValueError(f"spans.source={config.spans.source!r}: the oracle source is keyed on "
                       "the gold spans; use --config.spans.source=gold")
    o = config[cls.name]
    if not (int(o.dim) > 0 and int(config.ast.num_audio_tokens) > 0 and float(o.scale) > 0):
      raise ValueError(f"oracle.dim={o.dim}, ast.num_audio_tokens={config.ast.num_audio_tokens}"
                       f", oracle.scale={o.scale}: each must be > 0")

  def describe(self) -> Setup:
    return Setup(self.name, {}, {}, self.params(), self.section.features_dir)

  @classmethod
  def model_roles(cls) -> tuple[str, ...]:
    return ()

  def params(self) -> dict:
    o = self.section
    return {"oracle": {"shuffle": bool(o.shuffle), "seed": int(o.seed), "scale": float(o.scale),
                       "dim": int(o.dim),
                       "num_audio_tokens": int(self.config.ast.num_audio_tokens)}}

  def manifest(self) -> dict:
    shuffled = bool(self.section.shuffle)
    return {"oracle": {"kind": "oracle_shuffled" if shuffled else "oracle", "shuffled": shuffled,
                       "seed": int(self.section.seed),
                       "note": ORACLE_SHUFFLED_NOTE if shuffled else ORACLE_NOTE}}

  def answer_of(self, example: Example) -> str:
    """The answer whose vectors `example` gets: its own, or (shuffled) another row's."""
    if not self.section.shuffle:
      return example.answer
    if self._answers is None:
      examples, _ = load_data(self.config)
      self._answers = {}
      for task, by_split in examples.items():
        for split, rows in by_split.items():
          seed = int(hub.digest({"oracle_seed": int(self.section.seed), "task": task,
                                 "split": split})[:16], 16)
          # Among the rows that get vectors, so the multiset of vectors stays the same.
          given = [e for e in rows
                   if e.spans and ORACLE_NO_ROLE not in oracle_roles(e, e.answer, e.spans)]
          order = np.random.default_rng(seed).permutation(len(given))
          self._answers.update({e.id: given[j].answer for e, j in zip(given, order)})
    return self._answers.get(example.id, example.answer)

  def keys(self, example: Example, spans: Sequence[Span]) -> list[str]:
    roles = oracle_roles(example, self.answer_of(example), spans)
    return [f"{example.id}#{j}={role}" for j, role in enumerate(roles)]

  def acquire(self, batch: Sequence[str]) -> dict[str, np.ndarray]:
    o = self.section
    dim, tokens = int(o.dim), int(self.config.ast.num_audio_tokens)
    # No CLAP here: its fields are zero placeholders of width 1.
    out = empty_arrays(len(batch), 1, dim, tokens)
    for b, key in enumerate(batch):
      role = key.partition("=")[2]
      if role == ORACLE_NO_ROLE:
        continue
      v = oracle_vector(role, dim, seed=int(o.seed), scale=float(o.scale))
      out["has_audio"][b] = True
      out["clap_score"][b] = 1.0
      out["source"][b] = f"oracle:{role}"
      out["ast_pooled"][b] = v
      out["ast_tokens"][b] = v  # Every audio token is the role's vector.
    return out
