"""Sentence and sentence-pair tasks (GLUE) fine-tuned text-only: BERT's pooled `[CLS]`, a
classifier or a regressor (transformers' `BertForSequenceClassification`), the entry of
`configs/glue.py`.

Data: one task of `axk/tasks/glue.py` read from a local folder (`axk/data/glue.py`: GLUE's
TSV layout, the Hugging Face dataset's files or a TFDS data_dir), tokenised once to disk
(`axk/data/encoded.py`, under `data.encoded_dir`) and read back a batch at a time. Inputs:
`[CLS] a [SEP] b [SEP]` with token types, truncated to `data.max_length` longest-first (as
transformers' GLUE example does; the count of cut rows is logged); batches are trimmed to
their longest row (in steps of 16).
Selection: the task's metric on its first dev split (MNLI: matched). Outputs, beside the
loop's results.json/.md: `predictions/<task>_<split>.jsonl` (id, label, prediction and the
classifier's logits), the
leaderboard files of the test splits under `submission/` (`SST-2.tsv`, `MNLI-m.tsv`, ...), and
the model as a transformers checkpoint in `export/`. Several `seeds`: one run each under
`seed_<s>/`, and the mean and standard deviation in the top results.json.
"""

from __future__ import annotations

import itertools
import json
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from axk import hf
from axk import hub
from axk import methods
from axk.data import benchmark
from axk.data import encode as enc
from axk.data import encoded
from axk.data import glue as glue_data
from axk.data import types
from axk.features import shards
from axk.models import bert as bert_lib
from axk.runs import common
from axk.runs import inputs as inputs_lib
from axk.runs import masked_word
from axk.runs import stages
from axk.train import loop
from axk.train import metrics as metrics_lib

_SCORES = {"accuracy": benchmark.accuracy, "f1": benchmark.binary_f1,
           "pearson": benchmark.pearson, "spearman": benchmark.spearman}


def validate(config) -> None:
  """Every problem a run would meet before it loads a model, in one line each."""
  spec = glue_data.spec_of(config.data.task)
  root = glue_data.resolve_dir(config.data.dir)
  for split in spec.splits:
    glue_data.split_files(root, spec.name, split, config.data.layout)
  if config.data.max_length < 8:
    raise common.ConfigError(f"--config.data.max_length={config.data.max_length}: too short "
                             "for a sentence pair")
  name = config.model.get("name", "text")
  if name not in ("text", "ith"):
    raise common.ConfigError(f"--config.model.name={name!r}: a GLUE run is text only "
                             "(\"text\") or ITH (\"ith\").")
  if name == "ith" and config.features.dir == stages.AUTO:
    for field in ("span_config", "features_config"):
      path = stages.config_path(config.stages[field]).partition(":")[0]
      if not os.path.isfile(path):
        raise common.ConfigError(f"--config.stages.{field}={config.stages[field]}: no such "
                                 "config file.")
    detector = config.spans.get("detector", "")
    if detector and os.path.sep in detector and not os.path.isdir(detector):
      raise common.ConfigError(f"--config.spans.detector={detector}: no such folder.")
  elif name == "ith":
    folder = config.features.dir
    if not folder or not os.path.isfile(os.path.join(folder, shards.MANIFEST)):
      raise common.ConfigError(
          f"--config.features.dir={folder!r}: ITH on GLUE reads its spans' audio features "
          "(a folder with manifest.json, from configs/features.py:generation,glue).")
    built = shards.read_manifest(folder).get("tfds", {}).get("configs", [])
    if spec.name not in built:
      raise common.ConfigError(f"--config.features.dir={folder}: no features for "
                               f"{spec.name} (built for {', '.join(built) or 'none'}).")


def encode_rows(tokenizer, part, max_length: int) -> tuple[list, list, int]:
  """(token ids, token types, rows cut) of each example of `part`: `[CLS] a [SEP] b [SEP]`,
  uncut where it fits in `max_length` tokens, else tokenised again cut longest-first."""
  pair = bool(part) and bool(part[0].text_b)
  a = [e.text_a for e in part]
  b = [e.text_b for e in part] if pair else None
  full = tokenizer(a, b, truncation=False, return_attention_mask=False,
                   return_token_type_ids=True, verbose=False)
  ids, types = list(full["input_ids"]), list(full["token_type_ids"])
  long_rows = [i for i, row in enumerate(ids) if len(row) > max_length]
  if long_rows:  # Only these are tokenised again, cut longest-first.
    tok = tokenizer([a[i] for i in long_rows], [b[i] for i in long_rows] if pair else None,
                    truncation="longest_first" if pair else True, max_length=max_length,
                    return_attention_mask=False, return_token_type_ids=True, verbose=False)
    for j, i in enumerate(long_rows):
      ids[i], types[i] = tok["input_ids"][j], tok["token_type_ids"][j]
  return ids, types, len(long_rows)


def _labels(examples, label_dtype) -> np.ndarray:
  missing = -1 if label_dtype == np.int32 else np.nan
  return np.asarray([missing if e.label is None else e.label for e in examples], label_dtype)


def encode(tokenizer, examples, max_length: int, label_dtype, chunk: int = 4096
           ) -> tuple[dict, int]:
  """(arrays, rows cut) in memory: `input_ids`, `attention_mask`, `token_type_ids` [rows,
  longest row] and `labels` (-1 / NaN for a test split's), tokenised `chunk` rows at a time
  (`encode_rows`). Runs read their splits from disk instead (`encode_split`)."""
  n = len(examples)
  out = {k: np.zeros((n, max_length), np.int32)
         for k in ("input_ids", "attention_mask", "token_type_ids")}
  out["input_ids"][:] = tokenizer.pad_token_id or 0  # RoBERTa's position ids skip its padding.
  cut = longest = 0
  for start in range(0, n, chunk):
    ids, types, c = encode_rows(tokenizer, examples[start:start + chunk], max_length)
    cut += c
    for i, (row, kinds) in enumerate(zip(ids, types)):
      out["input_ids"][start + i, :len(row)] = row
      out["token_type_ids"][start + i, :len(row)] = kinds
      out["attention_mask"][start + i, :len(row)] = 1
      longest = max(longest, len(row))
  return {**{k: v[:, :longest] for k, v in out.items()},
          "labels": _labels(examples, label_dtype)}, cut


def _tokenizer_digest(tokenizer) -> str:
  """What identifies a tokenizer's output: its whole definition (a fast tokenizer's JSON),
  less the truncation and padding that each call sets on it."""
  backend = getattr(tokenizer, "backend_tokenizer", None)
  if backend is not None:
    definition = {k: v for k, v in json.loads(backend.to_str()).items()
                  if k not in ("truncation", "padding")}
  else:
    definition = sorted(tokenizer.get_vocab().items())
  return hub.digest({"tokenizer": definition, "class": type(tokenizer).__name__,
                         "pad": tokenizer.pad_token_id})


def encode_split(where: str, root: str, spec, split: str, layout: str, tokenizer,
                 max_length: int, chunk: int = 4096) -> encoded.EncodedSplit:
  """`spec`'s `split` as a split on disk (`axk.data.encoded`) in
  `<where>/<task>/<split>-<key hash>`: opened when one was built from the same files with
  the same tokenizer and length, else read and tokenised `chunk` rows at a time into it
  (the texts are never all in memory). Other keys have other folders, so runs of other
  tokenizers or lengths can share `where` at the same time."""
  key = {"task": spec.name, "split": split, "layout": glue_data.layout_of(root, spec.name, layout),
         "files": encoded.file_stamps(glue_data.split_files(root, spec.name, split, layout)),
         "max_length": int(max_length), "tokenizer": _tokenizer_digest(tokenizer)}
  folder = os.path.join(where, spec.name, f"{split}-{hub.digest(key)}")
  found = encoded.open_split(folder, key)
  if found is not None:
    return found
  label_dtype = np.float32 if spec.head == "regression" else np.int32
  total = glue_data.split_rows(root, spec.name, split, layout)
  bar = tqdm.tqdm(total=total, desc=f"tokenising {spec.name}/{split}", unit="row",
                  disable=total <= 4 * chunk or not metrics_lib.is_writer())
  cut = [0]

  def chunks():
    rows = glue_data.iter_split(root, spec.name, split, layout)
    while part := list(itertools.islice(rows, chunk)):
      ids, types, c = encode_rows(tokenizer, part, max_length)
      cut[0] += c
      bar.update(len(part))
      yield encoded.Chunk([e.id for e in part], [e.index for e in part],
                          _labels(part, label_dtype),
                          {"input_ids": [np.asarray(r) for r in ids],
                           "token_type_ids": [np.asarray(r) for r in types]})

  with bar:
    out = encoded.build(folder, key, chunks(), dtypes={"input_ids": "int32",
                                                       "token_type_ids": "uint8"},
                        label_dtype=label_dtype.__name__,
                        pads={"input_ids": tokenizer.pad_token_id or 0}, width=max_length)
  if cut[0]:
    logging.warning("%s/%s: %d of %d rows longer than %d tokens, cut longest-first.",
                    spec.name, split, cut[0], out.rows, max_length)
  return out


def text_examples(spec, split: str, row) -> list[types.Example]:
  """The texts of a GLUE row as the examples the feature pipeline built features for
  (`axk.data.glue.read_span_file`: id `text_id(row, k)`, the text as `sentence`)."""
  texts = [row.text_a] + ([row.text_b] if row.text_b else [])
  return [types.Example(id=glue_data.text_id(row.id, k), task=spec.name, split=split,
                        sentence=text, answer="", spans=(), options=(), label=-1)
          for k, text in enumerate(texts)]


def span_ids(tokenizer, rows, spans, arrays, max_length: int, chunk: int = 4096
             ) -> np.ndarray:
  """[rows, length] int32: on each token, the 1-based index of the span it lies in among its
  row's spans (those of the first text, then the second's), 0 elsewhere.

  `spans[r][k]` are the span dicts (`start`, `end`: characters of text k) of row r. Rows are
  tokenised as `encode` tokenised them (checked token for token against `arrays`), with
  offsets and the text each token comes from.
  """
  n, length = arrays["input_ids"].shape
  out = np.zeros((n, length), np.int32)
  pair = bool(rows) and bool(rows[0].text_b)
  for start in range(0, n, chunk):
    part = rows[start:start + chunk]
    tok = tokenizer([e.text_a for e in part], [e.text_b for e in part] if pair else None,
                    truncation="longest_first" if pair else True, max_length=max_length,
                    return_offsets_mapping=True, verbose=False)
    stored = arrays["input_ids"][np.arange(start, start + len(part))]
    for i in range(len(part)):
      r, ids = start + i, tok["input_ids"][i]
      if ids != stored[i, :len(ids)].tolist():
        raise AssertionError(f"{part[i].id}: tokenised differently for its spans")
      texts = spans[r]
      first = [0, len(texts[0])]
      for t, (k, (a, b)) in enumerate(zip(tok.sequence_ids(i), tok["offset_mapping"][i])):
        if k is None or b <= a:
          continue
        j = next((j for j, s in enumerate(texts[k]) if a < s["end"] and s["start"] < b), None)
        if j is not None:
          out[r, t] = first[k] + j + 1
  return out


def audio_inputs(config, spec, examples, arrays, tokenizer, features, audio_dim: int,
                 audio_tokens: int) -> None:
  """Adds ITH's inputs to each split's `arrays` (in place): `span_ids`, `span_has_audio` and
  `span_audio_tokens` (lazy, `axk.train.data.SpanTokens`) from the features of each text."""
  for split, rows in examples.items():
    spans = [[features(e) for e in text_examples(spec, split, row)] for row in rows]
    a = arrays[split]
    a["span_ids"] = span_ids(tokenizer, rows, spans, a, config.data.max_length)
    audio = inputs_lib.audio_arrays([sum(texts, []) for texts in spans],
                                    max_spans=int(config.data.max_spans), audio_dim=audio_dim,
                                    audio="tokens", audio_tokens=audio_tokens)
    s = audio["span_has_audio"].shape[1]
    a["span_ids"] = np.where(a["span_ids"] > s, 0, a["span_ids"])  # Beyond max_spans.
    # A span none of whose tokens is kept (a cut row) brings no audio.
    kept = (a["span_ids"][:, None, :] == np.arange(1, s + 1)[None, :, None]).any(-1)
    audio["span_has_audio"] *= kept.astype(np.int32)
    a.update(audio)


# ITH's audio inputs (`audio_inputs`) of the last run, by its features and its splits on
# disk: the seeds and learning rates of one command read them once.
_AUDIO: dict = {}


def encoded_splits(config, spec, tokenizer, workdir: str) -> dict:
  """{split: `axk.data.encoded.EncodedSplit`} of `spec`'s splits, under `data.encoded_dir`
  ("": `<workdir>/encoded`), each built on its first run and opened on the next. Each
  process of a multi-host run builds and reads its own (`process_<i>/`)."""
  root = glue_data.resolve_dir(config.data.dir)
  where = config.data.get("encoded_dir") or os.path.join(workdir, "encoded")
  if jax.process_count() > 1:
    where = os.path.join(where, f"process_{jax.process_index()}")
  return {split: encode_split(where, root, spec, split, config.data.layout, tokenizer,
                              config.data.max_length)
          for split in spec.splits}


class SentenceTask:
  """`axk.train.loop.Experiment` of one sentence task: text only (`model.name` "text"), or
  ITH (`model.name` "ith": each span's audio tokens fused into its tokens, `axk.models.ith`
  with a sequence head)."""

  def __init__(self, config, workdir: str):
    self.config = config
    self.spec = spec = glue_data.spec_of(config.data.task)
    self.ith = config.model.get("name", "text") == "ith"
    self.name = config.get("name") or f"{spec.title}, {'ITH' if self.ith else 'text only'}"
    self.path = common.model_dir(config, workdir)
    self.bert_config = common.bert_config(config, self.path, num_labels=spec.num_labels)
    self.bert_module = bert_lib.Bert(self.bert_config, head="sequence_classification")
    self.model = self.bert_module
    self.tokenizer = enc.load_tokenizer(self.path)
    self.splits = encoded_splits(config, spec, self.tokenizer, workdir)
    arrays = self.splits
    if self.ith:
      manifest = shards.verify(config.features.dir)  # sizes always, hashes when changed
      dims = manifest.get("dims", {})
      audio_dim = int(dims.get("ast", config.features.audio_dim))
      audio_tokens = int(dims.get("num_audio_tokens", config.features.audio_tokens))
      key = (os.path.abspath(config.features.dir), int(config.data.max_spans),
             tuple(v.meta["digest"] for v in arrays.values()))
      if _AUDIO.get("key") != key:  # Once for the seeds and rates of a command.
        _AUDIO.clear()
        # Its spans are matched to the texts: those of every split are read (held in memory).
        root = glue_data.resolve_dir(config.data.dir)
        examples = {s: glue_data.read_split(root, spec.name, s, config.data.layout)
                    for s in spec.splits}
        audio = {k: dict(v) for k, v in arrays.items()}  # The text arrays stay shared.
        audio_inputs(config, spec, examples, audio, self.tokenizer,
                     inputs_lib.FeatureSpans(config.features.dir), audio_dim, audio_tokens)
        _AUDIO.update(key=key, arrays=audio)
      arrays = _AUDIO["arrays"]
      fields = {**masked_word.method_fields(config), "head": "sequence_classification"}
      try:
        self.model = methods.get("ith").build(self.bert_config, audio_dim, **fields)
      except ValueError as e:
        raise common.ConfigError(f"--config.model.{e}") from None
    self.train_arrays = arrays["train"]
    self.train_ids = self.splits["train"].ids  # Read from disk for an error message.
    self.eval_arrays = {f"{spec.name}/{s}": {"paper": arrays[s]}
                        for s in (*spec.eval_splits, *spec.test_splits)}
    self.selection = f"{spec.name}/{spec.eval_splits[0]}/{spec.selection_metric}"

  # -- the loop's interface ------------------------------------------------------------------
  def _inputs(self, batch) -> tuple:
    """The model's positional arguments from a batch."""
    if self.ith:
      return ({k: batch[k] for k in methods.get("ith").inputs},)
    return batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]

  def _init_boxed(self, rng):
    row = {k: jnp.asarray(np.asarray(v[:1])) for k, v in self.train_arrays.items()}
    return self.model.init(rng, *self._inputs(row))["params"]

  def init_params(self, rng):
    return nn.meta.unbox(self._init_boxed(rng))

  def logical_axes(self):
    return nn.get_partition_spec(jax.eval_shape(self._init_boxed, jax.random.key(0)))

  def pretrained_params(self):
    if self.config.model.tiny:  # Its random weights are the written checkpoint's anyway.
      return None
    bert = jax.device_get(hf.load_params(self.path, self.bert_module,
                                         jax.random.key(self.config.seed)))
    if not self.ith:
      return bert
    # ITH's own modules start random; its BERT (and head) come from the checkpoint.
    params = jax.device_get(jax.jit(self.init_params)(jax.random.key(self.config.seed)))
    params["bert"] = bert
    return params

  def _logits(self, params, batch, **kwargs):
    return self.model.apply({"params": params}, *self._inputs(batch), **kwargs)["logits"]

  def loss(self, params, batch, rng):
    logits = self._logits(params, batch, deterministic=False, rngs={"dropout": rng})
    return bert_lib.sequence_loss(logits, batch["labels"]), {}

  def predict(self, params, batch):
    logits = self._logits(params, batch).astype(jnp.float32)
    if self.spec.head == "regression":
      return {"prediction": logits[:, 0]}
    return {"prediction": logits.argmax(-1).astype(jnp.int32), "logits": logits}

  def evaluate(self, key, views, outputs):
    split = key.split("/")[1]
    labels = np.asarray(views["paper"]["labels"])
    predicted = np.asarray(outputs["paper"]["prediction"])
    out = {"examples": len(labels)}
    if split in self.spec.test_splits:  # No labels: the leaderboard scores these.
      return out
    for metric in self.spec.metrics:
      out[metric] = _SCORES[metric](predicted, labels)
    if self.spec.head == "classification":
      out["majority"] = benchmark.accuracy(np.full_like(labels, np.bincount(labels).argmax()),
                                           labels)
    return out

  def finish(self, params, workdir, outputs):
    if jax.process_index() != 0:
      return []
    spec = self.spec
    for key, out in outputs.items():
      split = key.split("/")[1]
      predicted = np.asarray(out["paper"]["prediction"])
      logits = np.asarray(out["paper"]["logits"]) if "logits" in out["paper"] else None
      stored = self.splits[split]
      labels = stored["labels"].tolist()
      rows = []
      for i, (row_id, p) in enumerate(zip(stored.ids, predicted.tolist(), strict=True)):
        shown = p if spec.head == "regression" else spec.labels[p]
        gold = None
        if split not in spec.test_splits:  # A score as the file wrote it (float32 stored).
          gold = round(labels[i], 6) if spec.head == "regression" else spec.labels[labels[i]]
        row = {"id": row_id, "label": gold, "prediction": shown}
        if logits is not None:
          row["logits"] = logits[i].tolist()
        rows.append(json.dumps(row) + "\n")
      metrics_lib.write_text(os.path.join(workdir, "predictions", f"{spec.name}_{split}.jsonl"),
                             "".join(rows))
      if split in spec.test_splits:
        glue_data.write_submission(os.path.join(workdir, "submission"), spec.name, split,
                                   stored.index.tolist(), predicted.tolist())
    export = os.path.join(workdir, "export")
    hf.save(params["bert"] if self.ith else params, self.bert_config, export,
            head="sequence_classification", tokenizer_from=self.path,
            id2label=dict(enumerate(spec.labels)) if spec.labels else None)
    if self.ith:  # The text model above; the audio MLP and fusion beside it.
      methods.get("ith").export_aux(params, self.model, export, head="sequence_classification")
    notes = [f"{spec.title}: {', '.join(spec.metrics)} in percent; test splits have no labels "
             "(their leaderboard files are in submission/)."]
    if spec.head == "classification":
      notes.append("majority: always answering the split's most frequent label.")
    return notes


def _seeds(config, workdir: str, title: str) -> dict:
  """One run per seed of `config.seeds` (one: in `workdir`; several: `seed_<s>/` each and
  their mean and population standard deviation in `workdir`)."""
  seeds = list(config.seeds)

  def train(seed, where):
    c = config.copy_and_resolve_references()
    c.seed = seed
    done = loop.finished_results(c, where)
    return done if done is not None else loop.train_and_evaluate(c, where,
                                                                 SentenceTask(c, where))

  if len(seeds) == 1:
    return train(seeds[0], workdir)
  runs = [train(s, os.path.join(workdir, f"seed_{s}")) for s in seeds]
  if not all(runs):  # Interrupted: the same command continues.
    return {}
  merged = masked_word.merge_seeds(runs)
  metrics_lib.write_json(os.path.join(workdir, "results.json"), merged)
  metrics_lib.write_text(os.path.join(workdir, "results.md"), metrics_lib.results_markdown(
      f"{title}: mean over seeds {seeds}", merged,
      [f"Per-seed runs in seed_<s>/; *_std is the population standard deviation (ddof=0) "
       f"over {len(seeds)} seeds."]))
  return merged


def run(config, workdir: str) -> dict:
  """The entry of `configs/glue.py`: the seeds at each learning rate of
  `train.learning_rates` (or at `train.learning_rate` alone), and the rate whose mean dev
  selection metric is highest."""
  validate(config)
  spec = glue_data.spec_of(config.data.task)
  config = config.copy_and_resolve_references()
  if not config.data.get("encoded_dir"):  # Shared by the command's seeds and rates.
    config.data.encoded_dir = os.path.join(workdir, "encoded")
  if config.model.get("name") == "ith" and config.features.dir == stages.AUTO:
    config.features.dir = stages.prepare_glue(config, workdir)  # Reused when done.
  config.train.selection_split = spec.eval_splits[0]
  title = config.get("name") or (f"{spec.title}, ITH" if config.model.get("name") == "ith"
                                  else f"{spec.title}, text only")
  rates = list(config.train.get("learning_rates") or ())
  if not rates:
    return _seeds(config, workdir, title)
  by_rate = {}
  for rate in rates:
    c = config.copy_and_resolve_references()
    c.train.learning_rate = rate
    result = _seeds(c, os.path.join(workdir, f"lr_{rate:g}"), f"{title}, learning rate {rate:g}")
    if not result:
      return {}
    by_rate[rate] = result
  task, split, metric = f"{spec.name}/{spec.eval_splits[0]}/{spec.selection_metric}".split("/")
  best = max(rates, key=lambda r: by_rate[r][task][split][metric])
  grid = {f"{r:g}": by_rate[r][task][split][metric] for r in rates}
  metrics_lib.write_json(os.path.join(workdir, "results.json"), {
      **by_rate[best], "learning_rate": {"chosen": best, "metric": f"{task}/{split}/{metric}",
                                         "grid": grid}})
  metrics_lib.write_text(os.path.join(workdir, "results.md"), metrics_lib.results_markdown(
      f"{title}: learning rate {best:g}, the best of {', '.join(grid)} on {split} {metric}",
      by_rate[best],
      [f"{metric} on {split} by learning rate (mean over seeds): "
       + ", ".join(f"{r}: {v:.2f}" for r, v in grid.items()) + "; each rate's runs are in "
       "lr_<rate>/."]))
  return by_rate[best]
