"""The stages before a masked-word model, run on demand: span detector, then audio features
(and ITH on GLUE's: detector, its GLUE spans, their features: `prepare_glue`).

`--config.spans.predictions=auto` and `--config.features.dir=auto` mean "produce them here":
the span detector trains into `<workdir>/stages/span` (its predictions/ are the detected
spans of every split, train included), and the feature pipeline writes
`<workdir>/stages/features` from detected spans (the run's `spans.gold_splits` names the
splits that keep gold spans; when it names every split, no detector runs and the features
are built at gold spans). A stage whose outputs exist is reused.
Each stage is its own `python -m axk.main` process, so the training process never imports
torch (the feature pipeline's). Both stages receive the run's `data` fields.

`prepare` returns what the stages produced; the config itself is never changed.
"""

from __future__ import annotations

import ctypes
import glob
import json
import logging
import os
import signal
import subprocess
import sys

import jax

import axk
from axk import tasks
from axk.data import glue
from axk.data import types
from axk.features import shards
from axk.runs import common
from axk.runs.common import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(axk.__file__)))
AUTO = "auto"


# Exit status of `axk.main` after a one-line setup error (bad config, data, workdir): a rerun
# of the same command fails the same way.
SETUP_EXIT = 3
_PR_SET_PDEATHSIG = 1
PARENT_ENV = "AXK_STAGE_PARENT"  # The pid of the run that started this stage child.


class StageError(RuntimeError):
  pass


_STAGE = False  # This process is a stage child (`follow_parent` found `PARENT_ENV`).


def is_stage() -> bool:
  """Whether this process is a stage that another run started (its output is that run's
  log, not the command's result)."""
  return _STAGE


def follow_parent() -> None:
  """In a stage child (`PARENT_ENV` set by `_run`): die with SIGKILL when the parent dies
  (Linux `PR_SET_PDEATHSIG`), so a killed run leaves no stage running on in its workdir.

  Set in the child rather than in a `preexec_fn`: running Python between fork and exec in a
  multithreaded parent (JAX's) can deadlock, and without it subprocess can use posix_spawn.
  """
  global _STAGE
  parent = os.environ.pop(PARENT_ENV, None)
  if not parent:
    return
  _STAGE = True
  try:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
  except (OSError, AttributeError):  # Not Linux: the child outlives a killed parent.
    return
  prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
  if os.getppid() != int(parent):  # The parent died before the signal was armed.
    os._exit(1)


def _run(command: list[str], what: str, workdir: str) -> None:
  """Runs a stage; its failure says whether a rerun resumes it."""
  logging.info("Stage %s: %s", what, " ".join(command))
  if jax.process_count() > 1:
    raise StageError(f"Stage {what} must be run before a multi-process job: run "
                     f"`{' '.join(command)}` once, then pass its output explicitly.")
  # From this thread: the death signal (`follow_parent`) follows the thread that started
  # the child.
  proc = subprocess.run(command, cwd=REPO, env={**os.environ, PARENT_ENV: str(os.getpid())})
  code = proc.returncode
  if code == SETUP_EXIT:
    raise StageError(f"Stage {what} refused its input (its error is the line above); fix "
                     f"that, then rerun. Its workdir is {workdir}.")
  if code < 0:
    raise StageError(f"Stage {what} was stopped by {signal.Signals(-code).name}; rerun the "
                     f"same command to resume it (its workdir is {workdir}).")
  if code:
    raise StageError(f"Stage {what} failed (exit {code}, its error is above); its workdir "
                     f"{workdir} keeps its checkpoints and caches for a rerun once that is "
                     "fixed.")


def _finished(output: str, what: str, workdir: str) -> None:
  """After a stage that exited 0: it may have stopped cleanly before the end (SIGTERM,
  `train.stop_at_step`), without `output`."""
  if not os.path.exists(output):
    raise StageError(f"Stage {what} stopped before it finished; rerun the same command to "
                     f"resume it (its workdir is {workdir}).")


def config_path(spec: str) -> str:
  path, _, variant = spec.partition(":")
  full = path if os.path.isabs(path) else os.path.join(REPO, path)
  return full + (f":{variant}" if variant else "")


def _data_overrides(config) -> list[str]:
  """Where the run's data comes from, as flags (every config family has these `data`
  fields). AuditoryBench's tasks are not passed: the detector trains on every task, as in the
  paper, and the features cover every task, so that other runs can reuse both stages. A run
  with a task of its own (a plugin's) passes its tasks and plugins: the stages cover those."""
  flags = [f"--config.data.{key}={config.data[key]}" for key in ("dir", "cache_dir", "revision")]
  if any(t not in tasks.auditorybench.NAMES for t in config.data.tasks):
    flags += [f"--config.data.tasks={tuple(config.data.tasks)!r}",
              f"--config.plugins={tuple(config.get('plugins', ()))!r}"]
  return flags


def check(config) -> None:
  """One line for stage settings that cannot work (before any stage runs)."""
  for field in ("span_config", "features_config"):
    spec = config.stages[field]
    path = config_path(spec).partition(":")[0]
    if not os.path.isfile(path):
      raise ConfigError(f"--config.stages.{field}={spec}: no such config file.")
  if config.features.dir not in ("", AUTO) and not os.path.isdir(config.features.dir):
    raise ConfigError(f"--config.features.dir={config.features.dir}: no such directory.")
  predictions = config.spans.predictions
  if predictions not in ("", AUTO) and "{" not in predictions and not os.path.exists(
      predictions):
    raise ConfigError(f"--config.spans.predictions={predictions}: no such folder.")


def feature_splits(manifest) -> tuple[set[str], set[str]]:
  """(the splits features cover, those of them built at gold spans), from their `manifest`:
  `spans.source="gold"` is gold everywhere, a detector's predictions are gold on their
  `spans.gold_splits`. A manifest without `inputs` covers every split."""
  spans = manifest.get("spans", {})
  present = {k.split("/")[1] for k in manifest.get("inputs", {})} or set(types.SPLITS)
  if spans.get("source") == "gold":
    return present, present
  return present, present & set(spans.get("gold_splits", []))


def gold_splits_differ(manifest, gold: tuple[str, ...]) -> str:
  """Why features (`manifest`) built from a detector's predictions or at gold spans do not
  have gold spans on exactly the splits `gold` (among the splits they cover); "" when they
  do, or when their spans came from a detector run in the pipeline."""
  if manifest.get("spans", {}).get("source") not in ("gold", "predictions"):
    return ""
  present, have = feature_splits(manifest)
  have, want = sorted(have), sorted(set(gold) & present)
  if have == want:
    return ""
  return (f"the features have gold spans for {','.join(have) or 'no split'}, "
          f"--config.spans.gold_splits asks for {','.join(want) or 'no split'}")


def _same_gold_splits(features: str, gold: tuple[str, ...]) -> bool:
  """Whether the stage's features kept gold spans where the run asks; if not, the stage runs
  again (its caches keep what is still valid)."""
  with open(os.path.join(features, "manifest.json"), encoding="utf-8") as f:
    why = gold_splits_differ(json.load(f), gold)
  if why:
    logging.warning("%s: %s; the features are built again", features, why)
  return not why


def span_dir_of(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "stages", "span")


def features_dir_of(config, workdir: str, features_stage: str = "features") -> tuple[str, str]:
  """(the feature stage's workdir, its output folder, the one with manifest.json)."""
  feat_dir = os.path.join(os.path.abspath(workdir), "stages", features_stage)
  return feat_dir, os.path.join(feat_dir, config.stages.get("features_output", "features"))


def span_done(config, span_dir: str) -> bool:
  """Whether the span detector's stage is finished (its results and train predictions)."""
  # A detector run from before train predictions existed reruns: it resumes at its last
  # step and only predicts.
  no_train = "train" not in common.gold_splits(config) and not glob.glob(
      os.path.join(span_dir, "predictions", "*_train.jsonl"))
  return os.path.exists(os.path.join(span_dir, "results.json")) and not no_train


def features_done(config, features: str) -> bool:
  """Whether the feature stage's output is there, verified and of the spans asked for."""
  # Done only when every file matches its manifest and its spans are the ones asked for.
  return shards.verified(features) and _same_gold_splits(features, common.gold_splits(config))


def span_args(config, span_dir: str) -> list[str]:
  """The flags of the span detector's `axk.main` process."""
  return [f"--config={config_path(config.stages.span_config)}", f"--workdir={span_dir}",
          *_data_overrides(config)]


def all_gold(config) -> bool:
  """Gold spans on every split (`configs/ith.py:published_spans`): no detector is needed."""
  return set(config.data.splits) <= set(common.gold_splits(config))


def needs_detector(config) -> bool:
  """Whether the run's `"auto"` inputs need the span detector's stage."""
  return AUTO in (config.spans.predictions, config.features.dir) and not all_gold(config)


def features_args(config, feat_dir: str, predictions: str) -> list[str]:
  """The flags of the feature pipeline's `axk.main` process, spans from `predictions` (gold
  spans everywhere when the run asks for them on every split)."""
  gold = common.gold_splits(config)
  spans = (["--config.spans.source=gold"] if all_gold(config) else
           ["--config.spans.source=predictions", f"--config.spans.predictions={predictions}",
            f"--config.spans.gold_splits={','.join(gold)}"])
  return [f"--config={config_path(config.stages.features_config)}", f"--workdir={feat_dir}",
          *_data_overrides(config), *spans, *config.stages.get("features_args", ())]


def prepare(config, workdir: str, *, features_stage: str = "features") -> dict[str, str]:
  """Runs the stages that `"auto"` asks for; returns `{"spans_predictions", "features_dir"}`
  (the given values where no stage ran). The feature pipeline works in
  `<workdir>/stages/<features_stage>` (runs with several feature settings keep one span
  detector and name a folder per setting)."""
  out = {"spans_predictions": config.spans.predictions, "features_dir": config.features.dir}
  if all_gold(config) and config.spans.predictions == AUTO:
    out["spans_predictions"] = ""
  # Features are built from detected spans, so "auto" features need them.
  span_dir = span_dir_of(workdir)
  predictions = os.path.join(span_dir, "predictions")
  if needs_detector(config):
    if not span_done(config, span_dir):
      # A finished detector missing its train predictions reruns to predict, not to train.
      finished = os.path.exists(os.path.join(span_dir, "results.json"))
      _run([sys.executable, "-m", "axk.main", *span_args(config, span_dir),
            *(["--config.train.reevaluate=True"] if finished else [])], "span detector",
           span_dir)
      _finished(os.path.join(span_dir, "results.json"), "span detector", span_dir)
    if config.spans.predictions == AUTO:
      out["spans_predictions"] = predictions
  if config.features.dir == AUTO:
    feat_dir, features = features_dir_of(config, workdir, features_stage)
    if not features_done(config, features):
      _run([sys.executable, "-m", "axk.main", *features_args(config, feat_dir, predictions)],
           "features", feat_dir)
      _finished(os.path.join(features, "manifest.json"), "features", feat_dir)
    out["features_dir"] = features
  return out


def glue_detector(config, span_dir: str) -> str:
  """The export of the span detector ITH on GLUE finds its spans with: trained (once) in
  `span_dir` from `stages.span_config` on AuditoryBench at `stages.span_data`."""
  detector = os.path.join(span_dir, "export")
  if not os.path.exists(os.path.join(detector, "config.json")):
    _run([sys.executable, "-m", "axk.main", f"--config={config_path(config.stages.span_config)}",
          f"--workdir={span_dir}", f"--config.data.dir={config.stages.span_data}"],
         "span detector", span_dir)
    _finished(os.path.join(detector, "config.json"), "span detector", span_dir)
  return detector


def glue_spans_done(spans_dir: str, task: str) -> bool:
  """Whether `axk.glue_spans` wrote the span file of every split of `task` in `spans_dir`."""
  return all(os.path.exists(glue.span_file(spans_dir, task, split))
             for split in glue.spec_of(task).splits)


def prepare_glue(config, workdir: str) -> str:
  """ITH on GLUE with `features.dir="auto"`: runs (or reuses) its three stages, each its own
  process, and returns the features folder.

  1. the span detector: `spans.detector` (an export), or trained here from
     `stages.span_config` on AuditoryBench (`stages.span_data`) into `<stages>/span`;
  2. its spans over both texts of every row of the task's splits (`python -m axk.glue_spans`)
     into `<stages>/glue_spans`;
  3. their audio features (`stages.features_config` with the `glue` modifier) into
     `<stages>/features_<task>`.
  `<stages>` is `stages.root`, or `<workdir>/stages` (runs that share it share the stages).
  """
  root = os.path.abspath(config.stages.get("root") or os.path.join(workdir, "stages"))
  detector = config.spans.get("detector", "") or glue_detector(config, os.path.join(root, "span"))
  task = config.data.task
  spans_dir = os.path.join(root, "glue_spans")
  if not glue_spans_done(spans_dir, task):
    _run([sys.executable, "-m", "axk.glue_spans", f"--detector={detector}",
          f"--data={config.data.dir}", f"--out={spans_dir}", f"--tasks={task}",
          f"--layout={config.data.layout}"], "GLUE spans", spans_dir)
  feat_dir = os.path.join(root, f"features_{task}")
  features = os.path.join(feat_dir, "features")
  if not shards.verified(features):
    spec = config.stages.features_config
    spec += ("," if ":" in spec else ":") + "glue"
    _run([sys.executable, "-m", "axk.main", f"--config={config_path(spec)}",
          f"--workdir={feat_dir}", f"--config.data.glue_spans={spans_dir}",
          f"--config.data.tasks={(task,)!r}", *config.stages.get("features_args", ())],
         "features", feat_dir)
    _finished(os.path.join(features, "manifest.json"), "features", feat_dir)
  return features

