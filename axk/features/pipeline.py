"""The offline feature pipeline: spans -> audio (a feature source) -> AST/CLAP -> shards.

    python -m axk.main --config=configs/features.py:retrieval --workdir=DIR \
        --config.spans.predictions=SPAN_WORKDIR/predictions    # the detector's spans

Stages (`config.stage`), each cached in the workdir so that a rerun skips finished work:

  spans     gold / predicted / detected spans of every example, normalised and
            deduplicated; written to `<workdir>/spans/<task>_<split>.jsonl`.
  database  (retrieval) CLAP audio embeddings of the database, cached in chunks under
            `database.cache_dir` (default `<workdir>/cache/database/<fingerprint>/`).
  acquire   for this worker's acquisition keys (`hash % num_shards == shard_index`): the
            source's arrays (audio, CLAP embeddings, AST features); one part file per
            finished batch under `<workdir>/parts/<source>-<run key>/`.
  assemble  joins the parts of every worker into TFDS datasets plus a manifest under
            `<workdir>/<features_dir>/` (see `axk.features.shards`).

The sources (`config.source`: retrieval, generation) are classes with one interface
(`axk.features.sources`); nothing here depends on which one runs. `stage=all` runs every
stage; with `num_shards > 1` it stops after `acquire`, and `stage=assemble` is run once
every worker is done. The run key hashes everything that changes a span's features
(models, parameters, the database's content), not batch sizes, the number of workers or
any absolute path, so parts are reused when a run is resumed, resharded or copied.

Damage is repaired, not repeated: features that exist but do not verify (`shards.verify`)
are rebuilt, with one line naming the file; part files and database chunks that do not
load are set aside with a warning and recomputed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import datetime
import json
import logging
import os
import time

import tqdm

from axk import hub
from axk.data import spans as spans_lib
from axk.data.download import data_revision
from axk.data.types import Example
from axk.data.types import Span
from axk.data.types import SPLITS
from axk.features import parts
from axk.features import shards
from axk.features import sources as sources_lib
from axk.features.inputs import load_data
from axk.features.inputs import model_paths
from axk.features.inputs import split_list
from axk.utils import files

logger = logging.getLogger(__name__)

SPAN_SOURCES = ("gold", "predictions", "detector")
SPAN_UNITS = ("span", "sentence")
STAGES = ("all", "spans", "database", "acquire", "assemble")
ENGINES = ("local", "ray")  # Where the acquire stage runs (`axk/features/ray_engine.py`).
# With the ray engine, "auto": generation streams through Ray Data stages and retrieval's
# database is embedded on Ray Data (`axk/features/ray_stream.py`), the rest one actor per
# shard; "shards": every source one actor per shard.
RAY_PIPELINES = ("auto", "shards")


# ----------------------------------------------------------------------------------------
# Spans.
# ----------------------------------------------------------------------------------------


def check_spans(config) -> None:
  """One line (FileNotFoundError) when `spans.source="predictions"` (the default: the
  detector's spans, as both methods use them) names no predictions folder."""
  if config.spans.source == "predictions" and not config.spans.predictions:
    raise FileNotFoundError(
        "--config.spans.source=predictions (the default: the span detector's spans, as the "
        "methods use) needs --config.spans.predictions=SPAN_WORKDIR/predictions (written by "
        "python -m axk.main --config=configs/span.py --workdir=SPAN_WORKDIR); for gold spans "
        "on every split add the `gold` modifier (e.g. configs/features.py:generation,gold).")


def spans_stage(config, workdir: str, examples: Mapping[str, Mapping[str, list[Example]]],
                inputs: Mapping[str, dict]) -> tuple[dict[str, tuple[Span, ...]], dict]:
  """Spans of every example from the configured source, cached in `<workdir>/spans/`.

  The cache key holds the inputs' and the predictions' sha256 and the detector's
  fingerprint, not their paths, so a copied workdir reuses its spans.

  Returns:
    (example id -> spans, manifest entry describing the spans).
  """
  source = config.spans.source
  if source not in SPAN_SOURCES:
    raise ValueError(f"spans.source={source!r}; expected one of {SPAN_SOURCES}")
  if config.spans.get("unit", "span") not in SPAN_UNITS:
    raise ValueError(f"spans.unit={config.spans.unit!r}; expected one of {SPAN_UNITS}")
  folder = os.path.join(workdir, "spans")
  gold_splits = (set(split_list(config.spans.gold_splits, SPLITS, "spans.gold_splits"))
                 if config.spans.gold_splits and source != "gold" else set())
  # Which source each split takes: the detector predicts evaluation splits only.
  source_of = lambda split: "gold" if split in gold_splits else source
  describe = {"source": source, "gold_splits": sorted(gold_splits),
              "inputs": {k: v["sha256"] for k, v in inputs.items()},
              "keep_missing_spans": bool(config.data.keep_missing_spans)}
  identity = dict(describe)
  if source == "predictions":
    check_spans(config)
    describe["files"] = {}
    for task, by_split in examples.items():
      for split in by_split:
        if source_of(split) == "gold":
          continue
        path = spans_lib.predictions_path(config.spans.predictions, task, split)
        if not os.path.exists(path):
          raise FileNotFoundError(f"spans.predictions: {path} does not exist")
        describe["files"][f"{task}/{split}"] = {"path": os.path.abspath(path),
                                                "sha256": shards.sha256_file(path)}
    identity["files"] = {k: v["sha256"] for k, v in describe["files"].items()}
  elif source == "detector":
    if not config.spans.detector:
      raise ValueError("spans.source=detector needs --config.spans.detector=DIR (an "
                       "exported BertForTokenClassification)")
    path = hub.resolve(config.spans.detector, "spans.detector",
                       ignore_patterns=hub.NOT_PYTORCH)
    describe["detector"] = hub.describe(config.spans.detector, path)
    identity["detector"] = describe["detector"]["fingerprint"]
  key = describe["key"] = hub.digest(identity)
  info_path = os.path.join(folder, "spans.json")
  span_files = {(t, s): os.path.join(folder, f"{t}_{s}.jsonl")
                for t, by_split in examples.items() for s in by_split}
  cached = False
  if os.path.exists(info_path) and all(os.path.exists(p) for p in span_files.values()):
    try:
      with open(info_path, encoding="utf-8") as f:
        cached = json.load(f).get("key") == key
    except (OSError, ValueError, AttributeError):
      logger.warning("%s does not load; the spans are computed again", info_path)
  result: dict[str, tuple[Span, ...]] = {}
  if cached:
    logger.info("spans: reusing %s", folder)
    for (task, split), path in span_files.items():
      result.update(spans_lib.read_predictions(path, examples[task][split]))
  else:
    detector = None
    if source == "detector":
      from axk.features import detector as detector_lib  # pylint: disable=g-import-not-at-top
      detector = detector_lib.Detector(config.spans.detector, device=config.device,
                                       batch_size=config.spans.batch_size)
    for (task, split), path in span_files.items():
      split_examples = examples[task][split]
      if source_of(split) == "gold":
        found = spans_lib.gold_spans(split_examples)
      elif source == "predictions":
        found = spans_lib.read_predictions(
            spans_lib.predictions_path(config.spans.predictions, task, split), split_examples)
      else:
        found = detector.detect(split_examples)
      spans_lib.write_predictions(path, split_examples, found)
      result.update(found)
    files.write_json(info_path, describe)
  if config.spans.get("unit", "span") == "sentence":
    result, describe = sentence_spans(examples), {**describe, "unit": "sentence",
                                                  "key": hub.digest({"spans": key,
                                                                     "unit": "sentence"})}
  total = sum(len(s) for s in result.values())
  distinct = spans_lib.distinct(result)
  describe.update(num_spans=total, num_distinct=len(distinct))
  logger.info("spans (%s): %d spans in %d examples, %d distinct",
              "one per sentence" if describe.get("unit") == "sentence" else
              source + (f"; gold for {','.join(sorted(gold_splits))}" if gold_splits else ""),
              total, len(result), len(distinct))
  return result, describe


def sentence_spans(examples: Mapping[str, Mapping[str, list[Example]]]
                   ) -> dict[str, tuple[Span, ...]]:
  """`spans.unit="sentence"` (ITH's "w/o DKI" ablation): every example gets one span, its
  whole sentence (offsets 0..len), whatever spans were found; so one clip per sentence is
  fused into every token of it. The generation source drops `[MASK]` from its prompt."""
  return {e.id: (Span(0, len(e.sentence), e.sentence),)
          for by_split in examples.values() for split_examples in by_split.values()
          for e in split_examples}


# ----------------------------------------------------------------------------------------
# Acquisition and assembly, for any source.
# ----------------------------------------------------------------------------------------


def acquisition_keys(source: sources_lib.FeatureSource,
                     examples: Mapping[str, Mapping[str, list[Example]]],
                     spans_by_id: Mapping[str, Sequence[Span]]) -> dict[str, list[str]]:
  """Example id -> the source's key for each of its spans, in sentence order."""
  return {e.id: source.keys(e, _ordered(spans_by_id.get(e.id, ())))
          for by_split in examples.values() for split_examples in by_split.values()
          for e in split_examples}


def _ordered(spans: Sequence[Span]) -> list[Span]:
  return sorted(spans, key=lambda s: (s.start, s.end))


def acquire_stage(source: sources_lib.FeatureSource, config, keys: Sequence[str],
                  stage: str) -> None:
  """The source's preparation (e.g. database embedding) and this worker's keys."""
  folder = source.parts_dir
  files.write_json(os.path.join(folder, "run.json"), source.setup.run_info())
  mine = [k for k in keys if parts.shard_of(k, config.num_shards) == config.shard_index]
  done = parts.finished(folder)
  pending = [k for k in mine if k not in done]
  where = f"{source.name}: shard {config.shard_index}/{config.num_shards}"
  if pending or stage in ("all", *source.stages):
    source.prepare()
  if stage in source.stages or not pending:
    if not pending:
      logger.info("%s has all %d acquisitions done", where, len(mine))
    return
  logger.info("%s: %d acquisitions, %d done, %d to go", where, len(mine), len(mine) - len(pending),
              len(pending))
  bar = tqdm.tqdm(total=len(mine), initial=len(mine) - len(pending), unit="span", desc=where)
  for lo in range(0, len(pending), config.batch_size):
    batch = pending[lo:lo + config.batch_size]
    parts.write_part(folder, config.shard_index, config.num_shards,
                     sources_lib.to_part(batch, source.acquire(batch)))
    bar.update(len(batch))
  bar.close()


def _assembly_key(source: sources_lib.FeatureSource, inputs: Mapping[str, dict],
                  spans_info: Mapping) -> str:
  """What the assembled features depend on beyond the parts: the inputs and the spans."""
  return hub.digest({"run_key": source.setup.run_key, "spans": spans_info.get("key"),
                     "inputs": {k: v["sha256"] for k, v in inputs.items()}})


def up_to_date(source: sources_lib.FeatureSource, workdir: str, inputs: Mapping[str, dict],
               spans_info: Mapping) -> bool:
  """Whether the source's features exist, verify, and were built from these inputs."""
  features_dir = os.path.join(workdir, source.setup.features_dir)
  if not shards.verified(features_dir):
    return False
  manifest = shards.read_manifest(features_dir)
  return manifest.get("assembly_key") == _assembly_key(source, inputs, spans_info)


def assemble_stage(source: sources_lib.FeatureSource, workdir: str,
                   examples: Mapping[str, Mapping[str, list[Example]]],
                   spans_by_id: Mapping[str, Sequence[Span]], inputs: Mapping[str, dict],
                   spans_info: Mapping, config) -> str:
  """Joins every worker's parts into the TFDS datasets and the manifest.

  Raises:
    RuntimeError: keys without results (a worker has not finished), naming how many.
  """
  folder = source.parts_dir
  results = parts.read_parts(folder)
  keys_by_id = acquisition_keys(source, examples, spans_by_id)
  distinct = sorted({k for keys in keys_by_id.values() for k in keys})
  missing = [k for k in distinct if k not in results]
  if missing:
    by_shard = {}
    for k in missing:
      shard = parts.shard_of(k, config.num_shards)
      by_shard[shard] = by_shard.get(shard, 0) + 1
    raise RuntimeError(
        f"{source.name}: {len(missing)} of {len(distinct)} distinct spans have no results in "
        f"{folder} (missing per shard of {config.num_shards}: {dict(sorted(by_shard.items()))}"
        f", e.g. {missing[:3]}); run --config.stage=acquire for those shards first (with a "
        "workdir shared by every worker, or after copying their parts/ folders here)")
  any_row = next(iter(results.values()))
  dims = {"ast": int(any_row["ast_pooled"].shape[-1]),
          "num_audio_tokens": int(any_row["ast_tokens"].shape[0]),
          "clap": int(any_row["clap_text"].shape[-1])}
  features_dir = os.path.join(workdir, source.setup.features_dir)
  counts = {}

  def split_rows(task: str, split: str, split_examples: Sequence[Example]):
    n_spans = n_audio = 0
    for e in split_examples:
      span_dicts = []
      for s, k in zip(_ordered(spans_by_id.get(e.id, ())), keys_by_id[e.id], strict=True):
        r = results[k]
        span_dicts.append({"start": s.start, "end": s.end, "text": s.text,
                           **{f: r[f] for f in shards.SPAN_FIELDS[3:]}})
        n_spans += 1
        n_audio += bool(r["has_audio"])
      yield shards.encode_row(e.id, e.sentence, span_dicts, dims)
    counts[f"{task}/{split}"] = {"examples": len(split_examples), "spans": n_spans,
                                 "spans_with_audio": n_audio}

  with_audio = sum(bool(results[k]["has_audio"]) for k in distinct)
  # Built in a temporary folder that replaces the old one whole: readers never see a
  # half-written one.
  with files.atomic_dir(features_dir) as tmp_dir:
    for task, by_split in examples.items():
      shards.write_task(tmp_dir, task, {split: split_rows(task, split, split_examples)
                                        for split, split_examples in by_split.items()}, dims)
    lines = []
    for k in distinct:
      r = results[k]
      lines.append(json.dumps({"text": k, "has_audio": bool(r["has_audio"]),
                               "clap_score": float(r["clap_score"]), "source": str(r["source"]),
                               **source.record(r)}, ensure_ascii=False) + "\n")
    files.write_text(os.path.join(tmp_dir, shards.ACQUISITIONS), "".join(lines))
    manifest = {
        "format_version": shards.FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **source.setup.run_info(),
        "assembly_key": _assembly_key(source, inputs, spans_info),
        "dims": dims,
        "inputs": dict(inputs),
        # The data's commit (or content fingerprint); readers refuse another revision.
        "data": data_revision(os.path.dirname(os.path.dirname(
            next(iter(inputs.values()))["path"]))),
        "spans": dict(spans_info),
        "counts": {"distinct_spans": len(distinct), "distinct_with_audio": with_audio,
                   "by_split": counts},
        "tfds": {"name": shards.BUILDER_NAME, "version": shards.VERSION,
                 "configs": sorted(examples), "file_format": "array_record"},
        "config": config.to_dict(),
        **source.manifest(),
        # Every other file of the folder, relative to it: what `shards.verify` checks.
        "files": shards.file_table(tmp_dir),
    }
    files.write_json(os.path.join(tmp_dir, shards.MANIFEST), manifest)
    shards.verify(tmp_dir)  # checks what was written; records the hashes for later runs
  logger.info("%s: features of %d distinct spans (%d with audio) in %s", source.name,
              len(distinct), with_audio, features_dir)
  return features_dir


def run(config, workdir: str) -> dict[str, str]:
  """Runs the configured stages (see the module docstring).

  Returns:
    Source -> features folder, for the sources assembled (or found up to date) in this call.
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
  check_spans(config)
  names = split_list(config.source, tuple(sources_lib.SOURCES), "source")
  for name in names:  # Before any stage: a source may refuse the config (one line).
    sources_lib.SOURCES[name].check(config)
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
  engine = config.get("engine", "local")
  if engine not in ENGINES:
    raise ValueError(f"--config.engine={engine!r}; expected one of {', '.join(ENGINES)}")
  if engine == "ray" and (config.stage != "all" or config.num_shards != 1):
    raise ValueError("--config.engine=ray runs every stage with its own workers "
                     "(--config.ray.workers): leave --config.stage=all and num_shards=1")
  if engine == "ray" and config.ray.get("pipeline", "auto") not in RAY_PIPELINES:
    raise ValueError(f"--config.ray.pipeline={config.ray.pipeline!r}; expected one of "
                     f"{', '.join(RAY_PIPELINES)}")
  assembles = config.stage == "assemble" or (config.stage == "all" and config.num_shards == 1)
  own_stages = {st for c in sources_lib.SOURCES.values() for st in c.stages}
  out = {}
  for name in names:
    cls = sources_lib.SOURCES[name]
    if config.stage in own_stages and config.stage not in cls.stages:
      continue  # another source's own stage (`database` is retrieval's)
    source = cls(config, workdir, paths)
    if assembles and up_to_date(source, workdir, inputs, spans_info):
      out[name] = os.path.join(workdir, source.setup.features_dir)
      logger.info("%s: features in %s verified and up to date", name, out[name])
      continue
    if config.stage in ("all", "database", "acquire"):
      keys = sorted({k for v in acquisition_keys(source, examples, spans_by_id).values()
                     for k in v})
      if config.get("engine", "local") == "ray" and config.stage == "all":
        files.write_json(os.path.join(source.parts_dir, "run.json"), source.setup.run_info())
        from axk.features import ray_engine  # pylint: disable=g-import-not-at-top
        from axk.features import ray_stream  # pylint: disable=g-import-not-at-top
        streams = config.ray.get("pipeline", "auto") == "auto"
        if streams and name == "generation":
          ray_stream.acquire(source, config, workdir, paths, keys)
        else:
          if streams and name == "retrieval":
            ray_stream.embed_database(source, config, workdir, paths, keys)
          ray_engine.acquire(acquire_stage, source, config, workdir, paths, keys)
      else:
        acquire_stage(source, config, keys, config.stage)
    if assembles:
      out[name] = assemble_stage(source, workdir, examples, spans_by_id, inputs, spans_info,
                                 config)
    elif config.stage == "all":
      logger.info("%s: shard %d/%d done; run --config.stage=assemble once every shard is "
                  "done", name, config.shard_index, config.num_shards)
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
