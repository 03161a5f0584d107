"""The auditory span detector: which word pieces of a sentence belong to an auditory span.

With `train.labels` (a JSON-lines file of sentences and spans that any labeller wrote,
`axk.data.spans.read_labels`) it learns from that file's train rows instead of
AuditoryBench's, and is scored and selected on its dev rows (results key `labels/dev`).

BERT (or RoBERTa) token classification with two labels (0 outside, 1 inside), trained on the gold spans
of all configured tasks together (or of those in `train.tasks`; evaluated on every task).
Loss and metrics ignore special and padding tokens. Contiguous positive tokens form a
predicted span; its text is cut from the sentence by character offsets. Metrics: token F1 of
the positive class, and span exact-match precision, recall and F1 (a predicted span counts
when its first and last tokens equal a gold span's). Predictions and metrics cover every
split, train included (the spans later runs train on).
"""

from __future__ import annotations

import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from axk import hf
from axk import provenance
from axk.data import encode as enc
from axk.data import spans as spans_lib
from axk.data import types
from axk.models import bert as bert_lib
from axk.runs import common
from axk.train import loop

LABELS = {0: "O", 1: "SPAN"}


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
  """Maximal runs of True in a 1-D array as (first, last) index pairs."""
  out, start = [], None
  for i, f in enumerate(np.asarray(flags).tolist() + [False]):
    if f and start is None:
      start = i
    elif not f and start is not None:
      out.append((start, i - 1))
      start = None
  return out


def gold_runs(span_ids: np.ndarray) -> list[tuple[int, int]]:
  """Token (first, last) of each gold span, from `span_ids` (k on the k-th span)."""
  out = []
  for k in sorted(set(np.asarray(span_ids).tolist()) - {0}):
    out += runs(span_ids == k)
  return out


def span_metrics(pred: np.ndarray, arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Token F1 and span exact-match P/R/F1 (percent) of predictions [N, L]."""
  labels = arrays["span_labels"][:, :pred.shape[1]]
  valid = labels != enc.IGNORE
  tp = float(((pred == 1) & (labels == 1) & valid).sum())
  fp = float(((pred == 1) & (labels == 0) & valid).sum())
  fn = float(((pred != 1) & (labels == 1) & valid).sum())
  span_tp = span_pred = span_gold = 0
  for i in range(len(pred)):
    predicted = set(runs((pred[i] == 1) & valid[i]))
    gold = set(gold_runs(arrays["span_ids"][i][:pred.shape[1]]))
    span_tp += len(predicted & gold)
    span_pred += len(predicted)
    span_gold += len(gold)

  def f1(p, r):
    return 2 * p * r / (p + r) if p + r else 0.0

  tp_, tr = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
  sp, sr = span_tp / max(span_pred, 1), span_tp / max(span_gold, 1)
  return {"token_f1": 100 * f1(tp_, tr), "token_precision": 100 * tp_,
          "token_recall": 100 * tr, "span_precision": 100 * sp, "span_recall": 100 * sr,
          "span_f1": 100 * f1(sp, sr), "examples": len(pred)}


def train_tasks_of(config) -> tuple[str, ...]:
  """The tasks the detector learns from: `train.tasks`, each one of `data.tasks` (empty:
  all of them); ConfigError naming the field otherwise."""
  names = tuple(config.data.tasks)
  chosen = tuple(config.train.get("tasks") or ()) or names
  stray = [t for t in chosen if t not in names]
  if stray:
    raise common.ConfigError(f"--config.train.tasks={chosen}: {stray[0]!r} is not in "
                             f"--config.data.tasks={names}.")
  return chosen


class SpanTask:
  """`axk.train.loop.Experiment` of the span detector."""

  name = "span detector"
  selection = "mean/dev/token_f1"

  def __init__(self, config, workdir: str):
    self.config = config
    self.path = common.model_dir(config, workdir)
    self.bert_config = common.bert_config(config, self.path, num_labels=len(LABELS))
    self.tokenizer = enc.load_tokenizer(self.path)
    self.module = bert_lib.Bert(self.bert_config, head="token_classification")
    # Predictions cover every row the masked-word tasks read, rows whose gold span is not
    # in the sentence included; training and metrics use the rows with all their gold spans.
    data = common.load_data(config, keep_missing_spans=True)
    max_length = config.data.max_length
    train_tasks = train_tasks_of(config)
    if len(train_tasks) == 1 and len(data) > 1:  # Selected on the task it learns.
      self.selection = f"{train_tasks[0]}/dev/token_f1"
    self.examples, self.eval_arrays, self.scored = {}, {}, {}
    labels_file = config.train.get("labels", "")
    if labels_file:
      # Any labeller's spans (`spans_lib.read_labels`): it learns from their train rows
      # alone, is scored on their dev and test rows, selected on their dev rows.
      rows = spans_lib.read_labels(labels_file)
      train = [e for e in rows if e.split == "train"]
      for split in ("dev", "test"):
        held = [e for e in rows if e.split == split]
        if held:
          key = f"{spans_lib.LABELS_TASK}/{split}"
          self.examples[key] = held
          self.eval_arrays[key] = {"all": enc.encode_spans(held, self.tokenizer,
                                                           max_length=max_length)}
          self.scored[key] = np.arange(len(held), dtype=np.int64)
      if f"{spans_lib.LABELS_TASK}/dev" in self.examples:
        self.selection = f"{spans_lib.LABELS_TASK}/dev/token_f1"
      self.train_arrays = enc.encode_spans(train, self.tokenizer, max_length=max_length)
    else:
      train = [e for t in train_tasks for e in data[t]["train"].complete()]
      self.train_arrays = enc.encode(train, self.tokenizer, max_length=max_length,
                                     protocol="single")
    self.train_ids = [e.id for e in train]
    # Evaluation splits, then train: its predicted spans are the training spans of the runs
    # that read them (ITH's published code runs the detector on every split). Only dev
    # evaluations run during training; train is predicted once, at the end.
    keys = common.eval_keys(data) + [f"{t}/train" for t in data]
    for key in keys:
      task, split = key.split("/")
      self.examples[key] = data[task][split].examples
      # One encoding of every row (predictions); metrics read the rows with all their gold
      # spans (`scored`).
      self.eval_arrays[key] = {"all": enc.encode(self.examples[key], self.tokenizer,
                                                 max_length=max_length, protocol="single")}
      missing = data[task][split].missing_spans
      self.scored[key] = np.asarray([i for i, e in enumerate(self.examples[key])
                                     if e.id not in missing], np.int64)

  def init_params(self, rng):
    return bert_lib.init_params(self.module, rng)

  def logical_axes(self):
    return bert_lib.logical_axes(self.module)

  def pretrained_params(self):
    if self.config.model.tiny:  # The tiny model's weights are random: init as usual.
      return None
    return jax.device_get(hf.load_params(self.path, self.module))

  def loss(self, params, batch, rng):
    logits = self.module.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                               batch["token_type_ids"], deterministic=False,
                               rngs={"dropout": rng})["logits"]
    labels = batch["span_labels"]
    valid = labels != enc.IGNORE
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
    loss = jnp.sum(losses * valid) / jnp.maximum(valid.sum(), 1)
    accuracy = jnp.sum((logits.argmax(-1) == labels) * valid) / jnp.maximum(valid.sum(), 1)
    return loss, {"token_accuracy": accuracy}

  def predict(self, params, batch):
    logits = self.module.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                               batch["token_type_ids"])["logits"]
    return {"pred": logits.argmax(-1).astype(jnp.int32)}

  def evaluate(self, key, views, outputs):
    rows = self.scored[key]
    return span_metrics(outputs["all"]["pred"][rows],
                        {k: views["all"][k][rows] for k in ("span_labels", "span_ids")})

  def predicted_spans(self, key: str, pred: np.ndarray) -> list[list[types.Span]]:
    """Spans predicted for every row of `self.examples[key]` (the "all" view)."""
    offsets = self.eval_arrays[key]["all"]["offsets"]  # (0, 0) on special and pad tokens
    return [list(spans_lib.spans_from_labels(e.sentence, offsets[i][:pred.shape[1]].tolist(),
                                             pred[i].tolist()))
            for i, e in enumerate(self.examples[key])]

  def finish(self, params, workdir, outputs):
    if jax.process_index() != 0:
      return []
    pred_dir = os.path.join(workdir, "predictions")
    os.makedirs(pred_dir, exist_ok=True)
    for key, out in outputs.items():
      spans = self.predicted_spans(key, out["all"]["pred"])
      spans_lib.write_predictions(
          os.path.join(pred_dir, key.replace("/", "_") + ".jsonl"), self.examples[key],
          {e.id: s for e, s in zip(self.examples[key], spans)})
    hf.save(params, self.bert_config, os.path.join(workdir, "export"),
            head="token_classification", tokenizer_from=self.path, id2label=LABELS)
    architecture = hf.convert.ARCHITECTURES[self.bert_config.model_type]["token_classification"]
    return ["Predicted spans: predictions/<task>_<split>.jsonl; detector: export/ "
            f"(transformers {architecture}, label 1 = inside a span)."]


def check_labels(config) -> None:
  """One line for a `train.labels` file that cannot be read or has no train rows."""
  path = config.train.get("labels", "")
  if not path:
    return
  try:
    rows = spans_lib.read_labels(path)
  except (OSError, ValueError) as e:
    raise common.ConfigError(f"--config.train.labels: {e}") from None
  if not any(e.split == "train" for e in rows):
    raise common.ConfigError(f"--config.train.labels={path}: no row of split 'train'.")


def run(config, workdir: str):
  if not workdir:
    raise common.ConfigError("--workdir is required.")
  common.check_config(config)
  train_tasks_of(config)
  check_labels(config)
  done = loop.finished_results(config, workdir)
  if done is not None:  # Finished before with this config.
    return done
  task = SpanTask(config, workdir)
  # The exact data commit and model revisions this run reads (axk/provenance.py).
  stamp = {provenance.REVISIONS_KEY: provenance.collect(config)}
  return loop.train_and_evaluate(config, workdir, task, stamp=stamp)
