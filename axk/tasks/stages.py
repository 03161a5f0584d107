"""The stages before a masked-word model, run on demand: span detector, then audio features.

`--config.spans.predictions=auto` and `--config.features.dir=auto` mean "produce them here":
the span detector trains into `<workdir>/stages/span` (its predictions/ are the detected
spans), and the feature pipeline writes `<workdir>/stages/features` from gold spans for the
train split and detected spans for the others. A stage whose outputs exist is reused. Each
stage is its own `python -m axk.main` process, so the training process never imports torch
(the feature pipeline's). Both stages receive the run's data overrides.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys

import jax

import axk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(axk.__file__)))


# Exit status of `axk.main` after a one-line setup error (bad config, data, workdir): a rerun
# of the same command fails the same way.
SETUP_EXIT = 3
_PR_SET_PDEATHSIG = 1
PARENT_ENV = "AXK_STAGE_PARENT"  # The pid of the run that started this stage child.


class StageError(RuntimeError):
  pass


def follow_parent() -> None:
  """In a stage child (`PARENT_ENV` set by `_run`): die with SIGKILL when the parent dies
  (Linux `PR_SET_PDEATHSIG`), so a killed run leaves no stage running on in its workdir.

  Set in the child rather than in a `preexec_fn`: running Python between fork and exec in a
  multithreaded parent (JAX's) can deadlock, and without it subprocess can use posix_spawn.
  """
  parent = os.environ.pop(PARENT_ENV, None)
  if not parent:
    return
  try:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
  except (OSError, AttributeError):  # Not Linux: the child outlives a killed parent.
    return
  prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
  if os.getppid() != int(parent):  # The parent died before the signal was armed.
    os._exit(1)


def _run(command: list[str], what: str, workdir: str, output: str) -> None:
  """Runs a stage; `output` is the file a finished stage leaves."""
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
  if not os.path.exists(output):  # Stopped cleanly before the end (SIGTERM, stop_at_step).
    raise StageError(f"Stage {what} stopped before it finished; rerun the same command to "
                     f"resume it (its workdir is {workdir}).")


def _config_path(spec: str) -> str:
  path, _, variant = spec.partition(":")
  full = path if os.path.isabs(path) else os.path.join(REPO, path)
  return full + (f":{variant}" if variant else "")


def _data_overrides(config) -> list[str]:
  out = [f"--config.data.dir={config.data.dir}"]
  if config.data.get("cache_dir"):
    out.append(f"--config.data.cache_dir={config.data.cache_dir}")
  return out


def prepare(config, workdir: str) -> None:
  """Replaces "auto" in `config.spans.predictions` / `config.features.dir` by stage outputs."""
  stages = os.path.join(os.path.abspath(workdir), "stages")
  # Features are built from detected spans (gold for train), so "auto" features need them.
  need_spans = "auto" in (config.spans.predictions, config.features.dir)
  if need_spans:
    span_dir = os.path.join(stages, "span")
    if not os.path.exists(os.path.join(span_dir, "results.json")):
      _run([sys.executable, "-m", "axk.main", f"--config={_config_path(config.stages.span_config)}",
            f"--workdir={span_dir}", *_data_overrides(config)], "span detector", span_dir,
           os.path.join(span_dir, "results.json"))
    if config.spans.predictions == "auto":
      config.spans.predictions = os.path.join(span_dir, "predictions")
    predictions = os.path.join(span_dir, "predictions")
  if config.features.dir == "auto":
    feat_dir = os.path.join(stages, "features")
    out = os.path.join(feat_dir, config.stages.get("features_output", "features"))
    if not os.path.exists(os.path.join(out, "manifest.json")):
      spans = ["--config.spans.source=predictions", f"--config.spans.predictions={predictions}"]
      _run([sys.executable, "-m", "axk.main",
            f"--config={_config_path(config.stages.features_config)}", f"--workdir={feat_dir}",
            *_data_overrides(config), *spans, *config.stages.get("features_args", ())],
           "features", feat_dir, os.path.join(out, "manifest.json"))
    config.features.dir = out
