"""Timing, tables and JSON output shared by the benchmarks in `axk/bench/`.

A ratio between two sides is only as good as the machine was quiet. So:
  - `compare` runs each side in its own process (built once, then timed in turns), so one
    side's threads, allocator and caches do not slow the other;
  - `Watch` measures the CPU that *other* processes used while a benchmark ran (system busy
    time minus this process tree's own), with the load average before and after;
  - `require_quiet` refuses to start on a busy machine (one line; `--allow-busy` measures
    anyway) and `mark` flags every row of a benchmark during which others were busy;
  - every side is timed in `rounds` turns (3 by default): medians, spreads and the ratio's
    per-round median and range are reported.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Mapping, Sequence

from axk import provenance
from axk.utils import files

# On a GPU, JAX takes 75% of the device's memory when it starts; the benchmark's PyTorch sides
# share the device with the JAX processes (this one and axk's side), so JAX allocates what it
# uses instead. Set before JAX starts; an explicit setting in the environment wins.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

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


def summary(values: Sequence[float]) -> dict[str, Any]:
  """Median, min, max and spread ((max - min) / median) of a side's seconds per step."""
  v = [float(x) for x in values]
  med = statistics.median(v)
  return {"median_s": med, "min_s": min(v), "max_s": max(v),
          "spread": (max(v) - min(v)) / med if med else 0.0, "values_s": v}


def interleaved(fns: Mapping[str, Callable[[], float]], rounds: int) -> dict[str, dict]:
  """Runs each of `fns` once per round, in turn (A, B, A, B, ...), in this process, and
  returns each one's `summary` of what it returned (seconds per step). For sides of one
  framework (layouts, sizes); sides of different frameworks go through `compare`."""
  values = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      values[name].append(float(fn()))
  return {name: summary(v) for name, v in values.items()}


def ratio(timing: Mapping[str, dict], side: str, other: str) -> dict[str, float]:
  """How many times faster `side` is than `other`: the ratio of their medians, and the
  median, min and max of the per-round ratios (rounds pair the sides' turns)."""
  a, b = timing[side]["values_s"], timing[other]["values_s"]
  per_round = [y / x for x, y in zip(a, b)]
  return {"ratio": timing[other]["median_s"] / timing[side]["median_s"],
          "round_median": statistics.median(per_round), "round_min": min(per_round),
          "round_max": max(per_round)}


def _side_process(conn, factory: Callable, args: tuple) -> None:
  """A side's process: builds its timer (`factory(*args)` -> (run, info)), says it is ready
  with `info`, then answers each request with `run()`'s seconds per step."""
  try:
    run, info = factory(*args)
    conn.send(("ready", info))
    while conn.recv() == "run":
      conn.send(("time", float(run())))
  except BaseException:  # Everything reaches the parent, which raises it with the side's name.
    conn.send(("error", traceback.format_exc()))
  finally:
    conn.close()


class SideError(RuntimeError):
  pass


def compare(sides: Mapping[str, tuple[Callable, tuple]], rounds: int,
            log: Callable[[str], None] = lambda m: print(m, flush=True),
            max_other_cores: float | None = None) -> tuple[dict[str, dict], dict[str, Any]]:
  """Times sides in their own processes: `sides[name] = (factory, args)` with `factory` a
  module-level function returning `(run, info)` (`run()`: seconds per step; built, compiled
  and warmed up before it returns). The processes are built one after another, then timed in
  turns, the order rotating each round (A B C, B C A, ...); a waiting side blocks on a pipe
  and uses no CPU; the CPU the waiting sides use during each turn is measured
  (`waiting_sides_cores`, the most of any turn, warned above `max_other_cores`). Returns
  ({name: `summary`}, {name: info})."""
  max_other_cores = MAX_OTHER_CORES if max_other_cores is None else max_other_cores
  ctx = multiprocessing.get_context("spawn")  # A fork of a process holding JAX can deadlock.
  procs, conns, infos = {}, {}, {}

  def receive(name):
    kind, value = conns[name].recv()
    if kind == "error":
      raise SideError(f"benchmark side {name!r} failed:\n{value}")
    return value

  try:
    for name, (factory, args) in sides.items():
      log(f"  building {name} (in its own process)")
      parent, child = ctx.Pipe()
      procs[name] = ctx.Process(target=_side_process, args=(child, factory, args), daemon=True)
      procs[name].start()
      child.close()
      conns[name] = parent
      infos[name] = receive(name)
    names = list(sides)
    values = {name: [] for name in names}
    # CPU the waiting sides (with their children, e.g. a compiler's worker pool) used during
    # each turn, as a share of the turn's wall time: it should be ~0.
    waiting = {name: [] for name in names}
    for r in range(rounds):
      for name in names[r % len(names):] + names[:r % len(names)]:
        others = [procs[n].pid for n in names if n != name]
        before, t0 = sum(_tree_s(p) for p in others), time.perf_counter()
        conns[name].send("run")
        values[name].append(receive(name))
        wall = time.perf_counter() - t0
        waiting[name].append((sum(_tree_s(p) for p in others) - before) / wall)
      log(f"  round {r + 1}/{rounds}: " + ", ".join(
          f"{n} {1 / values[n][-1]:.3f} steps/s" for n in names))
    timing = {name: summary(v) for name, v in values.items()}
    for name in names:
      timing[name]["waiting_sides_cores"] = max(waiting[name])
      if max(waiting[name]) > max_other_cores:
        log(f"  warning: while {name} ran, the waiting sides used up to "
            f"{max(waiting[name]):.2f} cores; its time is not its own")
    return timing, infos
  finally:
    for name, conn in conns.items():
      try:
        conn.send("stop")
      except (BrokenPipeError, OSError):
        pass
    for proc in procs.values():
      proc.join(timeout=30)
      if proc.is_alive():
        proc.kill()


# glibc's allocator returns a large freed block to the system at once, so every XLA CPU
# execution maps its temporary buffers anew and faults in every page (about 1.9 million minor
# faults in 9 ITH steps at MiniLM size). One arena, no mmap and a high trim threshold keep the
# memory instead; these settings take effect only when a process starts.
KEEP_MEMORY_TUNABLES = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                        "glibc.malloc.trim_threshold=2147483647")


# --- Is the machine quiet? ---------------------------------------------------------------

# Others may use this share of one core on average before a measurement counts as busy.
MAX_OTHER_CORES = 0.2
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _system_busy_s() -> float | None:
  """CPU seconds all processes of the machine have used since boot (Linux /proc/stat)."""
  try:
    with open("/proc/stat") as f:
      fields = [int(x) for x in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
  return (sum(fields[:8]) - idle) / _TICKS


def _tree_s(root: int) -> float:
  """CPU seconds used by `root` and its live descendants, with the children they reaped
  (0 without Linux's /proc)."""
  stats = {}
  for pid in (os.listdir("/proc") if os.path.isdir("/proc") else ()):
    if not pid.isdigit():
      continue
    try:
      with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
      continue  # It ended meanwhile.
    # After the name: state ppid ... utime(12) stime(13) cutime(14) cstime(15).
    stats[int(pid)] = (int(rest[1]), sum(int(x) for x in rest[11:15]))
  kids: dict[int, list[int]] = {}
  for pid, (ppid, _) in stats.items():
    kids.setdefault(ppid, []).append(pid)
  total, todo = 0, [root]
  while todo:
    pid = todo.pop()
    total += stats.get(pid, (0, 0))[1]
    todo.extend(kids.get(pid, ()))
  return total / _TICKS


class Watch:
  """The CPU other processes use from now until `stop()`: (system busy seconds - this process
  tree's) / wall seconds, in cores. Off Linux only the load averages are reported."""

  def __init__(self):
    self.load_before = load()
    self._t0 = time.perf_counter()
    self._system0 = _system_busy_s()
    self._own0 = _tree_s(os.getpid()) if self._system0 is not None else 0.0

  def stop(self, max_other_cores: float = MAX_OTHER_CORES) -> dict[str, Any]:
    wall = time.perf_counter() - self._t0
    system = _system_busy_s()
    other = None
    if system is not None and self._system0 is not None and wall > 0:
      own = _tree_s(os.getpid()) - self._own0
      other = max(0.0, (system - self._system0 - own) / wall)
    return {"load_before": self.load_before, "load_after": load(), "wall_s": wall,
            "other_cores": other, "max_other_cores": max_other_cores,
            "busy": bool(other is not None and other > max_other_cores)}


def probe(seconds: float = 2.0, max_other_cores: float = MAX_OTHER_CORES) -> dict[str, Any]:
  """`Watch` over `seconds` of this process sleeping."""
  watch = Watch()
  time.sleep(seconds)
  return watch.stop(max_other_cores)


def quiet_args(parser) -> None:
  """The quiet-machine options every benchmark takes."""
  parser.add_argument("--allow-busy", action="store_true",
                      help="measure on a busy machine (its rows are marked busy)")
  parser.add_argument("--max-other-cores", type=float, default=MAX_OTHER_CORES,
                      help="CPU (in cores) other processes may use before the machine is busy")


def require_quiet(args, seconds: float = 2.0) -> dict[str, Any]:
  """Probes the machine before a benchmark; a busy one ends it in one line (exit 2) unless
  `args.allow_busy`. Returns the probe."""
  p = probe(seconds, args.max_other_cores)
  if p["busy"]:
    line = (f"other processes used {p['other_cores']:.2f} cores over {seconds:g} s (load "
            f"average {' '.join(map(str, p['load_before']))}; at most "
            f"{args.max_other_cores:g} allowed)")
    if not args.allow_busy:
      sys.exit(f"error: the machine is busy: {line}; a ratio measured now would not stand. "
               "Wait for it to be idle, or pass --allow-busy (rows are then marked busy).")
    print(f"warning: the machine is busy: {line}; rows will be marked busy", flush=True)
  return p


def mark(rows: Sequence[dict], watch: dict[str, Any],
         timing: Mapping[str, dict] | None = None) -> None:
  """Records the machine's state during the rows' measurement in each row: `watch` (a
  `Watch.stop()`), and with `compare`'s `timing` the most CPU its waiting sides used during
  a turn; either above the threshold marks the rows busy."""
  waiting = (max(t["waiting_sides_cores"] for t in timing.values())
             if timing else None)
  for row in rows:
    row["busy"] = watch["busy"] or (waiting is not None and
                                    waiting > watch["max_other_cores"])
    row["other_cores"] = watch["other_cores"]
    row["load_before"], row["load_after"] = watch["load_before"], watch["load_after"]
    if waiting is not None:
      row["waiting_sides_cores"] = waiting


def busy_note(rows: Sequence[dict]) -> str:
  """One line for the end of a benchmark's table: quiet, or which rows were measured busy."""
  busy = [i for i, r in enumerate(rows) if r.get("busy")]
  if not busy:
    return "machine quiet during every row (other processes below the threshold)"
  return (f"BUSY: rows {', '.join(str(i + 1) for i in busy)} were measured while other "
          "processes used the CPU; their ratios do not stand")


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


# Dense bfloat16 peaks (TFLOP/s) of known accelerators, by a substring of JAX's device kind.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def peak_tflops(device_kind: str, given: float = 0.0) -> float:
  """`given` when set, else the known bfloat16 peak of `device_kind` (0: unknown)."""
  return given or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_kind), 0.0)


def flops(stage) -> float | None:
  """XLA's FLOP count of a lowered (or compiled) JAX function (None where the backend has
  none). Take it from the lowered function: after compilation for a GPU, matrix products
  become library calls that XLA's count leaves out (an ITH step on an H200 counted 83 times
  fewer FLOPs compiled than lowered). Kernels that are library calls already when lowered
  (cuDNN's fused attention) are left out either way."""
  try:
    cost = stage.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops")) if cost and cost.get("flops") else None
  except Exception:  # Cost analysis is not available on every backend.
    return None


def add_sides(row: dict, timing: Mapping[str, dict], *, rate: str, units: float = 1.0,
              flops: float | None = None, peak: float = 0.0, base: str = "axk") -> dict:
  """Fills `row` with each side of `timing` (`compare`'s): `<side>_<rate>` (`units` per
  median second), its spread and timing, TFLOP/s and MFU from `flops` per call and the
  device's `peak` (TFLOP/s) when known; and for every other side the ratio of `base` to it
  (`ratio_vs_<side>`) with its per-round range."""
  for side, t in timing.items():
    row[f"{side}_{rate}"] = units / t["median_s"]
    row[f"{side}_spread"] = t["spread"]
    row[f"{side}_timing"] = t
    if flops:
      row[f"{side}_tflops"] = flops / t["median_s"] / 1e12
      if peak:
        row[f"{side}_mfu"] = flops / t["median_s"] / (peak * 1e12)
  for side in timing:
    if side != base:
      r = ratio(timing, base, side)
      row[f"ratio_vs_{side}"] = r["ratio"]
      row[f"ratio_vs_{side}_rounds"] = [r["round_min"], r["round_max"]]
  return row


def load() -> list[float]:
  return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> dict[str, Any]:
  """The CPU's model name and its widest vector instructions (Linux /proc/cpuinfo)."""
  info: dict[str, Any] = {"model": platform.processor() or platform.machine()}
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read()
  except OSError:
    return info
  for line in text.splitlines():
    key, _, value = line.partition(":")
    if key.strip() == "model name":
      info["model"] = value.strip()
    elif key.strip() == "flags":
      flags = set(value.split())
      info["vector"] = ("avx512f" in flags and "avx512") or ("avx2" in flags and "avx2") or (
          "sse4_2" in flags and "sse4.2") or "other"
      info["avx512_bf16"] = "avx512_bf16" in flags
      break
  return info


def machine() -> dict[str, Any]:
  import jax
  info = {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu": cpu_model(),
          "jax_devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
          "commit": provenance.axk_commit(), "load_average": load(),
          "note": "load average over 1/5/15 min when the benchmark ended; each row carries "
                  "the CPU other processes used while it was measured (other_cores)"}
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
