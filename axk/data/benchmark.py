"""AuditoryBench's benchmark tasks as specs: what each asks, how answers are scored.

A benchmark task (animal sound recognition, sound pitch comparison) is one `BenchmarkTask`
entry of `TASK_SPECS`: its answer space, its paper-protocol scoring and its majority
baseline. The masked-word runs read everything task-specific from here, so a third task is
a new entry, not a new branch. (Each task's CSV columns and row checks live with the reader,
`axk/data/auditorybench.py`.)

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
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from axk.data.types import PITCH_OPTIONS
from axk.data.types import Example


@dataclasses.dataclass(frozen=True)
class BenchmarkTask:
  """One benchmark task.

  Attributes:
    name: short name used in configs, keys (`"<name>/<split>"`) and file names.
    title: how results tables name it.
    choices: the closed answer set scored by the paper protocol at one `[MASK]` (pitch:
      higher/lower); empty for an open answer (animal names, any number of word pieces).
  """

  name: str
  title: str
  choices: tuple[str, ...] = ()

  @property
  def closed(self) -> bool:
    return bool(self.choices)


TASK_SPECS: dict[str, BenchmarkTask] = {
    "animal": BenchmarkTask("animal", "animal sound recognition"),
    "pitch": BenchmarkTask("pitch", "sound pitch comparison", choices=PITCH_OPTIONS),
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
                      scores: np.ndarray) -> list[int]:
  """Per example, the index of its best-scoring option (ties: the first option)."""
  best: dict[int, tuple[int, float]] = {}
  for ex, opt, score in zip(np.asarray(example_index).tolist(),
                            np.asarray(option_index).tolist(), np.asarray(scores).tolist()):
    if ex not in best or score > best[ex][1]:
      best[ex] = (opt, score)
  missing = [i for i in range(num_examples) if i not in best]
  if missing:
    raise ValueError(f"examples without candidate rows: {missing[:5]}")
  return [best[i][0] for i in range(num_examples)]


def majority_baseline(examples: Sequence[Example]) -> float:
  """Accuracy (%) of always giving the most frequent answer of `examples` themselves."""
  answers = [e.answer for e in examples]
  if not answers:
    return float("nan")
  _, counts = np.unique(answers, return_counts=True)
  return 100.0 * counts.max() / len(answers)
