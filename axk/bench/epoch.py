"""A whole stage: one epoch of ITH text-only training, and its evaluation pass, axk vs a plain
PyTorch loop over the same encoded batches.

    python -m axk.bench.epoch --out bench_epoch.json [--task pitch] [--max_steps 40]

axk: the ITH task of `configs/ith.py:minilm,no_audio` (all-MiniLM-L6-v2's weights, gold
spans, no audio) on AuditoryBench (`--data_dir`, default `../shared/auditorybench`), run by
`axk.train.loop.train_and_evaluate` as `axk.main` runs it: its training (setup, compilation,
the steps, checkpoints) and its final evaluation pass (every eval split, both protocols'
inputs) are timed apart. PyTorch: transformers' `BertForMaskedLM` from the same weights, the
same batches (`axk.train.data.TrainBatches`, same seed), the same loss (masked-LM at the
`[MASK]` positions), AdamW with the same hyperparameters and decay mask, the same warm-up +
cosine schedule and clipping; its evaluation runs the same eval batches. `--max_steps` cuts
the epoch to its first steps (the training rows of those steps) and the table projects the
full epoch from the per-step time. Needs the repository checkout (it reads
`configs/ith.py`, `--config_file`).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import tempfile
import time

import numpy as np

from axk import tasks
from axk.bench import common

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(path: str, arg: str):
  """`get_config(arg)` of a config file (its folder's parent goes on sys.path for
  `from configs import common`)."""
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(path))))
  spec = importlib.util.spec_from_file_location("axk_bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def axk_side(config, task, workdir):
  """Seconds of training and of the final evaluation pass of `train_and_evaluate`."""
  from axk.train import loop
  spent = {"eval": 0.0, "finish": 0.0}
  evaluate, finish = loop.Trainer.evaluate, task.finish

  def timed_evaluate(self, *a, **k):
    t0 = time.perf_counter()
    try:
      return evaluate(self, *a, **k)
    finally:
      spent["eval"] += time.perf_counter() - t0

  def timed_finish(*a, **k):
    t0 = time.perf_counter()
    try:
      return finish(*a, **k)
    finally:
      spent["finish"] += time.perf_counter() - t0

  loop.Trainer.evaluate, task.finish = timed_evaluate, timed_finish
  try:
    t0 = time.perf_counter()
    loop.train_and_evaluate(config, workdir, task)
    total = time.perf_counter() - t0
  finally:
    loop.Trainer.evaluate = evaluate
    del task.finish
  return {"train_s": total - spent["eval"] - spent["finish"], "eval_s": spent["eval"],
          "export_s": spent["finish"], "command_s": total}


def torch_side(config, task, model_dir):
  """Seconds of the same epoch and evaluation pass in a plain PyTorch loop."""
  import torch
  import transformers
  from axk.train import data as data_lib
  tc = config.train
  t0 = time.perf_counter()
  torch.manual_seed(config.seed)
  model = transformers.BertForMaskedLM.from_pretrained(
      model_dir, hidden_dropout_prob=config.model.dropout,
      attention_probs_dropout_prob=config.model.dropout)
  batches = data_lib.TrainBatches(task.train_arrays, batch_size=tc.batch_size,
                                  epochs=tc.epochs, seed=config.seed)
  steps = len(batches)
  decay = [p for n, p in model.named_parameters() if not n.endswith("bias")
           and "LayerNorm" not in n]
  no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=tc.learning_rate, betas=(tc.b1, tc.b2), eps=tc.eps)
  warmup = int(round(tc.warmup_ratio * steps))
  decay_steps = max(steps, warmup + 1)

  def lr_at(step):  # optax.warmup_cosine_decay_schedule, relative to the peak.
    if step < warmup:
      return step / max(warmup, 1)
    progress = min((step - warmup) / max(decay_steps - warmup, 1), 1.0)
    return 0.5 * (1 + math.cos(math.pi * progress))

  sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)

  def logits_at_masks(b):
    hidden = model.bert(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                        token_type_ids=b["token_type_ids"]).last_hidden_state
    at = hidden.gather(1, b["mask_positions"][..., None].expand(-1, -1, hidden.shape[-1]))
    return model.cls(at)

  model.train()
  for step in range(steps):
    b = {k: torch.from_numpy(np.asarray(v)).long() for k, v in batches[step].items()
         if k in ("input_ids", "attention_mask", "token_type_ids", "mask_positions",
                  "mlm_labels", "mask_count")}
    labels = b["mlm_labels"].gather(1, b["mask_positions"])
    valid = torch.arange(labels.shape[1])[None] < b["mask_count"][:, None]
    logits = logits_at_masks(b)
    losses = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), torch.where(valid, labels, 0).flatten(), reduction="none")
    loss = (losses * valid.flatten()).sum() / valid.sum().clamp(min=1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if tc.clip_norm:
      torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_norm)
    opt.step()
    sched.step()
  loss.item()
  train_s = time.perf_counter() - t0

  t0 = time.perf_counter()
  model.eval()
  with torch.inference_mode():
    for views in task.eval_arrays.values():
      for arrays in views.values():
        for batch in data_lib.eval_batches(arrays, tc.eval_batch_size):
          b = {k: torch.from_numpy(np.asarray(batch[k])).long()
               for k in ("input_ids", "attention_mask", "token_type_ids", "mask_positions")}
          logp = torch.log_softmax(logits_at_masks(b).float(), -1)
          logp.argmax(-1).numpy()
  return {"train_s": train_s, "eval_s": time.perf_counter() - t0, "steps": steps}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", help="JSON output file")
  parser.add_argument("--task", default="pitch", choices=tasks.names())
  parser.add_argument("--data_dir", default=os.path.join(_ROOT, "..", "shared",
                                                         "auditorybench"))
  parser.add_argument("--config_file", default=os.path.join(_ROOT, "configs", "ith.py"))
  parser.add_argument("--variant", default="minilm,no_audio")
  parser.add_argument("--max_steps", type=int, default=0, help="0: the whole epoch")
  parser.add_argument("--eval_splits", default="", help="e.g. dev (default: all)")
  parser.add_argument("--rounds", type=int, default=1, help="axk/PyTorch alternations")
  args = parser.parse_args(argv)

  from axk.runs import masked_word
  from axk.train import data as data_lib
  config = load_config(args.config_file, args.variant)
  config.data.dir = args.data_dir
  config.data.tasks = (args.task,)
  if args.eval_splits:
    config.data.splits = ("train",) + tuple(args.eval_splits.split(","))
  config.train.learning_rate = masked_word.learning_rates(config)[args.task]
  config.train.epochs = 1
  with tempfile.TemporaryDirectory() as tmp:
    # Gold spans, no features (text only): the run's inputs without its stages.
    task = masked_word.MaskedWord(config, os.path.join(tmp, "task"), masked_word.Inputs())
    full_rows = data_lib.num_rows(task.train_arrays)
    full_steps = full_rows // config.train.batch_size
    if args.max_steps and args.max_steps < full_steps:
      keep = args.max_steps * config.train.batch_size
      task.train_arrays = {k: v[:keep] for k, v in task.train_arrays.items()}
      task.train_ids = task.train_ids[:keep]
    steps = data_lib.num_rows(task.train_arrays) // config.train.batch_size
    eval_rows = sum(data_lib.num_rows(a) for views in task.eval_arrays.values()
                    for a in views.values())
    rounds = []
    for r in range(args.rounds):
      ours = axk_side(config, task, os.path.join(tmp, f"axk_{r}"))
      theirs = torch_side(config, task, task.path)
      rounds.append({"axk": ours, "torch": theirs})
      print(f"  round {r}: axk train {ours['train_s']:.1f} s, eval {ours['eval_s']:.1f} s; "
            f"PyTorch train {theirs['train_s']:.1f} s, eval {theirs['eval_s']:.1f} s",
            flush=True)
  med = lambda side, k: float(np.median([r[side][k] for r in rounds]))
  rows = []
  for phase in ("train", "eval"):
    a, t = med("axk", f"{phase}_s"), med("torch", f"{phase}_s")
    row = {"phase": phase, "task": args.task, "axk_s": a, "torch_s": t, "ratio": t / a}
    if phase == "train":
      row.update(steps=steps, full_epoch_steps=full_steps,
                 axk_projected_epoch_s=a / steps * full_steps,
                 torch_projected_epoch_s=t / steps * full_steps)
    else:
      row.update(eval_rows=eval_rows, splits=sorted(task.eval_arrays))
    rows.append(row)
  print(common.table(rows, ["phase", "task", "steps", "full_epoch_steps", "eval_rows",
                            "axk_s", "torch_s", "ratio", "axk_projected_epoch_s",
                            "torch_projected_epoch_s"]))
  print("ratio = PyTorch seconds / axk seconds (above 1: axk is faster); axk's train time "
        "includes setup, compilation and checkpoints, its command also exports; projected = "
        "per-step time x the full epoch's steps")
  common.write(args.out, {"benchmark": "epoch", "machine": common.machine(),
                          "config": f"{args.config_file}:{args.variant}", "rows": rows,
                          "rounds": rounds})


if __name__ == "__main__":
  main()
