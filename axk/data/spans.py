"""Predicted auditory spans: the JSON-lines format, and spans from token labels; span
labels to train a detector on (`read_labels`).

One file per task and split, one object per example:
`{"id": "animal/test/3", "sentence": ..., "spans": [{"start": 0, "end": 5, "text": "Chirp"}]}`.
The span detector writes them to `<workdir>/predictions/<task>_<split>.jsonl`; the feature
pipeline and the masked-word tasks read them. Character offsets are the truth: a span's text
is cut from the sentence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import json
import logging
import os

from axk.data.auditorybench import normalise
from axk.data.types import Example
from axk.data.types import Span
from axk.utils import files

logger = logging.getLogger(__name__)


def predictions_path(pattern: str, task: str, split: str) -> str:
  """Resolves `config.spans.predictions` for one task and split."""
  pattern = os.path.expanduser(pattern)
  if os.path.isdir(pattern):
    return os.path.join(pattern, f"{task}_{split}.jsonl")
  return pattern.format(task=task, split=split)


def _checked_span(example: Example, start: int, end: int, text: str | None,
                  counts: dict[str, int]) -> Span | None:
  """A span from offsets, its text taken from the sentence (the offsets are the truth)."""
  sentence = example.sentence
  if not (0 <= start < end <= len(sentence)):
    counts["offsets out of range"] = counts.get("offsets out of range", 0) + 1
    return None
  cut = sentence[start:end]
  if text is not None and normalise(text) != normalise(cut):
    counts["text differs from sentence"] = counts.get("text differs from sentence", 0) + 1
  if not cut.strip():
    counts["blank span"] = counts.get("blank span", 0) + 1
    return None
  return Span(start, end, cut)


def read_predictions(path: str, examples: Sequence[Example], *,
                     strict: bool = False) -> dict[str, tuple[Span, ...]]:
  """Reads a JSON-lines predictions file for `examples`.

  Ids in the file that are not among `examples` are ignored; examples absent from the file
  get no spans (with `strict`, they are an error). Both are counted and logged, as are
  malformed spans.

  Raises:
    FileNotFoundError: no such file.
    ValueError: a line that is not a JSON object with `id` and `spans`; with `strict`, an
      example that the file lacks.
  """
  by_id = {e.id: e for e in examples}
  result: dict[str, tuple[Span, ...]] = {}
  counts: dict[str, int] = {}
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        example_id, raw_spans = record["id"], record["spans"]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}:{line_number}: expected a JSON object with `id` and "
                         f"`spans` ({e})") from e
      example = by_id.get(example_id)
      if example is None:
        counts["unknown id"] = counts.get("unknown id", 0) + 1
        continue
      spans = []
      for s in raw_spans:
        span = _checked_span(example, int(s["start"]), int(s["end"]), s.get("text"), counts)
        if span is not None:
          spans.append(span)
      result[example_id] = tuple(sorted(set(spans), key=lambda s: (s.start, s.end)))
  missing = [e.id for e in examples if e.id not in result]
  if missing and strict:
    raise ValueError(f"{path}: no spans for {len(missing)} examples ({missing[:3]} ...); "
                     "the predictions were made for other data.")
  if missing:
    counts["example not in file"] = len(missing)
    for example_id in missing:
      result[example_id] = ()
  if counts:
    logger.warning("%s: %s", path, ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
  return result


def write_predictions(path: str, examples: Sequence[Example],
                      spans: Mapping[str, Sequence[Span]]) -> None:
  """Writes spans in the predictions format (with each sentence, for readers), atomically."""
  lines = []
  for e in examples:
    record = {"id": e.id, "sentence": e.sentence,
              "spans": [{"start": s.start, "end": s.end, "text": s.text}
                        for s in spans.get(e.id, ())]}
    lines.append(json.dumps(record, ensure_ascii=False) + "\n")
  files.write_text(path, "".join(lines))


# Splits of a span-labels file (`read_labels`): the detector learns from "train", is selected
# on "dev" and scored on "dev" and "test".
LABEL_SPLITS = ("train", "dev", "test")
LABELS_TASK = "labels"  # The task name of a labels file's rows (results, predictions).


def read_labels(path: str) -> list[Example]:
  """Span labels that any labeller wrote (an LLM, people), to train a span detector on.

  JSON lines, one sentence each: `{"id": "sst2/train/7", "sentence": "...", "spans":
  [{"start": 4, "end": 13}, ...], "split": "train"}`; a span may also be `[start, end]`,
  `split` (one of `LABEL_SPLITS`) defaults to "train", the sentence needs no `[MASK]`.
  Character offsets are the truth: each span's text is cut from the sentence.

  Returns:
    The rows as `Example`s of task `LABELS_TASK` (no answer), in file order.

  Raises:
    FileNotFoundError: no such file.
    ValueError: one line naming the file, line and field of the first bad row (not JSON,
      a missing or mistyped field, a span outside its sentence or empty, an unknown split,
      an id seen before).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such span-labels file")
  out, seen = [], set()
  for number, record in files.json_lines(path):
    where = f"{path}:{number}"
    if not isinstance(record, dict):
      raise ValueError(f"{where}: not a JSON object")
    for field, kind in (("id", str), ("sentence", str), ("spans", list)):
      if not isinstance(record.get(field), kind):
        raise ValueError(f"{where}: field `{field}` must be a {kind.__name__}")
    row_id, sentence = record["id"], record["sentence"]
    if row_id in seen:
      raise ValueError(f"{where}: id {row_id!r} appears twice")
    seen.add(row_id)
    split = record.get("split", "train")
    if split not in LABEL_SPLITS:
      raise ValueError(f"{where}: field `split` is {split!r}; one of {', '.join(LABEL_SPLITS)}")
    spans = []
    for k, item in enumerate(record["spans"]):
      try:
        start, end = ((item["start"], item["end"]) if isinstance(item, dict) else item)
        start, end = int(start), int(end)
      except (KeyError, TypeError, ValueError):
        raise ValueError(f"{where}: field `spans[{k}]` must be {{\"start\", \"end\"}} or "
                         "[start, end]") from None
      if not (0 <= start < end <= len(sentence)) or not sentence[start:end].strip():
        raise ValueError(f"{where}: field `spans[{k}]` = [{start}, {end}] is not a "
                         f"non-blank range of its {len(sentence)}-character sentence")
      spans.append(Span(start, end, sentence[start:end]))
    out.append(Example(id=row_id, task=LABELS_TASK, split=split, sentence=sentence,
                       answer="", spans=tuple(sorted(set(spans),
                                                    key=lambda s: (s.start, s.end))),
                       options=(), label=-1))
  if not out:
    raise ValueError(f"{path}: no rows")
  return out


def _in_word(c: str) -> bool:
  """A character that belongs to a word: letters, digits, and the apostrophes and hyphens
  inside words ("don't", "high-pitched")."""
  return c.isalnum() or c in "'’-_"


def snap_to_words(sentence: str, start: int, end: int) -> tuple[int, int]:
  """`[start, end)` widened to whole words: a start or end inside a word moves to that
  word's edge ("Cl|ucking" -> "Clucking")."""
  while 0 < start < len(sentence) and _in_word(sentence[start - 1]) and _in_word(
      sentence[start]):
    start -= 1
  while 0 < end < len(sentence) and _in_word(sentence[end - 1]) and _in_word(sentence[end]):
    end += 1
  return start, end


def spans_from_labels(sentence: str, offsets: Sequence[tuple[int, int]],
                      labels: Sequence[int]) -> tuple[Span, ...]:
  """Contiguous positive tokens -> spans by character offsets, on whole words.

  Tokens with empty offsets (special tokens, padding) end a run and are never part of a
  span. A run that starts or ends inside a word (a word piece) is widened to the whole word
  (`snap_to_words`), so a span never cuts a word; runs that then touch or overlap merge.
  """
  spans, start, end = [], None, None
  for (a, b), label in zip(offsets, labels):
    if b <= a or label != 1:
      if start is not None:
        spans.append((start, end))
      start = None
      continue
    if start is None:
      start = a
    end = b
  if start is not None:
    spans.append((start, end))
  merged: list[tuple[int, int]] = []
  for a, b in (snap_to_words(sentence, a, b) for a, b in spans):
    if merged and a <= merged[-1][1]:
      merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
    else:
      merged.append((a, b))
  return tuple(Span(a, b, sentence[a:b]) for a, b in merged if sentence[a:b].strip())


def gold_spans(examples: Iterable[Example]) -> dict[str, tuple[Span, ...]]:
  """Example id -> its gold spans."""
  return {e.id: tuple(e.spans) for e in examples}


def distinct(spans_by_id: Mapping[str, Sequence[Span]]) -> list[str]:
  """Sorted distinct normalised span texts (the key that feature acquisition dedupes on)."""
  return sorted({normalise(s.text) for spans in spans_by_id.values() for s in spans})
