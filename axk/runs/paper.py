"""The papers' tables as one command: the entry of `configs/paper.py`.

    run(config, workdir)
      validate(config, workdir)   every row's config built and checked (one line on error)
      per row not yet finished:   its stages (shared), then `masked_word.run` in <workdir>/<row>
      write(...)                  paper_table.md, results.json, figure2.png

A row is one masked-word run of `configs/ith.py` or `configs/audiobert.py` with its variant,
run in this process through `masked_word.run`, so that rows of one model size share JAX's
compiled programs (through the persistent compilation cache). The stages are shared: one span
detector for every row, one feature stage per distinct feature setting (the flags its feature
pipeline gets), and one clip cache for all of them. A row whose `results.json` exists is done
and is read, not rerun; `paper_row.json` beside it records what it was run as, and a row whose
definition changed since is refused rather than silently reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import math
import os
import time
from typing import Any, Mapping

import numpy as np

from axk import tasks as tasks_lib
from axk.data import glue as glue_data
from axk.runs import common
from axk.runs import masked_word
from axk.runs import sentence
from axk.runs import span as span_run
from axk.runs import stages
from axk.runs import zero_shot
from axk.utils import files

ROW_RECORD = "paper_row.json"
SPAN_ENTRY = "axk.runs.span:run"  # A row of this entry is a span detector (the detector table).
# A row of this entry scores a decoder LM without training (the papers' LLM rows).
ZERO_SHOT_ENTRY = "axk.runs.zero_shot:run"
SENTENCE_ENTRY = "axk.runs.sentence:run"  # A GLUE row (Table 5): one run per GLUE task.

# Published accuracy (%) comes from the tasks' specs (`axk.tasks.Task.published`), keyed by
# the rows of configs/paper.py; "llama" is a published-only row where the table does not run
# it (under `minilm`, which stays offline). Table 2 shows the paper's
# difference for a row recorded there (none yet); Table 3 and Figure 2 show no published
# number.
PUBLISHED_ONLY = {"table1": (("LLaMA3.1-8B, no training (published only)", "llama"),)}
TITLES = {
    "table1": "Table 1: accuracy on AuditoryBench",
    "table2": "Table 2: ablations of ITH (difference from the full model)",
    "table3": "Table 3: ITH with other text-to-audio generators",
    "figure2": "Figure 2: rejection threshold tau and tries n",
    "audiobert": "AudioBERT: main table",
    "detector": "AudioBERT Table II: the span detector by training tasks",
    "glue": "ITH Table 5: GLUE (dev)",
    "table6": "ITH Table 6: auditory spans in GLUE",
}
# ITH's Table 3 lists its full model (Stable Audio Open) at other numbers than its Table 1.
TABLE3_NOTE = (
    "ITH's Table 3 reports its Stable Audio Open model at 78.47 (pitch test) and 73.79 "
    "(pitch wiki), its Table 1 the same model at 78.96 and 76.74; the paper does not say "
    "why (separate runs, it seems). Here the Stable Audio Open row is Table 1's ITH run "
    "itself, so the two tables agree.")


def columns(config, rows=()) -> tuple[tuple[str, str], ...]:
  """The tables' columns, (task, split): the tasks of `config.tasks` (else those `rows`
  train, in order), each with its spec's `columns` splits."""
  names = tuple(config.get("tasks") or ()) or tuple(dict.fromkeys(
      t for r in rows if r.config is not None and not r.sentence for t in r.config.data.tasks))
  return tuple((t, s) for t in names for s in tasks_lib.get(t).columns)


def published(key: str, cols) -> list | None:
  """Row `key`'s published accuracy per column of `cols` (None where a task has none), or
  None when no column has one."""
  values = [tasks_lib.get(t).published.get(key, {}).get(s) for t, s in cols]
  return values if any(v is not None for v in values) else None


def published_source(cols) -> str:
  """Where the published numbers of `cols` come from (their tasks' `published_source`)."""
  return "; ".join(dict.fromkeys(
      tasks_lib.get(t).published_source for t, _ in cols
      if tasks_lib.get(t).published and tasks_lib.get(t).published_source)) or "none"


@dataclasses.dataclass
class Row:
  """One row: its definition (`config.rows[name]`), its masked-word config, its folder."""

  name: str
  spec: Any
  config: Any = None  # None: the row cannot be built (`missing` says why).
  workdir: str = ""
  missing: str = ""
  features_setting: tuple[str, tuple[str, ...]] | None = None  # (features config, flags)
  # A span detector row (configs/span.py): its seeds, and the seed whose run is the span
  # stage the masked-word rows share (None: none is).
  seeds: tuple[int, ...] = ()
  stage_seed: int | None = None

  @property
  def detector(self) -> bool:
    return self.config is not None and self.config.get("entry") == SPAN_ENTRY

  @property
  def zero_shot(self) -> bool:
    return self.config is not None and self.config.get("entry") == ZERO_SHOT_ENTRY

  @property
  def sentence(self) -> bool:
    return self.config is not None and self.config.get("entry") == SENTENCE_ENTRY

  @property
  def done(self) -> bool:
    return os.path.exists(os.path.join(self.workdir, "results.json"))


def _load_config_module(path: str):
  full = path if os.path.isabs(path) else os.path.join(stages.REPO, path)
  if not os.path.isfile(full):
    raise common.ConfigError(f"no config file {path}")
  spec = importlib.util.spec_from_file_location(
      "axk_paper_row_" + hashlib.sha1(full.encode()).hexdigest()[:8], full)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _get_config(spec: str):
  """`path[:variant]` -> its config; a variant the file does not know raises ConfigError with
  the file's own one-line reason."""
  path, _, variant = spec.partition(":")
  module = _load_config_module(path)
  try:
    return module.get_config(variant or None)
  except SystemExit as e:
    raise common.ConfigError(str(e.code).removeprefix("error: ")) from None
  except ValueError as e:
    raise common.ConfigError(str(e)) from None


def _set_field(config, path: str, value) -> None:
  """`config.<path> = value` for a field that exists; ConfigError naming it otherwise."""
  *parents, leaf = path.split(".")
  node = config
  for p in parents:
    if p not in node:
      raise common.ConfigError(f"{path}: no such field")
    node = node[p]
  if not hasattr(node, "keys") or leaf not in node:
    raise common.ConfigError(f"{path}: no such field")
  try:
    node[leaf] = value
  except TypeError as e:
    raise common.ConfigError(f"{path}={value!r}: {e}") from None


def _flag(path: str, value) -> str:
  return f"--config.{path}={value if isinstance(value, str) else repr(value)}"


def row_spec_of(config, name: str) -> str:
  spec = config.rows[name]
  variant = ",".join(v for v in (config.base, spec.variant) if v)
  return f"{spec.config}:{variant}" if variant else spec.config


def describe(config, name: str) -> str:
  """The row's config and variant, with its field and feature overrides."""
  spec = config.rows[name]
  parts = [row_spec_of(config, name)]
  parts += [f"{p}={v}" for p, v in spec.overrides]
  if spec.features:
    parts.append("features: " + ", ".join(f"{p}={v}" for p, v in spec.features))
  return ", ".join(parts)


def build_row(config, name: str, workdir: str, *, check: bool = True) -> Row:
  """Row `name`: its config (the paper config's data, seeds and overrides applied), checked
  as `masked_word.validate` checks a run (unless `check` is False: the preflight looks at
  its inputs without resolving its model), and its feature setting checked against its
  feature config; `missing` holds the one-line reason when it cannot be built."""
  spec = config.rows[name]
  row = Row(name, spec, workdir=os.path.join(workdir, name))
  where = f"row {name!r} ({spec.label}, {row_spec_of(config, name)})"
  try:
    c = _get_config(row_spec_of(config, name))
    if c.get("entry") == SENTENCE_ENTRY:
      return _sentence_row(config, row, c, check)
    for key in ("dir", "cache_dir", "revision"):
      c.data[key] = config.data[key]
    if config.get("plugins"):
      c.plugins = tuple(config.plugins)
    if c.get("entry") == SPAN_ENTRY:
      return _span_row(config, row, c)
    if c.get("entry") == ZERO_SHOT_ENTRY:
      for path, value in spec.overrides:
        _set_field(c, path, value)
      if spec.features:
        raise common.ConfigError(f"features {spec.features} given to a zero-shot row")
      if check:
        zero_shot.validate(c)
      row.config = c
      return row
    c.seeds = tuple(spec.seeds) or tuple(config.seeds)
    for path, value in tuple(config.overrides) + tuple(spec.overrides):
      _set_field(c, path, value)
    if c.features.dir == stages.AUTO:
      feature_config = c.stages.features_config
      checked = _get_config(feature_config)
      for path, value in tuple(spec.features) + ((config.clip_cache_field, ""),):
        _set_field(checked, path, value)
      flags = (tuple(c.stages.features_args) + tuple(config.features_args)
               + tuple(_flag(p, v) for p, v in spec.features))
      row.features_setting = (feature_config, flags)
    elif spec.features:
      raise common.ConfigError(f"features {spec.features} given, but the row uses no "
                               "generated features")
    if check:
      masked_word.validate(c, row.workdir)
  except common.ConfigError as e:
    row.missing = f"{where}: {e}"
    return row
  row.config = c
  return row


def sentence_configs(config, row: Row) -> dict[str, Any]:
  """A GLUE row's config per task of `glue.tasks`."""
  out = {}
  for task in config.glue.tasks:
    c = row.config.copy_and_resolve_references()
    c.data.task = task
    out[task] = c
  return out


def _sentence_row(config, row: Row, c, check: bool) -> Row:
  """A GLUE row (configs/glue.py): GLUE's folder (`glue.dir`), the seeds and overrides,
  checked for every task as its run checks."""
  try:
    if not config.glue.dir:
      raise common.ConfigError("--config.glue.dir: Table 5 needs a local GLUE folder "
                               "(axk/data/glue.py; nothing is downloaded).")
    c.data.dir = config.glue.dir
    c.seeds = tuple(row.spec.seeds) or tuple(config.seeds)
    for path, value in tuple(config.overrides) + tuple(row.spec.overrides):
      _set_field(c, path, value)
    if row.spec.features:
      raise common.ConfigError(f"features {row.spec.features} given to a GLUE row")
    row.config = c
    if check:
      for task_config in sentence_configs(config, row).values():
        sentence.validate(task_config)
  except (common.ConfigError, glue_data.GlueDataError) as e:
    row.config = None
    row.missing = f"row {row.name!r} ({row.spec.label}, {row_spec_of(config, row.name)}): {e}"
  return row


def _run_sentence(config, row: Row, workdir: str) -> bool:
  """Runs the row on each GLUE task (`<row>/<task>/`, a finished one is read), then writes
  the row's results.json: each task's results, and the learning rate each chose. ITH rows
  share the tables' span detector (`stages/span`, trained on their AuditoryBench data), its
  GLUE spans and their features (`stages/glue/`) and the clip cache. The rows share their
  tokenised splits (`encoded/`, one folder per tokenizer and length; a rerun opens them)."""
  merged, rates = {}, {}
  for task, c in sentence_configs(config, row).items():
    if not c.data.get("encoded_dir"):
      c.data.encoded_dir = os.path.join(os.path.abspath(workdir), "encoded")
    if c.model.get("name") == "ith" and c.features.dir == stages.AUTO:
      c.stages.span_data = config.data.dir
      c.stages.root = os.path.join(os.path.abspath(workdir), "stages", "glue")
      if not c.spans.detector:
        c.spans.detector = stages.glue_detector(c, os.path.join(workdir, "stages", "span"))
      cache = os.path.abspath(config.clip_cache or os.path.join(workdir, "stages", "clips"))
      c.stages.features_args = (*c.stages.features_args,
                                _flag(config.clip_cache_field, cache))
    done = sentence.run(c, os.path.join(row.workdir, task))
    if not done:
      return False
    merged[task] = done[task]
    if "learning_rate" in done:
      rates[task] = done["learning_rate"]
  files.write_json(os.path.join(row.workdir, "results.json"),
                   {**merged, **({"learning_rate": rates} if rates else {})})
  return True


def missing_error(row: Row) -> str:
  """The line that stops a run (`missing="error"`) on a row that cannot be built."""
  return f"{row.missing.rstrip('.')}; --config.missing=skip runs the other rows."


def _stage_span_spec(config) -> str:
  """The span detector config the masked-word rows' span stage runs under this base."""
  variant = config.base
  return _get_config("configs/ith.py" + (f":{variant}" if variant else "")).stages.span_config


def _span_row(config, row: Row, c) -> Row:
  """A detector row: its seeds, its fields set, checked as `configs/span.py`'s run checks;
  the run at the span stage's own settings (every task, default seed) is that stage."""
  default_seed = int(c.seed)
  try:
    for path, value in row.spec.overrides:
      _set_field(c, path, value)
    if row.spec.features:
      raise common.ConfigError(f"features {row.spec.features} given to a span detector row")
    common.check_config(c)
    span_run.train_tasks_of(c)
  except common.ConfigError as e:
    row.missing = f"row {row.name!r} ({row.spec.label}, {row_spec_of(config, row.name)}): {e}"
    return row
  row.seeds = tuple(row.spec.seeds) or tuple(config.seeds)
  shared = (not row.spec.overrides and row_spec_of(config, row.name) == _stage_span_spec(config))
  row.stage_seed = default_seed if shared and default_seed in row.seeds else None
  row.config = c
  return row


def seed_dir(workdir: str, row: Row, seed: int) -> str:
  """Where a detector row's run of `seed` lives: the shared span stage, else
  `<row>/seed_<s>`."""
  if seed == row.stage_seed:
    return os.path.join(workdir, "stages", "span")
  return os.path.join(row.workdir, f"seed_{seed}")


def _run_detector(workdir: str, row: Row) -> bool:
  """Trains the row's detector once per seed (a seed already done is read), then writes the
  row's results.json: the mean and standard deviation over the seeds (one seed: its own)."""
  runs = []
  for seed in row.seeds:
    sub = seed_dir(workdir, row, seed)
    done = files.read_json(os.path.join(sub, "results.json"))
    if done is None:
      c = row.config.copy_and_resolve_references()
      c.seed = seed
      if not span_run.run(c, sub):
        return False
      done = files.read_json(os.path.join(sub, "results.json"))
    runs.append({t: v for t, v in done.items() if t in row.config.data.tasks})
  # pylint: disable-next=protected-access
  merged = runs[0] if len(runs) == 1 else masked_word.merge_seeds(runs)
  files.write_json(os.path.join(row.workdir, "results.json"), {
      **merged, "seeds": {str(s): seed_dir(workdir, row, s) for s in row.seeds}})
  return True


def _record(config, row: Row) -> dict:
  """What a row was run as; a finished row is reused only when this is unchanged."""
  seeds = row.seeds if row.detector else row.config.seeds
  return {"row": row.spec.to_dict(), "config": row_spec_of(config, row.name),
          "seeds": list(seeds), "data": config.data.to_dict(),
          "overrides": [list(o) for o in config.overrides],
          "features": list(row.features_setting[1]) if row.features_setting else []}


def _jsonable(x):
  return json.loads(json.dumps(x, default=list))


def validate(config, workdir: str) -> list[Row]:
  """The rows to tabulate, each built and checked; one line for any that cannot run (with
  `missing="error"`) before any work starts."""
  if not workdir:
    raise common.ConfigError("--workdir is required.")
  if config.missing not in ("error", "skip"):
    raise common.ConfigError(f"--config.missing={config.missing}: must be error or skip.")
  splits = sorted({s for t in tasks_lib.names() for s in tasks_lib.get(t).columns})
  if config.figure_split not in splits:
    raise common.ConfigError(f"--config.figure_split={config.figure_split}: one of "
                             f"{', '.join(splits)}.")
  unknown = [t for t in config.tables if t not in config.layouts]
  if unknown or not config.tables:
    raise common.ConfigError(f"--config.tables={tuple(config.tables)}: {unknown or 'empty'}; "
                             f"known: {', '.join(config.layouts)}.")
  names = list(dict.fromkeys(r for t in config.tables for r in layout_rows(config.layouts[t])))
  for name in names:
    if name not in config.rows:
      raise common.ConfigError(f"--config.layouts: row {name!r} is not in --config.rows.")
  only = tuple(config.only)
  stray = [r for r in only if r not in names]
  if stray:
    raise common.ConfigError(f"--config.only={only}: {stray[0]!r} is no row of the tables "
                             f"{tuple(config.tables)} (their rows: {', '.join(names)}).")
  rows = []
  for name in names:
    if only and name not in only:
      rows.append(Row(name, config.rows[name], workdir=os.path.join(workdir, name),
                      missing=f"row {name!r}: not in --config.only"))
      continue
    row = build_row(config, name, workdir)
    if row.missing and config.missing == "error":
      raise common.ConfigError(missing_error(row))
    if row.config is not None and row.done:
      path = os.path.join(row.workdir, ROW_RECORD)
      old = files.read_json(path)
      if old is not None and old != _jsonable(_record(config, row)):
        raise common.ConfigError(
            f"row {name!r}: {row.workdir} holds a finished run of another definition (see "
            f"{ROW_RECORD}); remove that folder or use another workdir.")
    rows.append(row)
  return rows


def layout_rows(layout) -> tuple[str, ...]:
  """The row names of one table's layout (Figure 2's: its tau points, then its n points)."""
  if hasattr(layout, "values"):
    return tuple(r for part in layout.values() for r in part)
  return tuple(layout)


def setting_name(setting: tuple[str, tuple[str, ...]]) -> str:
  """The stage folder of a feature setting: `features_<hash>` of its config and flags."""
  key = json.dumps([setting[0], list(setting[1])])
  return "features_" + hashlib.sha256(key.encode()).hexdigest()[:10]


def row_stage_config(config, row: Row, workdir: str) -> tuple[Any, dict]:
  """The row's config as its stages get it (its feature setting and the shared clip cache),
  and the `stages.prepare` keywords (its feature stage's folder)."""
  c = row.config.copy_and_resolve_references()
  kwargs = {}
  if row.features_setting and c.features.dir == stages.AUTO:
    feature_config, flags = row.features_setting
    cache = os.path.abspath(config.clip_cache or os.path.join(workdir, "stages", "clips"))
    c.stages.features_config = feature_config
    c.stages.features_args = (*flags, _flag(config.clip_cache_field, cache))
    kwargs["features_stage"] = setting_name(row.features_setting)
  return c, kwargs


def _resolve(config, row: Row, workdir: str) -> Any:
  """Runs (or reuses) the row's stages; returns its config with their outputs filled in."""
  if stages.AUTO not in (row.config.spans.predictions, row.config.features.dir):
    return row.config.copy_and_resolve_references()
  c, kwargs = row_stage_config(config, row, workdir)
  if row.features_setting:
    feature_config, flags = row.features_setting
    settings = os.path.join(workdir, "stages", "feature_settings.json")
    known = files.read_json(settings) or {}
    if kwargs["features_stage"] not in known:
      known[kwargs["features_stage"]] = {"config": feature_config, "flags": list(flags)}
      files.write_json(settings, known)
  resolved = stages.prepare(c, workdir, **kwargs)
  c.spans.predictions = resolved["spans_predictions"]
  c.features.dir = resolved["features_dir"]
  return c


def run(config, workdir: str) -> dict:
  """The entry of `configs/paper.py` (see the module docstring)."""
  rows = validate(config, workdir)
  files.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  todo = [r for r in rows if r.config is not None and not r.done]
  for r in rows:
    if r.missing and config.missing == "skip" and "--config.only" not in r.missing:
      logging.warning("Skipped: %s", r.missing)
  logging.info("Rows: %d, %d finished before, %d to run: %s", len(rows),
               sum(r.done for r in rows if r.config is not None), len(todo),
               ", ".join(r.name for r in todo))
  spent = []
  for i, row in enumerate(todo):
    t0 = time.time()
    c = (row.config if row.detector or row.zero_shot or row.sentence
         else _resolve(config, row, workdir))
    files.write_json(os.path.join(row.workdir, ROW_RECORD), _record(config, row))
    logging.info("Row %d/%d %r (%s): %s", i + 1, len(todo), row.name, row.spec.label,
                 row_spec_of(config, row.name))
    if row.detector:
      finished = _run_detector(workdir, row)
    elif row.sentence:
      finished = _run_sentence(config, row, workdir)
    else:
      finished = (zero_shot.run if row.zero_shot else masked_word.run)(c, row.workdir)
    if not finished:
      logging.warning("Row %r stopped before the end; rerun the same command to continue.",
                      row.name)
      return {}
    spent.append(time.time() - t0)
    left = len(todo) - i - 1
    eta = sum(spent) / len(spent) * left
    logging.info("Row %d/%d %r done in %.0f s; %d to go, about %.1f min left.", i + 1,
                 len(todo), row.name, spent[-1], left, eta / 60)
  return write(config, workdir, rows)


# -- tables --------------------------------------------------------------------------------
def _metric(results, task, split, metric):
  """(mean, std or None) of `metric` in a row's results, None when absent."""
  m = (results or {}).get(task, {}).get(split, {})
  if metric not in m or m[metric] is None or (isinstance(m[metric], float)
                                              and math.isnan(m[metric])):
    return None
  return float(m[metric]), m.get(metric + "_std")


def cell(value, published=None) -> str:
  """`mean ± std` (std when the row ran several seeds), the published number in brackets."""
  if value is None:
    text = "—"
  else:
    mean, std = value
    text = f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
  return text + (f" ({published:.2f})" if published is not None else "")


def delta_cell(value, base) -> str:
  if value is None or base is None:
    return "—"
  return f"{value[0] - base[0]:+.2f}"


def _header(first: str, cols) -> list[str]:
  titles = [f"{t} {s}" for t, s in cols]
  return [f"| {first} | " + " | ".join(titles) + " |",
          "| --- |" + " --- |" * len(cols)]


def _no_audio_share(row_workdir: str, task: str, split: str):
  """% of the split's spans without audio in the features the row trained on (manifest)."""
  cfg = files.read_json(os.path.join(row_workdir, "config.json")) or {}
  features = cfg.get("features", {}).get("dir") or ""
  manifest = files.read_json(os.path.join(features, "manifest.json")) if features else None
  counts = ((manifest or {}).get("counts", {}).get("by_split", {}) or {}).get(
      f"{task}/{split}")
  if not counts or not counts.get("spans"):
    return None
  return 100.0 * (1 - counts["spans_with_audio"] / counts["spans"])


def weight_key(metric: str) -> str | None:
  """The count a metric is an average over: `examples` for `accuracy`, `examples_unseen`
  for `accuracy_unseen`; None for others."""
  return "examples" + metric[len("accuracy"):] if metric.startswith("accuracy") else None


def combine(parts) -> float | None:
  """Accuracy over the union of several tasks' rows from `(accuracy, rows)` pairs: each
  task weighed by its rows (the papers' Combined); None when a part or every row is missing."""
  parts = list(parts)
  if not parts or any(a is None or n is None for a, n in parts):
    return None
  total = sum(n for _, n in parts)
  return sum(a * n for a, n in parts) / total if total else None


def _seed_results(row: Row, seeds, task: str) -> list | None:
  """The per-seed results.json of `task` in a masked-word row's folder (`<task>/seed_<s>/`
  when tasks trained apart, else `seed_<s>/`), in seed order; None when any is missing."""
  out = []
  for seed in seeds:
    for sub in (os.path.join(task, f"seed_{seed}"), f"seed_{seed}"):
      found = files.read_json(os.path.join(row.workdir, sub, "results.json"))
      if found and task in found:
        out.append(found[task])
        break
    else:
      return None
  return out


def combined_value(row: Row, results, task_names, split: str, metric: str):
  """(mean, std or None) of the Combined `metric` of `split` over `task_names`, or None.
  The mean weighs each task's mean by its rows; the std is over the seeds' own Combined
  values, when every seed's results are in the row's folder."""
  count = weight_key(metric)
  if not results or count is None:
    return None
  splits = [(results.get(t) or {}).get(split) or {} for t in task_names]
  mean = combine((m.get(metric), m.get(count)) for m in splits)
  if mean is None:
    return None
  seeds = tuple(row.config.seeds) if row.config is not None and "seeds" in row.config else ()
  per_task = [_seed_results(row, seeds, t) for t in task_names] if len(seeds) > 1 else [None]
  if any(p is None for p in per_task):
    return mean, None
  values = [combine(((p[i].get(split) or {}).get(metric), (p[i].get(split) or {}).get(count))
                    for p in per_task) for i in range(len(seeds))]
  if any(v is None for v in values):
    return mean, None
  return mean, float(np.std(values))


def published_combined(key: str, task_names, split: str) -> float | None:
  """The published Combined accuracy of row `key`: its published per-task numbers weighed
  by the published benchmark's rows of `split`."""
  return combine((tasks_lib.get(t).published.get(key, {}).get(split),
                  tasks_lib.get(t).published_rows.get(split)) for t in task_names)


def _combined_splits(cols) -> tuple[str, ...]:
  """The splits every task of `cols` has, in order (a Combined column each)."""
  names = tuple(dict.fromkeys(t for t, _ in cols))
  if len(names) < 2:
    return ()
  return tuple(s for s in dict.fromkeys(s for _, s in cols)
               if all((t, s) in cols for t in names))


def paper_delta(name: str, base: str, cols) -> list | None:
  """The paper's difference of row `name` from row `base` per column (from the tasks'
  published tables), or None when the paper's numbers for `name` are not recorded."""
  row, full = published(name, cols), published(base, cols)
  if row is None or full is None:
    return None
  return [None if a is None or b is None else a - b for a, b in zip(row, full)]


def tables(config, rows: list[Row], metric: str) -> tuple[list[str], dict]:
  """The markdown of every table for `metric`, and the same cells as data."""
  by_name = {r.name: r for r in rows}
  results = {r.name: files.read_json(os.path.join(r.workdir, "results.json")) for r in rows}
  lines, data = [], {}
  with_published = metric == "accuracy"
  cols = columns(config, rows)
  task_names = tuple(dict.fromkeys(t for t, _ in cols))

  def label(name):
    r = by_name[name]
    return r.spec.label + ("" if results[name] else " (not run)")

  for table in config.tables:
    if table in ("detector", "glue") and metric != config.metric:
      continue  # Their metrics are their own (the detector's, GLUE's), not this one.
    layout = list(config.layouts[table])
    lines += ["", f"## {TITLES.get(table, table)}", ""]
    data[table] = {}
    if table == "figure2":
      lines += _figure2_lines(config, by_name, results, metric, data[table], task_names)
      continue
    if table == "detector":
      lines += _detector_lines(config, by_name, results, data[table], cols)
      continue
    if table == "glue":
      lines += _glue_lines(config, by_name, results, data[table], with_published)
      continue
    combined = (_combined_splits(cols) if table == "audiobert" and config.get("combined")
                else ())
    lines += _header("model" if table != "table3" else "generator",
                     list(cols) + [("combined", s) for s in combined])
    base = None
    for i, name in enumerate(layout):
      values = [_metric(results[name], t, s, metric) for t, s in cols]
      data[table][name] = {f"{t}/{s}": v and v[0] for (t, s), v in zip(cols, values)}
      if table == "table2" and i == 0:
        base = values
      if table == "table2" and i > 0:
        paper = paper_delta(name, layout[0], cols) if with_published else None
        cells = [delta_cell(v, b) + ("" if paper is None or paper[j] is None
                                     else f" ({paper[j]:+.2f})")
                 for j, (v, b) in enumerate(zip(values, base))]
        if with_published:  # The paper's differences (None: not recorded for the row).
          data.setdefault(table + "_paper_delta", {})[name] = (
              None if paper is None else {f"{t}/{s}": d for (t, s), d in zip(cols, paper)})
      else:
        pub = (published(name, cols) if with_published and table in ("table1", "audiobert")
               else None)
        cells = [cell(v, pub[j] if pub else None) for j, v in enumerate(values)]
      for split in combined:
        v = combined_value(by_name[name], results[name], task_names, split, metric)
        p = published_combined(name, task_names, split) if with_published else None
        data[table][name][f"combined/{split}"] = v and v[0]
        cells.append(cell(v, p))
      lines.append(f"| {label(name)} | " + " | ".join(cells) + " |")
    for title, key in PUBLISHED_ONLY.get(table, ()) if with_published else ():
      if key in layout:  # The row runs here: its published number is in its cells.
        continue
      pub = published(key, cols)
      if pub:
        lines.append(f"| {title} | " + " | ".join("—" if v is None else f"({v:.2f})"
                                                  for v in pub) + " |")
    if table == "table2":
      known = [n for n in layout[1:] if paper_delta(n, layout[0], cols) is not None]
      lines += ["", f"Each ablation: {metric} minus the full model's (first row), in points"
                + ("; the paper's difference in parentheses where the tasks' published tables "
                   "hold the paper's number for that row (axk/tasks/, keyed by the row's name: "
                   + (", ".join(known) if known else "none recorded") + ")."
                   if with_published else ".")]
    if table == "table3":
      lines += ["", TABLE3_NOTE]
    if combined:
      lines += ["", "Combined: accuracy over the rows of both tasks of a split, each task "
                "weighed by its rows (the paper's Combined); the published one from the "
                "published per-task numbers and the benchmark's rows per split."]
  return lines, data


def _detector_lines(config, by_name, results, data, cols) -> list[str]:
  """AudioBERT's Table II: one table per detector metric, the detector's rows (trained on
  which tasks) by every task's evaluation splits, mean ± std over the seeds."""
  lines = [f"The span detector (configs/span.py) trained on the tasks of each row and "
           f"evaluated on every task; mean ± std over seeds {tuple(config.seeds)} where a row "
           "ran several. The papers report a token F1 of about 92-95 on dev and test for the "
           "detector trained on both tasks (AudioBERT's per-position F1)."]
  for metric in config.detector_metrics:
    lines += ["", f"{metric} (%)", ""] + _header("trained on", cols)
    data[metric] = {}
    for name in config.layouts.detector:
      values = [_metric(results[name], t, s, metric) for t, s in cols]
      data[metric][name] = {f"{t}/{s}": v and v[0] for (t, s), v in zip(cols, values)}
      lines.append(f"| {by_name[name].spec.label}{'' if results[name] else ' (not run)'} | "
                   + " | ".join(cell(v) for v in values) + " |")
  return lines


def glue_columns(config) -> tuple[tuple[str, str, str], ...]:
  """Table 5's columns: (task, its first dev split, its selection metric) per GLUE task."""
  return tuple((t, tasks_lib.get(t).eval_splits[0], tasks_lib.get(t).selection_metric)
               for t in config.glue.tasks)


def _glue_lines(config, by_name, results, data, with_published) -> list[str]:
  """ITH's Table 5: each GLUE row's dev score per task (its selection metric), the mean over
  the tasks as the paper's average, the paper's numbers in parentheses."""
  cols = glue_columns(config)
  lines = ["| model | " + " | ".join(f"{tasks_lib.get(t).title} ({s}, {m})"
                                     for t, s, m in cols) + " | average |",
           "| --- |" + " --- |" * (len(cols) + 1)]
  for name in config.layouts.glue:
    values = [_metric(results[name], t, s, m) for t, s, m in cols]
    pub = [tasks_lib.get(t).published.get(name, {}).get(s) if with_published else None
           for t, s, _ in cols]
    mean = (None if any(v is None for v in values)
            else (sum(v[0] for v in values) / len(values), None))
    pub_mean = None if any(p is None for p in pub) else sum(pub) / len(pub)
    data[name] = {f"{t}/{s}/{m}": v and v[0] for (t, s, m), v in zip(cols, values)}
    data[name]["average"] = mean and mean[0]
    label = by_name[name].spec.label + ("" if results[name] else " (not run)")
    lines.append(f"| {label} | " + " | ".join(cell(v, p) for v, p in zip(values, pub))
                 + f" | {cell(mean, pub_mean)} |")
  lines += ["", "Dev scores in percent (the paper does not say which metric; axk shows each "
            "task's selection metric: accuracy, STS-B's Pearson), mean ± std over the seeds at "
            "the learning rate of the grid with the best mean dev score; average: the mean "
            "over the tasks. Published numbers in parentheses: ITH's Table 5 (BERT-base). "
            "The text-only rows are fine-tuned with the same grid, epochs and seeds as ITH."]
  # Table 6, from the span files ITH's rows found (their shared stage).
  spans = os.path.join(os.path.dirname(by_name[config.layouts.glue[0]].workdir), "stages",
                       "glue", "glue_spans")
  table6 = {}
  for task, _, _ in cols:
    for split in tasks_lib.get(task).splits:
      path = glue_data.span_file(spans, task, split)
      if os.path.isfile(path):
        rows = [row for _, row in glue_data.span_rows(path)]
        table6.setdefault(task, {})[split] = glue_data.span_statistics(rows)
  if table6:
    data["table6"] = table6
    lines += ["", f"## {TITLES['table6']}", "", "The span detector's spans over both texts of "
              "every row (`stages/glue/glue_spans/`): words inside spans and their share "
              "(ITH's paper counts the spans an LLM labelled).", ""]
    lines += glue_data.table6_lines(table6)
  return lines


def _figure2_lines(config, by_name, results, metric, data, task_names) -> list[str]:
  split = config.figure_split
  taus, tries = config.layouts.figure2.tau, config.layouts.figure2.tries
  n_task = config.figure_tries_task
  lines = [f"{metric} on {split} (%), and % of the {split} spans left without audio.", "",
           "| tau | " + " | ".join(f"{t} | {t}: no audio" for t in task_names) + " |",
           "| --- |" + " --- | --- |" * len(task_names)]
  data["tau"], data["tries"] = [], []
  for name in taus:
    row = by_name[name]
    point = {"row": name, "tau": row.spec.tau}
    cells = []
    for task in task_names:
      v = _metric(results[name], task, split, metric)
      share = _no_audio_share(row.workdir, task, split) if results[name] else None
      point[task], point[f"{task}_no_audio"] = v and v[0], share
      cells += [cell(v), "—" if share is None else f"{share:.1f}"]
    data["tau"].append(point)
    lines.append(f"| {row.spec.tau:g} | " + " | ".join(cells) + " |")
  tau = f"{by_name[tries[0]].spec.tau:g}" if tries else ""
  lines += ["", f"| n ({n_task}, tau {tau}) | {n_task} | {n_task}: no audio |",
            "| --- | --- | --- |"]
  for name in tries:
    row = by_name[name]
    n = row.spec.tries or int(config.default_tries)
    v = _metric(results[name], n_task, split, metric)
    share = _no_audio_share(row.workdir, n_task, split) if results[name] else None
    data["tries"].append({"row": name, "n": n, n_task: v and v[0], f"{n_task}_no_audio": share})
    lines.append(f"| {n} | {cell(v)} | {'—' if share is None else f'{share:.1f}'} |")
  return lines


def plot_figure2(data: Mapping, path: str, metric: str, split: str, task_names,
                 n_task: str) -> None:
  """Figure 2 as a PNG: accuracy (solid) and share of spans without audio (dashed) against
  tau per task of `task_names`, and against n for `n_task`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  panels = ((axes[0], data["tau"], "tau", tuple(task_names), "rejection threshold tau"),
            (axes[1], data["tries"], "n", (n_task,), f"tries n ({n_task})"))
  colors = {t: f"C{i}" for i, t in enumerate(dict.fromkeys((*task_names, n_task)))}
  for ax, points, x, names, xlabel in panels:
    share_ax = ax.twinx()
    for task in names:
      color = colors[task]
      xs = [p[x] for p in points]
      ax.plot(xs, [math.nan if p[task] is None else p[task] for p in points], "o-",
              color=color, label=f"{task} {metric}")
      share_ax.plot(xs, [math.nan if p[f"{task}_no_audio"] is None else p[f"{task}_no_audio"]
                         for p in points], "s--", color=color, alpha=0.5,
                    label=f"{task}: spans without audio")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} on {split} (%)")
    share_ax.set_ylabel("spans without audio (%)")
    share_ax.set_ylim(-5, 105)
    handles = ax.get_legend_handles_labels()
    more = share_ax.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="best")
  fig.tight_layout()
  with files.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=120, format="png")
  plt.close(fig)


def write(config, workdir: str, rows: list[Row]) -> dict:
  """paper_table.md, results.json (and figure2.png) from the rows' results.json files."""
  seeds = tuple(config.seeds)
  cols = columns(config, rows)
  lines = [f"# {config.name}", "",
           f"AuditoryBench's tables: accuracy (%), `{config.metric}`; mean ± std over seeds {seeds} "
           "where a row ran several. Published numbers in parentheses: "
           f"{published_source(cols)}, for BERT-base (Table 2: the paper's differences, where "
           "recorded; Table 3 and Figure 2: none). "
           "Text-only fine-tuned: the row the papers leave out, trained on the same train "
           "split."]
  if config.base:
    lines += ["", f"Base `{config.base}`: every row on "
              + ("tiny random models and the sample data; the numbers test the harness, not "
                 "the methods." if config.base == "smoke" else f"the `{config.base}` weights.")]
  body, data = tables(config, rows, config.metric)
  lines += body
  out = {"tables": {config.metric: data}}
  for metric in config.extra_metrics:
    results = [files.read_json(os.path.join(r.workdir, "results.json")) for r in rows]
    if any(_metric(res, t, s, metric) for res in results for t, s in cols):
      body, out["tables"][metric] = tables(config, rows, metric)
      lines += ["", f"# {metric}"] + body
  notes = [r.missing for r in rows
           if r.missing and not os.path.exists(os.path.join(r.workdir, "results.json"))]
  if notes:
    lines += ["", "Rows not run:", ""] + [f"- {n}" for n in notes]
  lines += ["", "Every row is a run in its own folder: " + ", ".join(
      f"`{r.name}/` ({describe(config, r.name)}"
      + (f"; its seed {r.stage_seed} is the shared span stage, `stages/span/`"
         if r.stage_seed is not None else "") + ")" for r in rows) + "."]
  out["rows"] = {r.name: {"label": r.spec.label, "config": describe(config, r.name),
                          "missing": r.missing or None,
                          "results": files.read_json(os.path.join(r.workdir, "results.json"))}
                 for r in rows}
  files.write_text(os.path.join(workdir, "paper_table.md"), "\n".join(lines) + "\n")
  files.write_json(os.path.join(workdir, "results.json"), out)
  if "figure2" in config.tables:
    plot_figure2(data["figure2"], os.path.join(workdir, "figure2.png"), config.metric,
                 config.figure_split, tuple(dict.fromkeys(t for t, _ in cols)),
                 config.figure_tries_task)
  logging.info("Tables written to %s", os.path.join(workdir, "paper_table.md"))
  return out
