r"""Predict with a trained AudioBERT or ITH run: spans, their audio, the answer, what audio did.

    python -m axk.predict --model=workdirs/ith --text="Rattle is the sound a [MASK] makes."
    python -m axk.predict --model=workdirs/ith --input=sentences.csv --output=out.jsonl

`--model` is a run's workdir (or an export inside one): its `config.json` names the span
detector (`resolved.spans_predictions`, whose `export/` is run here) and the feature shards
(`resolved.features_dir`, whose manifest holds the feature settings); each task's model is
`<workdir>/<task>/export` (one model per task) or `<workdir>/export`. For every sentence:

  * the task (given, or inferred: the run's task whose spec scores the sentence highest,
    `axk.tasks.infer`; "[MASK] ... than" or "pitch" -> pitch, else animal);
  * the detected spans (character offsets);
  * each span's audio, acquired by the run's own feature source (`axk.features.sources`,
    generation with CLAP rejection or retrieval) with the run's settings: the source's run
    key must equal the manifest's. Clips are cached by the source (clip cache, database
    embeddings), so a sentence seen again costs nothing; `audio` is the playable clip file;
  * the answer: a closed-answer task (pitch) with the probabilities of its choices; an open
    one (animal) as the top candidates over the answers of the run's data (each scored as a
    whole word: the sum of its word pieces' log-probabilities, `[MASK]` repeated to its
    length, as the candidate protocol of `axk.tasks`), and over the given options;
  * the same answer with every span's audio removed (`span_has_audio` zeroed, the gate
    recomputed), and what the audio did: ITH's fusion gate per token (the module's `sow`),
    AudioBERT's LoRA gate.

Inputs are built by `axk.runs.inputs.build`, as in training and evaluation.

A bad sentence (empty, no `[MASK]`, several) or a folder that is not a run is one line
(`InputError`, `ModelError`), raised before any model loads; in an `--input` file, a bad row
is one line naming the file's line (`file.csv:7: why`) and the other rows are answered (exit
status 1). Files are read in `--encoding` (UTF-8 by default, a byte-order mark allowed). A
sentence longer than the detector or the model reads is cut around its `[MASK]`
(`axk.data.encode.mask_window`), with a warning (docs/use.md, "Long sentences").
"""

from __future__ import annotations

import argparse
import codecs
import csv
import dataclasses
import functools
import io
import json
import os
import sys
import threading
from typing import Mapping, Sequence

import ml_collections
import numpy as np

from axk import methods
from axk import plugins
from axk import provenance
from axk import tasks
from axk.data import benchmark
from axk.data import encode as enc
from axk.data import types
from axk.data.rows import normalise
from axk.features import detector as detector_lib
from axk.features import pipeline
from axk.features import shards
from axk.features import sources
from axk.runs import analysis
from axk.runs import common
from axk.runs import inputs as inputs_lib
from axk.utils import files
from axk.utils import jax_cache

EXAMPLES = (  # Case-study style sentences (animal, animal, pitch): the demo's examples.
    "Rattle is the sound a [MASK] makes.",
    "Hoot is the sound an [MASK] makes.",
    "The buzzing of a mosquito has a [MASK] pitch than the roar of a lion.",
)
OPTION_COLUMNS = ("A", "B", "C", "D")  # An input CSV's option columns (AuditoryBench's).


class InputError(ValueError):
  """A sentence or input file that cannot be predicted (one line naming it); `where` names
  the row of an input file ("file.csv:3")."""
  def __init__(self, message: str, where: str = ""):
    super().__init__(message)
    self.where = where


class ModelError(ValueError):
  """A `--model` folder that is not an AudioBERT/ITH run or export."""

def check_sentence(sentence, where: str = "") -> str:
  """The sentence, or InputError naming `where` (e.g. "--text 2", "file.csv:3")."""
  at = f"{where}: the" if where else "The"
  if not isinstance(sentence, str) or not sentence.strip():
    raise InputError(f"{at} sentence is empty; write one with a [MASK].")
  n = sentence.count(types.MASK)
  if n == 0:
    raise InputError(f"{at} sentence has no {types.MASK}; mark the word to predict with "
                     f"{types.MASK}.")
  if n > 1:
    raise InputError(f"{at} sentence has {n} {types.MASK}s; exactly one is allowed.")
  return sentence.strip()


@dataclasses.dataclass(frozen=True)
class Query:
  """One sentence to predict; `task` "" to infer it, `options` for animal (may be empty)."""
  sentence: str
  task: str = ""
  options: tuple[str, ...] = ()
  inferred: bool = False  # Set by `Predictor.check` when the task was inferred.
  where: str = ""  # What names it in messages ("--text 2", "file.csv:3"; "sentence <n>").


def read_text(path: str, encoding: str = "utf-8", flag: str = "--input") -> str:
  """The text of an input file in `encoding` (UTF-8 may start with a byte-order mark), or
  InputError naming the file, the line and the byte offset of the first undecodable byte."""
  if not os.path.isfile(path):
    raise InputError(f"{flag}={path}: no such file.")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    codec = codecs.lookup(encoding).name
  except LookupError:
    raise InputError(f"--encoding={encoding}: not an encoding Python knows.") from None
  try:
    return raw.decode("utf-8-sig" if codec == "utf-8" else encoding)
  except UnicodeDecodeError as e:
    line = raw.count(b"\n", 0, e.start) + 1
    raise InputError(f"{path}:{line}: byte 0x{raw[e.start]:02x} at offset {e.start} is not "
                     f"{codec}; give the file's encoding with --encoding (e.g. "
                     "--encoding=latin-1).") from None


def _records(path: str, text: str):
  """(physical line number, row) of each data row: a JSON-lines file's objects (an
  InputError in place of a line that is not JSON), a CSV's rows as dicts (a quoted field may
  span lines; a row is named by the line it starts on)."""
  if path.endswith((".jsonl", ".json")):
    for n, line in enumerate(io.StringIO(text, newline=""), 1):
      if line.strip():
        try:
          yield n, json.loads(line)
        except json.JSONDecodeError as e:
          yield n, InputError(f"{path}:{n}: not a JSON object ({e.msg}).", f"{path}:{n}")
    return
  reader = csv.reader(io.StringIO(text, newline=""))
  header, start = None, 1
  try:
    for record in reader:
      if record and header is None:
        header = [h.strip() for h in record]
        if "sentence" not in header:
          raise InputError(f"{path}:{start}: no `sentence` column (columns: {header}).")
      elif record:
        if len(record) != len(header):
          yield start, InputError(f"{path}:{start}: {len(record)} fields, the header has "
                                  f"{len(header)}.", f"{path}:{start}")
        else:
          yield start, dict(zip(header, record))
      start = reader.line_num + 1
  except csv.Error as e:
    raise InputError(f"{path}:{start}: not readable as CSV ({e}).") from None
  if header is None:
    raise InputError(f"{path}: empty file (no header with a `sentence` column).")


def read_input(path: str, encoding: str = "utf-8") -> list:
  """The rows of an input file, in order: a `Query` for each good one, an `InputError`
  ("file:line: why") for each bad one. A CSV has a `sentence` column, optional `task`,
  options as `options` "a|b|c" or columns A-D; a JSON-lines file has objects `{"sentence":
  ..., "task": ..., "options": [...]}`. A file that cannot be read at all (missing, not in
  `encoding`, no `sentence` column) raises InputError."""
  out = []
  for n, r in _records(path, read_text(path, encoding)):
    where = f"{path}:{n}"
    if isinstance(r, InputError):
      out.append(r)
      continue
    if not isinstance(r, dict) or "sentence" not in r:
      out.append(InputError(f"{where}: expected an object with `sentence`.", where))
      continue
    options = r.get("options") or [r[k] for k in OPTION_COLUMNS if r.get(k)]
    if isinstance(options, str):
      options = options.split("|")
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
      out.append(InputError(f"{where}: `options` is not a list of strings.", where))
      continue
    try:
      sentence = check_sentence(r["sentence"], where)
    except InputError as e:
      out.append(InputError(str(e), where))
      continue
    out.append(Query(sentence, str(r.get("task") or ""),
                     tuple(normalise(o) for o in options if normalise(o)), where=where))
  return out


def _read_json(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def find_run(model: str) -> str:
  """The run workdir of `model` (the folder itself, or the run an export lies in)."""
  path = os.path.abspath(os.path.expanduser(model))
  if not os.path.isdir(path):
    raise ModelError(f"--model={model}: no such folder.")
  for folder in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
    config = os.path.join(folder, "config.json")
    if os.path.isfile(config):
      try:
        name = _read_json(config).get("model", {}).get("name")
      except (OSError, ValueError, AttributeError):
        raise ModelError(f"{config}: not a readable run config.") from None
      if name:  # A masked-word run names its method.
        # A task's sub-run (`<run>/<task>/`) points back at its parent's stages.
        parent = os.path.join(os.path.dirname(folder), "config.json")
        if os.path.isfile(parent) and _read_json(parent).get("model", {}).get("name") == name:
          return os.path.dirname(folder)
        return folder
  raise ModelError(f"--model={model}: not a masked-word run (no config.json naming a method "
                   "in it or above it); pass a run's workdir.")


def _softmax(x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max())
  return e / e.sum()


def _locked(method):
  """`method` under the predictor's lock: concurrent requests (the demo) share the parts
  loaded once, their caches and the tokenizers; the forward passes run outside it."""
  @functools.wraps(method)
  def locked(self, *args, **kwargs):
    with self._lock:
      return method(self, *args, **kwargs)
  return locked


class Predictor:
  """A run loaded for prediction (see the module docstring). Models load on first use."""
  def __init__(self, model: str, *, device: str = "cpu", top: int = 5):
    self.run_dir = find_run(model)
    raw = _read_json(os.path.join(self.run_dir, "config.json"))
    resolved = raw.pop("resolved", {})  # What the stages produced, beside the config.
    raw.pop(provenance.REVISIONS_KEY, None)
    try:
      plugins.load(raw.get("plugins", ()))  # Tasks and methods the run registered.
    except plugins.PluginError as e:
      raise ModelError(f"{self.run_dir}: {e}") from None
    self.config = ml_collections.ConfigDict(raw)
    try:
      self.method = methods.get(self.config.model.name)
    except (methods.MethodError, ImportError) as e:
      raise ModelError(f"{self.run_dir}: {e}") from None
    self.tasks = tuple(self.config.data.tasks)
    self.exports = {}
    for t in self.tasks:
      for folder in (os.path.join(self.run_dir, t, "export"), os.path.join(self.run_dir,
                                                                            "export")):
        if os.path.isfile(os.path.join(folder, f"{self.method.name}.json")):
          self.exports[t] = folder
          break
    if not self.exports:
      raise ModelError(f"{self.run_dir}: the run has no export yet ({self.method.name}.json in "
                       "export/ or <task>/export/); it has not finished.")
    predictions = resolved.get("spans_predictions", "")
    self.detector_dir = os.path.join(os.path.dirname(predictions), "export") if predictions \
        else ""
    if self.detector_dir and not os.path.isfile(os.path.join(self.detector_dir,
                                                             "config.json")):
      raise ModelError(f"{self.run_dir}: its span detector {self.detector_dir} is missing.")
    self.features_dir = resolved.get("features_dir", "")
    self.manifest = {}
    if self.features_dir:
      try:
        self.manifest = shards.read_manifest(self.features_dir)
      except (FileNotFoundError, shards.FeaturesMismatch) as e:
        raise ModelError(f"{self.run_dir}: its features {self.features_dir} do not load "
                         f"({e}).") from None
    self.device, self.top = device, top
    self._models, self._source, self._detector, self._vocab = {}, None, None, {}
    self._acquired: dict[str, dict] = {}
    self._lock = threading.RLock()  # See `_locked`.

  # -- parts, loaded once ----------------------------------------------------------------------
  @property
  def detector(self):
    if self._detector is None and self.detector_dir:
      self._detector = detector_lib.Detector(self.detector_dir, device=self.device)
    return self._detector

  @property
  def source(self):
    """The run's feature source, rebuilt from the features manifest; its run key must be the
    manifest's, so clips come with exactly the run's settings."""
    if self._source is None and self.features_dir:

      manifest = self.manifest
      config = ml_collections.ConfigDict(manifest["config"])
      config.device = self.device
      workdir = os.path.dirname(self.features_dir)
      source = sources.make(manifest["source"], config, workdir,
                            pipeline.model_paths(config, workdir))
      if source.setup.run_key != manifest["run_key"]:
        raise ModelError(f"{self.features_dir}: its feature settings or models changed since "
                         f"the run (run key {source.setup.run_key} != {manifest['run_key']}).")
      source.prepare()
      self._source = source
    return self._source

  @_locked
  def model(self, task: str):
    """(loaded export, tokenizer) of `task`."""
    folder = self.exports[task]  # One model for several tasks is loaded once.
    if folder not in self._models:
      self._models[folder] = (self.method.load(folder),
                              enc.load_tokenizer(os.path.join(folder, "base")))
    return self._models[folder]

  @_locked
  def vocabulary(self, task: str) -> tuple[str, ...]:
    """The animal names of the run's data (answers and options of every split)."""
    if task not in self._vocab:
      c = self.config.copy_and_resolve_references()
      c.data.tasks = (task,)
      names = set()
      for d in common.load_data(c, keep_missing_spans=True)[task].values():
        for e in d.examples:
          names.add(e.answer)
          names.update(e.options)
      self._vocab[task] = tuple(sorted(n for n in names if n))
    return self._vocab[task]

  # -- prediction ------------------------------------------------------------------------------
  def check(self, queries: Sequence[Query]) -> list[Query]:
    """Queries with their task, or InputError (before any model loads)."""
    out = []
    for n, q in enumerate(queries, 1):
      where = q.where or f"sentence {n}"
      sentence = check_sentence(q.sentence, where)
      task = q.task or tasks.infer(sentence, among=self.exports)
      if task not in self.exports:
        raise InputError(f"{where}: task {task!r} is not one this run trained "
                         f"({', '.join(self.exports)}).")
      out.append(dataclasses.replace(q, sentence=sentence, task=task, inferred=not q.task,
                                     where=where))
    return out

  @_locked
  def spans(self, sentences: Sequence[str], names: Sequence[str], warn=None
            ) -> list[list[types.Span]]:
    """The detector's spans of each sentence (`names` name them in the lines `warn` gets
    for a sentence cut around its `[MASK]`)."""
    if self.detector is None:
      return [[] for _ in sentences]
    return [list(s) for s in self.detector(list(sentences), names=list(names), warn=warn)]

  def window(self, q: Query, warn=None) -> list[tuple[int, int]]:
    """The character ranges of the words the task's model reads of `q` (all of them, unless
    the sentence is longer than `data.max_length`: then the window around its `[MASK]`
    that every row of it keeps, `axk.data.encode.mask_window`)."""
    _, tokenizer = self.model(q.task)
    spec = tasks.get(q.task)
    words = spec.choices if spec.closed else (*self.vocabulary(q.task), *q.options)
    with self._lock:  # Tokenizer calls, as in `_one`.
      extra = max(len(enc.answer_pieces(tokenizer, w)) for w in words) - 1
      return enc.kept_words(types.Example(q.where, q.task, "predict", q.sentence, "", (), (),
                                          -1), tokenizer,
                            max_length=int(self.config.data.max_length), extra=extra,
                            warn=warn)

  @_locked
  def audio(self, keys: Sequence[str]) -> dict[str, dict]:
    """Per normalised span text: the source's arrays in storage form, plus its clip file."""
    todo = sorted({k for k in keys if k not in self._acquired})
    if todo and self.source is not None:
      part = sources.to_part(todo, self.source.acquire(todo))
      for i, k in enumerate(todo):
        row = {f: part[f][i] for f in part}
        row["audio"] = (self.source.clip_file(str(row["source"])) if row["has_audio"]
                        else None)
        self._acquired[k] = row
    return {k: self._acquired[k] for k in keys if k in self._acquired}

  @_locked
  def keys(self, q: Query, found: Sequence[types.Span]) -> list[str]:
    """The feature source's acquisition key of each span (generation keys carry the task,
    whose threshold applies), as the run's features stage keyed them."""
    if self.source is None:
      return [normalise(s.text) for s in found]
    example = types.Example("predict/0", q.task, "predict", q.sentence, "", (), (), -1)
    return self.source.keys(example, found)

  def __call__(self, queries: Sequence[Query]) -> list[dict]:
    """One record per query. A sentence longer than the detector or the model reads is cut
    around its `[MASK]`: the record's `warnings` say so, and its spans are those the
    detector found in its window that also lie in the model's."""
    queries = self.check(queries)
    notes: list[str] = []
    found = self.spans([q.sentence for q in queries], [q.where for q in queries], notes.append)
    warnings = [[m for m in notes if m.startswith(f"{q.where}: ")] for q in queries]
    for q, row, w in zip(queries, found, warnings):
      kept = self.window(q, w.append)
      row[:] = [s for s in row if any(a < s.end and s.start < b for a, b in kept if a < b)]
    keys = [self.keys(q, row) for q, row in zip(queries, found)]
    acquired = self.audio([k for row in keys for k in row])
    return [{**self._one(q, row, [acquired.get(k) for k in ks]), "input": q.where,
             "warnings": w} for q, row, ks, w in zip(queries, found, keys, warnings)]

  def _one(self, q: Query, found: Sequence[types.Span], acquired: Sequence[dict | None]
           ) -> dict:
    """One record; `acquired[i]` is span i's acquisition (None without a feature source)."""
    loaded, tokenizer = self.model(q.task)
    c = self.config.data
    spans = []
    for s, row in zip(found, acquired):
      d = {"start": s.start, "end": s.end, "text": s.text, "has_audio": False}
      if row is not None:
        d.update(has_audio=bool(row["has_audio"]), ast_pooled=row["ast_pooled"],
                 ast_tokens=row["ast_tokens"])
      spans.append(d)
    spec = tasks.get(q.task)
    tokens = (int(self.manifest["dims"]["num_audio_tokens"]) if self.manifest else
              int(self.config.features.audio_tokens))
    audio_dim = int(loaded.module.audio_dim)

    def arrays_of(options: Sequence[str], protocol: str):
      example = types.Example(q.where, q.task, "predict", q.sentence, options[0], (),
                              tuple(options), 0)
      # The request's first tokenizer call may reset the fast tokenizer's truncation and
      # padding, which no concurrent call may meet; its later calls (forward) only read.
      with self._lock:
        return inputs_lib.build([example], [spans], tokenizer, method=self.method,
                                model=loaded.module, protocol=protocol,
                                max_length=int(c.max_length), max_spans=int(c.max_spans),
                                audio_dim=audio_dim, audio_tokens=tokens,
                                warn=None)  # `window` said it.

    record = {"sentence": q.sentence, "task": q.task, "task_inferred": q.inferred,
              "method": self.method.name, "model": loaded.path,
              "spans": [self._span_record(s, row) for s, row in zip(spans, acquired)]}
    if spec.closed:
      arrays = arrays_of(spec.choices, "paper")
      options = list(spec.choices)
    else:
      options = list(self.vocabulary(q.task))
      arrays = arrays_of(options, "candidates")
    outputs = {audio: forward(loaded, arrays, audio=audio, choice_words=spec.choices,
                              tokenizer=tokenizer) for audio in (True, False)}
    for audio, name in ((True, "answer"), (False, "answer_without_audio")):
      out = outputs[audio]
      probs = (_softmax(out["choice_logits"][0]) if spec.closed
               else _softmax(out["label_logprob"]))
      record[name] = self._answer(options, probs)
      if q.options and not spec.closed:
        record[name]["options"] = self._over_options(q.options, arrays_of, loaded, tokenizer,
                                                     audio)
    # The row the gate is read from: a closed task's one row, an open task's best candidate.
    row = 0 if spec.closed else int(np.argmax(outputs[True]["label_logprob"]))
    record["audio_changed"] = (record["answer"]["predicted"] !=
                               record["answer_without_audio"]["predicted"])
    record["tokens"] = self._tokens(tokenizer, arrays, row, outputs[True])
    record["lora_gate"] = (float(arrays["lora_gate"][row]) if self.method.gate == "lora"
                           else None)
    return record

  def _over_options(self, options, arrays_of, loaded, tokenizer, audio):
    arrays = arrays_of(options, "candidates")
    out = forward(loaded, arrays, audio=audio, choice_words=(), tokenizer=tokenizer)
    best = benchmark.candidate_answers(1, arrays["example_index"], arrays["option_index"],
                                       out["label_logprob"])[0]
    probs = _softmax(out["label_logprob"])
    return {"predicted": options[best],
            "probabilities": {o: float(p) for o, p in zip(options, probs)}}

  def _answer(self, options, probs) -> dict:
    order = np.argsort(-probs, kind="stable")
    if len(options) <= 2:
      return {"predicted": options[int(order[0])],
              "probabilities": {o: float(p) for o, p in zip(options, probs)}}
    return {"predicted": options[int(order[0])],
            "top": [{"answer": options[i], "probability": float(probs[i])}
                    for i in order[:self.top]]}

  def _span_record(self, span: Mapping, row: Mapping | None) -> dict:
    out = {"start": span["start"], "end": span["end"], "text": span["text"],
           "accepted": bool(span["has_audio"]), "clap_score": None, "source": None,
           "audio": None}
    if row is not None:
      out.update(clap_score=float(row["clap_score"]), source=str(row["source"]) or None,
                 audio=row["audio"])
    return out

  def _tokens(self, tokenizer, arrays, row: int, out: Mapping) -> list[dict]:
    """The row's tokens (special tokens left out) with span ids and, for ITH, the gate on
    the tokens the fusion acted on."""
    ids = arrays["input_ids"][row]
    special = set(tokenizer.all_special_ids) - {tokenizer.mask_token_id}
    tokens = []
    for i in range(int(arrays["attention_mask"][row].sum())):
      if int(ids[i]) in special:
        continue
      start, end = (int(x) for x in arrays["offsets"][row, i])
      gate = None
      if "fused" in out and bool(out["fused"][row, i]):
        gate = float(out["gate"][row, i])
      tokens.append({"index": i, "token": tokenizer.convert_ids_to_tokens(int(ids[i])),
                     "start": start, "end": end, "span": int(arrays["span_ids"][row, i]),
                     "gate": gate})
    return tokens


def forward(loaded, arrays: Mapping[str, np.ndarray], *, audio: bool = True,
            choice_words: Sequence[str] = (), tokenizer=None) -> dict[str, np.ndarray]:
  """The loaded model's outputs on `arrays` (`axk.runs.analysis.step`: scoring's outputs,
  plus the fusion's gate and fused mask per token where the module sows them); `audio`
  False removes every span's audio first (`Method.without_audio`)."""
  if not audio:
    arrays = loaded.method.without_audio(arrays, loaded.module)
  choice_ids = [enc.answer_pieces(tokenizer, w)[0] for w in choice_words]
  key = tuple(choice_ids)
  if key not in loaded.steps:  # One compiled step per model and answer words.
    loaded.steps[key] = analysis.step(loaded.module, choice_ids)
  apply = loaded.steps[key]
  return analysis.run_rows(apply, loaded.params, arrays, loaded.method.inputs,
                           batch_size=analysis.num_rows(arrays))


def jsonable(record: Mapping) -> dict:
  """A prediction as plain JSON values."""
  return json.loads(json.dumps(record, default=lambda x: x.tolist() if hasattr(x, "tolist")
                               else str(x)))


def _answer_text(answer: Mapping) -> str:
  if "probabilities" in answer:
    return " ".join(f"{k} {v:.3f}" for k, v in answer["probabilities"].items())
  return ", ".join(f"{t['answer']} {t['probability']:.3f}" for t in answer["top"])


def table(records: Sequence[Mapping]) -> str:
  """A readable summary of predictions, one block per sentence."""
  lines = []
  for r in records:
    lines.append(f"{r['sentence']}")
    lines.append(f"  task      {r['task']}{' (inferred)' if r['task_inferred'] else ''}")
    for s in r["spans"] or [None]:
      if s is None:
        lines.append("  span      (none detected)")
        continue
      score = "" if s["clap_score"] is None else f"  CLAP {s['clap_score']:+.3f}"
      state = "accepted" if s["accepted"] else "no audio"
      lines.append(f"  span      [{s['start']}:{s['end']}] {s['text']!r}  {state}{score}")
      if s["audio"]:
        lines.append(f"            {s['audio']}")
    for name, key in (("answer", "answer"), ("no audio", "answer_without_audio")):
      a = r[key]
      lines.append(f"  {name:<9} {a['predicted']}  ({_answer_text(a)})")
      if "options" in a:
        lines.append(f"  {'':<9} options: {a['options']['predicted']}  "
                     f"({_answer_text(a['options'])})")
    gates = [f"{t['token']}={t['gate']:.2f}" for t in r["tokens"] if t["gate"] is not None]
    if r["lora_gate"] is not None:
      lines.append(f"  LoRA gate {'on' if r['lora_gate'] else 'off'}")
    elif gates:
      lines.append(f"  gate      {' '.join(gates)}")
    lines.append(f"  audio changed the answer: {'yes' if r['audio_changed'] else 'no'}")
    lines.append("")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  """Exit status: 0; 1 when some rows of `--input` were bad (each reported, the others
  answered); 3 (`error:`) when nothing could be predicted: a bad `--text`, model or file."""
  parser = argparse.ArgumentParser(prog="python -m axk.predict", description=__doc__.split(
      "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", required=True, help="a run's workdir (or an export in one)")
  parser.add_argument("--text", action="append", default=[],
                      help="a sentence with one [MASK] (repeat for more)")
  parser.add_argument("--input", default="", help="CSV (sentence[,task][,options|A-D]) or "
                      "JSON lines ({sentence, task, options})")
  parser.add_argument("--encoding", default="utf-8", help="the --input file's text encoding "
                      "(default utf-8, with or without a byte-order mark)")
  parser.add_argument("--task", default="", help="the task of every --text sentence, one the "
                      "run trained (default: inferred from the sentence)")
  parser.add_argument("--options", default="", help="options of an open-answer task (animal) "
                      "for --text, a|b|c")
  parser.add_argument("--output", default="", help="write JSON lines here")
  parser.add_argument("--top", type=int, default=5, help="animal candidates shown")
  parser.add_argument("--device", default="cpu", help="torch device of detector and features")
  parser.add_argument("--jax_cache_dir", default="", help="JAX's compilation cache: \"\" the "
                      "user's (~/.cache/axk/jax), \"none\" off, or a folder")
  args = parser.parse_args(argv)
  jax_cache.enable(args.jax_cache_dir)
  try:
    options = tuple(normalise(o) for o in args.options.split("|") if normalise(o))
    queries = [Query(check_sentence(t, f"--text {i}"), args.task, options, where=f"--text {i}")
               for i, t in enumerate(args.text, 1)]
    rows = read_input(args.input, args.encoding) if args.input else []
    if not queries and not rows:
      raise InputError("nothing to predict: give --text=SENTENCE or --input=FILE.")
    predictor = Predictor(args.model, device=args.device, top=args.top)
    predictor.check(queries)  # A bad --text stops everything.
    for n, row in enumerate(rows):  # A bad row of the file is reported; the others go on.
      if isinstance(row, Query):
        try:
          predictor.check([row])
        except InputError as e:
          rows[n] = InputError(str(e), row.where)
    bad = [r for r in rows if isinstance(r, InputError)]
    for e in bad:
      print(f"error: {e}", file=sys.stderr)
    queries += [r for r in rows if isinstance(r, Query)]
    if not queries:
      raise InputError(f"{args.input}: no row to predict ({len(bad)} bad, above).")
    records = iter([jsonable(r) for r in predictor(queries)])
  except (InputError, ModelError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  # Input order: the --text sentences, then the file's rows, a bad one as its error.
  out = [next(records) for _ in args.text]
  out += [{"input": r.where, "error": str(r)} if isinstance(r, InputError)
          else next(records) for r in rows]
  for r in out:
    for w in r.get("warnings", ()):
      print(f"warning: {w}", file=sys.stderr)
  if args.output:
    files.write_text(args.output, "".join(json.dumps(r) + "\n" for r in out))
    print(f"{len(out) - len(bad)} predictions written to {args.output}"
          + (f"; {len(bad)} rows bad (their `error`)" if bad else ""))
  else:
    print(table([r for r in out if "error" not in r]))
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
