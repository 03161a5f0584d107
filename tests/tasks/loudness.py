"""A benchmark task added from outside axk: which of two sounds is louder.

Everything it needs is this module, listed in a config's `plugins`
(`--config.plugins='("tests.tasks.loudness",)'`), and a data folder `loudness_comparison/`
with `train.csv`, `dev.csv`, `test.csv` (columns sentence, answer, span1, span2; the answer
"louder" or "quieter": span 1 compared with span 2).
"""

import re

from axk import tasks
from axk.data.auditorybench import normalise
from axk.data.benchmark import RowFormat

CHOICES = ("louder", "quieter")
BAD_ANSWER = "answer not louder/quieter"  # The skip reason of a row with another answer.


def _read(fields):
  """A row -> (skip reason or None, answer, options, gold span texts)."""
  answer = normalise(fields["answer"])
  if answer not in CHOICES:
    return BAD_ANSWER, None, (), ()
  return None, answer, CHOICES, (fields["span1"], fields["span2"])


class Loudness(tasks.Task):
  """Loudness comparison: whether the first sound is louder or quieter than the second."""

  _WORDS = re.compile(r"\b(loud\w*|quiet\w*|volume|noisier)\b", re.IGNORECASE)

  def infer(self, sentence: str) -> float:
    return 1.0 if self._WORDS.search(sentence) else 0.0


LOUDNESS = tasks.register(Loudness(
    name="loudness", title="loudness comparison", folder="loudness_comparison",
    rows=RowFormat(columns={"sentence": ("sentence",), "answer": ("answer",),
                            "span1": ("span1",), "span2": ("span2",)}, read=_read),
    head="choice", choices=CHOICES, columns=("dev", "test"),
    tau=0.6, learning_rate=1e-3))
