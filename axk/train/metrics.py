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

from axk.utils import files


is_writer = files.is_writer
# Process 0 writes the job's files; the writes are atomic (`axk.utils.files`).
write_json = files.writer_only(files.write_json)
write_text = files.writer_only(files.write_text)


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


def results_table(results: Mapping[str, Mapping[str, Mapping[str, Any]]],
                  metrics: tuple[str, ...] | None = None) -> list[str]:
  """results[task][split][metric] -> one table, a row per task and split, a column per
  metric (`metrics`, those present; default every one), a metric with `<metric>_std` beside it
  (a mean over seeds) as `mean ± std`."""
  present = []
  for splits in results.values():
    for values in splits.values():
      present += [m for m in values if m not in present and not (
          m.endswith("_std") and m.removesuffix("_std") in values)]
  columns = [m for m in metrics if m in present] if metrics else present
  lines = ["| task | split | " + " | ".join(columns) + " |",
           "| --- | --- |" + " --- |" * len(columns)]
  for task, splits in results.items():
    for split, values in splits.items():
      cells = [cell(values, m) for m in columns]
      lines.append(f"| {task} | {split} | " + " | ".join(cells) + " |")
  return lines


def cell(values: Mapping, metric: str) -> str:
  """A table cell: `values[metric]`, with ` ± <metric>_std` where the seeds' spread is there."""
  out = _cell(values.get(metric, ""))
  if f"{metric}_std" in values:
    out += f" ± {float(values[metric + '_std']):.2f}"
  return out


def _cell(v) -> str:
  if isinstance(v, float):
    return f"{v:.2f}" if abs(v) >= 1 or v == 0 else f"{v:.4f}"
  return str(v)
