"""AuditoryBench as a run reads it: the folder `data.dir` names, its CSVs read and validated.

The benchmark ships as one folder per task with `train`, `dev`, `test` and (optionally)
`wiki` CSV files (`axk.data.layout`):

    animal_sound_recognition/{train,dev,test,wiki}.csv
        animal, description (or span), sentence, A, B, C, D, Answer
    sound_pitch_comparsion/{train,dev,test,wiki}.csv
        sentence, answer, span1, span2

The published files have faults (see the project's data notes): answers that are not
letters, rows with two `[MASK]`, gold spans that do not occur in their sentence, and, in
the repository's older flat layout, a training file identical to the test file. This module
reads columns by header name, normalises answers, skips bad rows with a counted reason
(`axk.data.rows`, never guessing a repair), and refuses split leakage. A folder is a local
one, the shipped sample, or a download of a pinned upstream commit (`axk.data.download`).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from collections.abc import Sequence
import csv
import dataclasses
import hashlib
import io
import logging
import os
import pathlib
import re

from axk import tasks
from axk.data.download import download
from axk.data.layout import DataError
from axk.data.layout import REQUIRED_SPLITS
from axk.data.layout import check_data_dir
from axk.data.layout import sample_data_dir
from axk.data.layout import split_path
from axk.data.rows import EMPTY_SPAN
from axk.data.rows import MANY_MASKS
from axk.data.rows import NO_MASK
from axk.data.rows import SPAN_FUZZY
from axk.data.rows import SPAN_MISSING_KEPT
from axk.data.rows import SPAN_NOT_FOUND
from axk.data.rows import UNDECODABLE
from axk.data.rows import WRONG_FIELD_COUNT
from axk.data.rows import normalise
from axk.data.types import Example
from axk.data.types import MASK
from axk.data.types import SPLITS
from axk.data.types import Span

logger = logging.getLogger(__name__)

# Beyond this fraction of shared sentences, two splits are one split under two names.
MAX_SENTENCE_OVERLAP = 0.5

_SURROGATE = re.compile("[\udc80-\udcff]")


@dataclasses.dataclass
class SplitData:
  """One loaded CSV file.

  Attributes:
    task: a registered benchmark task (`axk.tasks`).
    split: one of `SPLITS`.
    path: the CSV file read.
    examples: the valid rows, in file order.
    skipped: number of rows skipped, by reason (the module's reason constants).
    num_rows: data rows in the file (header and blank lines excluded);
      `len(examples) + sum(skipped.values()) == num_rows`.
    notes: number of kept rows that needed a remark, by remark (e.g. a gold span found
      only after ignoring punctuation).
    sha256: hex digest of the file's bytes, for provenance and identity checks.
    missing_spans: ids of the kept rows whose gold span is empty or not in the sentence
      (`keep_missing_spans=True`).
    overlap: for a training split loaded by `load_task`, `sentence_overlap(train, other)`
      for every other split loaded: the fraction of that split's sentences seen in training.
  """

  task: str
  split: str
  path: str
  examples: list[Example]
  skipped: dict[str, int]
  num_rows: int
  notes: dict[str, int] = dataclasses.field(default_factory=dict)
  sha256: str = ""
  overlap: dict[str, float] = dataclasses.field(default_factory=dict)
  missing_spans: frozenset[str] = frozenset()

  def complete(self) -> list[Example]:
    """The examples that have all their gold spans (those `keep_missing_spans=False` would
    keep): what span metrics and span training use."""
    return [e for e in self.examples if e.id not in self.missing_spans]


# ----------------------------------------------------------------------------------------
# Reading and validating one file.
# ----------------------------------------------------------------------------------------


def _read_records(path: pathlib.Path) -> tuple[list[str], list[tuple[int, list[str]]], bytes]:
  """Returns the header, the data records with the file line each starts on, and the raw
  bytes of a CSV file.

  The file is decoded as UTF-8 with `surrogateescape`, so that a stray byte becomes a lone
  surrogate in the field holding it instead of failing the whole file: the caller skips
  exactly the records that hold one. Invalid bytes are never ASCII, so they cannot change
  the CSV structure (quotes, commas, newlines) around them. Line numbers count the file's
  physical lines from 1 (the header's), so a quoted field over several lines or a blank line
  does not shift them.
  """
  try:
    raw = path.read_bytes()
  except FileNotFoundError:
    raise DataError(f"{path}: no such file") from None
  text = raw.decode("utf-8", errors="surrogateescape")
  if text.startswith("\ufeff"):
    text = text[1:]
  reader = csv.reader(io.StringIO(text, newline=""))
  records, start = [], 1
  try:
    for record in reader:
      if record:  # Blank lines are layout, not rows.
        records.append((start, record))
      start = reader.line_num + 1
  except csv.Error as e:
    raise DataError(f"{path}:{start}: not readable as CSV ({e})") from None
  if not records:
    raise DataError(f"{path}: empty file (no header, no rows)")
  header = [h.strip() for h in records[0][1]]
  if any(_SURROGATE.search(h) for h in header):
    raise DataError(f"{path}:{records[0][0]}: the header line is not valid UTF-8")
  return header, records[1:], raw


def _column_index(header: Sequence[str], names: Iterable[str], path: pathlib.Path) -> int:
  """Index of the first of `names` in `header`, exact name first, then ignoring case."""
  names = tuple(names)
  for match in (lambda h, n: h == n, lambda h, n: h.lower() == n.lower()):
    for name in names:
      found = [i for i, h in enumerate(header) if match(h, name)]
      if len(found) > 1:
        raise DataError(f"{path}: column {name!r} appears {len(found)} times in {header}")
      if found:
        return found[0]
  wanted = " or ".join(repr(n) for n in names)
  raise DataError(f"{path}: missing column {wanted}; the header has {header}")


def _word_bounded(sentence: str, start: int, end: int) -> bool:
  before_ok = start == 0 or not sentence[start - 1].isalnum()
  after_ok = end == len(sentence) or not sentence[end].isalnum()
  return before_ok and after_ok


def find_span(sentence: str, text: str) -> tuple[Span | None, bool]:
  """Locates a gold span in its sentence.

  Tries, in order: a case-insensitive match with any whitespace between words, preferring
  an occurrence on word boundaries; then, since upstream spans often drop the sentence's
  punctuation ("sound of wind water and weather" for "sound of wind, water, and
  weather"), a match of the letters and digits alone, which must start and end on word
  boundaries and may not reach into `[MASK]`.

  Args:
    sentence: the sentence, with its `[MASK]`.
    text: the span as written in the data file.

  Returns:
    The span, with offsets into `sentence` and `Span.text` the sentence's own substring
    (or None when not found), and whether the punctuation-blind match was needed.
  """
  words = text.split()
  if not words:
    return None, False
  pattern = r"\s+".join(re.escape(w) for w in words)
  bounded = re.search(rf"(?<!\w){pattern}(?!\w)", sentence, re.IGNORECASE)
  found = bounded or re.search(pattern, sentence, re.IGNORECASE)
  if found:
    return Span(found.start(), found.end(), found.group()), False

  target = "".join(c.lower() for c in text if c.isalnum())
  if not target:
    return None, False
  mask_at = sentence.find(MASK)
  mask_chars = range(mask_at, mask_at + len(MASK)) if mask_at >= 0 else range(0)
  # Letters and digits of the sentence with their offsets; `[MASK]` becomes a character
  # no span contains, so that no match runs through it.
  index, letters = [], []
  for i, c in enumerate(sentence):
    if i in mask_chars:
      if i == mask_at:
        index.append(i)
        letters.append("\0")
    elif c.isalnum():
      lower = c.lower()
      index.append(i)
      letters.append(lower if len(lower) == 1 else c)
  compressed = "".join(letters)
  at = compressed.find(target)
  while at >= 0:
    start, end = index[at], index[at + len(target) - 1] + 1
    if _word_bounded(sentence, start, end):
      return Span(start, end, sentence[start:end]), True
    at = compressed.find(target, at + 1)
  return None, False


def _validate_row(
    task: str,
    fields: dict[str, str],
    keep_missing_spans: bool,
) -> tuple[str | None, str | None, tuple[str, ...], tuple[Span, ...], list[str]]:
  """Checks one row.

  Returns:
    (skip reason or None, answer, options, spans, notes on the kept row).
  """
  sentence = fields["sentence"]
  num_masks = sentence.count(MASK)
  if num_masks == 0:
    return NO_MASK, None, (), (), []
  if num_masks > 1:
    return MANY_MASKS, None, (), (), []

  reason, answer, options, span_texts = tasks.get(task).rows.read(fields)
  if reason is not None:
    return reason, None, (), (), []

  spans, notes = [], []
  for span_text in span_texts:
    if not span_text.strip():
      if not keep_missing_spans:
        return EMPTY_SPAN, None, (), (), []
      notes.append(SPAN_MISSING_KEPT)
      continue
    span, fuzzy = find_span(sentence, span_text)
    if span is None:
      if not keep_missing_spans:
        return SPAN_NOT_FOUND, None, (), (), []
      notes.append(SPAN_MISSING_KEPT)
      continue
    if fuzzy:
      notes.append(SPAN_FUZZY)
    spans.append(span)
  return None, answer, options, tuple(spans), notes

def _lines(numbers: Sequence[int], shown: int = 5) -> str:
  """"line 4" / "lines 4, 9, 12" / "lines 4, 9, 12, 20, 31 and 7 more"."""
  head = ", ".join(map(str, numbers[:shown]))
  more = f" and {len(numbers) - shown} more" if len(numbers) > shown else ""
  return f"line{'s' if len(numbers) > 1 else ''} {head}{more}"


def load_split(
    data_dir: str | os.PathLike[str],
    task: str,
    split: str,
    *,
    keep_missing_spans: bool = False,
) -> SplitData:
  """Reads and validates `<data_dir>/<the task's folder>/<split>.csv`.

  Columns are read by header name (exact, else ignoring case), so files that list them in
  another order (the wiki splits) load the same. Answers and options are lower-cased with
  whitespace collapsed. A row is skipped, and counted under its reason, when it has bytes
  that are not UTF-8, the wrong number of fields, no or several `[MASK]`, an answer that
  is not `higher`/`lower` (pitch), an `Answer` that is not one of A-D or an option at
  `Answer` that disagrees with `animal` (animal), or a gold span that is empty or not in
  its sentence (see `find_span`). Every row gets exactly one reason, the first that
  applies, in that order. The log line (and the error when no row is valid) names the file
  lines of the skipped rows by reason; a file that is not CSV at all is refused naming the
  line the unreadable record starts on.

  Args:
    data_dir: folder holding the task folders.
    task: a registered benchmark task (`axk.tasks`).
    split: one of `SPLITS`.
    keep_missing_spans: keep rows whose gold span is empty or not found, with only the
      spans that were found (so `Example.spans` may be shorter or empty), counting them in
      `SplitData.notes`. Off by default: the span models train on gold spans. Evaluation
      of a model that predicts its own spans can turn it on, so that no test row is lost.

  Returns:
    The split's examples, with skip counts.

  Raises:
    DataError: the file is missing or empty, its header lacks a required column (the
      message names the file and the column), or no row is valid.
  """
  path = split_path(data_dir, task, split)
  header, records, raw = _read_records(path)
  rows = tasks.get(task).rows
  wanted = dict(rows.columns)
  # Optional columns come as a group: all of them, or none (then the reader does without,
  # e.g. an animal file without options: the paper protocol needs none). One of them alone
  # is a damaged file.
  header_names = {h.lower() for h in header}
  if any(k.lower() in header_names for k in rows.optional):
    wanted.update({k: (k,) for k in rows.optional})
  elif rows.optional:
    logger.info("%s: no %s columns: %s", path, "/".join(rows.optional), rows.without_optional)
  columns = {key: _column_index(header, names, path) for key, names in wanted.items()}

  examples: list[Example] = []
  skipped: collections.Counter[str] = collections.Counter()
  notes: collections.Counter[str] = collections.Counter()
  missing: set[str] = set()
  lines: dict[str, list[int]] = collections.defaultdict(list)  # Skip reason -> file lines.
  for row_number, (line, record) in enumerate(records, start=1):
    if any(_SURROGATE.search(field) for field in record):
      skipped[UNDECODABLE] += 1
      lines[UNDECODABLE].append(line)
      continue
    if len(record) != len(header):
      skipped[WRONG_FIELD_COUNT] += 1
      lines[WRONG_FIELD_COUNT].append(line)
      continue
    fields = {key: record[i] for key, i in columns.items()}
    reason, answer, options, spans, row_notes = _validate_row(task, fields, keep_missing_spans)
    if reason is not None:
      skipped[reason] += 1
      lines[reason].append(line)
      continue
    notes.update(row_notes)
    if SPAN_MISSING_KEPT in row_notes:
      missing.add(f"{task}/{split}/{row_number}")
    examples.append(Example(
        id=f"{task}/{split}/{row_number}",
        task=task,
        split=split,
        sentence=fields["sentence"],
        answer=answer,
        spans=spans,
        options=options,
        label=options.index(answer) if options else -1,
    ))

  reasons = ", ".join(f"{k}: {v} ({_lines(lines[k])})"
                      for k, v in sorted(skipped.items())) or "none"
  logger.info("%s: %d rows read, %d kept, skipped by reason: %s%s", path, len(records),
              len(examples), reasons,
              "".join(f"; {k}: {v}" for k, v in sorted(notes.items())))
  if not examples:
    raise DataError(f"{path}: no valid row among {len(records)} (skipped: {reasons})")
  return SplitData(
      task=task,
      split=split,
      path=str(path),
      examples=examples,
      skipped=dict(skipped),
      num_rows=len(records),
      notes=dict(notes),
      sha256=hashlib.sha256(raw).hexdigest(),
      missing_spans=frozenset(missing),
  )


# ----------------------------------------------------------------------------------------
# One task: all its splits, and the leakage check.
# ----------------------------------------------------------------------------------------


def sentence_overlap(a: SplitData, b: SplitData) -> float:
  """Fraction of `b`'s distinct sentences (normalised) that also occur in `a`."""
  seen = {normalise(e.sentence) for e in a.examples}
  wanted = {normalise(e.sentence) for e in b.examples}
  if not wanted:
    return 0.0
  return len(wanted & seen) / len(wanted)


def check_leakage(splits: dict[str, SplitData]) -> None:
  """Refuses splits that leak into each other; records and logs the benign overlap.

  Two files with the same bytes are refused outright. Between training and every other
  split, the shared-sentence fraction is measured both ways (how much of the training set
  is evaluation data, and how much of the evaluation set was seen in training) and refused
  above `MAX_SENTENCE_OVERLAP`. AuditoryBench's template sentences ("Meow is the sound a
  [MASK] makes.") give a real but modest overlap, which is logged and stored in
  `splits["train"].overlap`.

  Raises:
    DataError: naming both files.
  """
  names = list(splits)
  for i, first in enumerate(names):
    for second in names[i + 1:]:
      a, b = splits[first], splits[second]
      if a.sha256 and a.sha256 == b.sha256:
        if "train" in (first, second):
          other = second if first == "train" else first
          why = f"training on it means training on the {other} set"
        else:
          why = f"the {first} split is the {second} split"
        raise DataError(f"{a.path} and {b.path} are identical: {why}")
  train = splits.get("train")
  if train is None:
    return
  for name, other in splits.items():
    if name == "train":
      continue
    train_in_other = sentence_overlap(other, train)
    other_in_train = sentence_overlap(train, other)
    if max(train_in_other, other_in_train) > MAX_SENTENCE_OVERLAP:
      raise DataError(
          f"{train.path} and {other.path} share too many sentences: "
          f"{train_in_other:.1%} of the training sentences are in {name} and "
          f"{other_in_train:.1%} of the {name} sentences are in training "
          f"(limit {MAX_SENTENCE_OVERLAP:.0%}); training on it means training on the "
          f"{name} set")
    train.overlap[name] = other_in_train
    # Template sentences are expected; a figure that grows between data versions is not.
    logger.log(logging.WARNING if other_in_train or train_in_other else logging.INFO,
               "%s: %.1f%% of the %s sentences also occur in train (%.1f%% of train's "
               "occur in %s)", train.task, 100 * other_in_train, name,
               100 * train_in_other, name)


def load_task(
    data_dir: str | os.PathLike[str],
    task: str,
    splits: Sequence[str] = SPLITS,
    *,
    keep_missing_spans: bool = False,
) -> dict[str, SplitData]:
  """Loads the splits of one task and checks them for leakage.

  Args:
    data_dir: folder holding the task folders (see `resolve_data_dir`).
    task: a registered benchmark task (`axk.tasks`).
    splits: which splits to load. Those in `REQUIRED_SPLITS` must exist; `wiki` is
      loaded when its file exists and otherwise left out of the result (and logged).
    keep_missing_spans: as in `load_split`.

  Returns:
    Split name -> data, in the order of `splits`.

  Raises:
    DataError: a file is unusable (see `load_split`) or splits leak (see
      `check_leakage`).
  """
  loaded: dict[str, SplitData] = {}
  for split in splits:
    path = split_path(data_dir, task, split)
    if split not in REQUIRED_SPLITS and not path.exists():
      logger.info("%s: absent, %s/%s left out", path, task, split)
      continue
    loaded[split] = load_split(data_dir, task, split, keep_missing_spans=keep_missing_spans)
  check_leakage(loaded)
  return loaded


# ----------------------------------------------------------------------------------------
# Where the folder comes from: a local folder, the shipped sample, or GitHub.
# ----------------------------------------------------------------------------------------


def resolve_data_dir(
    path_or_none: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str = "",
) -> str:
  """Turns the `data.dir` setting into a checked AuditoryBench folder.

  Args:
    path_or_none: a local folder holding the task folders; `"sample"` for the shipped
      sample dataset; `None` or `"github"` to download the published files (see
      `download`).
    cache_dir: download target, default `axk.data.download.DEFAULT_CACHE_DIR`.
    revision: the upstream commit to download (`--config.data.revision`, see `download`).

  Returns:
    The folder.

  Raises:
    DataError: the folder lacks files (all of them listed) or the download failed.
  """
  if path_or_none is None or str(path_or_none) == "github":
    return download(cache_dir, revision)
  if str(path_or_none) == "sample":
    return sample_data_dir()
  return check_data_dir(path_or_none)
