"""What a row of AuditoryBench can be skipped for, and the text normalisation rows get.

The lowest layer of the data package: the loader (`axk.data.auditorybench`) and the benchmark
tasks' row readers (`axk.data.benchmark`) both report a skipped row under one of these
reasons, and compare answers and sentences after `normalise`.
"""

from __future__ import annotations

# Reasons for skipping a row, as they appear in `SplitData.skipped`.
UNDECODABLE = "undecodable bytes"
WRONG_FIELD_COUNT = "wrong number of fields"
NO_MASK = "no [MASK]"
MANY_MASKS = "more than one [MASK]"
EMPTY_ANSWER = "empty answer"
BAD_PITCH_ANSWER = "answer not higher/lower"
BAD_LETTER = "Answer not one of A-D"
OPTION_DISAGREES = "option at Answer disagrees with animal"
EMPTY_SPAN = "empty gold span"
SPAN_NOT_FOUND = "gold span not found"
# Remarks on kept rows, as they appear in `SplitData.notes`.
SPAN_FUZZY = "gold span matched ignoring punctuation"
SPAN_MISSING_KEPT = "gold span missing, row kept"


def normalise(text: str) -> str:
  """Lower-cases `text`, collapses runs of whitespace and strips the ends."""
  return " ".join(text.split()).lower()
