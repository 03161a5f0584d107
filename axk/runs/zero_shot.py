"""Zero-shot AuditoryBench accuracy of a decoder LM (Llama 3, Gemma 2), without training: the
entry of `configs/zero_shot.py`, and the papers' untrained LLM rows in `configs/paper.py`.

    python -m axk.main --config=configs/zero_shot.py --workdir=workdirs/llama     # LLaMA 3.1 8B
    python -m axk.main --config=configs/zero_shot.py:gemma2 --workdir=workdirs/gemma2
    python -m axk.main --config=configs/zero_shot.py:smoke --workdir=/tmp/zs      # tiny, offline

Protocol (the papers give no prompt for their LLM rows; this is the standard way to score a
cloze question with a causal LM): every option of an example is put in place of its
`[MASK]` (pitch: higher and lower; animal: the four options A-D), each resulting sentence is
tokenized as the model's tokenizer does by default (Llama 3 and Gemma 2 prepend their BOS
token) and scored by the summed log-probability of its tokens after the first
(`axk.models.decoder.log_likelihood`), and the best-scoring option is the answer (ties: the
first). No instruction or few-shot prefix is added. An animal file without option columns
has nothing to score: its rows are counted as `without_options` and left out.

Writes into the workdir: `results.json` (per task and split: accuracy, the rows scored as
`examples`, the majority baseline, and `accuracy_unseen` over the rows whose sentence the
task's train split does not hold; the protocol and the model), `results.md` (the table),
`predictions.jsonl` (per row: id, options, their scores, the answer given, the gold answer).
Sentences are scored in batches sorted by length and padded to a multiple of 16 tokens (a
few compiled shapes); a progress bar shows the rate and the time left. A workdir holding
results.json is finished: the run prints its table and exits.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Sequence

import numpy as np

from axk import tasks as tasks_lib
from axk.data import auditorybench
from axk.data import benchmark
from axk.runs import common
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


def score_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 32,
                desc: str = "scoring") -> np.ndarray:
  """Summed log-likelihood of each of `texts` (float64, in their order) under `model` (an
  `axk.hf.PretrainedDecoder`), tokenized by `tokenizer` with its default special tokens."""
  from axk.train.progress import StepBar
  ids = [tokenizer(t)["input_ids"] for t in texts]
  order = np.argsort([len(x) for x in ids], kind="stable")
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
      sums = np.asarray(model.log_likelihood(batch, mask)[0])
      out[chunk] = sums[:len(chunk)]
      bar.update(len(chunk))
  return out


def evaluate_split(model, tokenizer, examples: Sequence, batch_size: int = 32,
                   desc: str = "", train: Sequence = ()) -> tuple[dict, list[dict]]:
  """(metrics, predictions) of one split's examples; given the task's `train` examples, also
  the accuracy over the rows whose sentence train does not hold (`accuracy_unseen`)."""
  texts, example_index, option_index, without = candidate_texts(examples)
  scores = score_texts(model, tokenizer, texts, batch_size, desc or "scoring")
  picks = benchmark.candidate_answers(len(examples), np.asarray(example_index),
                                      np.asarray(option_index), scores, without)
  by_example: dict[int, list[float]] = {}
  for ex, s in zip(example_index, scores.tolist()):
    by_example.setdefault(ex, []).append(s)
  unseen = benchmark.unseen_in_train(examples, train) if train else [False] * len(examples)
  predictions, right, scored, right_unseen, scored_unseen = [], 0, 0, 0, 0
  for i, (ex, pick) in enumerate(zip(examples, picks)):
    if pick is None:
      continue
    answer = ex.options[pick]
    right += answer == ex.answer
    scored += 1
    right_unseen += unseen[i] and answer == ex.answer
    scored_unseen += unseen[i]
    predictions.append({"id": ex.id, "options": list(ex.options),
                        "scores": by_example[i], "prediction": answer, "answer": ex.answer})
  rate = lambda k, n: 100.0 * k / n if n else float("nan")
  metrics = {"accuracy": rate(right, scored), "examples": scored,
             "without_options": len(without),
             "majority": benchmark.majority_baseline([e for e in examples if e.options])}
  if train:
    metrics.update(accuracy_unseen=rate(right_unseen, scored_unseen),
                   examples_unseen=scored_unseen)
  return metrics, predictions


DTYPES = ("float32", "bfloat16", "float16")


def validate(config) -> None:
  """One `ConfigError` line for a field that cannot work, before anything loads."""
  from axk.data.types import SPLITS
  unknown = [t for t in config.data.tasks if t not in tasks_lib.names()]
  if unknown or not config.data.tasks:
    raise common.ConfigError(f"--config.data.tasks={tuple(config.data.tasks)}: "
                             f"{unknown or 'empty'}; known: {', '.join(tasks_lib.names())}.")
  bad = [s for s in config.data.splits if s not in SPLITS]
  if bad or not config.data.splits:
    raise common.ConfigError(f"--config.data.splits={tuple(config.data.splits)}: "
                             f"{bad or 'empty'}; known: {', '.join(SPLITS)}.")
  if config.model.dtype not in DTYPES:
    raise common.ConfigError(f"--config.model.dtype={config.model.dtype}: one of "
                             f"{', '.join(DTYPES)}.")
  if int(config.batch_size) < 1:
    raise common.ConfigError(f"--config.batch_size={config.batch_size}: at least 1.")
  if config.model.tiny not in ("", "llama", "gemma2"):
    raise common.ConfigError(f"--config.model.tiny={config.model.tiny}: '' (model.init), "
                             "llama or gemma2.")
  if not config.model.tiny and not config.model.init:
    raise common.ConfigError("--config.model.init is empty: a Llama or Gemma 2 checkpoint "
                             "folder or hub id.")


def table(results: dict, model_name: str) -> str:
  lines = [f"Zero-shot accuracy (%) of `{model_name}`: {PROTOCOL}.", "",
           "| task | split | accuracy | rows | majority |", "| --- | --- | --- | --- | --- |"]
  for task, splits in results.items():
    for split, m in splits.items():
      lines.append(f"| {task} | {split} | {m['accuracy']:.2f} | {m['examples']} | "
                   f"{m['majority']:.2f} |")
  return "\n".join(lines) + "\n"


def _model_path(config, workdir: str, data: dict) -> str:
  """The checkpoint to score with: `model.init`, or (`model.tiny`: "llama" or "gemma2") a tiny
  random model of that family with a word-level tokenizer over the data's words, built once
  in `<workdir>/model`."""
  if not config.model.tiny:
    return config.model.init
  from axk.features import tiny
  path = os.path.join(workdir, "model")
  if not os.path.exists(os.path.join(path, "config.json")):
    words = {w for splits in data.values() for d in splits.values() for ex in d.examples
             for w in re.findall(r"\w+", " ".join((ex.sentence, *ex.options)))}
    with files.atomic_dir(path) as tmp:
      tiny.build_decoder(tmp, sorted(words), family=str(config.model.tiny),
                         seed=int(config.seed))
  return path


def run(config, workdir: str) -> bool:
  """The entry of `configs/zero_shot.py` (see the module docstring)."""
  done = os.path.join(workdir, "results.json")
  if os.path.exists(done):
    logging.info("%s holds a finished zero-shot run (results.json).", workdir)
    return True
  validate(config)
  data_dir = auditorybench.resolve_data_dir(config.data.dir, config.data.cache_dir or None,
                                            config.data.revision)
  data = {t: auditorybench.load_task(data_dir, t, list(config.data.splits),
                                     keep_missing_spans=True) for t in config.data.tasks}
  # Train is not scored; its sentences tell which rows are unseen (`accuracy_unseen`).
  train = {t: (auditorybench.load_split(data_dir, t, "train", keep_missing_spans=True).examples
               if auditorybench.split_path(data_dir, t, "train").exists() else ())
           for t in config.data.tasks}
  path = _model_path(config, workdir, data)

  import transformers
  from axk import hf
  t0 = time.perf_counter()
  model = hf.load_decoder(path, dtype=config.model.dtype, param_dtype=config.model.dtype)
  tokenizer = transformers.AutoTokenizer.from_pretrained(model.path)
  logging.info("Loaded %s (%s, %s) in %.1f s.", path, model.config.model_type,
               config.model.dtype, time.perf_counter() - t0)
  files.write_json(os.path.join(workdir, "config.json"), config.to_dict())

  results, predictions = {}, []
  for task in config.data.tasks:
    for split, split_data in data[task].items():
      metrics, preds = evaluate_split(model, tokenizer, split_data.examples,
                                      int(config.batch_size), desc=f"{task}/{split}",
                                      train=train[task])
      results.setdefault(task, {})[split] = metrics
      predictions += preds
  files.write_text(os.path.join(workdir, "predictions.jsonl"),
                   "".join(json.dumps(p) + "\n" for p in predictions))
  files.write_text(os.path.join(workdir, "results.md"), table(results, path))
  # Last: a workdir with results.json is finished.
  files.write_json(done, {**results, "model": path, "model_type": model.config.model_type,
                          "dtype": config.model.dtype, "protocol": PROTOCOL,
                          "data_dir": data_dir}, sort_keys=False)
  return True
