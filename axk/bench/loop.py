"""Loop efficiency: the full training loop's steps/s over the bare compiled step's steps/s.

    python -m axk.bench.loop --out bench_loop.json [--sizes tiny,minilm] [--model ith]

The default (tiny and MiniLM sizes, 16 steps a run, 3 rounds) takes about 4 minutes on 2
CPU cores; `--sizes base` adds BERT-base (about 2e11 FLOPs a step: minutes a round on a CPU).

Both run the same jitted train step (`axk.train.loop.Trainer`) on the same model and the same
batches, one device. The loop is `axk.train.loop.train_and_evaluate` (what `axk.main`
runs): batches read and transferred step by step, NaN checks, metrics, progress bar, stop
checks; its steps/s is taken from its own `train/steps_per_s` log lines after the first
interval (which holds the compilation), so evaluation and checkpoints at the end are not
counted. The bare step is the same compiled function called back to back on batches already
on the device. `efficiency` = loop steps/s / bare steps/s: 1 means the loop costs nothing.
The two alternate (loop, bare, loop, bare, ...) and the medians are compared; the benchmark
refuses a busy machine and marks rows measured while other processes used the CPU
(`common.require_quiet`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time

import jax
import numpy as np

from axk.bench import common
from axk.bench import synthetic
from axk.train import checkpoint as ckpt_lib
from axk.train import loop
from axk.train import sharding


def bench_size(size: str, args) -> dict:
  config_bert = synthetic.bert_config(size, args.dtype)
  per_epoch = 8
  n = args.batch * per_epoch
  train = synthetic.rows(n, args.length, vocab=config_bert.vocab_size,
                         audio_tokens=args.audio_tokens)
  dev = synthetic.rows(args.batch, args.length, vocab=config_bert.vocab_size,
                       audio_tokens=args.audio_tokens, seed=1)
  task = synthetic.SyntheticTask(args.model, config_bert, train, dev)
  steps = -(-args.steps // per_epoch) * per_epoch
  config = synthetic.trainer_config(task, batch_size=args.batch, steps=steps, rows=n,
                                    log_every=args.log_every, eval_every=10 ** 9)

  with tempfile.TemporaryDirectory() as bare_dir:
    trainer = loop.Trainer(config, bare_dir, task)
    state, _ = trainer.init_state(ckpt_lib.Checkpoints(os.path.join(bare_dir, "ckpt")))
    with sharding.activate(trainer.mesh, trainer.rules):
      batches = [sharding.global_batch(trainer.batches[s], trainer.batch_sharding)
                 for s in range(steps)]
      holder = {"state": trainer.train_step(state, batches[0])[0]}  # compiles
      jax.block_until_ready(holder["state"])

    def bare() -> float:
      with sharding.activate(trainer.mesh, trainer.rules):
        t0 = time.perf_counter()
        for b in batches:
          holder["state"], scalars = trainer.train_step(holder["state"], b)
        jax.block_until_ready((holder["state"], scalars))
        return (time.perf_counter() - t0) / len(batches)

    def full_loop() -> float:
      with tempfile.TemporaryDirectory() as workdir:
        loop.train_and_evaluate(config, workdir, task)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
          lines = [json.loads(l) for l in f]
      logged = [(l["step"], l["train/steps_per_s"]) for l in lines if "train/steps_per_s" in l]
      seconds = sum((b[0] - a[0]) / b[1] for a, b in zip(logged, logged[1:]))
      return seconds / (logged[-1][0] - logged[0][0])

    watch = common.Watch()
    timing = common.interleaved({"loop": full_loop, "bare": bare}, args.rounds)
  row = {"size": size, "model": args.model, "batch": args.batch, "length": args.length,
         "dtype": args.dtype, "steps": steps, "log_every": args.log_every,
         "loop_steps_per_s": 1 / timing["loop"]["median_s"],
         "bare_steps_per_s": 1 / timing["bare"]["median_s"],
         "efficiency": timing["bare"]["median_s"] / timing["loop"]["median_s"],
         "loop_spread": timing["loop"]["spread"], "bare_spread": timing["bare"]["spread"],
         "device": jax.devices()[0].device_kind, **{f"{k}_timing": v for k, v in timing.items()}}
  common.mark([row], watch.stop(args.max_other_cores))
  print(f"  {size}: loop {row['loop_steps_per_s']:.2f} steps/s, bare "
        f"{row['bare_steps_per_s']:.2f} steps/s, efficiency {row['efficiency']:.3f}",
        flush=True)
  return row


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", help="JSON output file")
  parser.add_argument("--sizes", default="tiny,minilm")
  parser.add_argument("--model", default="ith", choices=synthetic.MODELS)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument("--audio-tokens", type=int, default=16)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--steps", type=int, default=16, help="steps per loop run (x8)")
  parser.add_argument("--log-every", type=int, default=4)
  parser.add_argument("--rounds", type=int, default=3, help="loop/bare alternations")
  common.quiet_args(parser)
  args = parser.parse_args(argv)
  common.require_quiet(args)
  logging.getLogger("absl").setLevel(logging.WARNING)
  with tempfile.TemporaryDirectory() as cache:
    # Each loop run builds its own Trainer; the persistent cache spares recompiling.
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    rows = [bench_size(size, args) for size in args.sizes.split(",")]
  print(common.table(rows, ["size", "model", "batch", "length", "loop_steps_per_s",
                            "bare_steps_per_s", "efficiency", "loop_spread", "bare_spread",
                            "busy"]))
  print(f"efficiency = full train loop steps/s / bare compiled step steps/s (same batches; "
        f"medians of {args.rounds} rounds)")
  print(common.busy_note(rows))
  common.write(args.out, {"benchmark": "loop", "machine": common.machine(), "rows": rows})


if __name__ == "__main__":
  main()
