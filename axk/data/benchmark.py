"""AuditoryBench's benchmark tasks as specs: what each asks, how answers are scored.

A benchmark task (animal sound recognition, sound pitch comparison) is one `BenchmarkTask`
entry of `TASK_SPECS`: its CSV columns and row reader (used by `axk/data/auditorybench.py`),
its answer space, its paper-protocol scoring and its majority baseline. Loading, the runs and
their scoring read everything task-specific from here, so a third task is a new entry (and
its folder name in `axk.data.types.TASK_DIRS`), not a new branch.

Protocols, per task and split:
  * paper (`accuracy`): tasks with a closed answer set (`choices`, pitch: higher/lower)
    compare the masked-LM logits of the choices' words at the single `[MASK]`; open tasks
    (animal) count exact match of every word piece of the answer over the full vocabulary,
    with `[MASK]` repeated to the answer's length as the published code does (the input then
    leaks the answer's length).
  * candidates (`accuracy_candidates`, leak-free): every option of an example gets its own
    input with as many masks as it has pieces, and is scored by the sum of its pieces'
    log-probabilities; the best-scoring option is the prediction.
  * `majority`: accuracy of always giving the split's most frequent answer.
  * `*_unseen`: the same accuracies over the rows whose sentence does not occur in the task's
    train split (`unseen_in_train`; sentences compared after `auditorybench.normalise`:
    lower-cased, whitespace collapsed); about a quarter of the animal dev and test sentences
    are template sentences that train holds too, and a text-only model can learn those.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from axk.data import rows as ab
from axk.data.types import PITCH_OPTIONS
from axk.data.types import Example

# A row reader: the row's fields (by column key) -> (skip reason or None, answer, options,
# gold span texts). Span texts are located in the sentence by the loader.
RowReader = Callable[[Mapping[str, str]], tuple]


@dataclasses.dataclass(frozen=True)
class RowFormat:
  """How a benchmark task's CSV rows read.

  Attributes:
    columns: column key -> accepted header names (the first present is used; case is
      ignored when no exact match), all required.
    optional: column names read only as a group; a file with none of them loads without.
    without_optional: logged for a file without the optional columns.
    read: the row reader (`RowReader`).
  """

  columns: Mapping[str, tuple[str, ...]]
  read: RowReader
  optional: tuple[str, ...] = ()
  without_optional: str = ""


def _read_pitch(fields):
  answer = ab.normalise(fields["answer"])
  if not answer:
    return ab.EMPTY_ANSWER, None, (), ()
  if answer not in PITCH_OPTIONS:
    return ab.BAD_PITCH_ANSWER, None, (), ()
  return None, answer, PITCH_OPTIONS, (fields["span1"], fields["span2"])


ANIMAL_LETTERS = ("A", "B", "C", "D")


def _read_animal(fields):
  answer = ab.normalise(fields["animal"])
  if not answer:
    return ab.EMPTY_ANSWER, None, (), ()
  options = ()
  if "Answer" in fields:  # Without option columns these checks have nothing to check.
    letter = fields["Answer"].strip().upper()
    if letter not in ANIMAL_LETTERS:
      return ab.BAD_LETTER, None, (), ()
    options = tuple(ab.normalise(fields[k]) for k in ANIMAL_LETTERS)
    # The letter and the `animal` column are two statements of the gold answer; when they
    # disagree ("bird" vs option "parrot") neither can be trusted.
    if options[ANIMAL_LETTERS.index(letter)] != answer:
      return ab.OPTION_DISAGREES, None, (), ()
  return None, answer, options, (fields["span"],)


PITCH_ROWS = RowFormat(
    columns={"sentence": ("sentence",), "answer": ("answer",), "span1": ("span1",),
             "span2": ("span2",)},
    read=_read_pitch)
ANIMAL_ROWS = RowFormat(
    # The newer upstream layout names the span column `span`, the older `description`.
    columns={"animal": ("animal",), "span": ("description", "span"), "sentence": ("sentence",)},
    read=_read_animal,
    # The upstream flat layout's wiki file has only `animal, description, sentence`.
    optional=("Answer", *ANIMAL_LETTERS),
    without_optional="its examples have no options, so the candidate protocol leaves them "
    "out.")


@dataclasses.dataclass(frozen=True)
class BenchmarkTask:
  """One benchmark task.

  Attributes:
    name: short name used in configs, keys (`"<name>/<split>"`) and file names.
    title: how results tables name it.
    rows: its CSV columns and row reader.
    choices: the closed answer set scored by the paper protocol at one `[MASK]` (pitch:
      higher/lower); empty for an open answer (animal names, any number of word pieces).
  """

  name: str
  title: str
  rows: RowFormat
  choices: tuple[str, ...] = ()

  @property
  def closed(self) -> bool:
    return bool(self.choices)


TASK_SPECS: dict[str, BenchmarkTask] = {
    "animal": BenchmarkTask("animal", "animal sound recognition", ANIMAL_ROWS),
    "pitch": BenchmarkTask("pitch", "sound pitch comparison", PITCH_ROWS,
                           choices=PITCH_OPTIONS),
}


def spec(name: str) -> BenchmarkTask:
  """The spec of benchmark task `name` (a ValueError naming the known ones otherwise)."""
  if name not in TASK_SPECS:
    raise ValueError(f"unknown benchmark task {name!r}; known: {', '.join(TASK_SPECS)}")
  return TASK_SPECS[name]


def choice_words(names: Sequence[str]) -> tuple[str, ...]:
  """Every closed-set answer word of the tasks `names`, in order, without repeats: the words
  whose logits the model returns at the first `[MASK]`."""
  words: list[str] = []
  for n in names:
    words += [w for w in spec(n).choices if w not in words]
  return tuple(words)


def paper_answers(task: BenchmarkTask, examples: Sequence[Example], outputs: Mapping,
                  words: Sequence[str], decode) -> tuple[list[str], list[bool]]:
  """Paper-protocol predictions and correctness for `examples` (one row each, in order).

  Args:
    task: the examples' benchmark task.
    examples: the examples.
    outputs: per-row model outputs: `choice_logits` [N, len(words)] (logits of `words` at the
      first mask), `argmax` and `labels` [N, masks] (-1 past each row's masks).
    words: the words of `choice_logits`' columns (`choice_words`).
    decode: token ids -> text, for the shown prediction of open tasks.
  """
  if task.closed:
    columns = [list(words).index(w) for w in task.choices]
    logits = np.asarray(outputs["choice_logits"])[:, columns]
    predicted = [task.choices[i] for i in logits.argmax(-1)]
    return predicted, [p == e.answer for p, e in zip(predicted, examples)]
  argmax, labels = np.asarray(outputs["argmax"]), np.asarray(outputs["labels"])
  predicted = [decode([t for t in row if t >= 0]) for row in argmax]
  # Right only when every word piece is right (padding columns hold -1 in both arrays).
  return predicted, [bool(x) for x in (argmax == labels).all(axis=1)]


def candidate_answers(num_examples: int, example_index: np.ndarray, option_index: np.ndarray,
                      scores: np.ndarray, without_options: Sequence[int] = ()) -> list:
  """Per example, the index of its best-scoring option (ties: the first option); None for the
  examples in `without_options` (an animal file without option columns)."""
  best: dict[int, tuple[int, float]] = {}
  for ex, opt, score in zip(np.asarray(example_index).tolist(),
                            np.asarray(option_index).tolist(), np.asarray(scores).tolist()):
    if ex not in best or score > best[ex][1]:
      best[ex] = (opt, score)
  skip = set(without_options)
  missing = [i for i in range(num_examples) if i not in best and i not in skip]
  if missing:
    raise ValueError(f"examples without candidate rows: {missing[:5]}")
  return [best[i][0] if i in best else None for i in range(num_examples)]


def majority_baseline(examples: Sequence[Example]) -> float:
  """Accuracy (%) of always giving the most frequent answer of `examples` themselves."""
  answers = [e.answer for e in examples]
  if not answers:
    return float("nan")
  _, counts = np.unique(answers, return_counts=True)
  return 100.0 * counts.max() / len(answers)

# How results files describe the `*_unseen` metrics.
UNSEEN_NOTE = ("*_unseen: over the examples_unseen rows whose sentence (lower-cased, "
               "whitespace collapsed) does not occur in the task's train split.")


def unseen_in_train(examples: Sequence[Example], train: Sequence[Example]) -> list[bool]:
  """Per example: True when its sentence (normalised by `auditorybench.normalise`: lower-case,
  whitespace collapsed) occurs in none of the `train` examples."""
  seen = {ab.normalise(e.sentence) for e in train}
  return [ab.normalise(e.sentence) not in seen for e in examples]
