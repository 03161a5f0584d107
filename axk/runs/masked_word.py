"""Masked-word prediction on AuditoryBench with span audio: the run of AudioBERT and ITH.

The method is the registered `axk.methods.Method` named by `config.model.name` ("audiobert",
"ith", or a module that registers one, e.g. "mylab.my_fusion"): its `model_class` is built as
`Model(bert_config, audio_dim=..., **method fields)`, the method fields being `config.model`
minus `axk.methods.BERT_FIELDS`; its `audio`, `inputs`, `lora_gate` and `export` are what the
run reads. Everything else is shared: inputs (`axk/runs/inputs.py`), the benchmark tasks'
specs and scoring (`axk.tasks`), the loop (`axk/train/loop.py`), the run-end analysis
(`axk/runs/analysis.py`) and `report.html` (`axk/report.py`). The run trains tasks whose
head is `masked_word` or `choice`.

    run(config, workdir)
      validate(config)            every field checked, before any stage (one line on error)
      stages.prepare(...)         span detector / features when "auto" (returns their paths)
      per task group and seed: MaskedWord(...) -> loop.train_and_evaluate(...)

Learning rates (`train.learning_rate`, `train.task_learning_rates`): a task trains at
`train.learning_rate` when that is nonzero, else at `train.task_learning_rates[task]`, else
at its spec's `learning_rate`; `validate` refuses a task that gets no rate. Batch sizes
(`train.batch_size`, `train.task_batch_sizes`) the same way: `train.batch_size` when nonzero,
else `train.task_batch_sizes[task]`. With `train.separate_tasks` each benchmark task trains
its own model in `<workdir>/<task>/`, selected on its own dev split; tasks trained as one
model must share one learning rate, one batch size and one warm-up.
Warm-up (`train.warmup_ratio`, `train.task_warmup_epochs`): a task with a positive
`task_warmup_epochs[task]` warms up over that many epochs' steps (ITH's pitch: 2, the
published `0.1 * 20 / epochs` of the steps), else over `warmup_ratio` of the steps.

Spans: features built at gold spans (their manifest's `spans`) for a split where the run
detects its spans (every configured split not in `spans.gold_splits`) are refused before any
stage, unless `spans.accept_gold_features`; a run that evaluates any split at gold spans says
so in every results file (`gold_spans` in results.json, a title and a note in results.md).
"""

from __future__ import annotations

import dataclasses
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
from axk import methods
from axk import provenance
from axk import report
from axk import tasks as tasks_lib
from axk.data import benchmark
from axk.data import encode as enc
from axk.models import bert as bert_lib
from axk.runs import analysis
from axk.runs import common
from axk.runs import inputs as inputs_lib
from axk.runs import stages
from axk.train import loop
from axk.train import metrics as metrics_lib
from axk.utils import files

# `train.loss_tokens`: where the masked-LM loss is taken (see `MaskedWord.loss`).
LOSS_TOKENS = ("mask", "sentence")
# The task heads (`axk.tasks.HEADS`) this run trains.
HEADS = ("masked_word", "choice")


def method_of(config) -> methods.Method:
  """The method `config.model.name` names (ConfigError naming the field otherwise)."""
  try:
    return methods.get(config.model.name)
  except methods.MethodError as e:
    raise common.ConfigError(f"--config.model.name={config.model.name!r}: {e}") from None


def method_fields(config) -> dict:
  """The method's own `config.model` fields (constructor arguments of its `Model`)."""
  return {k: v for k, v in config.model.items() if k not in methods.BERT_FIELDS}


def build_model(method: methods.Method, config, bert_config, audio_dim: int):
  """The method's `Model` from `config.model`, checked (ConfigError naming the field)."""
  try:
    return method.build(bert_config, audio_dim, **method_fields(config))
  except ValueError as e:
    raise common.ConfigError(f"--config.model.{e}") from None


def learning_rates(config) -> dict[str, float]:
  """Each configured benchmark task's learning rate (see the module docstring)."""
  tc = config.train
  table = dict(tc.task_learning_rates.items()) if "task_learning_rates" in tc else {}
  out = {}
  for t in config.data.tasks:
    rate = tc.learning_rate or table.get(t, 0.0) or tasks_lib.get(t).learning_rate
    if not rate > 0:
      raise common.ConfigError(
          f"--config.train.learning_rate={tc.learning_rate}: task {t!r} gets no learning rate "
          f"(set --config.train.learning_rate, or --config.train.task_learning_rates.{t}).")
    out[t] = float(rate)
  return out


def warmup_ratios(config) -> dict[str, float]:
  """Each configured benchmark task's warm-up, as a fraction of its steps (see the module
  docstring); one line for a `task_warmup_epochs` entry that cannot work."""
  tc = config.train
  table = dict(tc.task_warmup_epochs.items()) if "task_warmup_epochs" in tc else {}
  epochs = int(tc.epochs)
  out = {}
  for t in config.data.tasks:
    warm = float(table.get(t, 0.0))
    if warm < 0 or (warm > 0 and epochs > 0 and warm >= epochs):
      raise common.ConfigError(
          f"--config.train.task_warmup_epochs.{t}={warm}: must be in [0, train.epochs="
          f"{epochs}) (0: train.warmup_ratio of the steps).")
    out[t] = warm / epochs if warm > 0 and epochs > 0 else float(tc.warmup_ratio)
  return out


def gold_features_refused(config, manifest: Mapping) -> list[str]:
  """The splits where the run detects its spans (it has `spans.predictions` and the split is
  not in `spans.gold_splits`) but the features (their `manifest`) were built at gold spans.
  Oracle features (from the gold answers) carry their own label and are not counted."""
  if not config.spans.predictions or manifest.get("oracle"):
    return []
  gold = set(common.gold_splits(config))
  built_gold = stages.feature_splits(manifest)[1]
  return [s for s in config.data.splits if s not in gold and s in built_gold]


def check_features_spans(config) -> None:
  """One line when given features (`features.dir`) were built at gold spans for a split the
  run detects its spans on (`gold_features_refused`), unless `spans.accept_gold_features`."""
  if config.features.dir in ("", stages.AUTO) or config.spans.get("accept_gold_features"):
    return
  from axk.features.shards import read_manifest  # torch-free
  manifest = read_manifest(config.features.dir)
  refused = gold_features_refused(config, manifest)
  if refused:
    raise common.ConfigError(
        f"--config.features.dir={config.features.dir}: built at gold spans (manifest.json "
        f"spans.source={manifest.get('spans', {}).get('source')!r}) for "
        f"{', '.join(refused)}, where this run detects its spans: build them from the "
        "detector's spans (configs/features.py with --config.spans.predictions=...), or pass "
        "--config.spans.accept_gold_features=True (the results then say gold spans).")


def batch_sizes(config) -> dict[str, int]:
  """Each configured benchmark task's training batch (see the module docstring)."""
  tc = config.train
  table = dict(tc.task_batch_sizes.items()) if "task_batch_sizes" in tc else {}
  out = {}
  for t in config.data.tasks:
    size = int(tc.batch_size) or int(table.get(t, 0))
    if size <= 0:
      raise common.ConfigError(
          f"--config.train.batch_size={tc.batch_size}: task {t!r} gets no batch size "
          f"(set --config.train.batch_size, or --config.train.task_batch_sizes.{t}).")
    out[t] = size
  return out


def validate(config, workdir: str) -> None:
  """Every field of a masked-word config, checked before any stage runs (one line each)."""
  if not workdir:
    raise common.ConfigError("--workdir is required.")
  common.check_config(config)
  for t in config.data.tasks:
    head = tasks_lib.get(t).head
    if head not in HEADS:
      raise common.ConfigError(f"task {t!r} has head {head!r}; the masked-word run trains "
                               f"{' and '.join(HEADS)} heads only.")
  if config.train.get("loss_tokens", "mask") not in LOSS_TOKENS:
    raise common.ConfigError(f"--config.train.loss_tokens={config.train.loss_tokens!r}: must "
                             f"be one of {', '.join(LOSS_TOKENS)}.")
  if int(config.data.max_spans) < 1:
    raise common.ConfigError(f"--config.data.max_spans={config.data.max_spans}: must be >= 1.")
  seeds = tuple(config.seeds)
  if not seeds or len(set(seeds)) != len(seeds):
    raise common.ConfigError(f"--config.seeds={seeds}: must be distinct, at least one.")
  common.gold_splits(config)
  method = method_of(config)
  bert_config = common.bert_config_of(config)
  build_model(method, config, bert_config, int(config.features.audio_dim))
  rates, warmups = learning_rates(config), warmup_ratios(config)
  for group in task_groups(config):
    common.check_config(_for_tasks(config, group, rates, warmups))
  stages.check(config)
  check_features_spans(config)


def task_groups(config) -> list[tuple[str, ...]]:
  """The benchmark tasks each trained model covers: one model for all, or one per task."""
  tasks = tuple(config.data.tasks)
  return [(t,) for t in tasks] if config.train.get("separate_tasks") else [tasks]


GOLD_SPANS_NOTE = ("GOLD SPANS: {splits} evaluated at the CSV's gold auditory spans, not the "
                   "span detector's (as the published ITH pitch code does on every split); "
                   "not comparable to results at detected spans.")


def run_labels(config, features_dir: str, manifest: Mapping | None = None) -> dict:
  """What a results file must say about the run's inputs, first in results.json:

  `oracle` (the manifest's entry) when `features_dir` holds oracle features (built from the
  gold answers, `configs/features.py:oracle`), so that no one reads its numbers as audio's;
  `gold_spans` ({"splits", "note"}) when an evaluated split had gold spans: the features'
  (their manifest's `spans`), or without features `spans.gold_splits`.
  """
  if features_dir and manifest is None:
    from axk.features.shards import read_manifest  # torch-free
    manifest = read_manifest(features_dir)
  out = {}
  if manifest and manifest.get("oracle"):
    out["oracle"] = dict(manifest["oracle"])
  if "oracle" in out:  # Built from the gold answers at the gold spans: its label says so.
    return out
  gold = stages.feature_splits(manifest)[1] if manifest else set(common.gold_splits(config))
  evaluated = [s for s in config.data.splits if s != "train" and s in gold]
  if evaluated:
    out["gold_spans"] = {"splits": evaluated,
                         "note": GOLD_SPANS_NOTE.format(splits=", ".join(evaluated))}
  return out


def _labelled_title(title: str, labels: Mapping) -> str:
  if "oracle" in labels:
    title = f"{title}: trained on {labels['oracle']['kind'].upper()} features (not audio)"
  if "gold_spans" in labels:
    title = (f"{title}: at GOLD spans on {', '.join(labels['gold_spans']['splits'])} (not "
             "comparable to detected spans)")
  return title


def _label_notes(labels: Mapping) -> list[str]:
  return [f"**{labels[k]['note']}**" for k in ("oracle", "gold_spans") if k in labels]


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What the stages resolved: where the spans and the audio features come from."""

  spans_predictions: str = ""  # The span detector's predictions/ folder ("": gold spans).
  features_dir: str = ""  # Feature shards ("": text only).


class MaskedWord:
  """`axk.train.loop.Experiment` of a masked-word model on AuditoryBench."""

  selection = "mean/dev/accuracy"

  def __init__(self, config, workdir: str, inputs: Inputs):
    self.config = config
    self.method = method_of(config)
    self.name = config.get("name") or self.method.title
    self.path = common.model_dir(config, workdir)
    self.bert_config = common.bert_config(config, self.path)
    self.tokenizer = enc.load_tokenizer(self.path)
    self.features_dir = inputs.features_dir
    self.audio_dim, self.audio_tokens = config.features.audio_dim, config.features.audio_tokens
    features = None
    if self.features_dir:
      from axk.features.shards import check_manifest, verify  # torch-free
      manifest = verify(self.features_dir)  # sizes always, hashes when changed
      why = stages.gold_splits_differ(manifest, common.gold_splits(config))
      if why:  # Given features: their spans are the ones used.
        logging.warning("%s: %s; training uses the features' spans.", self.features_dir, why)
      dims = manifest.get("dims", {})  # The shards' dimensions win over the config's.
      self.audio_dim = int(dims.get("ast", self.audio_dim))
      self.audio_tokens = int(dims.get("num_audio_tokens", self.audio_tokens))
      ast = manifest.get("params", {}).get("ast", {})
      logging.info("Features %s: %d AST tokens a span (layout %s).",
                   self.features_dir, self.audio_tokens, ast.get("token_layout", "unrecorded"))
      features = inputs_lib.FeatureSpans(self.features_dir)
    # results.json's first entries, results.md's title and notes (oracle features, gold spans).
    self.labels = run_labels(config, self.features_dir, manifest if features else None)
    self.name = _labelled_title(self.name, self.labels)
    self.model = build_model(self.method, config, self.bert_config, self.audio_dim)
    self.bert_module = bert_lib.Bert(self.bert_config, head="mlm")
    self.data = data = common.load_data(config, keep_missing_spans=True)
    if self.features_dir:  # Refuse features built from other CSV files than these.
      check_manifest(manifest, csv_sha256={f"{t}/{s}": d.sha256 for t, splits in data.items()
                                           for s, d in splits.items()},
                     data_revision=provenance.data_record(config.data)["revision"])
    self.tasks = {t: tasks_lib.get(t) for t in data}
    self.choice_words = tasks_lib.choice_words(list(data))
    self.choice_ids = [enc.answer_pieces(self.tokenizer, w)[0] for w in self.choice_words]

    def build(examples, protocol):
      spans = inputs_lib.split_spans(examples, features=features,
                                     predictions=inputs.spans_predictions,
                                     gold_splits=common.gold_splits(config))
      return {p: inputs_lib.build(
          examples, spans, self.tokenizer, method=self.method, model=self.model,
          protocol=p, max_length=config.data.max_length, max_spans=config.data.max_spans,
          audio_dim=self.audio_dim, audio_tokens=self.audio_tokens) for p in protocol}

    train = [e for d in data.values() for e in d["train"].examples]
    self.train_ids = [e.id for e in train]
    self.train_arrays = build(train, ("paper",))["paper"]
    self.examples, self.eval_arrays = {}, {}
    for key in common.eval_keys(data):
      task, split = key.split("/")
      self.examples[key] = data[task][split].examples
      self.eval_arrays[key] = build(self.examples[key], self.tasks[task].protocols)
    self.majority = {key: self.tasks[key.split("/")[0]].majority_baseline(ex)
                     for key, ex in self.examples.items()}
    self.unseen = {key: benchmark.unseen_in_train(ex, data[key.split("/")[0]]["train"].examples)
                   for key, ex in self.examples.items()}

  # -- the loop's interface --------------------------------------------------------------------
  def apply(self, params, batch, *, deterministic, rngs=None):
    """Masked-LM logits at `batch["mask_positions"]`: [batch, masks, vocab]."""
    return self.model.apply({"params": params}, batch, positions=batch["mask_positions"],
                            deterministic=deterministic, rngs=rngs)["logits"]

  def _init_boxed(self, rng):
    row = {k: jnp.asarray(v[:1]) for k, v in self.train_arrays.items()}
    return self.model.init(rng, row, positions=row["mask_positions"])["params"]

  def init_params(self, rng):
    return nn.meta.unbox(self._init_boxed(rng))

  def logical_axes(self):
    return nn.get_partition_spec(jax.eval_shape(self._init_boxed, jax.random.key(0)))

  def pretrained_params(self):
    if self.config.model.tiny:
      return None
    # The method's own modules start random; the BERT subtree comes from the checkpoint.
    params = jax.device_get(jax.jit(self.init_params)(jax.random.key(self.config.seed)))
    params["bert"] = jax.device_get(hf.load_params(self.path, self.bert_module))
    return params

  def loss(self, params, batch, rng):
    """Mean cross-entropy of the target tokens (`train.loss_tokens`, one of `LOSS_TOKENS`).

    "mask": the answer's word pieces at the `[MASK]` positions. "sentence": every real token
    of the target sentence (the input with the answer's pieces at the masks), `[CLS]` and
    `[SEP]` included, padding excluded.
    """
    rngs = {"dropout": rng}
    if self.config.train.get("loss_tokens", "mask") == "sentence":
      logits = self.model.apply({"params": params}, batch, deterministic=False,
                                rngs=rngs)["logits"]  # [batch, length, vocab]
      labels = jnp.where(batch["mlm_labels"] >= 0, batch["mlm_labels"], batch["input_ids"])
      valid = batch["attention_mask"] > 0
    else:
      logits = self.apply(params, batch, deterministic=False, rngs=rngs)
      labels = jnp.take_along_axis(batch["mlm_labels"], batch["mask_positions"], axis=1)
      valid = jnp.arange(labels.shape[1])[None, :] < batch["mask_count"][:, None]
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.where(valid, labels, 0))
    loss = jnp.sum(losses * valid) / jnp.maximum(valid.sum(), 1)
    return loss, {"audio_spans": batch["span_has_audio"].sum() / labels.shape[0]}

  def predict(self, params, batch):
    return analysis.outputs_of(self.apply(params, batch, deterministic=True), batch,
                               self.choice_ids)

  def answers(self, key, views, outputs) -> list[dict]:
    """Per example: its answer, the paper protocol's and the candidate protocol's
    prediction, and whether each is right."""
    examples = self.examples[key]
    task = self.tasks[key.split("/")[0]]
    predicted, correct = task.paper_answers(examples, outputs["paper"], self.choice_words,
                                            self.tokenizer.decode)
    best = [None] * len(examples)
    if "candidates" in views:
      rows = views["candidates"]
      best = benchmark.candidate_answers(
          len(examples), rows["example_index"], rows["option_index"],
          outputs["candidates"].get("label_logprob", ()),
          without_options=[i for i, e in enumerate(examples) if not e.options])
    # Examples without options (an animal file without A-D) have no candidate answer.
    return [{"id": e.id, "answer": e.answer, "predicted": p, "correct": bool(c),
             "predicted_candidate": None if b is None else e.options[b],
             "correct_candidate": None if b is None else b == e.label}
            for e, p, c, b in zip(examples, predicted, correct, best)]

  def evaluate(self, key, views, outputs):
    answers = self.answers(key, views, outputs)
    with_audio = float(views["paper"]["span_has_audio"].any(axis=1).mean())
    unseen = [a for a, u in zip(answers, self.unseen[key]) if u]
    return {**_accuracies(answers), "majority": self.majority[key], "examples": len(answers),
            **{f"{m}_unseen": v for m, v in _accuracies(unseen).items()},
            "examples_unseen": len(unseen), "with_audio": 100 * with_audio}

  def audio_effect(self, params, key: str, answers: Sequence[dict]) -> None:
    """Adds to the answers of `key` what the audio did (`analysis.audio_effect`): a pass
    over the split with every span's audio removed, and the gates."""
    arrays = self.eval_arrays[key]["paper"]
    if getattr(self, "_effect_step", None) is None:  # One compiled step for every split.
      self._effect_step = analysis.step(self.model, self.choice_ids)
    apply = self._effect_step
    size = int(self.config.train.eval_batch_size)
    with_audio = analysis.run_rows(apply, params, arrays, self.method.inputs, size)
    silent = analysis.run_rows(apply, params, self.method.without_audio(arrays, self.model),
                               self.method.inputs, size)
    task = self.tasks[key.split("/")[0]]
    analysis.audio_effect(
        answers, self.examples[key], arrays, with_audio,
        task.paper_answers(self.examples[key], silent, self.choice_words,
                           self.tokenizer.decode),
        lora_gate=self.method.gate == "lora")

  def finish(self, params, workdir, outputs):
    notes = ["accuracy: the paper protocol; for animal it repeats [MASK] to the gold answer's "
             "length, so the input leaks that length. accuracy_candidates: leak-free "
             "(each option scored by the log-probability of its word pieces).",
             "majority: always answering the split's most frequent answer. with_audio: % of "
             "examples with at least one span with audio.",
             benchmark.UNSEEN_NOTE]
    notes = _label_notes(self.labels) + notes
    if jax.process_index() == 0:
      for key, out in outputs.items():
        answers = self.answers(key, self.eval_arrays[key], out)
        self.audio_effect(params, key, answers)  # For report.html.
        metrics_lib.write_text(
            os.path.join(workdir, "predictions", key.replace("/", "_") + ".jsonl"),
            "".join(json.dumps(a) + "\n" for a in answers))
      init = str(self.config.model.init)
      base = None if self.config.model.tiny or os.path.isdir(os.path.expanduser(init)) else init
      notes += self.method.export(params, self.model, os.path.join(workdir, "export"),
                                  tokenizer_from=self.path, base_model_name_or_path=base)
    return notes


def _accuracies(answers: Sequence[Mapping]) -> dict[str, float]:
  """`accuracy` (paper protocol) and `accuracy_candidates` (%) of per-example answers (NaN
  without any; examples without options do not count for the candidates)."""
  paper = [a["correct"] for a in answers]
  candidates = [a["correct_candidate"] for a in answers if a["correct_candidate"] is not None]
  return {"accuracy": 100 * float(np.mean(paper)) if paper else float("nan"),
          "accuracy_candidates": 100 * float(np.mean(candidates)) if candidates
                                 else float("nan")}


# -- runs ------------------------------------------------------------------------------------
# Metrics that are counts or properties of the data: the same for every seed, no `_std`.
_SEED_CONSTANT = ("examples", "examples_unseen", "majority")


def merge_seeds(runs: Sequence[Mapping]) -> dict:
  """Per task, split and metric: the mean over seeds and, for the model's metrics, the
  population standard deviation (`<metric>_std`, numpy's default `ddof=0`)."""
  merged = {}
  for task, splits in runs[0].items():
    for split, metrics in splits.items():
      out = merged.setdefault(task, {}).setdefault(split, {})
      for m in metrics:
        values = [r[task][split][m] for r in runs]
        out[m] = float(np.mean(values))
        if m not in _SEED_CONSTANT:
          out[m + "_std"] = float(np.std(values))
  return merged


def _selection_of(workdir: str):
  return (files.read_json(os.path.join(workdir, "results.json")) or {}).get(loop.SELECTION_KEY)


def _stamp(config, record: Mapping | None) -> dict:
  """The exact data commit and model revisions a run reads (axk/provenance.py)."""
  return {provenance.REVISIONS_KEY: provenance.collect(config, (record or {}).get("resolved"))}


def run_seeds(config, workdir: str, make_experiment, record: Mapping | None = None) -> dict:
  """Trains once per seed in `config.seeds`; results are the mean and standard deviation.

  One seed: everything goes to `workdir`. Several: each run to `workdir/seed_<s>`, and
  `workdir/results.json` / `results.md` hold `<metric>` (mean) and `<metric>_std`, and the
  selected step of each seed. Each seed's run gets a copy of `config` with its seed;
  `record` goes into each run's `config.json` beside the config.
  """
  seeds = list(config.seeds)

  def train(seed, where):  # A finished run (same config) is not run again.
    c = config.copy_and_resolve_references()
    c.seed = seed
    done = loop.finished_results(c, where)
    if done is not None:
      return done
    return loop.train_and_evaluate(c, where, make_experiment(c, where), record=record,
                                   stamp=_stamp(c, record))

  if len(seeds) == 1:
    return train(seeds[0], workdir)
  runs = [train(seed, os.path.join(workdir, f"seed_{seed}")) for seed in seeds]
  if not all(runs):  # An interrupted seed: rerun the command to continue.
    return {}
  merged = merge_seeds(runs)
  selection = {f"seed_{s}": _selection_of(os.path.join(workdir, f"seed_{s}")) for s in seeds}
  label = run_labels(config, ((record or {}).get("resolved") or {}).get("features_dir", ""))
  metrics_lib.write_json(os.path.join(workdir, "results.json"), {
      **label, **merged, loop.SELECTION_KEY: selection,
      **_stamp(config, record)})
  metrics_lib.write_text(os.path.join(workdir, "results.md"), metrics_lib.results_markdown(
      _labelled_title(f"{config.get('name') or 'run'}: mean over seeds {seeds}", label), merged,
      _label_notes(label)
      + [f"Per-seed runs in seed_<s>/; *_std is the population standard deviation (ddof=0) "
         f"over {len(seeds)} seeds.",
         benchmark.UNSEEN_NOTE]))
  return merged


def run(config, workdir: str) -> dict:
  """The entry of `configs/audiobert.py` and `configs/ith.py` (see the module docstring).

  `config` is never changed: the stages' outputs go into `Inputs`, and every sub-run (task,
  seed) trains on a copy with its own task, seed and learning rate; the top `config.json`
  holds the config as given plus, under "resolved", what the stages produced.
  """
  validate(config, workdir)
  resolved = stages.prepare(config, workdir)
  inputs = Inputs(spans_predictions=resolved.get("spans_predictions", ""),
                  features_dir=resolved.get("features_dir", ""))
  rates, warmups = learning_rates(config), warmup_ratios(config)
  record = {"resolved": {**resolved, "learning_rates": rates, "warmup_ratios": warmups,
                         "batch_sizes": batch_sizes(config)}}
  groups = task_groups(config)
  if len(groups) > 1 or len(config.seeds) > 1:
    metrics_lib.write_json(os.path.join(workdir, "config.json"),
                           {**config.to_dict(), **record})

  def make(c, w):
    return MaskedWord(c, w, inputs)

  if len(groups) == 1:
    merged = run_seeds(_for_tasks(config, groups[0], rates, warmups), workdir, make, record)
    if merged and jax.process_index() == 0:
      logging.info("Report: %s", report.write(workdir))
    return merged
  merged = {}
  for group in groups:
    result = run_seeds(_for_tasks(config, group, rates, warmups),
                       os.path.join(workdir, group[0]), make, record)
    if not result:
      return {}
    merged.update(result)
  selection = {g[0]: _selection_of(os.path.join(workdir, g[0])) for g in groups}
  metrics_lib.write_json(os.path.join(workdir, "results.json"), {
      **run_labels(config, inputs.features_dir), **merged, loop.SELECTION_KEY: selection,
      provenance.REVISIONS_KEY: provenance.collect(config, resolved)})
  metrics_lib.write_text(os.path.join(workdir, "results.md"), _groups_markdown(
      config, merged, {g[0]: os.path.join(workdir, g[0], "results.md") for g in groups},
      run_labels(config, inputs.features_dir)))
  if jax.process_index() == 0:
    logging.info("Report: %s", report.write(workdir))
  return merged


def _groups_markdown(config, merged: Mapping, group_files: Mapping[str, str],
                     label: Mapping) -> str:
  """The top results.md of a run with one model per task: one title, one table (a row per
  task and split; means ± std over seeds), then the notes of every group's own results.md,
  once each, prefixed with the group where they differ."""
  title = config.get("name") or method_of(config).title
  seeds = tuple(config.seeds)
  if len(seeds) > 1:
    title += f": mean ± std over seeds {list(seeds)}"
  notes: dict[str, list[str]] = {}
  for group, path in group_files.items():
    with open(path) as f:
      for line in f:
        if line.startswith("- "):
          notes.setdefault(line[2:].rstrip("\n"), []).append(group)
  lines = [f"# {_labelled_title(title, label)}", "",
           *metrics_lib.results_table(merged), "",
           "- One model per task, each in <task>/ (its own results.md).",
           *(f"- {note}" if len(where) == len(group_files) else f"- {', '.join(where)}: {note}"
             for note, where in notes.items())]
  return "\n".join(lines) + "\n"


def _for_tasks(config, tasks: tuple[str, ...], rates: Mapping[str, float],
               warmups: Mapping[str, float] | None = None):
  """A copy of `config` for the benchmark tasks `tasks`, at their learning rate, batch size
  and warm-up (`warmups`: `warmup_ratios(config)` by default)."""
  warmups = warmup_ratios(config) if warmups is None else warmups
  c = config.copy_and_resolve_references()
  c.data.tasks = tasks
  c.train.learning_rate = _one_per_model(tasks, rates, "learning rates",
                                         "one --config.train.learning_rate")
  c.train.batch_size = _one_per_model(tasks, batch_sizes(c), "batch sizes",
                                      "one --config.train.batch_size")
  c.train.warmup_ratio = _one_per_model(tasks, warmups, "warm-ups",
                                        "the same --config.train.task_warmup_epochs for each")
  logging.info("Tasks %s: learning rate %g, batch %d, warm-up %.3g of the steps.",
               ",".join(tasks), c.train.learning_rate, c.train.batch_size, c.train.warmup_ratio)
  return c


def _one_per_model(tasks: tuple[str, ...], per_task: Mapping[str, float], what: str,
                   fix: str) -> float:
  """The one value of `per_task` that the tasks training one model share; ConfigError when
  they differ."""
  values = sorted({per_task[t] for t in tasks})
  if len(values) > 1:
    raise common.ConfigError(
        f"Tasks {tasks} train one model but have different {what} "
        f"{ {t: per_task[t] for t in tasks} }: set --config.train.separate_tasks=True or "
        f"{fix}.")
  return values[0]
