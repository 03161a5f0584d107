"""ITH's audio token layouts: storage per clip, batch reads from the shards, train-step time.

    python -m axk.bench.audio_tokens --out bench_audio_tokens.json
    python -m axk.bench.audio_tokens --layouts=time:16,grid:12x8,full --batch=8 --length=128

For each layout of `axk/features/ast.py` at the MIT AudioSet checkpoint's size (2 special
tokens + 12 x 101 patches, 768 wide):
  * tokens per clip, and bytes per clip in float16 (tokens x 768 x 2);
  * bytes per span on disk: `--records` feature records (2 spans each, random normal tokens)
    written as the pipeline writes them (`axk.features.shards`, array_record), file size
    over spans, so the span's pooled and CLAP vectors and the record's framing are included;
    and that size times AuditoryBench's 34,216 spans (every split of both tasks);
  * the time to gather one batch of `--batch` rows from those shards (`SpanTokens` with
    `shards.read_tokens`, as training reads them), after a first batch has opened them;
  * the ITH train step at `--size` (BERT-base by default; random weights, everything trained,
    2 spans with audio per row, AdamW, clipping) on this machine's first JAX device, the
    production step (`axk.train.loop.Trainer`), the layouts run interleaved; its time as a
    ratio to the first layout's, and XLA's FLOP count of the step (a device-independent
    cost; `--accelerator-tflops` x `--assumed-mfu` turns it into an estimate of the step on
    an accelerator).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import numpy as np

from axk.bench import common
from axk.bench import synthetic
from axk.bench import train_step
from axk.features import ast as ast_lib
from axk.features import shards
from axk.train import data as data_lib

MIT_GRID = (12, 101)  # the MIT AudioSet checkpoint's patch grid (frequency, time)
AUDIO_DIM = 768
AUDITORYBENCH_SPANS = 34_216  # spans in every split of both tasks (REFERENCE.md)


def parse_layout(text: str) -> tuple[str, int]:
  """"time:16", "grid:12x8", "full" -> (label, tokens per clip)."""
  name, _, arg = text.partition(":")
  if name in ("time", "flat"):
    return text, ast_lib.num_layout_tokens(name, MIT_GRID, num_tokens=int(arg))
  if name == "grid":
    grid = tuple(int(x) for x in arg.split("x"))
    return text, ast_lib.num_layout_tokens(name, MIT_GRID, grid=grid)
  if name == "full":
    return text, ast_lib.num_layout_tokens(name, MIT_GRID)
  raise SystemExit(f"error: --layouts: {text!r} is not time:N, flat:N, grid:FxT or full")


def storage(tokens: int, records: int, batch: int, folder: str) -> dict:
  """Bytes per clip on disk and one batch's gather time, from shards written here."""
  rng = np.random.default_rng(0)
  dims = {"ast": AUDIO_DIM, "num_audio_tokens": tokens, "clap": 512}

  def span(start):
    return {"start": start, "end": start + 3, "text": "dog", "has_audio": True,
            "clap_score": 0.5, "source": "x",
            "ast_pooled": rng.standard_normal(AUDIO_DIM).astype(np.float16),
            "ast_tokens": rng.standard_normal((tokens, AUDIO_DIM)).astype(np.float16),
            "clap_text": np.zeros(512, np.float16), "clap_audio": np.zeros(512, np.float16)}

  rows = (shards.encode_row(f"pitch/train/{i}", "a dog and a dog", [span(2), span(12)], dims)
          for i in range(records))
  path = shards.write_task(folder, "pitch", {"train": rows}, dims)
  size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
             if ".array_record" in f)
  features = shards.load_features(folder, "pitch", "train", lazy_tokens=True)
  spans = [[s for s in features[f"pitch/train/{i}"]["spans"]] for i in range(records)]
  cells = [s["ast_tokens"] for row in spans for s in row]
  arrays = data_lib.SpanTokens(cells, np.arange(2 * records).reshape(records, 2),
                               (tokens, AUDIO_DIM), read=shards.read_tokens)
  picks = np.random.default_rng(1).permutation(records)
  arrays[picks[-1:]]  # opens the shards
  t0 = time.perf_counter()
  arrays[picks[:batch]]
  gather = time.perf_counter() - t0
  return {"record_bytes_per_span": size / (2 * records), "gather_batch_s": gather}


def step_timer(tokens: int, args):
  """A function timing `args.steps` ITH train steps with `tokens` audio tokens per span."""
  rows = synthetic.rows(args.batch, args.length, vocab=synthetic.SIZES[args.size]["vocab_size"],
                        audio_tokens=tokens)
  # The production step, timed as the train-step benchmark times it (float32 here).
  run, info = train_step.axk_side("ith", args.size, rows,
                                  argparse.Namespace(**{"dtype": "float32", **vars(args)}))
  return run, info["flops"]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", help="JSON output file")
  parser.add_argument("--layouts", default="time:16,time:32,grid:12x8,grid:12x16,full",
                      help="comma-separated; the first is the ratios' reference")
  parser.add_argument("--size", default="base", choices=tuple(synthetic.SIZES))
  parser.add_argument("--batch", type=int, default=4, help="rows per train step and gather")
  parser.add_argument("--length", type=int, default=64, help="text tokens per row")
  parser.add_argument("--steps", type=int, default=1, help="timed steps per layout and round")
  parser.add_argument("--rounds", type=int, default=2, help="alternations of the layouts")
  parser.add_argument("--records", type=int, default=32, help="records written per layout")
  parser.add_argument("--no-steps", action="store_true", help="storage only")
  parser.add_argument("--accelerator-tflops", type=float, default=989.0,
                      help="dense peak for the estimate (H100/H200 bf16: 989)")
  parser.add_argument("--assumed-mfu", type=float, default=0.4)
  args = parser.parse_args(argv)
  layouts = [parse_layout(x) for x in args.layouts.split(",")]
  rows, timers = [], {}
  with tempfile.TemporaryDirectory() as tmp:
    for i, (label, tokens) in enumerate(layouts):
      row = {"layout": label, "tokens": tokens, "bytes_per_clip": tokens * AUDIO_DIM * 2}
      row.update(storage(tokens, args.records, min(args.batch, args.records),
                         os.path.join(tmp, str(i))))
      row["auditorybench_gb"] = row["record_bytes_per_span"] * AUDITORYBENCH_SPANS / 1e9
      rows.append(row)
      print(f"{label}: {tokens} tokens, {row['record_bytes_per_span'] / 1e6:.3f} MB a span on "
            "disk", flush=True)
  if not args.no_steps:
    for row in rows:
      print(f"compiling the {args.size} ITH step for {row['layout']}", flush=True)
      timers[row["layout"]], row["flops_per_step"] = step_timer(row["tokens"], args)
    timing = common.interleaved(timers, args.rounds)
    ref = rows[0]
    for row in rows:
      t = timing[row["layout"]]
      row["step_s"], row["step_timing"] = t["median_s"], t
      row["step_ratio"] = t["median_s"] / timing[ref["layout"]]["median_s"]
      if row["flops_per_step"]:
        row["flops_ratio"] = row["flops_per_step"] / ref["flops_per_step"]
        row["est_accelerator_step_ms"] = 1e3 * row["flops_per_step"] / (
            args.accelerator_tflops * 1e12 * args.assumed_mfu)
  cols = ["layout", "tokens", "bytes_per_clip", "record_bytes_per_span", "auditorybench_gb",
          "gather_batch_s", "step_s", "step_ratio", "flops_per_step", "flops_ratio",
          "est_accelerator_step_ms"]
  print(common.table(rows, [c for c in cols if any(c in r for r in rows)]))
  print(f"ITH train step: {args.size}, batch {args.batch}, length {args.length}, 2 spans with "
        f"audio per row, on {jax.devices()[0].device_kind}; ratios against {rows[0]['layout']}; "
        f"est_accelerator_step_ms = FLOPs / ({args.accelerator_tflops:g} TFLOP/s x "
        f"{args.assumed_mfu:g})")
  common.write(args.out, {"benchmark": "audio_tokens", "machine": common.machine(),
                          "args": vars(args), "rows": rows})


if __name__ == "__main__":
  main()
