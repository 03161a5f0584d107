"""What a run writes into its workdir: metrics streams, config, results.

Files (process 0 only):
  metrics.jsonl       one JSON object per logged step or evaluation
  tensorboard/        event files (tensorboardX, no TensorFlow needed)
  config.json         the resolved config
  results.json        final metrics keyed by task, then split
  results.md          the same as readable tables
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax


def is_writer() -> bool:
  return jax.process_index() == 0


def write_json(path: str, payload: Any) -> None:
  """Atomic JSON write (temp file + rename), process 0 only."""
  write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=_jsonable))


def write_text(path: str, text: str) -> None:
  """Atomic text write (temp file + rename), process 0 only."""
  if not is_writer():
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def _jsonable(x):
  if hasattr(x, "tolist"):
    return x.tolist()
  if isinstance(x, (set, tuple)):
    return list(x)
  return str(x)


class MetricWriter:
  """Scalars to `metrics.jsonl` and TensorBoard."""

  def __init__(self, workdir: str):
    self.enabled = is_writer()
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    from tensorboardX import SummaryWriter
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    self.jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
    self.jsonl.flush()
    for k, v in clean.items():
      if math.isfinite(v):
        self.tb.add_scalar(k, v, int(step))
    self.tb.flush()

  def close(self) -> None:
    if self.enabled:
      self.jsonl.close()
      self.tb.close()


def results_markdown(title: str, results: Mapping[str, Mapping[str, Mapping[str, Any]]],
                     notes: list[str] = ()) -> str:
  """results[task][split][metric] -> one table per task (rows: splits, columns: metrics)."""
  lines = [f"# {title}", ""]
  for task, splits in results.items():
    metrics = []
    for values in splits.values():
      metrics += [m for m in values if m not in metrics]
    lines += [f"## {task}", "", "| split | " + " | ".join(metrics) + " |",
              "| --- |" + " --- |" * len(metrics)]
    for split, values in splits.items():
      cells = [_cell(values.get(m, "")) for m in metrics]
      lines.append(f"| {split} | " + " | ".join(cells) + " |")
    lines.append("")
  lines += [f"- {n}" for n in notes]
  return "\n".join(lines) + "\n"


def _cell(v) -> str:
  if isinstance(v, float):
    return f"{v:.2f}" if abs(v) >= 1 or v == 0 else f"{v:.4f}"
  return str(v)
