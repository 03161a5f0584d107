"""The stages before a masked-word model, run on demand: span detector, then audio features.

`--config.spans.predictions=auto` and `--config.features.dir=auto` mean "produce them here":
the span detector trains into `<workdir>/stages/span` (its predictions/ are the detected
spans), and the feature pipeline writes `<workdir>/stages/features` from detected spans (see
the features config for which splits keep gold spans). A stage whose outputs exist is reused.
Each stage is its own `python -m axk.main` process, so the training process never imports
torch (the feature pipeline's). Both stages receive the run's `data` fields.

`prepare` returns what the stages produced; the config itself is never changed.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import jax

import axk
from axk.runs.common import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(axk.__file__)))
AUTO = "auto"


class StageError(RuntimeError):
  pass


def _run(command: list[str], what: str, workdir: str) -> None:
  logging.info("Stage %s: %s", what, " ".join(command))
  if jax.process_count() > 1:
    raise StageError(f"Stage {what} must be run before a multi-process job: run "
                     f"`{' '.join(command)}` once, then pass its output explicitly.")
  proc = subprocess.run(command, cwd=REPO)
  if proc.returncode:
    raise StageError(f"Stage {what} failed (exit {proc.returncode}); its workdir is {workdir}. "
                     "Rerun the same command to resume it.")


def _config_path(spec: str) -> str:
  path, _, variant = spec.partition(":")
  full = path if os.path.isabs(path) else os.path.join(REPO, path)
  return full + (f":{variant}" if variant else "")


def _data_overrides(config) -> list[str]:
  """Where the run's data comes from, as flags (every config family has these `data`
  fields). The benchmark tasks are not passed: the detector trains on every task, as in the
  paper, and the features cover every task, so that other runs can reuse both stages."""
  return [f"--config.data.{key}={config.data[key]}" for key in ("dir", "cache_dir")]


def check(config) -> None:
  """One line for stage settings that cannot work (before any stage runs)."""
  for field in ("span_config", "features_config"):
    spec = config.stages[field]
    path = _config_path(spec).partition(":")[0]
    if not os.path.isfile(path):
      raise ConfigError(f"--config.stages.{field}={spec}: no such config file.")
  if config.features.dir not in ("", AUTO) and not os.path.isdir(config.features.dir):
    raise ConfigError(f"--config.features.dir={config.features.dir}: no such directory.")
  predictions = config.spans.predictions
  if predictions not in ("", AUTO) and "{" not in predictions and not os.path.exists(
      predictions):
    raise ConfigError(f"--config.spans.predictions={predictions}: no such folder.")


def prepare(config, workdir: str) -> dict[str, str]:
  """Runs the stages that `"auto"` asks for; returns `{"spans_predictions", "features_dir"}`
  (the given values where no stage ran)."""
  stages = os.path.join(os.path.abspath(workdir), "stages")
  out = {"spans_predictions": config.spans.predictions, "features_dir": config.features.dir}
  # Features are built from detected spans, so "auto" features need them.
  if AUTO in (config.spans.predictions, config.features.dir):
    span_dir = os.path.join(stages, "span")
    if not os.path.exists(os.path.join(span_dir, "results.json")):
      _run([sys.executable, "-m", "axk.main", f"--config={_config_path(config.stages.span_config)}",
            f"--workdir={span_dir}", *_data_overrides(config)], "span detector", span_dir)
    predictions = os.path.join(span_dir, "predictions")
    if config.spans.predictions == AUTO:
      out["spans_predictions"] = predictions
  if config.features.dir == AUTO:
    feat_dir = os.path.join(stages, "features")
    features = os.path.join(feat_dir, config.stages.get("features_output", "features"))
    from axk.features import shards  # torch-free
    if not shards.verified(features):  # done only when every file matches its manifest
      spans = ["--config.spans.source=predictions", f"--config.spans.predictions={predictions}"]
      _run([sys.executable, "-m", "axk.main",
            f"--config={_config_path(config.stages.features_config)}", f"--workdir={feat_dir}",
            *_data_overrides(config), *spans, *config.stages.get("features_args", ())],
           "features", feat_dir)
    out["features_dir"] = features
  return out
