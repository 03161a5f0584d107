"""Feature sources: where a span's audio comes from, behind one interface.

A source turns acquisition keys (by default the normalised span texts) into per-key
arrays: `has_audio`, `clap_score`, `source`, `clap_text`, `clap_audio`, `ast_pooled`,
`ast_tokens`, plus any extras of its own. The pipeline (`axk.features.pipeline`) only ever
talks to this interface, so it never asks which source it runs:

  describe()  -> `Setup`: the models, parameters and run key, without loading a model; the
                 run key names the parts folder, so equal setups share finished work.
  keys(e, s)  -> the acquisition key of each span `s` of example `e` (deduplication unit).
  prepare()   work before acquisition (retrieval: embed the database); a source with a
              stage of its own lists it in `stages` (`stage=database`).
  acquire(b)  -> the arrays of a batch of keys; models load on the first call.
  manifest()  -> entries this source adds to `manifest.json` (retrieval: the database).
  record(r)   -> extras of one key's line in `acquisitions.jsonl` (top-k; accepted
                 candidate and scores).
  check(c)    (a classmethod) refuses a config the source cannot run, before any stage.

Sources are registered by name (`@register`); `config.source` lists the names to run, and
each source reads its own config section, `config.<name>` (`features_dir` at least).

Adding a source is one class here plus a config variant, for example retrieval for each
span's gold answer instead of its text:

    @register
    class AnswerSource(RetrievalSource):
      name = "answer"
      def keys(self, example, spans):
        return [normalise(example.answer)] * len(spans)   # audio of the answer, at each span

with `c.answer = ...` (a copy of `c.retrieval`'s fields and its own `features_dir`) and
`c.source = "answer"` in a config variant. Its run key, parts folder, manifest and shards
follow from the interface; the pipeline does not change. `OracleSource` (the end of this
file, `configs/features.py:oracle`) is such a source: vectors from the gold answers, no model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import json
import logging
import os
from typing import ClassVar

import numpy as np

from axk import hub
from axk.data.auditorybench import normalise
from axk.data.types import Example
from axk.data.types import MASK
from axk.data.types import Span
from axk.data.types import TASKS
from axk.features import parts
from axk.utils import files

logger = logging.getLogger(__name__)

# Retrieved clips whose AST features are kept in memory (clips are often retrieved again).
_AST_CACHE_SIZE = 4096
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


def cached_clip_path(cache_dir: str, key: str, ext: str = "flac") -> str:
  """Where the clip cache (`axk.features.generation.ClipCache`) keeps clip `key`."""
  return os.path.join(cache_dir, key[:2], f"{key}.{ext}")


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
  def model_roles(self) -> tuple[str, ...]:
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


@register
class RetrievalSource(FeatureSource):
  """AudioBERT: top-1 CLAP retrieval from `config.database`, AST features of the clip."""

  name = "retrieval"
  stages = ("database",)

  def __init__(self, config, workdir: str, model_paths: Mapping[str, str]):
    from axk.features import retrieval  # pylint: disable=g-import-not-at-top
    self.db_config = _database_config(config, workdir)
    self.db = retrieval.AudioDatabase.from_config(
        self.db_config, shard_index=config.shard_index, num_shards=config.num_shards)
    section = config[self.name]
    self.exclude = retrieval.read_exclude(section.exclude_ids, section.exclude_file)
    unknown = sorted(self.exclude - set(self.db.index))
    if unknown:
      logger.warning("retrieval: %d of %d excluded ids name no database clip (e.g. %s); ids "
                     "of a shard database are <shard name>/<key>", len(unknown),
                     len(self.exclude), unknown[:3])
    self.ast_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    super().__init__(config, workdir, model_paths)

  def params(self) -> dict:
    r = self.section
    # The database by content, not by location: a moved database keeps the run key.
    where = ("dir", "folder")
    return {"retrieval": {"query_template": r.query_template, "top_k": int(r.top_k),
                          "min_score": float(r.min_score),
                          "exclude": hub.digest(sorted(self.exclude)),
                          "num_excluded": len(self.exclude)},
            "database": {**{k: v for k, v in self.db.description.items() if k not in where},
                         "content": self.db.content_fingerprint(),
                         "max_seconds": self.db.max_seconds}}

  def prepare(self) -> None:
    self.db.embed(self.clap, self.db_config.cache_dir, chunk_size=int(self.db_config.chunk_size),
                  shard_index=self.config.shard_index, num_shards=self.config.num_shards)
    # For the manifest, which `assemble` may write in a process that never embeds.
    files.write_json(os.path.join(self.parts_dir, "database.json"), {
        **self.db.info, "excluded": {"ids": len(self.exclude), "in_database": len(
            self.exclude & set(self.db.index))}})

  def manifest(self) -> dict:
    path = os.path.join(self.parts_dir, "database.json")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        return {"database": json.load(f)}
    return {"database": self.db.info}

  def record(self, row: Mapping[str, np.ndarray]) -> dict:
    out = {"top_k": [[str(i), float(v)] for i, v in zip(row["topk_ids"], row["topk_scores"])
                     if i]}
    chosen = self.db.index.get(str(row["source"]))
    if chosen is not None and self.db.clips[chosen].caption:
      out["caption"] = self.db.clips[chosen].caption  # what the retrieved clip is said to be
    return out

  def clip_file(self, source: str) -> str | None:
    """The database file of clip id `source`; a clip inside a TFDS record is written once
    as WAV under `<workdir>/cache/retrieved/`."""
    i = self.db.index.get(source)
    if i is None:
      return None
    path = self.db.clips[i].path
    if os.path.isfile(path):
      return path
    out = os.path.join(self.workdir, "cache", "retrieved", hub.digest(source) + ".wav")
    if not os.path.exists(out):
      import io  # pylint: disable=g-import-not-at-top

      import soundfile as sf  # pylint: disable=g-import-not-at-top
      wave, buf = self._load(i), io.BytesIO()
      if wave is None:
        return None
      sf.write(buf, wave, self.ast.sampling_rate, format="WAV", subtype="PCM_16")
      files.write_bytes(out, buf.getvalue())
    return out

  def _load(self, i: int):
    from axk.features import audio as audio_lib  # pylint: disable=g-import-not-at-top
    try:
      return self.db.load(i, self.ast.sampling_rate)
    except audio_lib.DecodeError as e:
      logger.warning("retrieval: clip %s cannot be decoded (%s)", self.db.clips[i].id, e)
      return None

  def _ast_of(self, i: int) -> tuple[np.ndarray, np.ndarray] | None:
    if i not in self.ast_cache:
      wave = self._load(i)
      if wave is None:
        return None
      pooled, tokens = self.ast([wave])
      if len(self.ast_cache) >= _AST_CACHE_SIZE:
        self.ast_cache.pop(next(iter(self.ast_cache)))
      self.ast_cache[i] = (pooled[0], tokens[0])
    return self.ast_cache[i]

  def acquire(self, batch: Sequence[str]) -> dict[str, np.ndarray]:
    r = self.section
    text = self.clap.text([r.query_template.format(span=s) for s in batch])
    idx, scores = self.db.search(text, max(1, int(r.top_k)), self.exclude)
    # Decode the needed clips in one AST batch (clips already cached are skipped).
    wanted = sorted({int(i) for i in idx[:, 0] if i >= 0} - set(self.ast_cache))
    loaded = [(i, w) for i in wanted if (w := self._load(i)) is not None]
    if loaded:
      pooled, tokens = self.ast([w for _, w in loaded])
      for n, (i, _) in enumerate(loaded):
        self.ast_cache[i] = (pooled[n], tokens[n])
    out = self.empty(len(batch))
    out["clap_text"] = text
    out["topk_ids"] = np.array([[self.db.clips[j].id if j >= 0 else "" for j in row]
                                for row in idx])
    out["topk_scores"] = scores
    for b in range(len(batch)):
      if idx[b, 0] >= 0:
        out["clap_score"][b] = scores[b, 0]
      # The best of the top-k that decodes (a clip can embed yet fail later, e.g. a file
      # replaced on disk) and clears `min_score`.
      for j, s in zip(idx[b], scores[b]):
        if j < 0 or s < r.min_score:
          break
        feats = self._ast_of(int(j))
        if feats is None:
          continue
        out["has_audio"][b] = True
        out["clap_score"][b] = s
        out["source"][b] = self.db.clips[j].id
        out["clap_audio"][b] = self.db.embeddings[j]
        out["ast_pooled"][b], out["ast_tokens"][b] = feats
        break
    return out


@register
class GenerationSource(FeatureSource):
  """ITH: text-to-audio generation with CLAP rejection sampling, AST features of the clip.

  Acquisition keys are `"<task>|<span>"`: each benchmark task decides its spans at its own
  threshold (`generation.tau.<task>`), so a span of both tasks may get a different clip in
  each; the candidates themselves depend only on the span text and are drawn once (the
  clip cache), so the second task costs only AST features. `[MASK]` is dropped from the
  span text (a span never holds it; a whole-sentence span, `spans.unit="sentence"`, does).
  """

  name = "generation"

  def __init__(self, config, workdir: str, model_paths: Mapping[str, str]):
    self._sampler = None
    self.taus = task_taus(config)
    super().__init__(config, workdir, model_paths)

  def model_roles(self) -> tuple[str, ...]:
    return ("clap", "ast", "generator")

  def describe(self) -> Setup:
    setup = super().describe()
    models = dict(setup.models)
    models["generator"] = {**models["generator"],
                           "pipeline_class": self.section.pipeline_class}
    return Setup(setup.source, models, setup.paths, setup.params, setup.features_dir)

  def params(self) -> dict:
    params = dataclasses.asdict(generation_params(self.config))
    params["tau"] = dict(self.taus)  # per task; the sampler's default tau is unused
    return {"generation": params}

  def keys(self, example: Example, spans: Sequence[Span]) -> list[str]:
    if example.task not in self.taus:
      raise ValueError(f"generation.tau has no threshold for task {example.task!r} (example "
                       f"{example.id}); set --config.generation.tau.{example.task}=...")
    return [f"{example.task}|{normalise(s.text.replace(MASK, ' '))}" for s in spans]

  def manifest(self) -> dict:
    g = self.section
    return {"rejection": {task: {"tau": tau, "n": int(g.n), "rule": g.rule,
                                 "fallback": g.fallback} for task, tau in self.taus.items()}}

  def record(self, row: Mapping[str, np.ndarray]) -> dict:
    task, _, span = str(row["text"]).partition("|")
    tried = int(row["tried"])
    return {"task": task, "span": span, "tau": self.taus[task], "n": int(self.section.n),
            "accepted": int(row["accepted"]) if row["accepted"] >= 0 else None,
            "fallback": bool(row["fallback"]),
            "scores": [round(float(v), 6) for v in row["scores"][:tried]]}

  @property
  def cache_dir(self) -> str:
    return self.section.cache_dir or os.path.join(self.workdir, "cache", "clips")

  def clip_file(self, source: str) -> str | None:
    """The accepted clip's FLAC in the clip cache (`source` is its cache key)."""
    path = cached_clip_path(self.cache_dir, source) if source else ""
    return path if path and os.path.isfile(path) else None

  @property
  def sampler(self):
    """The rejection sampler around the generator, built on first use."""
    if self._sampler is None:
      from axk.features import generation  # pylint: disable=g-import-not-at-top
      g = self.section
      generator = generation.AudioGenerator(self.setup.paths["generator"], g.pipeline_class,
                                            device=self.config.device,
                                            torch_dtype=g.torch_dtype)
      generator.info = dict(self.setup.models["generator"])
      cache = generation.ClipCache(self.cache_dir)
      self._sampler = generation.RejectionSampler(
          generator, self.clap, cache, generation_params(self.config),
          spans_per_call=g.spans_per_call, keep_rejected=g.keep_rejected)
    return self._sampler

  def acquire(self, batch: Sequence[str]) -> dict[str, np.ndarray]:
    from axk.features import audio as audio_lib  # pylint: disable=g-import-not-at-top
    tasks, spans = zip(*(k.partition("|")[::2] for k in batch))
    n = int(self.section.n)
    results = self.sampler(spans, taus=[self.taus[t] for t in tasks], ns=[n] * len(batch))
    out = self.empty(len(batch))
    out["clap_text"] = np.stack([r.clap_text for r in results])
    out["accepted"] = np.array([r.accepted for r in results], np.int32)
    out["tried"] = np.array([r.tried for r in results], np.int32)
    out["fallback"] = np.array([r.fallback for r in results], bool)
    out["scores"] = np.full((len(batch), n), np.nan, np.float32)
    with_audio = [b for b, r in enumerate(results) if r.has_audio]
    if with_audio:
      waves = [audio_lib.resample(results[b].wave, results[b].rate, self.ast.sampling_rate)
               for b in with_audio]
      pooled, tokens = self.ast(waves)
      for m, b in enumerate(with_audio):
        out["ast_pooled"][b], out["ast_tokens"][b] = pooled[m], tokens[m]
    for b, r in enumerate(results):
      out["scores"][b, :r.tried] = r.scores
      out["has_audio"][b] = r.has_audio
      out["clap_score"][b] = r.score if np.isfinite(r.score) else 0.0
      out["source"][b] = r.key
      out["clap_audio"][b] = r.clap_audio
    return out


def task_taus(config) -> dict[str, float]:
  """`config.generation.tau` as task -> threshold (a single number applies to every task)."""
  tau = config.generation.tau
  if isinstance(tau, (int, float)):
    return {task: float(tau) for task in TASKS}
  return {task: float(v) for task, v in tau.items()}


def ast_params(ast) -> dict:
  """`config.ast`'s fields that change the stored tokens (the run key, the manifest),
  checked (ValueError naming the field) before any model loads."""
  from axk.features import ast as ast_lib  # pylint: disable=g-import-not-at-top
  ast_lib.check_layout(ast.token_layout, int(ast.num_audio_tokens), tuple(ast.grid))
  return {"token_layout": ast.token_layout, "num_audio_tokens": int(ast.num_audio_tokens),
          "grid": [int(g) for g in ast.grid]}


def generation_params(config):
  """`config.generation` as the sampler's `GenerationParams` (its `tau`, the default of a
  call, is unused by the source, which passes each task's)."""
  from axk.features import generation  # pylint: disable=g-import-not-at-top
  g = config.generation
  return generation.GenerationParams(
      pipeline_class=g.pipeline_class, steps=int(g.steps), seconds=float(g.seconds),
      guidance_scale=float(g.guidance_scale), negative_prompt=g.negative_prompt,
      prompt_template=g.prompt_template, score_template=g.score_template, n=int(g.n),
      base_seed=int(g.base_seed), rule=g.rule, fallback=g.fallback)


def _database_config(config, workdir: str):
  """`config.database`, its cache folder resolved, the synthetic database written if asked."""
  db = config.database.copy_and_resolve_references()
  with db.unlocked():
    db.cache_dir = db.cache_dir or os.path.join(workdir, "cache", "database")
    if db.synthetic_clips:
      from axk.features import tiny  # pylint: disable=g-import-not-at-top
      db.dir = os.path.join(workdir, "audio_db")
      tiny.write_synthetic_database(db.dir, db.synthetic_clips)
  return db


# ------------------------------------------------------------------------------------------
# The oracle: features built from the gold answers instead of audio (a diagnostic).
# ------------------------------------------------------------------------------------------

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
# The pitch roles; a span whose role cannot be told (a row without both gold spans) has none.
ORACLE_ROLES = {"higher": ("high", "low"), "lower": ("low", "high")}
ORACLE_NO_ROLE = "none"


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
  """The oracle role of each span of `example` when its gold answer is `answer`.

  Pitch: the gold span 1 (`example.spans[0]`) is "high" and span 2 "low" when the answer
  is "higher", and the reverse for "lower"; spans are matched to the gold ones by their
  offsets, since `spans` come in sentence order. A row that lacks one of its gold spans
  (not found in the sentence) cannot say which span is which: its spans get no role.
  Animal: every span gets the role of the answer's animal.
  """
  if example.task != "pitch":
    return [f"animal={normalise(answer)}"] * len(spans)
  gold = [(s.start, s.end) for s in example.spans]
  if len(gold) != 2 or gold[0] == gold[1] or answer not in ORACLE_ROLES:
    return [ORACLE_NO_ROLE] * len(spans)
  by_offsets = dict(zip(gold, ORACLE_ROLES[answer]))
  return [by_offsets.get((s.start, s.end), ORACLE_NO_ROLE) for s in spans]


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

  def model_roles(self) -> tuple[str, ...]:
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
      from axk.features import pipeline  # pylint: disable=g-import-not-at-top
      examples, _ = pipeline.load_data(self.config)
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
