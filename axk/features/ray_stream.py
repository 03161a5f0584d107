"""ITH's acquisition, and retrieval's database embedding, as streaming Ray Data pipelines
(`--config.engine=ray` with the default `ray.pipeline="auto"`).

Each stage is a Ray Data operator with its own resources and batch size, so that the
GPU-bound generator, the CPU-bound audio work and CLAP and AST run side by side on the
same clips, at their own batch sizes, across every GPU and host of the Ray instance:

  draw, once per round:   span candidates -> generate (actor pool `ray.generate`)
                          -> encode (CPU tasks `ray.decode`: the FLAC round trip, mono,
                             CLAP's rate) -> score (actor pool `ray.score`: CLAP audio
                             embedding, score, the clip cache written)
  features, once a chunk: accepted clips -> load (CPU tasks `ray.decode`: read from the
                          cache, mono, AST's rate) -> embed (actor pool `ray.embed`: AST,
                          and CLAP for clips accepted from an earlier run's cache)
                          -> write (CPU tasks: the part files)
  database (retrieval):   missing chunks' clips -> decode (CPU actors `ray.decode`, as many
                          as `ray.workers`: each lists the database once) -> CLAP (actor
                          pool `ray.score`) -> the chunk files, written by the driver as
                          each chunk completes (`axk.features.index.embed`); the retrieval
                          itself then runs on shard actors (`axk/features/ray_engine.py`)

The driver keeps the decisions of rejection sampling (`RejectionSampler`, the in-process
code) and the CLAP text model; every clip, CLAP audio embedding and AST feature is made and
written by the workers. A round draws, for every undecided span of a chunk of `ray.chunk`
pending spans, the candidates the in-process sampler would draw next (with the "first"
rule, one candidate each: at most `n` rounds), so the same candidates are drawn with the
same seeds, scored alike and accepted alike: the features equal the in-process run's (at
equal batch sizes, bit for bit).

Exactly once: a candidate's clip and sidecar are written by the score stage unless its
sidecar exists (a retried task skips it), and a part file is written unless it exists
(its name hashes its keys). A worker that dies is restarted by Ray and its batch retried
(Ray Data's actor pools restart actors and retry their tasks); a killed driver is rerun with
the same command, and the rerun decides from the clip cache and the written parts, drawing
only what is missing. The workdir (and `generation.cache_dir`) must be seen by every
worker: one machine, or a shared filesystem or bucket mount on a cluster.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import types
from typing import Mapping, Sequence

import numpy as np
import tqdm

from axk.features import audio as audio_lib
from axk.features import generation
from axk.features import parts
from axk.features import ray_engine
from axk.features import sources as sources_lib
from axk.features.clips import ClipCache
from axk.features.clips import cached_clip_path
from axk.features.sources.base import empty_arrays
from axk.features.sources.base import to_part
from axk.features.sources import generation as source_lib

logger = logging.getLogger(__name__)

STAGES = ("generate", "score", "embed")  # The actor pools, each a `config.ray.<stage>`.


def _source(config_dict: dict, workdir: str, paths: Mapping[str, str], name: str):
  """The driver's source, rebuilt in a worker (models load on first use)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  return sources_lib.SOURCES[name](ml_collections.ConfigDict(config_dict), workdir, dict(paths))


def _column(values: Sequence) -> np.ndarray:
  """A Ray Data column of Python objects (bytes, strings) that keeps each one whole."""
  out = np.empty(len(values), dtype=object)
  out[:] = list(values)
  return out


class Generate:
  """Actor: the generator's clips of a batch of candidates (`wave` `[C, T]`, `rate`)."""

  def __init__(self, config_dict: dict, workdir: str, paths: Mapping[str, str], name: str):
    source = _source(config_dict, workdir, paths, name)
    self.generator = source.generator()
    self.params = source_lib.generation_params(source.config)

  def __call__(self, batch: dict) -> dict:
    waves = self.generator([str(p) for p in batch["prompt"]], [int(s) for s in batch["seed"]],
                           self.params)
    batch["wave"] = _column([np.asarray(w, np.float32) for w in waves])
    batch["rate"] = np.full(len(waves), self.generator.sampling_rate, np.int64)
    return batch


def encode(batch: dict, clap_rate: int) -> dict:
  """CPU task: each clip as the cache stores it (16-bit FLAC) and, decoded, mono at CLAP's
  rate: what the in-process sampler scores."""
  flacs, waves = [], []
  for wave, rate in zip(batch.pop("wave"), batch["rate"]):
    flac, decoded = generation.flac_round_trip(np.asarray(wave), int(rate))
    flacs.append(flac)
    waves.append(audio_lib.from_array(decoded, int(rate), clap_rate, channels_last=False))
  batch["flac"], batch["clap_wave"] = _column(flacs), _column(waves)
  return batch


class Score:
  """Actor: CLAP scores of a batch of clips, each stored in the clip cache (its sidecar,
  and the clip when kept) unless its sidecar is there already."""

  def __init__(self, config_dict: dict, workdir: str, paths: Mapping[str, str], name: str):
    source = _source(config_dict, workdir, paths, name)
    self.clap = source.clap
    self.cache = ClipCache(source.cache_dir)
    self.params = source_lib.generation_params(source.config)
    self.model = dict(source.setup.models["generator"])
    self.keep_rejected = bool(source.section.keep_rejected)

  def __call__(self, batch: dict) -> dict:
    embs = self.clap.audio([np.asarray(w) for w in batch["clap_wave"]])
    scores = np.array([float(e @ t) for e, t in zip(embs, batch["text"])], np.float64)
    keep = np.array([self.keep_rejected or s >= k for s, k in zip(scores, batch["keep_at"])])
    for b, key in enumerate(batch["key"]):
      key = str(key)
      if not os.path.exists(cached_clip_path(self.cache.folder, key, "json")):
        cand = (key, str(batch["prompt"][b]), int(batch["seed"][b]))
        sidecar = generation.clip_sidecar(
            cand, str(batch["span"][b]), int(batch["index"][b]), scores[b],
            str(batch["score_text"][b]), int(batch["rate"][b]), model=self.model,
            params=self.params, clap_fingerprint=self.clap.info["fingerprint"])
        self.cache.put(key, sidecar, batch["flac"][b] if keep[b] else None)
    return {"key": batch["key"], "score": scores, "keep": keep,
            "emb": np.stack(embs).astype(np.float32)}


def load(batch: dict, cache_dir: str, ast_rate: int, clap_rate: int) -> dict:
  """CPU task: each accepted clip read from the cache, mono at AST's rate (and at CLAP's
  where its CLAP embedding is still to be made), as the in-process source reads it."""
  cache = ClipCache(cache_dir)
  ast_waves, clap_waves = [], []
  for clip, needs_clap in zip(batch["clip"], batch["needs_clap"]):
    loaded = cache.audio(str(clip)) if clip else None
    if clip and loaded is None:
      raise RuntimeError(f"{cache_dir}: the clip of {clip} is listed as kept but cannot be read")
    if loaded is None:
      ast_waves.append(np.zeros(0, np.float32))
      clap_waves.append(np.zeros(0, np.float32))
      continue
    wave, rate = loaded
    mono = audio_lib.from_array(wave, rate, rate, channels_last=False)
    ast_waves.append(audio_lib.resample(mono, rate, ast_rate))
    clap_waves.append(audio_lib.from_array(wave, rate, clap_rate, channels_last=False)
                      if needs_clap else np.zeros(0, np.float32))
  batch["ast_wave"], batch["clap_wave"] = _column(ast_waves), _column(clap_waves)
  return batch


class Embed:
  """Actor: AST features of each clip (zeros for a key without audio), and CLAP audio
  embeddings where they are still to be made."""

  def __init__(self, config_dict: dict, workdir: str, paths: Mapping[str, str], name: str):
    self.source = _source(config_dict, workdir, paths, name)
    self.ast = self.source.ast

  def __call__(self, batch: dict) -> dict:
    n = len(batch["text"])
    batch["ast_pooled"] = np.zeros((n, self.ast.dim), np.float32)
    batch["ast_tokens"] = np.zeros((n, self.ast.num_tokens, self.ast.dim), np.float32)
    with_audio = [b for b in range(n) if batch["has_audio"][b]]
    if with_audio:
      pooled, tokens = self.ast([np.asarray(batch["ast_wave"][b]) for b in with_audio])
      for m, b in enumerate(with_audio):
        batch["ast_pooled"][b], batch["ast_tokens"][b] = pooled[m], tokens[m]
    clap = [b for b in range(n) if batch["needs_clap"][b]]
    if clap:
      batch["clap_audio"] = np.array(batch["clap_audio"], np.float32)
      embs = self.source.clap.audio([np.asarray(batch["clap_wave"][b]) for b in clap])
      for m, b in enumerate(clap):
        batch["clap_audio"][b] = embs[m]
    for k in ("ast_wave", "clap_wave", "clip", "needs_clap"):
      del batch[k]
    return batch


def write(batch: dict, parts_dir: str, fields: Sequence[str]) -> dict:
  """CPU task: one part file of the batch's keys, unless it exists (a retried task)."""
  keys = [str(t) for t in batch["text"]]
  arrays = to_part(keys, {k: np.asarray(batch[k]) for k in fields})
  if not os.path.isfile(parts.part_path(parts_dir, 0, 1, arrays["text"])):
    parts.write_part(parts_dir, 0, 1, arrays)
  return {"written": np.array([len(keys)])}


class StreamSampler(generation.RejectionSampler):
  """The in-process rejection sampler's decisions, its draws made by the Ray Data draw
  pipeline (`draw`): every candidate a round needs in one pass; the accepted clips stay in
  the cache, read by the features pipeline. No model but CLAP's text side runs here."""

  def __init__(self, source, config, workdir: str, paths: Mapping[str, str]):
    info = dict(source.setup.models["generator"])
    super().__init__(types.SimpleNamespace(info=info, device="cpu"), source.clap,
                     ClipCache(source.cache_dir), source_lib.generation_params(config),
                     spans_per_call=1, keep_rejected=source.section.keep_rejected)
    self.source, self.config, self.workdir, self.paths = source, config, workdir, dict(paths)

  @property
  def clips_per_call(self) -> int:
    return sys.maxsize  # A round is one pass of the pipeline.

  def draw_and_store(self, items):
    return draw(items, self.source, self.config, self.workdir, self.paths)

  def _load_accepted(self, results, accept, drawn):
    for i, (_, key) in accept.items():
      results[i].clap_audio = drawn.get(key)  # None: made by the embed stage


def _pool_size(config, name: str) -> int:
  """Actors in the pool of stage `name` (`ray.<name>.workers`; 0: `ray.workers`)."""
  return int(config.ray[name].workers) or int(config.ray.workers)


def _stage(config, name: str) -> dict:
  """Actor-pool arguments of stage `name` (`config.ray.<name>`)."""
  import ray  # pylint: disable=g-import-not-at-top
  s = config.ray[name]
  return dict(compute=ray.data.ActorPoolStrategy(size=_pool_size(config, name)),
              num_cpus=float(s.cpus), num_gpus=float(s.gpus))


def _batch(config, name: str, default: int) -> int:
  return int(config.ray[name].batch_size) or int(default)


def _blocks(n: int, batch: int) -> int:
  return max(1, min(n, math.ceil(n / max(1, batch))))


def draw(items, source, config, workdir: str, paths: Mapping[str, str]):
  """Draws, scores and stores the candidates `items` (`generation.Candidate`s) on Ray Data;
  (score, kept, CLAP audio embedding) per item, in order."""
  import ray  # pylint: disable=g-import-not-at-top
  if not items:
    return []
  args = (config.to_dict(), workdir, dict(paths), source.name)
  g = source.section
  rows = [{"key": it.cand[0], "prompt": it.cand[1], "seed": int(it.cand[2]), "span": it.span,
           "index": int(it.index), "score_text": it.score_text,
           "text": np.asarray(it.text, np.float32), "keep_at": float(it.keep_at)}
          for it in items]
  gen_batch = _batch(config, "generate", max(1, int(g.spans_per_call)) * int(g.n))
  ds = ray.data.from_items(rows, override_num_blocks=_blocks(len(rows), gen_batch))
  ds = ds.map_batches(Generate, fn_constructor_args=args, batch_size=gen_batch,
                      **_stage(config, "generate"))
  cpu = {"batch_size": _batch(config, "decode", 8), "num_cpus": float(config.ray.decode.cpus)}
  ds = ds.map_batches(encode, fn_kwargs={"clap_rate": source.clap.sampling_rate}, **cpu)
  ds = ds.map_batches(Score, fn_constructor_args=args,
                      batch_size=_batch(config, "score", config.clap.batch_size),
                      **_stage(config, "score"))
  out = {}
  with tqdm.tqdm(total=len(rows), unit="clip", desc=f"{source.name}: drawing on Ray") as bar:
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
      for key, score, keep, emb in zip(batch["key"], batch["score"], batch["keep"],
                                       batch["emb"]):
        out[str(key)] = (float(score), bool(keep), np.asarray(emb, np.float32))
      bar.update(len(batch["key"]))
  return [out[it.cand[0]] for it in items]


def features(source, config, workdir: str, paths: Mapping[str, str], keys: Sequence[str],
             results: Sequence, bar, ast_hz: int) -> None:
  """The part files of `keys` from the sampler's `results`: AST (and missing CLAP)
  features made and written on Ray Data (`ast_hz`: AST's sampling rate, `ast_rate_of`)."""
  import ray  # pylint: disable=g-import-not-at-top
  outcome = source.outcome(results)
  # The in-process source's arrays, in its order (`GenerationSource.acquire`).
  fields = list({**empty_arrays(0, 1, 1, 1), **outcome})
  rows = [{"text": key, "clip": r.key if r.has_audio else "",
           "needs_clap": bool(r.has_audio and r.clap_audio is None),
           **{k: v[b] for k, v in outcome.items()}}
          for b, (key, r) in enumerate(zip(keys, results))]
  args = (config.to_dict(), workdir, dict(paths), source.name)
  part = int(config.batch_size)
  ds = ray.data.from_items(rows, override_num_blocks=_blocks(len(rows), part))
  cpu = {"batch_size": _batch(config, "decode", 8), "num_cpus": float(config.ray.decode.cpus)}
  ds = ds.map_batches(load, fn_kwargs={"cache_dir": source.cache_dir,
                                       "ast_rate": ast_hz,
                                       "clap_rate": source.clap.sampling_rate}, **cpu)
  ds = ds.map_batches(Embed, fn_constructor_args=args,
                      batch_size=_batch(config, "embed", config.ast.batch_size),
                      **_stage(config, "embed"))
  ds = ds.map_batches(write, fn_kwargs={"parts_dir": source.parts_dir, "fields": fields},
                      batch_size=part, num_cpus=float(config.ray.decode.cpus))
  for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
    bar.update(int(np.sum(batch["written"])))


def ast_rate_of(source) -> int:
  """AST's sampling rate, from its feature extractor's config (no model loads)."""
  import transformers  # pylint: disable=g-import-not-at-top
  return int(transformers.AutoFeatureExtractor.from_pretrained(
      source.setup.paths["ast"]).sampling_rate)


class DecodeClips:
  """Actor (CPU): database clips, mono at CLAP's rate (`ok` False, and no audio, for a clip
  that does not decode). An actor, so that the database is listed once per worker."""

  def __init__(self, config_dict: dict, workdir: str, paths: Mapping[str, str], name: str,
               rate: int):
    self.db = _source(config_dict, workdir, paths, name).db
    self.rate = rate

  def __call__(self, batch: dict) -> dict:
    waves, ok = [], []
    for j in batch["clip"]:
      try:
        waves.append(self.db.load(int(j), self.rate))
        ok.append(True)
      except audio_lib.DecodeError as e:
        logger.warning("database: skipping undecodable clip %s (%s)", self.db.clips[int(j)].id,
                       e)
        waves.append(np.zeros(0, np.float32))
        ok.append(False)
    batch["wave"], batch["ok"] = _column(waves), np.array(ok, bool)
    return batch


class EmbedClips:
  """Actor: CLAP audio embeddings of the decodable clips of a batch."""

  def __init__(self, config_dict: dict, workdir: str, paths: Mapping[str, str], name: str):
    self.clap = _source(config_dict, workdir, paths, name).clap

  def __call__(self, batch: dict) -> dict:
    ok = np.asarray(batch["ok"], bool)
    emb = np.zeros((len(ok), self.clap.dim), np.float32)
    if ok.any():
      emb[ok] = self.clap.audio([np.asarray(w) for w, k in zip(batch["wave"], ok) if k])
    return {"clip": batch["clip"], "ok": ok, "emb": emb}


def database_chunks(source, config, workdir: str, paths: Mapping[str, str], chunk_size: int):
  """`axk.features.index.embed`'s `compute` on Ray Data: the missing chunks' clips decoded
  by CPU actors (`ray.decode`, `ray.workers` of them) and embedded by CLAP actors
  (`ray.score`); each chunk is handed back as soon as all its clips are in."""
  from axk.features import index  # pylint: disable=g-import-not-at-top

  def compute(missing: Sequence[int]):
    import ray  # pylint: disable=g-import-not-at-top
    clips = source.db.clips
    bounds = {c: (c * chunk_size, min((c + 1) * chunk_size, len(clips))) for c in missing}
    rows = [{"clip": j} for lo, hi in bounds.values() for j in range(lo, hi)]
    if not rows:
      return
    args = (config.to_dict(), workdir, dict(paths), source.name)
    batch = _batch(config, "decode", 8)
    ds = ray.data.from_items(rows, override_num_blocks=_blocks(len(rows), batch))
    ds = ds.map_batches(DecodeClips, fn_constructor_args=(*args, source.clap.sampling_rate),
                        batch_size=batch, num_cpus=float(config.ray.decode.cpus),
                        compute=ray.data.ActorPoolStrategy(size=int(config.ray.workers)))
    ds = ds.map_batches(EmbedClips, fn_constructor_args=args,
                        batch_size=_batch(config, "score", config.clap.batch_size),
                        **_stage(config, "score"))
    chunk_of = {j: c for c, (lo, hi) in bounds.items() for j in range(lo, hi)}
    got: dict[int, dict[int, tuple[bool, np.ndarray]]] = {c: {} for c in missing}
    for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
      for j, ok, emb in zip(out["clip"], out["ok"], out["emb"]):
        c = chunk_of[int(j)]
        got[c][int(j)] = (bool(ok), emb)
        lo, hi = bounds[c]
        if len(got[c]) == hi - lo:
          ok_c = np.array([got[c][k][0] for k in range(lo, hi)])
          embs = np.stack([got[c][k][1] for k in range(lo, hi)])[ok_c]
          yield c, index.chunk_arrays(clips[lo:hi], ok_c, embs, source.clap.dim)
          del got[c]

  return compute


def embed_database(source, config, workdir: str, paths: Mapping[str, str],
                   keys: Sequence[str]) -> None:
  """Retrieval's database embedded on Ray Data (`database_chunks`), into the same chunk
  cache the in-process stage reads, when any of `keys` is still to acquire: the shard actors
  that retrieve then find it done."""
  if all(k in parts.finished(source.parts_dir) for k in keys):
    return
  ray_engine.init(config)
  import ray  # pylint: disable=g-import-not-at-top
  if not config.ray.address:
    check_fits(config, ray.cluster_resources(), ("database",))
  ray.data.DataContext.get_current().enable_progress_bars = False
  chunk_size = int(source.db_config.chunk_size)
  source.db.embed(source.clap, source.db_config.cache_dir, chunk_size=chunk_size,
                  compute=database_chunks(source, config, workdir, paths, chunk_size))


def check_fits(config, resources: Mapping[str, float],
               which: Sequence[str] = ("draw", "features")) -> None:
  """Raises ValueError (one line) when a pipeline's actor pools and one CPU task at a time
  need more CPUs or GPUs than `resources` (a local Ray instance, which never grows), where
  Ray Data would wait for them forever."""
  pools = {s: (_pool_size(config, s), float(config.ray[s].cpus), float(config.ray[s].gpus))
           for s in STAGES}
  # One CPU task at a time, or (the database's decoders) `ray.workers` CPU actors.
  pools["decode"] = (1, float(config.ray.decode.cpus), 0.0)
  pools["decode (actors)"] = (int(config.ray.workers), float(config.ray.decode.cpus), 0.0)
  pipelines = {"draw": ("generate", "decode", "score"), "features": ("decode", "embed"),
               "database": ("decode (actors)", "score")}
  for pipeline in which:
    stages = pipelines[pipeline]
    for k, kind in ((1, "CPU"), (2, "GPU")):
      need = sum(pools[s][0] * pools[s][k] for s in stages)
      have = float(resources.get(kind, 0.0))
      if need > have + 1e-9:
        asks = " + ".join(f"ray.{s}: {pools[s][0]} x {pools[s][k]}" for s in stages
                          if pools[s][k])
        raise ValueError(f"the {pipeline} pipeline needs {need:g} {kind}s ({asks}) and this "
                         f"Ray instance has {have:g}: lower --config.ray.<stage>.workers or "
                         f".{kind.lower()}s, or raise --config.ray.num_cpus")


def acquire(source, config, workdir: str, paths: Mapping[str, str], keys: Sequence[str]) -> None:
  """Every pending key of the generation `source` acquired by the streaming pipeline, a
  chunk of `ray.chunk` keys at a time; returns when all are written."""
  folder = source.parts_dir
  pending = [k for k in keys if k not in parts.finished(folder)]
  if not pending:
    logger.info("%s: all %d acquisitions done", source.name, len(keys))
    return
  ray_engine.init(config)
  import ray  # pylint: disable=g-import-not-at-top
  if not config.ray.address:
    check_fits(config, ray.cluster_resources())
  ray.data.DataContext.get_current().enable_progress_bars = False
  sampler = StreamSampler(source, config, workdir, paths)
  ast_hz = ast_rate_of(source)
  chunk = max(1, int(config.ray.chunk))
  bar = tqdm.tqdm(total=len(keys), initial=len(keys) - len(pending), unit="span",
                  desc=f"{source.name} on Ray Data")
  try:
    for lo in range(0, len(pending), chunk):
      batch = pending[lo:lo + chunk]
      results = sampler(*source.requests(batch))
      features(source, config, workdir, paths, batch, results, bar, ast_hz)
  finally:
    bar.close()
  logger.info("%s: %d acquisitions on Ray Data in %s", source.name, len(pending), folder)
