"""A benchmark task as a registered spec: what it reads, what it asks, how it is scored.

Everything task-specific lives on a `Task`: its data (folder and CSV row format), its answer
head and closed answer words, the protocols it is scored by, the splits its tables show, its
defaults (CLAP threshold, learning rate), its published numbers, how a sentence is recognised
as one of its questions and what the oracle feature source gives its spans. The product
(runs, predict, demo, report, cards, tables) asks the registered spec, never a task's name:

    from axk import tasks
    spec = tasks.get("pitch")
    spec.choices                       # ("higher", "lower")
    tasks.infer(sentence, among=("animal", "pitch"))

A new task is one module that registers a spec (`register`), imported at start by listing it
in the config's `plugins` (see `axk/plugins.py`).

Protocols, per task and split:
  * paper (`accuracy`): a `choice` head compares the masked-LM logits of its `choices` at
    the single `[MASK]`; a `masked_word` head counts exact match of every word piece of the
    answer over the full vocabulary, with `[MASK]` repeated to the answer's length as the
    published code does (the input then leaks the answer's length).
  * candidates (`accuracy_candidates`, leak-free): every option of an example gets its own
    input with as many masks as it has pieces, and is scored by the sum of its pieces'
    log-probabilities; the best-scoring option is the prediction.
  * `majority`: accuracy of always giving the split's most frequent answer.
  * `*_unseen`: the same accuracies over the rows whose sentence does not occur in the task's
    train split (`axk.data.benchmark.unseen_in_train`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from axk.data import benchmark
from axk.data.rows import normalise
from axk.data.types import Example
from axk.data.types import Span

HEADS = ("masked_word", "choice", "classification", "regression")
"""What a task's model answers with.

  masked_word: an open answer of any number of word pieces at `[MASK]` (animal names),
    scored over the whole vocabulary (the paper protocol) and over the example's candidate
    answers (the candidate protocol).
  choice: one of a closed set of words (`Task.choices`) at a single `[MASK]` (pitch:
    higher/lower), the larger of their masked-LM logits.
  classification: a label from the pooled `[CLS]` of one sentence or a sentence pair.
  regression: a number from the pooled `[CLS]` of one sentence or a sentence pair.

The masked-word run (`axk/runs/masked_word.py`) trains `masked_word` and `choice` tasks; the
sentence run (`axk/runs/sentence.py`, `configs/glue.py`) trains `classification` and
`regression` tasks (GLUE's, `axk/tasks/glue.py`), text only.
"""
PROTOCOLS = ("paper", "candidates")
# The metric each protocol reports, and how pages and model cards name the protocol.
PROTOCOL_METRICS = {"paper": "accuracy", "candidates": "accuracy_candidates"}
PROTOCOL_TITLES = {"paper": "the papers' protocol", "candidates": "axk's leak-free protocol"}
# The oracle role of a span whose role cannot be told (`Task.oracle_roles`).
NO_ROLE = "none"
# Task names: keys (`<task>/<split>`), file names (`<task>_<split>.jsonl`) and config fields
# (`generation.tau.<task>`) all carry them.
_NAME = re.compile(r"[a-z][a-z0-9]*")


@dataclasses.dataclass(frozen=True)
class Task:
  """One benchmark task. Subclass it to change `infer` or `oracle_roles`; register an
  instance with `register`.

  Attributes:
    name: short name in configs (`data.tasks`), keys (`"<name>/<split>"`), file names and
      config fields: lower-case letters and digits.
    title: how tables and model cards name it.
    folder: its folder under a data dir, holding `<split>.csv` per split.
    rows: its CSV columns and row reader (`axk.data.benchmark.RowFormat`): reading and
      validating a row, giving its answer, options and gold span texts; None for a sentence
      task (`axk/tasks/glue.py`), whose files have their own reader.
    head: one of `HEADS`.
    choices: the closed answer words of a `choice` head (each a single word piece); empty
      for any other head.
    protocols: the protocols it is scored by (`PROTOCOLS`; "paper" always).
    columns: the evaluation splits result tables show for it, in order.
    tau: CLAP acceptance threshold of generated clips when `generation.tau` gives none.
    learning_rate: when the config gives none for it (`train.learning_rate` is 0 and
      `train.task_learning_rates` has no entry); 0: none.
    published: published accuracy (%), `{row: {split: value}}`, rows keyed "bert" (BERT-base
      untrained), "llama" (LLaMA3.1-8B untrained), "audiobert", "ith".
    published_source: where `published` comes from.
    example: a sentence in the task's style with one `[MASK]` (model cards' usage lines).
    published_rows: rows per split of the published benchmark, `{split: n}`: the weights of
      the papers' Combined accuracy over several tasks (accuracy over all their rows).
  """

  name: str
  title: str
  folder: str
  rows: benchmark.RowFormat | None = dataclasses.field(hash=False)
  head: str
  choices: tuple[str, ...] = ()
  protocols: tuple[str, ...] = PROTOCOLS
  columns: tuple[str, ...] = ("dev", "test")
  tau: float = 0.0
  learning_rate: float = 0.0
  published: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict,
                                                                   hash=False)
  published_source: str = ""
  example: str = ""
  published_rows: Mapping[str, int] = dataclasses.field(default_factory=dict, hash=False)

  def __post_init__(self):
    where = f"benchmark task {self.name!r}"
    if not _NAME.fullmatch(self.name or ""):
      raise ValueError(f"{where}: a name is lower-case letters and digits, starting with a "
                       "letter.")
    if self.head not in HEADS:
      raise ValueError(f"{where}: head {self.head!r} is not one of {', '.join(HEADS)}.")
    if self.head in ("masked_word", "choice") and self.rows is None:
      raise ValueError(f"{where}: a {self.head} task reads AuditoryBench CSV rows: give its "
                       "`rows` (a RowFormat).")
    if (self.head == "choice") != bool(self.choices):
      raise ValueError(f"{where}: a choice head needs choices, and only a choice head has "
                       f"them (head {self.head!r}, choices {self.choices}).")
    if "paper" not in self.protocols or set(self.protocols) - set(PROTOCOLS):
      raise ValueError(f"{where}: protocols {self.protocols} must include 'paper' and be "
                       f"among {', '.join(PROTOCOLS)}.")

  @property
  def closed(self) -> bool:
    """A closed answer set (`choices`), scored at one `[MASK]`."""
    return self.head == "choice"

  def protocol_note(self, protocol: str) -> str:
    """What `protocol` (one of `PROTOCOLS`) does for this task's head, in one sentence, for
    readers of report.html and model cards."""
    if protocol == "paper" and self.head == "choice":
      return (f"the larger masked-LM logit of {' / '.join(self.choices)} at the single "
              "[MASK], as the papers score it.")
    if protocol == "paper" and self.head == "masked_word":
      return ("right when every word piece of the answer is the argmax over the whole "
              "vocabulary, with [MASK] repeated to the answer's piece count as the published "
              "code does: the input gives the answer's length away.")
    if protocol == "candidates" and self.head == "choice":
      return (f"each of {' / '.join(self.choices)} scored by its log-probability at [MASK] "
              "(single word pieces: the same answer as the papers' protocol).")
    if protocol == "candidates":
      return ("every option of the example gets its own input with as many [MASK]s as it "
              "has word pieces, and the option with the largest summed log-probability is "
              "the answer: nothing of the gold answer is in the input.")
    raise ValueError(f"benchmark task {self.name!r}: no protocol {protocol!r} for a "
                     f"{self.head!r} head.")

  def majority_baseline(self, examples: Sequence[Example]) -> float:
    """Accuracy (%) of always giving the most frequent answer of `examples` themselves."""
    return benchmark.majority_baseline(examples)

  def paper_answers(self, examples: Sequence[Example], outputs: Mapping,
                    words: Sequence[str], decode: Callable) -> tuple[list[str], list[bool]]:
    """Paper-protocol predictions and correctness for `examples` (one row each, in order).

    Args:
      examples: the examples, all of this task.
      outputs: per-row model outputs: `choice_logits` [N, len(words)] (logits of `words` at
        the first mask), `argmax` and `labels` [N, masks] (-1 past each row's masks).
      words: the words of `choice_logits`' columns (`choice_words`).
      decode: token ids -> text, for the shown prediction of a `masked_word` head.
    """
    if self.head == "choice":
      columns = [list(words).index(w) for w in self.choices]
      logits = np.asarray(outputs["choice_logits"])[:, columns]
      predicted = [self.choices[i] for i in logits.argmax(-1)]
      return predicted, [p == e.answer for p, e in zip(predicted, examples)]
    if self.head == "masked_word":
      argmax, labels = np.asarray(outputs["argmax"]), np.asarray(outputs["labels"])
      predicted = [decode([t for t in row if t >= 0]) for row in argmax]
      # Right only when every word piece is right (padding columns hold -1 in both arrays).
      return predicted, [bool(x) for x in (argmax == labels).all(axis=1)]
    raise ValueError(f"benchmark task {self.name!r}: no paper protocol for a {self.head!r} "
                     "head.")

  def infer(self, sentence: str) -> float:
    """How strongly `sentence` looks like a question of this task, in [0, 1] (prediction
    infers a sentence's task as the best-scoring one; see `infer`). This default never
    claims a sentence: 0."""
    del sentence
    return 0.0

  def oracle_roles(self, example: Example, answer: str, spans: Sequence[Span]) -> list[str]:
    """The oracle role of each of `spans` (spans of `example`, in sentence order) when the
    gold answer is `answer`: the oracle feature source gives every span with one role one
    fixed vector, and a span with role `NO_ROLE` none. This default: every span gets the
    role of the answer, `"<name>=<answer>"`."""
    del example
    return [f"{self.name}={normalise(answer)}"] * len(spans)


_REGISTRY: dict[str, Task] = {}


def register(task):
  """Registers `task` (a `Task`, or a `Task` subclass constructible without arguments, so
  that this works as a class decorator) under its name; returns what it was given.

  Registering a name again replaces the spec only from the module that registered it (a
  module imported twice); from another module it is a ValueError.
  """
  spec = task() if isinstance(task, type) else task
  if not isinstance(spec, Task):
    raise TypeError(f"register() takes a Task, not {type(spec).__name__}")
  old = _REGISTRY.get(spec.name)
  if old is not None and type(old).__module__ != type(spec).__module__:
    raise ValueError(f"benchmark task {spec.name!r} is registered already (by "
                     f"{type(old).__module__}); {type(spec).__module__} cannot register it "
                     "again.")
  _REGISTRY[spec.name] = spec
  return task


def get(name: str) -> Task:
  """The registered task `name`; a ValueError naming the known ones otherwise."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown benchmark task {name!r}; known: {', '.join(_REGISTRY)} (a "
                     "task of another module is registered by listing it in --config.plugins)")
  return _REGISTRY[name]


def names() -> tuple[str, ...]:
  """The registered tasks' names, in registration order."""
  return tuple(_REGISTRY)


def infer(sentence: str, among: Iterable[str]) -> str:
  """The task of `among` whose `Task.infer` scores `sentence` highest; ties go to the
  earliest in `among` (a run's first task)."""
  among = tuple(among)
  if not among:
    raise ValueError("infer() needs at least one task to choose from.")
  scores = [float(get(t).infer(sentence)) for t in among]
  return among[scores.index(max(scores))]


def choice_words(tasks: Sequence[str]) -> tuple[str, ...]:
  """Every closed answer word of `tasks`, in order, without repeats: the words whose logits a
  masked-word model returns at the first `[MASK]`."""
  words: list[str] = []
  for t in tasks:
    words += [w for w in get(t).choices if w not in words]
  return tuple(words)
