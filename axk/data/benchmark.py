"""What every benchmark task shares: the CSV row format the loader reads, and scoring helpers.

The tasks themselves (their row readers, answer heads, scoring by head, published numbers)
are registered specs in `axk/tasks/`; this module holds only what does not depend on one:
  * `RowFormat`: a task's CSV columns and row reader (`axk/data/auditorybench.py` reads files
    with it);
  * `candidate_answers`: the candidate protocol's pick per example (each option scored as a
    whole word by the sum of its pieces' log-probabilities);
  * `majority_baseline`: accuracy of always giving the split's most frequent answer;
  * `accuracy`, `binary_f1`, `pearson`, `spearman`: the scores of sentence and sentence-pair
    tasks (GLUE's: accuracy; F1 of the positive class for MRPC and QQP; Pearson and Spearman
    correlation for STS-B), in percent as every axk metric;
  * `unseen_in_train`: the rows whose sentence does not occur in the task's train split
    (sentences compared after `auditorybench.normalise`: lower-cased, whitespace collapsed),
    for the `*_unseen` metrics; about a quarter of the animal dev and test sentences are
    template sentences that train holds too, and a text-only model can learn those.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from axk.data import rows
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

def accuracy(predictions, labels) -> float:
  """Percent of `predictions` equal to `labels`."""
  p, y = np.asarray(predictions), np.asarray(labels)
  return 100.0 * float(np.mean(p == y)) if len(y) else float("nan")


def binary_f1(predictions, labels, positive=1) -> float:
  """F1 (percent) of the `positive` class: 2 tp / (2 tp + fp + fn); 0 when it has none."""
  p, y = np.asarray(predictions) == positive, np.asarray(labels) == positive
  tp = int(np.sum(p & y))
  denominator = 2 * tp + int(np.sum(p & ~y)) + int(np.sum(~p & y))
  return 100.0 * 2 * tp / denominator if denominator else 0.0


def pearson(x, y) -> float:
  """Pearson correlation (percent) of two equally long sequences."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  x, y = x - x.mean(), y - y.mean()
  return 100.0 * float(np.sum(x * y) / np.sqrt(np.sum(x * x) * np.sum(y * y)))


def _ranks(x) -> np.ndarray:
  """1-based ranks, ties given their mean rank."""
  x = np.asarray(x, np.float64)
  order = np.argsort(x, kind="stable")
  ranks = np.empty(len(x), np.float64)
  ranks[order] = np.arange(1, len(x) + 1)
  _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
  sums = np.bincount(inverse, weights=ranks)
  return sums[inverse] / counts[inverse]


def spearman(x, y) -> float:
  """Spearman rank correlation (percent): Pearson's of the ranks, ties at their mean rank."""
  return pearson(_ranks(x), _ranks(y))


# How results files describe the `*_unseen` metrics.
UNSEEN_NOTE = ("*_unseen: over the examples_unseen rows whose sentence (lower-cased, "
               "whitespace collapsed) does not occur in the task's train split.")


def unseen_in_train(examples: Sequence[Example], train: Sequence[Example]) -> list[bool]:
  """Per example: True when its sentence (normalised by `auditorybench.normalise`: lower-case,
  whitespace collapsed) occurs in none of the `train` examples."""
  seen = {rows.normalise(e.sentence) for e in train}
  return [rows.normalise(e.sentence) not in seen for e in examples]
