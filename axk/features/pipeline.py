"""The offline feature pipeline: spans -> audio (retrieval or generation) -> AST/CLAP -> shards.

    python -m axk.main --config=configs/features.py:retrieval --workdir=DIR

Stages (`config.stage`), each cached in the workdir so that a rerun skips finished work:

  spans     gold / predicted / detected spans of every example, normalised and
            deduplicated; written to `<workdir>/spans/<task>_<split>.jsonl`.
  database  (retrieval) CLAP audio embeddings of the database, cached in chunks under
            `database.cache_dir` (default `<workdir>/cache/database/<fingerprint>/`).
  acquire   for this worker's distinct spans (`hash % num_shards == shard_index`): the
            audio (top-1 retrieval, or generation with CLAP rejection sampling), its CLAP
            audio embedding, the CLAP text embedding and AST features; one part file per
            finished batch under `<workdir>/parts/<source>-<run key>/`.
  assemble  joins the parts of every worker into TFDS datasets plus a manifest under
            `<workdir>/<features_dir>/` (see `axk.features.shards`).

`stage=all` runs every stage; with `num_shards > 1` it stops after `acquire`, and
`stage=assemble` is run once every worker is done. The run key hashes everything that
changes a span's features (models, parameters, the database), not batch sizes or the
number of workers, so parts are reused when a run is resumed or resharded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import datetime
import glob
import hashlib
import json
import logging
import os
import shutil
import time

import numpy as np
import tqdm

from axk.data import auditorybench
from axk.data.types import Example
from axk.data.types import Span
from axk.data.types import SPLITS
from axk.data.types import TASKS
from axk.features import hub
from axk.features import shards
from axk.features import spans as spans_lib

logger = logging.getLogger(__name__)

SOURCES = ("retrieval", "generation")
STAGES = ("all", "spans", "database", "acquire", "assemble")
# Retrieved clips whose AST features are kept in memory (clips are often retrieved again).
_AST_CACHE_SIZE = 4096


def _split_list(value, allowed: Sequence[str], what: str) -> list[str]:
  items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value)]
  items = [v for v in items if v]
  bad = [v for v in items if v not in allowed]
  if bad or not items:
    raise ValueError(f"{what}={value!r}: expected a comma-separated subset of {allowed}")
  return items


def _atomic_json(path: str, obj) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


# ----------------------------------------------------------------------------------------
# Data and spans.
# ----------------------------------------------------------------------------------------


def load_data(config) -> tuple[dict[str, dict[str, list[Example]]], dict[str, dict]]:
  """Examples by task and split, and the inputs' provenance for the manifest."""
  data_dir = auditorybench.resolve_data_dir(config.data.dir, config.data.cache_dir or None)
  tasks = _split_list(config.data.tasks, TASKS, "data.tasks")
  splits = _split_list(config.data.splits, SPLITS, "data.splits")
  examples, inputs = {}, {}
  for task in tasks:
    loaded = auditorybench.load_task(data_dir, task, splits,
                                     keep_missing_spans=config.data.keep_missing_spans)
    examples[task] = {split: d.examples for split, d in loaded.items()}
    for split, d in loaded.items():
      inputs[f"{task}/{split}"] = {"path": os.path.abspath(d.path),
                                   "sha256": d.sha256 or _sha256(d.path),
                                   "num_examples": len(d.examples), "skipped": d.skipped}
  return examples, inputs


def spans_stage(config, workdir: str, examples: Mapping[str, Mapping[str, list[Example]]],
                inputs: Mapping[str, dict]) -> tuple[dict[str, tuple[Span, ...]], dict]:
  """Spans of every example from the configured source, cached in `<workdir>/spans/`.

  Returns:
    (example id -> spans, manifest entry describing the spans).
  """
  source = config.spans.source
  if source not in spans_lib.SOURCES:
    raise ValueError(f"spans.source={source!r}; expected one of {spans_lib.SOURCES}")
  folder = os.path.join(workdir, "spans")
  os.makedirs(folder, exist_ok=True)
  gold_splits = (set(_split_list(config.spans.gold_splits, SPLITS, "spans.gold_splits"))
                 if config.spans.gold_splits and source != "gold" else set())
  # Which source each split takes: the detector predicts evaluation splits only.
  source_of = lambda split: "gold" if split in gold_splits else source
  describe = {"source": source, "gold_splits": sorted(gold_splits),
              "inputs": {k: v["sha256"] for k, v in inputs.items()},
              "keep_missing_spans": bool(config.data.keep_missing_spans)}
  if source == "predictions":
    if not config.spans.predictions:
      raise ValueError("spans.source=predictions needs --config.spans.predictions=FILE or "
                       "DIR (the detector writes <workdir>/predictions/<task>_<split>.jsonl)")
    describe["files"] = {}
    for task, by_split in examples.items():
      for split in by_split:
        if source_of(split) == "gold":
          continue
        path = spans_lib.predictions_path(config.spans.predictions, task, split)
        if not os.path.exists(path):
          raise FileNotFoundError(f"spans.predictions: {path} does not exist")
        describe["files"][f"{task}/{split}"] = {"path": os.path.abspath(path),
                                                "sha256": _sha256(path)}
  elif source == "detector":
    if not config.spans.detector:
      raise ValueError("spans.source=detector needs --config.spans.detector=DIR (an "
                       "exported BertForTokenClassification)")
    path = hub.resolve(config.spans.detector, "spans.detector")
    describe["detector"] = hub.describe(config.spans.detector, path)
  key = hub.digest(describe)
  info_path = os.path.join(folder, "spans.json")
  files = {(t, s): os.path.join(folder, f"{t}_{s}.jsonl")
           for t, by_split in examples.items() for s in by_split}
  cached = False
  if os.path.exists(info_path) and all(os.path.exists(p) for p in files.values()):
    with open(info_path, encoding="utf-8") as f:
      cached = json.load(f).get("key") == key
  result: dict[str, tuple[Span, ...]] = {}
  if cached:
    logger.info("spans: reusing %s", folder)
    for (task, split), path in files.items():
      result.update(spans_lib.read_predictions(path, examples[task][split]))
  else:
    detector = None
    if source == "detector":
      detector = spans_lib.Detector(config.spans.detector, device=config.device,
                                    batch_size=config.spans.batch_size)
    for (task, split), path in files.items():
      split_examples = examples[task][split]
      if source_of(split) == "gold":
        found = spans_lib.gold_spans(split_examples)
      elif source == "predictions":
        found = spans_lib.read_predictions(
            spans_lib.predictions_path(config.spans.predictions, task, split), split_examples)
      else:
        found = spans_lib.detect(detector, split_examples)
      spans_lib.write_predictions(path, split_examples, found)
      result.update(found)
    _atomic_json(info_path, {"key": key, **describe})
  total = sum(len(s) for s in result.values())
  distinct = spans_lib.distinct(result)
  describe.update(num_spans=total, num_distinct=len(distinct))
  logger.info("spans (%s%s): %d spans in %d examples, %d distinct", source,
              f"; gold for {','.join(sorted(gold_splits))}" if gold_splits else "", total,
              len(result), len(distinct))
  return result, describe


# ----------------------------------------------------------------------------------------
# Models (real or tiny) and the database.
# ----------------------------------------------------------------------------------------


def model_paths(config, workdir: str) -> dict[str, str]:
  """Configured model locations, or tiny random models built in the workdir."""
  paths = {"clap": config.models.clap, "ast": config.models.ast,
           "generator": config.models.generator}
  if config.models.tiny:
    from axk.features import tiny  # pylint: disable=g-import-not-at-top
    built = tiny.build_all(os.path.join(workdir, "tiny_models"))
    paths = {"clap": built["clap"], "ast": built["ast"], "generator": built["stable_audio"]}
  return paths


def database_config(config, workdir: str):
  """`config.database`, with the synthetic database written when one is asked for."""
  db = config.database
  if db.synthetic_clips:
    from axk.features import tiny  # pylint: disable=g-import-not-at-top
    folder = os.path.join(workdir, "audio_db")
    tiny.write_synthetic_database(folder, db.synthetic_clips)
    db = db.copy_and_resolve_references()
    with db.unlocked():
      db.dir = folder
  return db


def generation_params(config):
  from axk.features import generation  # pylint: disable=g-import-not-at-top
  g = config.generation
  return generation.GenerationParams(
      pipeline_class=g.pipeline_class, steps=int(g.steps), seconds=float(g.seconds),
      guidance_scale=float(g.guidance_scale), negative_prompt=g.negative_prompt,
      prompt_template=g.prompt_template, score_template=g.score_template,
      candidates=int(g.candidates), max_rounds=int(g.max_rounds), tau=float(g.tau),
      base_seed=int(g.base_seed), rule=g.rule)


# ----------------------------------------------------------------------------------------
# Part files: one per finished batch of spans.
# ----------------------------------------------------------------------------------------


def _part_dir(workdir: str, source: str, run_key: str) -> str:
  return os.path.join(workdir, "parts", f"{source}-{run_key}")


def write_part(folder: str, shard_index: int, num_shards: int, arrays: Mapping) -> str:
  """Writes one batch's results atomically; the name hashes the batch's span texts."""
  sub = os.path.join(folder, f"shard-{shard_index:05d}-of-{num_shards:05d}")
  os.makedirs(sub, exist_ok=True)
  name = hashlib.sha256("\n".join(arrays["text"]).encode()).hexdigest()[:16]
  path = os.path.join(sub, f"part-{name}.npz")
  tmp = f"{path}.tmp{os.getpid()}.npz"
  np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
  os.replace(tmp, path)
  return path


def _part_files(folder: str) -> list[str]:
  return sorted(glob.glob(os.path.join(folder, "shard-*", "part-*.npz")))


def finished_spans(folder: str) -> set[str]:
  """Span texts already in a part file of `folder` (any worker)."""
  done = set()
  for path in _part_files(folder):
    with np.load(path) as z:
      done.update(str(t) for t in z["text"])
  return done


def read_parts(folder: str) -> dict[str, dict]:
  """Span text -> its results, from every part file of `folder`."""
  out = {}
  for path in _part_files(folder):
    with np.load(path) as z:
      arrays = {k: z[k] for k in z.files}
    for i, text in enumerate(arrays["text"]):
      out[str(text)] = {k: v[i] for k, v in arrays.items()}
  return out


# ----------------------------------------------------------------------------------------
# Acquisition per source.
# ----------------------------------------------------------------------------------------


class _RetrievalWorker:
  """Top-1 CLAP retrieval and features of the retrieved clip."""

  def __init__(self, config, db, clap, ast, exclude: set[str]):
    self.config, self.db, self.clap, self.ast, self.exclude = config, db, clap, ast, exclude
    self.ast_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

  def _ast_of(self, i: int) -> tuple[np.ndarray, np.ndarray] | None:
    if i not in self.ast_cache:
      from axk.features import audio as audio_lib  # pylint: disable=g-import-not-at-top
      try:
        wave = self.db.load(i, self.ast.sampling_rate)
      except audio_lib.DecodeError as e:
        logger.warning("retrieval: clip %s cannot be decoded (%s)", self.db.clips[i].id, e)
        return None
      pooled, tokens = self.ast([wave])
      if len(self.ast_cache) >= _AST_CACHE_SIZE:
        self.ast_cache.pop(next(iter(self.ast_cache)))
      self.ast_cache[i] = (pooled[0], tokens[0])
    return self.ast_cache[i]

  def __call__(self, batch: Sequence[str]) -> dict[str, np.ndarray]:
    r = self.config.retrieval
    text = self.clap.text([r.query_template.format(span=s) for s in batch])
    k = max(1, int(r.top_k))
    idx, scores = self.db.search(text, k, self.exclude)
    # Decode the needed clips in one AST batch (clips already cached are skipped).
    wanted = sorted({int(i) for i in idx[:, 0] if i >= 0} - set(self.ast_cache))
    from axk.features import audio as audio_lib  # pylint: disable=g-import-not-at-top
    waves, ok = [], []
    for i in wanted:
      try:
        waves.append(self.db.load(i, self.ast.sampling_rate))
        ok.append(i)
      except audio_lib.DecodeError as e:
        logger.warning("retrieval: clip %s cannot be decoded (%s)", self.db.clips[i].id, e)
    if waves:
      pooled, tokens = self.ast(waves)
      for n, i in enumerate(ok):
        self.ast_cache[i] = (pooled[n], tokens[n])
    n = len(batch)
    out = _empty_arrays(n, self.ast, self.clap)
    out["clap_text"] = text
    out["topk_ids"] = np.array([[self.db.clips[j].id if j >= 0 else "" for j in row]
                                for row in idx])
    out["topk_scores"] = scores
    for b in range(n):
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


class _GenerationWorker:
  """Rejection sampling and features of the accepted clip."""

  def __init__(self, sampler, clap, ast):
    self.sampler, self.clap, self.ast = sampler, clap, ast

  def __call__(self, batch: Sequence[str]) -> dict[str, np.ndarray]:
    from axk.features import audio as audio_lib  # pylint: disable=g-import-not-at-top
    results = self.sampler(batch)
    n = len(batch)
    out = _empty_arrays(n, self.ast, self.clap)
    out["clap_text"] = np.stack([r.clap_text for r in results])
    out["rounds"] = np.array([r.rounds for r in results], np.int32)
    accepted = [b for b, r in enumerate(results) if r.has_audio]
    if accepted:
      waves = [audio_lib.resample(results[b].wave, results[b].rate, self.ast.sampling_rate)
               for b in accepted]
      pooled, tokens = self.ast(waves)
      for n_, b in enumerate(accepted):
        out["ast_pooled"][b], out["ast_tokens"][b] = pooled[n_], tokens[n_]
    for b, r in enumerate(results):
      out["has_audio"][b] = r.has_audio
      out["clap_score"][b] = r.score if np.isfinite(r.score) else 0.0
      out["source"][b] = r.key
      out["clap_audio"][b] = r.clap_audio
    return out


def _empty_arrays(n: int, ast, clap) -> dict[str, np.ndarray]:
  return {
      "has_audio": np.zeros(n, bool),
      "clap_score": np.zeros(n, np.float32),
      "source": np.array([""] * n, dtype=object),
      "clap_text": np.zeros((n, clap.dim), np.float32),
      "clap_audio": np.zeros((n, clap.dim), np.float32),
      "ast_pooled": np.zeros((n, ast.dim), np.float32),
      "ast_tokens": np.zeros((n, ast.num_tokens, ast.dim), np.float32),
  }


def _to_part(batch: Sequence[str], out: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Results of a batch in storage form: features as float16, strings as unicode."""
  part = {"text": np.array(list(batch), dtype=str)}
  for k, v in out.items():
    v = np.asarray(v)
    if v.dtype == object:
      v = v.astype(str)
    elif k in ("clap_text", "clap_audio", "ast_pooled", "ast_tokens"):
      v = v.astype(np.float16)
    part[k] = v
  return part


# ----------------------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------------------


def _source_setup(source: str, config, workdir: str, paths: Mapping[str, str]) -> dict:
  """What identifies a source's run (without loading any model)."""
  clap_path = hub.resolve(paths["clap"], "models.clap")
  ast_path = hub.resolve(paths["ast"], "models.ast")
  models = {"clap": hub.describe(paths["clap"], clap_path),
            "ast": hub.describe(paths["ast"], ast_path)}
  params = {"ast": {"num_audio_tokens": int(config.ast.num_audio_tokens),
                    "token_pooling": config.ast.token_pooling}}
  setup = {"source": source, "models": models, "params": params,
           "paths": {"clap": clap_path, "ast": ast_path}}
  if source == "retrieval":
    from axk.features import retrieval  # pylint: disable=g-import-not-at-top
    db_config = database_config(config, workdir)
    db = retrieval.AudioDatabase.from_config(db_config)
    exclude = retrieval.read_exclude(config.retrieval.exclude_ids,
                                     config.retrieval.exclude_file)
    r = config.retrieval
    params["retrieval"] = {"query_template": r.query_template, "top_k": int(r.top_k),
                           "min_score": float(r.min_score),
                           "exclude": hub.digest(sorted(exclude)),
                           "num_excluded": len(exclude)}
    params["database"] = {**db.description, "content": db.content_fingerprint(),
                          "max_seconds": db.max_seconds}
    setup.update(db=db, db_config=db_config, exclude=exclude,
                 features_dir=config.retrieval.features_dir)
  else:
    gen_path = hub.resolve(paths["generator"], "models.generator")
    models["generator"] = {**hub.describe(paths["generator"], gen_path),
                           "pipeline_class": config.generation.pipeline_class}
    setup["paths"]["generator"] = gen_path
    import dataclasses  # pylint: disable=g-import-not-at-top
    params["generation"] = dataclasses.asdict(generation_params(config))
    setup["features_dir"] = config.generation.features_dir
  setup["run_key"] = hub.digest({"source": source,
                                 "models": {k: v["fingerprint"] for k, v in models.items()},
                                 "params": params})
  return setup


def acquire_stage(source: str, config, workdir: str, setup: dict,
                  distinct: Sequence[str], stage: str) -> None:
  """Database embedding (retrieval) and acquisition of this worker's spans."""
  from axk.features import ast as ast_lib  # pylint: disable=g-import-not-at-top
  from axk.features import clap as clap_lib  # pylint: disable=g-import-not-at-top

  folder = _part_dir(workdir, source, setup["run_key"])
  os.makedirs(folder, exist_ok=True)
  _atomic_json(os.path.join(folder, "run.json"),
               {k: setup[k] for k in ("source", "models", "params", "run_key")})
  mine = [s for s in distinct
          if spans_lib.shard_of(s, config.num_shards) == config.shard_index]
  done = finished_spans(folder)
  pending = [s for s in mine if s not in done]
  needs_db = source == "retrieval" and stage in ("all", "database")
  if not pending and not needs_db:
    logger.info("%s: shard %d/%d has all %d spans done", source, config.shard_index,
                config.num_shards, len(mine))
    return
  clap = clap_lib.ClapEncoder(setup["paths"]["clap"], device=config.device,
                              batch_size=config.clap.batch_size)
  clap.info = setup["models"]["clap"]
  if source == "retrieval":
    db = setup["db"]
    cache_dir = setup["db_config"].cache_dir or os.path.join(workdir, "cache", "database")
    db.embed(clap, cache_dir, chunk_size=int(setup["db_config"].chunk_size),
             shard_index=config.shard_index, num_shards=config.num_shards)
    # For the manifest, which `assemble` may write in a process that never embeds.
    _atomic_json(os.path.join(folder, "database.json"), db.info)
    if stage == "database" or not pending:
      return
  ast = ast_lib.AstEncoder(setup["paths"]["ast"], num_tokens=config.ast.num_audio_tokens,
                           token_pooling=config.ast.token_pooling, device=config.device,
                           batch_size=config.ast.batch_size)
  ast.info = setup["models"]["ast"]
  if source == "retrieval":
    worker = _RetrievalWorker(config, setup["db"], clap, ast, setup["exclude"])
  else:
    from axk.features import generation  # pylint: disable=g-import-not-at-top
    g = config.generation
    generator = generation.AudioGenerator(setup["paths"]["generator"], g.pipeline_class,
                                          device=config.device, torch_dtype=g.torch_dtype)
    generator.info = setup["models"]["generator"]
    cache = generation.ClipCache(g.cache_dir or os.path.join(workdir, "cache", "clips"))
    sampler = generation.RejectionSampler(generator, clap, cache, generation_params(config),
                                          spans_per_call=g.spans_per_call,
                                          keep_rejected=g.keep_rejected)
    worker = _GenerationWorker(sampler, clap, ast)
  logger.info("%s: shard %d/%d: %d distinct spans, %d done, %d to go", source,
              config.shard_index, config.num_shards, len(mine), len(mine) - len(pending),
              len(pending))
  bar = tqdm.tqdm(total=len(mine), initial=len(mine) - len(pending), unit="span",
                  desc=f"{source} shard {config.shard_index}/{config.num_shards}")
  for lo in range(0, len(pending), config.batch_size):
    batch = pending[lo:lo + config.batch_size]
    write_part(folder, config.shard_index, config.num_shards, _to_part(batch, worker(batch)))
    bar.update(len(batch))
  bar.close()


def assemble_stage(source: str, workdir: str, setup: dict,
                   examples: Mapping[str, Mapping[str, list[Example]]],
                   spans_by_id: Mapping[str, Sequence[Span]], inputs: Mapping[str, dict],
                   spans_info: Mapping, config) -> str:
  """Joins every worker's parts into the TFDS datasets and the manifest.

  Raises:
    RuntimeError: spans without results (a worker has not finished), naming how many.
  """
  folder = _part_dir(workdir, source, setup["run_key"])
  results = read_parts(folder)
  distinct = spans_lib.distinct(spans_by_id)
  missing = [s for s in distinct if s not in results]
  if missing:
    by_shard = {}
    for s in missing:
      shard = spans_lib.shard_of(s, config.num_shards)
      by_shard[shard] = by_shard.get(shard, 0) + 1
    raise RuntimeError(
        f"{source}: {len(missing)} of {len(distinct)} distinct spans have no results in "
        f"{folder} (missing per shard of {config.num_shards}: {dict(sorted(by_shard.items()))}"
        f", e.g. {missing[:3]}); run --config.stage=acquire for those shards first (with a "
        "workdir shared by every worker, or after copying their parts/ folders here)")
  any_row = next(iter(results.values()))
  dims = {"ast": int(any_row["ast_pooled"].shape[-1]),
          "num_audio_tokens": int(any_row["ast_tokens"].shape[0]),
          "clap": int(any_row["clap_text"].shape[-1])}
  features_dir = os.path.join(workdir, setup["features_dir"])
  tmp_dir = f"{features_dir}.tmp{os.getpid()}"
  shutil.rmtree(tmp_dir, ignore_errors=True)
  os.makedirs(tmp_dir)
  counts = {}

  def split_rows(task: str, split: str, split_examples: Sequence[Example]):
    n_spans = n_audio = 0
    for e in split_examples:
      span_dicts = []
      for s in sorted(spans_by_id.get(e.id, ()), key=lambda s: (s.start, s.end)):
        r = results[spans_lib.normalise(s.text)]
        span_dicts.append({"start": s.start, "end": s.end, "text": s.text,
                           **{k: r[k] for k in shards.SPAN_FIELDS[3:]}})
        n_spans += 1
        n_audio += bool(r["has_audio"])
      yield shards.encode_row(e.id, e.sentence, span_dicts, dims)
    counts[f"{task}/{split}"] = {"examples": len(split_examples), "spans": n_spans,
                                 "spans_with_audio": n_audio}

  for task, by_split in examples.items():
    shards.write_task(tmp_dir, task, {split: split_rows(task, split, split_examples)
                                      for split, split_examples in by_split.items()}, dims)
  with open(os.path.join(tmp_dir, shards.ACQUISITIONS), "w", encoding="utf-8") as f:
    for s in distinct:
      r = results[s]
      record = {"text": s, "has_audio": bool(r["has_audio"]),
                "clap_score": float(r["clap_score"]), "source": str(r["source"])}
      if "topk_ids" in r:
        record["top_k"] = [[str(i), float(v)] for i, v in zip(r["topk_ids"], r["topk_scores"])
                           if i]
      if "rounds" in r:
        record["rounds"] = int(r["rounds"])
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
  with_audio = sum(bool(results[s]["has_audio"]) for s in distinct)
  manifest = {
      "format_version": shards.FORMAT_VERSION,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "source": source,
      "run_key": setup["run_key"],
      "models": setup["models"],
      "params": setup["params"],
      "dims": dims,
      "inputs": dict(inputs),
      "spans": dict(spans_info),
      "counts": {"distinct_spans": len(distinct), "distinct_with_audio": with_audio,
                 "by_split": counts},
      "tfds": {"name": shards.BUILDER_NAME, "version": shards.VERSION,
               "configs": sorted(examples), "file_format": "array_record"},
      "config": config.to_dict(),
  }
  if source == "retrieval":
    db_info = os.path.join(folder, "database.json")
    if os.path.exists(db_info):
      with open(db_info, encoding="utf-8") as f:
        manifest["database"] = json.load(f)
    else:
      manifest["database"] = setup["db"].info
  _atomic_json(os.path.join(tmp_dir, shards.MANIFEST), manifest)
  # Swap the finished folder in; readers never see a half-written one.
  old = f"{features_dir}.old{os.getpid()}"
  if os.path.exists(features_dir):
    os.replace(features_dir, old)
  os.replace(tmp_dir, features_dir)
  shutil.rmtree(old, ignore_errors=True)
  logger.info("%s: features of %d distinct spans (%d with audio) in %s", source,
              len(distinct), with_audio, features_dir)
  return features_dir


def run(config, workdir: str) -> dict[str, str]:
  """Runs the configured stages (see the module docstring).

  Returns:
    Source -> features folder, for the sources assembled in this call.
  """
  if not workdir:
    raise ValueError("--workdir is required")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  if config.stage not in STAGES:
    raise ValueError(f"stage={config.stage!r}; expected one of {STAGES}")
  if not 0 <= config.shard_index < config.num_shards:
    raise ValueError(f"shard_index={config.shard_index} not in [0, num_shards="
                     f"{config.num_shards})")
  sources = _split_list(config.source, SOURCES, "source")
  _quiet_libraries()
  start = time.time()
  examples, inputs = load_data(config)
  spans_by_id, spans_info = spans_stage(config, workdir, examples, inputs)
  if config.stage == "spans":
    return {}
  if config.torch_threads:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(int(config.torch_threads))
  paths = model_paths(config, workdir)
  out = {}
  for source in sources:
    if config.stage == "database" and source != "retrieval":
      continue
    setup = _source_setup(source, config, workdir, paths)
    if config.stage in ("all", "database", "acquire"):
      acquire_stage(source, config, workdir, setup, spans_lib.distinct(spans_by_id),
                    config.stage)
    if config.stage == "assemble" or (config.stage == "all" and config.num_shards == 1):
      out[source] = assemble_stage(source, workdir, setup, examples, spans_by_id, inputs,
                                   spans_info, config)
    elif config.stage == "all":
      logger.info("%s: shard %d/%d done; run --config.stage=assemble once every shard is "
                  "done", source, config.shard_index, config.num_shards)
  logger.info("features: done in %.1f s", time.time() - start)
  return out


def _quiet_libraries() -> None:
  """Silences per-file progress bars of transformers/diffusers (ours show the ETA)."""
  try:
    import transformers  # pylint: disable=g-import-not-at-top
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
  except ImportError:
    pass
  try:
    import diffusers  # pylint: disable=g-import-not-at-top
    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
  except ImportError:
    pass
