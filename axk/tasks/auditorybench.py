"""AuditoryBench's two tasks: animal sound recognition and sound pitch comparison.

    animal_sound_recognition/{train,dev,test,wiki}.csv
        animal, description (or span), sentence, A, B, C, D, Answer
    sound_pitch_comparsion/{train,dev,test,wiki}.csv
        sentence, answer, span1, span2

Published numbers: ITH paper, Table 1 (REFERENCE.md, "Reported accuracy"), BERT-base.
"""

from __future__ import annotations

import re
from typing import ClassVar, Sequence

from axk.data import rows as ab
from axk.data.benchmark import RowFormat
from axk.data.types import Example
from axk.data.types import Span
from axk.tasks.base import NO_ROLE
from axk.tasks.base import Task
from axk.tasks.base import register

PUBLISHED_SOURCE = "ITH paper, Table 1 (REFERENCE.md, \"Reported accuracy\")"
PITCH_CHOICES = ("higher", "lower")
ANIMAL_LETTERS = ("A", "B", "C", "D")  # The animal files' option columns.


def _read_pitch(fields):
  answer = ab.normalise(fields["answer"])
  if not answer:
    return ab.EMPTY_ANSWER, None, (), ()
  if answer not in PITCH_CHOICES:
    return ab.BAD_PITCH_ANSWER, None, (), ()
  return None, answer, PITCH_CHOICES, (fields["span1"], fields["span2"])


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


class Animal(Task):
  """Animal sound recognition: the animal a described sound comes from, an open answer."""

  def infer(self, sentence: str) -> float:
    """Any sentence may ask for the source of a sound: a middling score, which a comparison
    task's clear signs beat."""
    del sentence
    return 0.5


class Pitch(Task):
  """Sound pitch comparison: whether the first sound is higher or lower than the second."""

  # "[MASK] than" within two words, or the word "pitch".
  _COMPARISON: ClassVar[re.Pattern] = re.compile(r"\[MASK\](\s+\S+){0,2}\s+than\b",
                                                 re.IGNORECASE)
  _PITCH: ClassVar[re.Pattern] = re.compile(r"\bpitch\b", re.IGNORECASE)
  # The oracle roles of (gold span 1, gold span 2) by answer.
  ROLES: ClassVar[dict[str, tuple[str, str]]] = {"higher": ("high", "low"),
                                                 "lower": ("low", "high")}

  def infer(self, sentence: str) -> float:
    if self._PITCH.search(sentence):
      return 1.0
    return 0.9 if self._COMPARISON.search(sentence) else 0.0

  def oracle_roles(self, example: Example, answer: str, spans: Sequence[Span]) -> list[str]:
    """The gold span 1 (`example.spans[0]`) is "high" and span 2 "low" when the answer is
    "higher", and the reverse for "lower"; spans are matched to the gold ones by their
    offsets, since `spans` come in sentence order. A row that lacks one of its gold spans
    (not found in the sentence) cannot say which span is which: its spans get no role."""
    gold = [(s.start, s.end) for s in example.spans]
    if len(gold) != 2 or gold[0] == gold[1] or answer not in self.ROLES:
      return [NO_ROLE] * len(spans)
    by_offsets = dict(zip(gold, self.ROLES[answer]))
    return [by_offsets.get((s.start, s.end), NO_ROLE) for s in spans]


ANIMAL = register(Animal(
    name="animal", title="animal sound recognition", folder="animal_sound_recognition",
    rows=ANIMAL_ROWS, head="masked_word", columns=("dev", "test", "wiki"),
    tau=0.0, learning_rate=3e-4,  # ITH's threshold and rate for this task.
    published={"bert": {"dev": 15.51, "test": 13.46, "wiki": 3.05},
               "llama": {"dev": 23.10, "test": 21.80, "wiki": 16.24},
               "audiobert": {"dev": 38.28, "test": 36.63, "wiki": 14.32},
               "ith": {"dev": 39.36, "test": 41.55, "wiki": 19.09}},
    published_source=PUBLISHED_SOURCE, example="Rattle is the sound a [MASK] makes.",
    published_rows={"train": 4211, "dev": 593, "test": 1211, "wiki": 197}))
PITCH = register(Pitch(
    # Misspelt upstream; the spelling is part of the download URL.
    name="pitch", title="sound pitch comparison", folder="sound_pitch_comparsion",
    rows=PITCH_ROWS, head="choice", choices=PITCH_CHOICES, columns=("dev", "test", "wiki"),
    tau=0.6, learning_rate=4e-5,  # ITH's threshold and rate for this task.
    published={"bert": {"dev": 59.42, "test": 60.41, "wiki": 48.06},
               "llama": {"dev": 61.46, "test": 62.55, "wiki": 47.72},
               "audiobert": {"dev": 73.18, "test": 74.83, "wiki": 55.31},
               "ith": {"dev": 79.82, "test": 78.96, "wiki": 76.74}},
    published_source=PUBLISHED_SOURCE,
    example="The buzzing of a mosquito has a [MASK] pitch than the roar of a lion.",
    published_rows={"train": 8312, "dev": 1178, "test": 2387, "wiki": 3625}))
# AuditoryBench's tasks, in the papers' order: the default `data.tasks`, the tables' columns.
NAMES = (ANIMAL.name, PITCH.name)
