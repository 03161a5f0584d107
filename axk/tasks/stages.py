"""The stages before a masked-word model, run on demand: span detector, then audio features.

`--config.spans.predictions=auto` and `--config.features.dir=auto` mean "produce them here":
the span detector trains into `<workdir>/stages/span` (its predictions/ are the detected
spans), and the feature pipeline writes `<workdir>/stages/features` from gold spans for the
train split and detected spans for the others. A stage whose outputs exist is reused. Each
stage is its own `python -m axk.main` process, so the training process never imports torch
(the feature pipeline's). Both stages receive the run's data overrides.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import jax

import axk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(axk.__file__)))


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
  out = [f"--config.data.dir={config.data.dir}"]
  if config.data.get("cache_dir"):
    out.append(f"--config.data.cache_dir={config.data.cache_dir}")
  if config.data.get("revision"):
    out.append(f"--config.data.revision={config.data.revision}")
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
            f"--workdir={span_dir}", *_data_overrides(config)], "span detector", span_dir)
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
           "features", feat_dir)
    config.features.dir = out
