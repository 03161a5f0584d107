"""Timing, tables and JSON output shared by the benchmarks in `axk/bench/`."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Any, Callable, Sequence


def timeit(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 3,
           sync: Callable[[Any], Any] = lambda x: x) -> dict[str, float]:
  """Seconds per call of `fn` (median and min over `repeats`), after `warmup` calls.

  `sync` blocks on the result (e.g. `jax.block_until_ready`) so asynchronous dispatch is
  timed to completion.
  """
  for _ in range(warmup):
    sync(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - t0)
  return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def machine() -> dict[str, Any]:
  import jax
  info = {"platform": platform.platform(), "cpus": os.cpu_count(),
          "jax_devices": [str(d) for d in jax.devices()], "jax": jax.__version__}
  try:
    import torch
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
      info["torch_device"] = torch.cuda.get_device_name()
  except ImportError:
    pass
  return info


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
  """A markdown table of `rows` restricted to `columns` (floats to 4 significant digits)."""

  def fmt(v):
    if isinstance(v, float):
      return f"{v:.4g}"
    return str(v)

  cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
  line = lambda xs: "| " + " | ".join(x.ljust(w) for x, w in zip(xs, widths)) + " |"
  return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def write(out: str | None, payload: dict[str, Any]) -> None:
  """Writes `payload` as JSON to `out` (atomically), if given."""
  if not out:
    return
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = out + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2)
  os.replace(tmp, out)
