"""Timing, tables and JSON output shared by the benchmarks in `axk/bench/`."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Callable, Mapping, Sequence

from axk.utils import files

# t5x's minimal logical-axis rules (as configs/common.py has them), for benchmark configs
# built without the `configs` package, which an installed axk does not ship.
RULES = (("batch", "data"), ("vocab", "model"), ("mlp", "model"), ("heads", "model"),
         ("embed", None), ("kv", None), ("length", None))


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


def interleaved(fns: Mapping[str, Callable[[], float]], rounds: int) -> dict[str, dict]:
  """Runs each of `fns` once per round, in turn (A, B, A, B, ...), and returns the median and
  all values of what each returned (seconds per step). On a machine shared with other jobs
  the sides of a ratio then see the same load."""
  values = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      values[name].append(float(fn()))
  return {name: {"median_s": statistics.median(v), "min_s": min(v), "values_s": v}
          for name, v in values.items()}


def train_config(*, batch_size: int, steps: int, rows: int, **train) -> Any:
  """A train-loop config (the fields `axk.train.loop` reads) for `steps` steps over `rows`
  synthetic rows on one device, without the `configs` package."""
  import ml_collections
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.resume = ""
  c.train = ml_collections.ConfigDict(dict(
      epochs=max(1, -(-steps * batch_size // rows)), batch_size=batch_size,
      eval_batch_size=batch_size, learning_rate=1e-4, warmup_ratio=0.1, weight_decay=0.01,
      b1=0.9, b2=0.999, eps=1e-8, clip_norm=1.0, trainable=(".*",), frozen=(), log_every=10,
      eval_every=0, checkpoint_every=0, keep=2, selection_split="dev", select_best=False,
      stop_at_step=0))
  c.train.update(train)
  c.mesh = ml_collections.ConfigDict({"shape": (("data", 1), ("model", 1)), "rules": RULES})
  return c


def load() -> list[float]:
  return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
  import jax
  info = {"platform": platform.platform(), "cpus": os.cpu_count(),
          "jax_devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
          "load_average": load(),
          "note": "load average over 1/5/15 min when the benchmark began; the machine may be "
                  "shared with other jobs, so each ratio compares sides run interleaved in "
                  "one process"}
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
  if out:
    files.write_json(out, payload, sort_keys=False)
