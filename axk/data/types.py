"""Plain records shared by the data, training and feature code."""

from __future__ import annotations

import dataclasses

SPLITS = ("train", "dev", "test", "wiki")
MASK = "[MASK]"


@dataclasses.dataclass(frozen=True)
class Span:
  """An auditory span: `sentence[start:end] == text`."""

  start: int
  end: int
  text: str


@dataclasses.dataclass(frozen=True)
class Example:
  """One AuditoryBench row after validation and normalisation.

  Attributes:
    id: stable identifier `"{task}/{split}/{row}"`, row being the 1-based data record of
      the CSV file (the header and blank lines not counted; a record whose quoted field
      spans lines counts once), so that messages and predictions point back at the file.
      It is not the file line: the loader's messages name those.
    task: a registered benchmark task (`axk.tasks`).
    split: one of `SPLITS`.
    sentence: the sentence, with exactly one `[MASK]`.
    answer: the gold answer, lower-cased with whitespace collapsed.
    spans: the gold auditory spans, as character offsets into `sentence`.
    options: candidate answers for the leak-free candidate protocol (animal: the four
      options A-D normalised like `answer`, or none when the file has no option columns;
      a task with a closed answer set, such as pitch: its `choices`).
    label: `options.index(answer)`, -1 without options.
  """

  id: str
  task: str
  split: str
  sentence: str
  answer: str
  spans: tuple[Span, ...]
  options: tuple[str, ...]
  label: int
