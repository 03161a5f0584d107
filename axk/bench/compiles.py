"""Compilations of a whole run: how many programs XLA compiles, how long that takes, and how
many a warm persistent compilation cache serves instead.

    python -m axk.bench.compiles --out bench_compiles.json                 # the ITH smoke chain
    python -m axk.bench.compiles --out F -- python -m axk.main --config=configs/span.py:smoke

The command (after `--`; by default the ITH smoke chain, `configs/ith.py:smoke`, every stage)
runs twice with one fresh JAX compilation cache: cold (empty cache), then warm (the cache the
first run filled), each into its own new workdir (`{workdir}` in the command is replaced). JAX
logs every program it obtains (`JAX_LOG_COMPILES=1`, inherited by the stages' processes); per
run this counts the programs, those compiled by XLA and those loaded from the cache, the
seconds of each, the wall time, and the programs obtained most often (the same function at
several shapes, or eager operations, each a program of its own).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time

from axk import provenance
from axk.bench import common

DEFAULT = [sys.executable, "-m", "axk.main", "--config=configs/ith.py:smoke",
           "--workdir={workdir}"]

# JAX's log lines (absl/glog form: level+date, time, thread id, file:line] message).
_THREAD = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+(\d+) ")
_HIT = re.compile(r"Persistent compilation cache hit for '([^']+)'")
_DONE = re.compile(r"Finished XLA compilation of (.+) in ([\d.eE+-]+) sec")


def count(log: str) -> dict:
  """Programs, XLA compilations and cache hits in a JAX log (`JAX_LOG_COMPILES=1`).

  JAX logs "Finished XLA compilation of NAME in S sec" for every program it obtains; when the
  program came from the persistent cache, "Persistent compilation cache hit for 'NAME'" comes
  just before it on the same thread.
  """
  hit_pending: dict[str, bool] = {}
  compiled, loaded = [], []
  names = collections.Counter()
  for line in log.splitlines():
    m = _THREAD.match(line)
    thread = m.group(1) if m else ""
    if _HIT.search(line):
      hit_pending[thread] = True
      continue
    d = _DONE.search(line)
    if d:
      names[d.group(1)] += 1
      (loaded if hit_pending.pop(thread, False) else compiled).append(float(d.group(2)))
  return {"programs": len(compiled) + len(loaded), "compiled": len(compiled),
          "compile_s": sum(compiled), "cache_hits": len(loaded), "cache_load_s": sum(loaded),
          "most_obtained": names.most_common(8)}


def run_once(command: list[str], cache: str, workdir: str, label: str) -> dict:
  env = {**os.environ, "JAX_LOG_COMPILES": "1", "JAX_COMPILATION_CACHE_DIR": cache,
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  env.pop("JAX_ENABLE_COMPILATION_CACHE", None)
  command = [c.replace("{workdir}", workdir) for c in command]
  print(f"{label}: {' '.join(command)}", flush=True)
  t0 = time.perf_counter()
  proc = subprocess.run(command, cwd=provenance.REPO, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  if proc.returncode:
    tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-20:])
    raise SystemExit(f"error: the {label} run exited {proc.returncode}:\n{tail}")
  row = {"run": label, "wall_s": wall, **count(proc.stderr + proc.stdout)}
  print(f"  {wall:.1f} s; {row['programs']} programs: {row['compiled']} compiled "
        f"({row['compile_s']:.1f} s), {row['cache_hits']} from the cache "
        f"({row['cache_load_s']:.1f} s)", flush=True)
  return row


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  command = DEFAULT
  if "--" in argv:
    command, argv = argv[argv.index("--") + 1:], argv[:argv.index("--")]
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", help="JSON output file")
  common.quiet_args(parser)
  args = parser.parse_args(argv)
  if not command:
    parser.error("nothing after --")
  common.require_quiet(args)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    cache = os.path.join(tmp, "jax_cache")
    for label in ("cold", "warm"):
      watch = common.Watch()
      rows.append(run_once(command, cache, os.path.join(tmp, label), label))
      common.mark(rows[-1:], watch.stop(args.max_other_cores))
  print(common.table(rows, ["run", "wall_s", "programs", "compiled", "compile_s",
                            "cache_hits", "cache_load_s", "busy"]))
  print("most obtained (cold): " + ", ".join(f"{n} x{c}" for n, c in rows[0]["most_obtained"]))
  print(common.busy_note(rows))
  common.write(args.out, {"benchmark": "compiles", "machine": common.machine(),
                          "command": command, "rows": rows})


if __name__ == "__main__":
  main()
