"""Zero-shot AuditoryBench accuracy of a decoder LM (Llama 3, Gemma 2), without training.

    python -m axk.runs.zero_shot --model=meta-llama/Llama-3.1-8B --out=DIR
    python -m axk.runs.zero_shot --model=/path/to/gemma-2-2b --data=/path/to/auditorybench \\
        --tasks=pitch --splits=test --dtype=bfloat16 --out=DIR

Protocol (the papers give no prompt for their LLM rows; this is the standard way to score a
cloze question with a causal LM): every option of an example is put in place of its
`[MASK]` (pitch: higher and lower; animal: the four options A-D), each resulting sentence is
tokenized as the model's tokenizer does by default (Llama 3 and Gemma 2 prepend their BOS
token) and scored by the summed log-probability of its tokens after the first
(`axk.models.decoder.log_likelihood`), and the best-scoring option is the answer (ties: the
first). No instruction or few-shot prefix is added. An animal file without option columns
has nothing to score: its rows are counted as `without_options` and left out.

Writes into `--out`: `results.json` (accuracy, rows and the majority baseline per task and
split, the protocol, the model and its revision record), `results.md` (the table),
`predictions.jsonl` (per row: id, options, their scores, the answer given, the gold answer).
Sentences are scored in batches sorted by length and padded to a multiple of 16 tokens (a
few compiled shapes); a progress bar shows the rate and the time left.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from axk import tasks as tasks_lib
from axk.data import auditorybench
from axk.data import benchmark
from axk.models import decoder as decoder_lib
from axk.utils import files

PAD_MULTIPLE = 16
PROTOCOL = ("each option in place of [MASK]; the sentence's summed token log-likelihood "
            "after the first token (the tokenizer's default special tokens); the best-scoring "
            "option is the answer")


def candidate_texts(examples: Sequence) -> tuple[list[str], list[int], list[int], list[int]]:
  """Every (example, option) sentence: (texts, example index, option index, examples
  without options)."""
  texts, example_index, option_index, without = [], [], [], []
  for i, ex in enumerate(examples):
    if not ex.options:
      without.append(i)
    for j, option in enumerate(ex.options):
      texts.append(ex.sentence.replace("[MASK]", option, 1))
      example_index.append(i)
      option_index.append(j)
  return texts, example_index, option_index, without


def scorer(module: decoder_lib.Decoder):
  """A jitted `(params, input_ids, attention_mask) -> summed log-likelihood per row`."""

  @jax.jit
  def score(params, input_ids, attention_mask):
    logits = module.apply({"params": params}, input_ids, attention_mask)["logits"]
    return decoder_lib.log_likelihood(logits, input_ids, attention_mask)[0]

  return score


def score_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 32,
                desc: str = "scoring") -> np.ndarray:
  """Summed log-likelihood of each of `texts` (float64, in their order) under `model` (an
  `axk.hf.PretrainedDecoder`), tokenized by `tokenizer` with its default special tokens."""
  from axk.train.progress import StepBar
  ids = [tokenizer(t)["input_ids"] for t in texts]
  order = np.argsort([len(x) for x in ids], kind="stable")
  score = scorer(model.module)
  out = np.zeros(len(texts), np.float64)
  with StepBar(total=len(texts), desc=desc, unit="sentence") as bar:
    for start in range(0, len(texts), batch_size):
      chunk = order[start:start + batch_size]
      width = -(-max(len(ids[i]) for i in chunk) // PAD_MULTIPLE) * PAD_MULTIPLE
      # Every batch has `batch_size` rows (empty rows score 0 and are dropped): one shape per
      # padded length.
      batch = np.zeros((batch_size, width), np.int32)
      mask = np.zeros((batch_size, width), np.int32)
      for row, i in enumerate(chunk):
        batch[row, :len(ids[i])] = ids[i]
        mask[row, :len(ids[i])] = 1
      sums = np.asarray(score(model.params, jnp.asarray(batch), jnp.asarray(mask)))
      out[chunk] = sums[:len(chunk)]
      bar.update(len(chunk))
  return out


def evaluate_split(model, tokenizer, examples: Sequence, batch_size: int = 32,
                   desc: str = "") -> tuple[dict, list[dict]]:
  """(metrics, predictions) of one split's examples."""
  texts, example_index, option_index, without = candidate_texts(examples)
  scores = score_texts(model, tokenizer, texts, batch_size, desc or "scoring")
  picks = benchmark.candidate_answers(len(examples), np.asarray(example_index),
                                      np.asarray(option_index), scores, without)
  by_example: dict[int, list[float]] = {}
  for ex, s in zip(example_index, scores.tolist()):
    by_example.setdefault(ex, []).append(s)
  predictions, right, scored = [], 0, 0
  for i, (ex, pick) in enumerate(zip(examples, picks)):
    if pick is None:
      continue
    answer = ex.options[pick]
    right += answer == ex.answer
    scored += 1
    predictions.append({"id": ex.id, "options": list(ex.options),
                        "scores": by_example[i], "prediction": answer, "answer": ex.answer})
  metrics = {"accuracy": 100.0 * right / scored if scored else float("nan"), "rows": scored,
             "without_options": len(without),
             "majority": benchmark.majority_baseline([e for e in examples if e.options])}
  return metrics, predictions


def table(results: dict, model_name: str) -> str:
  lines = [f"Zero-shot accuracy (%) of `{model_name}`: {PROTOCOL}.", "",
           "| task | split | accuracy | rows | majority |", "| --- | --- | --- | --- | --- |"]
  for key, m in results.items():
    task, split = key.split("/")
    lines.append(f"| {task} | {split} | {m['accuracy']:.2f} | {m['rows']} | "
                 f"{m['majority']:.2f} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", required=True,
                      help="a Llama or Gemma 2 checkpoint folder or hub id (with its tokenizer)")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--data", default="", help="AuditoryBench folder (default: as a run's "
                      "data.dir: the cache, downloading with network)")
  parser.add_argument("--tasks", default="animal,pitch")
  parser.add_argument("--splits", default="dev,test,wiki")
  parser.add_argument("--batch", type=int, default=32, help="sentences per call")
  parser.add_argument("--dtype", default="bfloat16",
                      help="parameter and compute dtype (float32 for exact comparisons)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")

  # Everything that can be wrong is checked before the model loads.
  names = [t for t in args.tasks.split(",") if t]
  unknown = [t for t in names if t not in tasks_lib.names()]
  if unknown:
    parser.error(f"--tasks: no task {', '.join(unknown)}; known: {', '.join(tasks_lib.names())}")
  splits = [s for s in args.splits.split(",") if s]
  try:
    data_dir = auditorybench.resolve_data_dir(args.data or None)
    data = {t: auditorybench.load_task(data_dir, t, splits, keep_missing_spans=True)
            for t in names}
  except auditorybench.DataError as e:
    raise SystemExit(f"error: {e}") from None

  import transformers
  from axk import hf
  t0 = time.perf_counter()
  try:
    model = hf.load_decoder(args.model, dtype=args.dtype, param_dtype=args.dtype)
  except hf.CheckpointError as e:
    raise SystemExit(f"error: {e}") from None
  tokenizer = transformers.AutoTokenizer.from_pretrained(model.path)
  logging.info("loaded %s (%s) in %.1f s", args.model, model.config.model_type,
               time.perf_counter() - t0)

  results, predictions = {}, []
  for task in names:
    for split, split_data in data[task].items():
      metrics, preds = evaluate_split(model, tokenizer, split_data.examples, args.batch,
                                      desc=f"{task}/{split}")
      results[f"{task}/{split}"] = metrics
      predictions += preds
  os.makedirs(args.out, exist_ok=True)
  files.write_json(os.path.join(args.out, "results.json"), {
      "model": args.model, "model_path": model.path, "model_type": model.config.model_type,
      "dtype": args.dtype, "protocol": PROTOCOL, "data_dir": data_dir, "results": results},
      sort_keys=False)
  files.write_text(os.path.join(args.out, "predictions.jsonl"),
                   "".join(json.dumps(p) + "\n" for p in predictions))
  text = table(results, args.model)
  files.write_text(os.path.join(args.out, "results.md"), text)
  print(text)


if __name__ == "__main__":
  main()
