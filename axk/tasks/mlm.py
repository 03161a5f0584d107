"""What AudioBERT and ITH share: masked-word prediction on AuditoryBench with span audio.

Spans: the features' spans when features are given (they were built from gold spans for
train and, by default, from the detector's predictions for evaluation); without features,
gold spans for train and `config.spans.predictions` (the detector's JSON lines) or gold spans
for evaluation. Audio: each span's pooled AST vector (AudioBERT) or AST tokens (ITH) from the
feature shards; spans without accepted audio carry `span_has_audio = 0`.

Evaluation, per task and split:
  * paper protocol (`accuracy`): pitch by the higher/lower logits at `[MASK]`; animal by exact
    match of every word piece of the answer over the full vocabulary, with `[MASK]` repeated
    to the answer's length as the published code does (the input leaks the answer's length).
  * candidate protocol (`accuracy_candidates`, leak-free): every option (animal A-D, pitch
    higher/lower) gets its own input with as many masks as it has pieces and is scored by the
    sum of its pieces' log-probabilities; the best option is the prediction.
  * `majority`: accuracy of always giving the split's most frequent answer.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Mapping, Sequence

import flax.linen as nn
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
from axk.tasks import common
from axk.tasks import stages
from axk.train import loop
from axk.train import metrics as metrics_lib


class FeaturesError(ValueError):
  """Feature shards or span predictions that do not fit the data (missing example, other
  sentence)."""


def _span_arrays(spans: Sequence[Sequence[dict]], max_spans: int, audio_dim: int,
                 audio_tokens: int, with_tokens: bool) -> dict[str, np.ndarray]:
  n = len(spans)
  s = max(1, min(max_spans, max((len(x) for x in spans), default=0)))
  out = {"span_has_audio": np.zeros((n, s), np.int32),
         "span_audio": np.zeros((n, s, audio_dim), np.float16)}
  if with_tokens:
    out["span_audio_tokens"] = np.zeros((n, s, audio_tokens, audio_dim), np.float16)
  for i, row in enumerate(spans):
    for j, span in enumerate(row[:s]):
      if span.get("has_audio"):
        out["span_has_audio"][i, j] = 1
        out["span_audio"][i, j] = span["ast_pooled"]
        if with_tokens:
          out["span_audio_tokens"][i, j] = span["ast_tokens"]
  return out


class MaskedWordTask:
  """Base of the AudioBERT and ITH tasks; subclasses define the model and its inputs."""

  selection = "mean/dev/accuracy"
  uses_audio_tokens = False  # ITH reads AST token sequences, AudioBERT pooled vectors.

  def __init__(self, config, workdir: str):
    common.check_config(config)
    self.config = config
    self.path = common.model_dir(config, workdir)
    self.tokenizer = enc.load_tokenizer(self.path)
    self.bert_config = common.bert_config(config, self.path)
    self.features_dir = config.features.dir
    self.audio_dim = config.features.audio_dim
    self.audio_tokens = config.features.audio_tokens
    manifest = _read_manifest(self.features_dir) if self.features_dir else None
    if manifest:  # The shards' dimensions win over the config's.
      dims = manifest.get("dims", {})
      self.audio_dim = int(dims.get("ast", self.audio_dim))
      self.audio_tokens = int(dims.get("num_audio_tokens", self.audio_tokens))
    self.module = self.build_module()
    self.bert_module = bert_lib.Bert(self.bert_config, head="mlm")
    self.data = data = common.load_data(config, keep_missing_spans=True)
    if manifest:  # Refuse features built from other CSV files than these.
      from axk.features.shards import check_manifest
      check_manifest(manifest, csv_sha256={f"{t}/{s}": d.sha256 for t, splits in data.items()
                                           for s, d in splits.items()},
                     data_revision=provenance.data_record(config.data)["revision"])

    train = [e for t in data.values() for e in t["train"].examples]
    self.train_ids = [e.id for e in train]
    self.train_arrays = self.encode(train, "paper")
    self.examples, self.eval_arrays = {}, {}
    for key in common.eval_keys(data):
      task, split = key.split("/")
      self.examples[key] = data[task][split].examples
      self.eval_arrays[key] = {"paper": self.encode(self.examples[key], "paper"),
                               "candidates": self.encode(self.examples[key], "candidates")}
    self.majority = {key: common.majority_baseline(ex) for key, ex in self.examples.items()}
    self.pitch_ids = [enc.answer_pieces(self.tokenizer, w)[0] for w in types.PITCH_OPTIONS]

  # -- to define in subclasses ---------------------------------------------------------------
  def build_module(self):
    raise NotImplementedError

  def inputs(self, batch) -> tuple:
    """The module's positional inputs taken from a batch."""
    raise NotImplementedError

  def export(self, params, out_dir: str) -> list[str]:
    raise NotImplementedError

  # -- data ----------------------------------------------------------------------------------
  def spans_of(self, examples: Sequence[types.Example]) -> list[list[dict]]:
    """Per example, span dicts (start, end, text, has_audio, ast_pooled, ast_tokens)."""
    return [self._spans_of_split(e.task, e.split)(e) for e in examples]

  def _spans_of_split(self, task: str, split: str):
    """A function example -> its span dicts, for one (task, split); sources read once."""
    cache = self.__dict__.setdefault("_span_sources", {})
    if (task, split) in cache:
      return cache[task, split]
    if self.features_dir:
      from axk.features.shards import load_features  # torch-free reader
      features = load_features(self.features_dir, task, split)

      def source(e):
        row = features.get(e.id)
        if row is None:
          raise FeaturesError(f"{self.features_dir}: no features for {e.id}; the features "
                              "were built from other data.")
        if row.get("sentence", e.sentence) != e.sentence:
          raise FeaturesError(f"{self.features_dir}: {e.id} has another sentence in the "
                              "features than in the data.")
        return sorted(row["spans"], key=lambda s: s["start"])
    elif split != "train" and self.config.spans.predictions:
      path = spans_lib.predictions_path(self.config.spans.predictions, task, split)
      if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no span predictions (--config.spans.predictions "
                                "names the span detector's predictions/ folder).")
      try:
        predicted = spans_lib.read_predictions(path, self.data[task][split].examples,
                                               strict=True)
      except ValueError as e:
        raise FeaturesError(str(e)) from None

      def source(e):
        return [{"start": s.start, "end": s.end, "text": s.text} for s in predicted[e.id]]
    else:
      def source(e):
        return [{"start": s.start, "end": s.end, "text": s.text} for s in e.spans]
    cache[task, split] = source
    return source

  def encode(self, examples: Sequence[types.Example], protocol: str) -> dict[str, np.ndarray]:
    spans = self.spans_of(examples)
    as_spans = [[types.Span(int(s["start"]), int(s["end"]), str(s["text"])) for s in row]
                for row in spans]
    max_length = self.config.data.max_length
    if protocol == "candidates":
      arrays = enc.encode_candidates(examples, self.tokenizer, max_length=max_length,
                                     spans=as_spans)
    else:
      arrays = enc.encode(examples, self.tokenizer, max_length=max_length, protocol=protocol,
                          spans=as_spans)
    rows = arrays["example_index"]
    extra = _span_arrays([spans[i] for i in rows], self.config.data.max_spans, self.audio_dim,
                         self.audio_tokens, self.uses_audio_tokens)
    arrays.update(extra)
    # Span ids beyond max_spans are dropped, so no token points at a missing span.
    s = extra["span_has_audio"].shape[1]
    arrays["span_ids"] = np.where(arrays["span_ids"] > s, 0, arrays["span_ids"])
    has_span = (arrays["span_ids"] > 0).any(axis=1)
    has_audio = extra["span_has_audio"].any(axis=1)
    gate = {"span_audio": has_audio, "span": has_span, "always": np.ones_like(has_span)}
    arrays["lora_gate"] = gate[self.config.model.lora_gate].astype(np.float32)
    return arrays

  # -- the loop's interface --------------------------------------------------------------------
  def apply(self, params, batch, *, deterministic, rngs=None):
    """Masked-LM logits at `batch["mask_positions"]`: [batch, masks, vocab]."""
    return self.module.apply({"params": params}, *self.inputs(batch),
                             positions=batch["mask_positions"], deterministic=deterministic,
                             rngs=rngs)["logits"]

  def _init_boxed(self, rng):
    row = {k: jnp.asarray(v[:1]) for k, v in self.train_arrays.items()}
    return self.module.init(rng, *self.inputs(row), positions=row["mask_positions"])["params"]

  def init_params(self, rng):
    return nn.meta.unbox(self._init_boxed(rng))

  def logical_axes(self):
    return nn.get_partition_spec(jax.eval_shape(self._init_boxed, jax.random.key(0)))

  def pretrained_params(self):
    if self.config.model.tiny:
      return None
    # The heads and audio modules start random; the BERT subtree comes from the checkpoint.
    params = jax.device_get(jax.jit(self.init_params)(jax.random.key(self.config.seed)))
    params["bert"] = jax.device_get(hf.load_params(self.path, self.bert_module))
    return params

  def loss(self, params, batch, rng):
    logits = self.apply(params, batch, deterministic=False, rngs={"dropout": rng})
    labels = jnp.take_along_axis(batch["mlm_labels"], batch["mask_positions"], axis=1)
    valid = jnp.arange(labels.shape[1])[None, :] < batch["mask_count"][:, None]
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.where(valid, labels, 0))
    loss = jnp.sum(losses * valid) / jnp.maximum(valid.sum(), 1)
    return loss, {"audio_spans": batch["span_has_audio"].sum() / labels.shape[0]}

  def predict(self, params, batch):
    logits = self.apply(params, batch, deterministic=True)
    logp = jax.nn.log_softmax(logits, axis=-1)
    labels = jnp.take_along_axis(batch["mlm_labels"], batch["mask_positions"], axis=1)
    valid = jnp.arange(labels.shape[1])[None, :] < batch["mask_count"][:, None]
    label_logp = jnp.take_along_axis(logp, jnp.maximum(labels, 0)[..., None], -1)[..., 0]
    return {"argmax": jnp.where(valid, logits.argmax(-1), -1).astype(jnp.int32),
            "labels": jnp.where(valid, labels, -1).astype(jnp.int32),
            "label_logprob": jnp.sum(jnp.where(valid, label_logp, 0.0), axis=1),
            "pitch_logits": logits[:, 0, jnp.asarray(self.pitch_ids)]}

  def answers(self, key, views, outputs) -> list[dict]:
    """Per example: its answer, the paper protocol's and the candidate protocol's
    prediction, and whether each is right."""
    examples = self.examples[key]
    paper = outputs["paper"]
    if key.split("/")[0] == "pitch":
      predicted = [types.PITCH_OPTIONS[i] for i in paper["pitch_logits"].argmax(-1)]
      correct = [p == e.answer for p, e in zip(predicted, examples)]
    else:  # Every word piece right; the decoded pieces are shown.
      predicted = [self.tokenizer.decode([t for t in row if t >= 0]) for row in paper["argmax"]]
      correct = list((paper["argmax"] == paper["labels"]).all(axis=1))
    rows = views["candidates"]
    best = {}
    for ex, opt, score in zip(rows["example_index"], rows["option_index"],
                              outputs["candidates"]["label_logprob"]):
      if ex not in best or score > best[ex][1]:
        best[ex] = (int(opt), score)
    return [{"id": e.id, "answer": e.answer, "predicted": p, "correct": bool(c),
             "predicted_candidate": e.options[best[i][0]],
             "correct_candidate": best[i][0] == e.label}
            for i, (e, p, c) in enumerate(zip(examples, predicted, correct))]

  def evaluate(self, key, views, outputs):
    answers = self.answers(key, views, outputs)
    with_audio = float(views["paper"]["span_has_audio"].any(axis=1).mean())
    return {"accuracy": 100 * float(np.mean([a["correct"] for a in answers])),
            "accuracy_candidates": 100 * float(np.mean([a["correct_candidate"]
                                                        for a in answers])),
            "majority": self.majority[key], "examples": len(answers),
            "with_audio": 100 * with_audio}

  def finish(self, params, workdir, outputs):
    notes = ["accuracy: the paper protocol; for animal it repeats [MASK] to the gold answer's "
             "length, so the input leaks that length. accuracy_candidates: leak-free "
             "(each option scored by the log-probability of its word pieces).",
             "majority: always answering the split's most frequent answer. with_audio: % of "
             "examples with at least one span with audio."]
    if jax.process_index() == 0:
      for key, out in outputs.items():
        answers = self.answers(key, self.eval_arrays[key], out)
        metrics_lib.write_text(
            os.path.join(workdir, "predictions", key.replace("/", "_") + ".jsonl"),
            "".join(json.dumps(a) + "\n" for a in answers))
      notes += self.export(params, os.path.join(workdir, "export"))
    return notes


def _read_manifest(features_dir: str) -> dict:
  from axk.features.shards import read_manifest
  return read_manifest(features_dir)


def run_seeds(config, workdir: str, make_task) -> dict:
  """Trains once per seed in `config.seeds`; results are the mean and standard deviation.

  One seed: everything goes to `workdir`. Several: each run to `workdir/seed_<s>`, and
  `workdir/results.json` / `results.md` hold `<metric>` (mean) and `<metric>_std`.
  """
  if not workdir:
    raise common.ConfigError("--workdir is required.")
  seeds = list(config.seeds) if config.get("seeds") else [config.seed]
  if len(seeds) == 1:
    config.seed = seeds[0]
    return loop.train_and_evaluate(config, workdir, make_task(config, workdir))
  runs = []
  for seed in seeds:
    c = config.copy_and_resolve_references()
    c.seed = seed
    sub = os.path.join(workdir, f"seed_{seed}")
    runs.append(loop.train_and_evaluate(c, sub, make_task(c, sub)))
  if not all(runs):  # An interrupted seed: rerun the command to continue.
    return {}
  merged = {}
  for task, splits in runs[0].items():
    for split, metrics in splits.items():
      out = merged.setdefault(task, {}).setdefault(split, {})
      for m in metrics:
        values = [r[task][split][m] for r in runs]
        out[m] = float(np.mean(values))
        if m not in ("examples", "majority"):
          out[m + "_std"] = float(np.std(values))
  metrics_lib.write_json(os.path.join(workdir, "results.json"),
                         {**merged, provenance.REVISIONS_KEY: provenance.collect(config)})
  metrics_lib.write_text(os.path.join(workdir, "results.md"), metrics_lib.results_markdown(
      f"{config.get('name', 'run')}: mean over seeds {seeds}", merged,
      [f"Per-seed runs in seed_<s>/; *_std is the standard deviation over {len(seeds)} seeds."]))
  return merged


def run(config, workdir: str, make_task) -> dict:
  """Runs the stages a config asks for, then trains (per task, when the config says so).

  With `train.separate_tasks` and several tasks, each task trains its own model in
  `workdir/<task>` with its learning rate from `train.task_learning_rates`; `results.json`
  holds both.
  """
  if not workdir:
    raise common.ConfigError("--workdir is required.")
  common.check_config(config)
  stages.prepare(config, workdir)
  tasks = list(config.data.tasks)
  if not (config.train.get("separate_tasks") and len(tasks) > 1):
    return run_seeds(config, workdir, make_task)
  merged = {}
  for t in tasks:
    c = config.copy_and_resolve_references()
    c.data.tasks = (t,)
    c.train.learning_rate = dict(config.train.task_learning_rates).get(t, c.train.learning_rate)
    result = run_seeds(c, os.path.join(workdir, t), make_task)
    if not result:
      return {}
    merged.update(result)
  metrics_lib.write_json(os.path.join(workdir, "results.json"),
                         {**merged, provenance.REVISIONS_KEY: provenance.collect(config)})
  parts = [open(os.path.join(workdir, t, "results.md")).read() for t in tasks]
  metrics_lib.write_text(os.path.join(workdir, "results.md"), "\n".join(parts))
  return merged
