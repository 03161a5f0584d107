"""Runs a set of benchmarks one after another, each in its own process with its own time
limit, and writes their JSON files and logs into one folder.

    python -m axk.bench.suite --preset=gpu --out-dir=docs/bench/gpu        # a GPU machine
    python -m axk.bench.suite --preset=smoke --out-dir=/tmp/bench_smoke    # every entry, tiny
    python -m axk.bench.suite --preset=gpu --only=train_step_ith,decoder --out-dir=DIR

Presets:
  gpu    the accelerator table: where the time of ITH's train step goes on the device (the
         profile, its raw trace and compiled program kept under `trace/`); ITH's bfloat16
         train step at BERT-base, batch 256 x length 128, against PyTorch eager and compiled
         (MFU), and again with XLA's attention; the
         decoder scoring throughput of the papers' LLM architectures (LLaMA 3.1 8B, Gemma 2
         2B) against transformers eager (a forward pass at this size is matrix products;
         compiling it is left to a longer lease: `python -m axk.bench.decoder` without
         `--no-compile`); the loop's efficiency at the same step; the full-size generation
         stage's clips/s. Its limits add up to about 22 minutes: split it with `--only`.
  smoke  the same entries at tiny sizes (what a machine needs before the real run: a few
         minutes on a CPU, about a minute on a GPU).
An entry that fails or runs out of time is reported and the others still run; the exit code
is the number of failed entries. `--only` picks entries by name. Each JSON is written by the
benchmark itself (atomically); `<name>.log` keeps its output.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

ENTRIES = {
    "gpu": {
        # Where the step's time goes, kernel by kernel; the raw trace and program are kept.
        "profile_ith": ("profile", ["--model=ith", "--size=base", "--batch=256", "--length=128",
                                    "--dtype=bfloat16", "--steps=3", "--top=30",
                                    "--keep-trace={out_dir}/trace"], 120),
        "train_step_ith": ("train_step", ["--model=ith", "--size=base", "--configs=throughput",
                                          "--dtype=bfloat16", "--steps=10", "--rounds=3"], 240),
        # The same step with XLA's attention instead of cuDNN's (with its full-size bias).
        "train_step_ith_xla": ("train_step", ["--model=ith", "--size=base",
                                              "--configs=throughput", "--dtype=bfloat16",
                                              "--steps=10", "--rounds=3", "--no-compile",
                                              "--attention=xla"], 150),
        "decoder": ("decoder", ["--models=llama3-8b,gemma2-2b", "--dtype=bfloat16",
                                "--batch=32", "--length=128", "--steps=5", "--rounds=3",
                                "--no-compile"], 300),
        "loop_ith": ("loop", ["--model=ith", "--sizes=base", "--batch=256", "--length=128",
                              "--dtype=bfloat16", "--steps=48", "--log-every=8",
                              "--rounds=3"], 200),
        "generation": ("generation", ["--scale=full", "--steps=50", "--n=2", "--spans=8",
                                      "--rounds=1"], 300),
    },
    "smoke": {
        "profile_ith": ("profile", ["--model=ith", "--size=tiny", "--batch=8", "--length=32",
                                    "--steps=1", "--keep-trace={out_dir}/trace"], 240),
        "train_step_ith": ("train_step", ["--model=ith", "--size=tiny", "--configs=paper",
                                          "--steps=1", "--rounds=1", "--no-compile"], 240),
        "train_step_ith_xla": ("train_step", ["--model=ith", "--size=tiny", "--configs=paper",
                                              "--steps=1", "--rounds=1", "--no-compile",
                                              "--attention=xla"], 240),
        "decoder": ("decoder", ["--models=tiny", "--steps=1", "--rounds=1", "--no-compile"],
                    240),
        "loop_ith": ("loop", ["--model=ith", "--sizes=tiny", "--steps=8", "--rounds=1"], 240),
        "generation": ("generation", ["--scale=tiny", "--steps=2", "--n=2", "--spans=2",
                                      "--seconds=0.4", "--rounds=1"], 240),
    },
}


def run_entry(name: str, command: list[str], limit_s: float, out_dir: str) -> dict:
  """Runs `command` (which writes `<out_dir>/<name>.json`) in its own process group, its
  output shown as it comes and kept in `<name>.log`; stopped with its children at
  `limit_s`, whether or not it is printing."""
  out = os.path.join(out_dir, f"{name}.json")
  print(f"[{name}] {' '.join(command[1:])} (limit {limit_s:.0f} s)", flush=True)
  t0 = time.perf_counter()
  with open(os.path.join(out_dir, f"{name}.log"), "w") as log:
    try:
      proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    except OSError as e:
      rc = f"could not start: {e}"
    else:

      def copy():
        for line in proc.stdout:
          log.write(line)
          log.flush()
          print(f"[{name}] {line}", end="", flush=True)

      reader = threading.Thread(target=copy, daemon=True)
      reader.start()
      try:
        rc = proc.wait(timeout=limit_s)
      except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # The benchmark's side processes too.
        proc.wait()
        print(f"[{name}] stopped at its limit of {limit_s:.0f} s", flush=True)
        rc = f"stopped at {limit_s:.0f} s"
      reader.join(timeout=10)
  seconds = time.perf_counter() - t0
  ok = rc == 0 and os.path.exists(out)
  return {"entry": name, "ok": ok, "rc": rc, "seconds": round(seconds, 1),
          "json": out if ok else ""}


def command(module: str, args: list[str], out_dir: str, name: str) -> list[str]:
  args = [a.replace("{out_dir}", out_dir) for a in args]
  return [sys.executable, "-m", f"axk.bench.{module}", *args,
          f"--out={os.path.join(out_dir, f'{name}.json')}"]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", choices=tuple(ENTRIES), default="gpu")
  parser.add_argument("--out-dir", required=True)
  parser.add_argument("--only", default="", help="comma-separated entry names")
  parser.add_argument("--limit-scale", type=float, default=1.0,
                      help="multiplies every entry's time limit")
  parser.add_argument("--allow-busy", action="store_true",
                      help="passed to every benchmark that checks for a quiet machine")
  args = parser.parse_args(argv)
  entries = ENTRIES[args.preset]
  names = [n for n in args.only.split(",") if n] or list(entries)
  unknown = [n for n in names if n not in entries]
  if unknown:
    parser.error(f"--only: no entry {', '.join(unknown)} in preset {args.preset}; "
                 f"entries: {', '.join(entries)}")
  os.makedirs(args.out_dir, exist_ok=True)
  results = []
  for name in names:
    module, bench_args, limit = entries[name]
    extra = ["--allow-busy"] if args.allow_busy and module != "generation" else []
    results.append(run_entry(name, command(module, [*bench_args, *extra], args.out_dir, name),
                             limit * args.limit_scale, args.out_dir))
  width = max(len(r["entry"]) for r in results)
  for r in results:
    where = r["json"] if r["ok"] else f"rc {r['rc']}"
    print(f"{r['entry'].ljust(width)}  {'ok' if r['ok'] else 'FAILED'}  {r['seconds']:7.1f} s  "
          f"{where}")
  sys.exit(sum(not r["ok"] for r in results))


if __name__ == "__main__":
  main()
