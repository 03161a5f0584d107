"""Auditory spans of each example: gold, from a predictions file, or from a detector.

Three sources, chosen by `config.spans.source`:

  * `gold`: the spans of the data files (`Example.spans`).
  * `predictions`: JSON lines, one object per example,
    `{"id": "animal/test/3", "spans": [{"start": 0, "end": 5, "text": "Chirp"}, ...]}`,
    as the span detector writes them to `<workdir>/predictions/<task>_<split>.jsonl`.
    `config.spans.predictions` names the file; `{task}` and `{split}` in it are filled in,
    and a directory means `<dir>/<task>_<split>.jsonl`.
  * `detector`: an exported Hugging Face `BertForTokenClassification` directory, run here
    in PyTorch. Label 1 means inside a span; contiguous positive tokens form one span,
    whose text is cut from the sentence by the tokens' character offsets.

Span texts are normalised (lower-cased, whitespace collapsed, stripped) into the key that
acquisition is deduplicated on: AuditoryBench's 34,216 spans hold 19,937 distinct ones,
and each distinct one costs one retrieval or generation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import hashlib
import json
import logging
import os

from axk.data.types import Example
from axk.data.types import Span

logger = logging.getLogger(__name__)

SOURCES = ("gold", "predictions", "detector")


def normalise(text: str) -> str:
  """The deduplication key of a span: lower-case, whitespace collapsed, stripped."""
  return " ".join(text.split()).lower()


def shard_of(key: str, num_shards: int) -> int:
  """Which of `num_shards` workers acquires the normalised span `key` (stable hash)."""
  return int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) % num_shards


def gold_spans(examples: Iterable[Example]) -> dict[str, tuple[Span, ...]]:
  """Example id -> its gold spans."""
  return {e.id: tuple(e.spans) for e in examples}


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


def read_predictions(path: str, examples: Sequence[Example]) -> dict[str, tuple[Span, ...]]:
  """Reads a JSON-lines predictions file for `examples`.

  Ids in the file that are not among `examples` are ignored; examples absent from the file
  get no spans. Both are counted and logged, as are malformed spans.

  Raises:
    FileNotFoundError: no such file.
    ValueError: a line that is not a JSON object with `id` and `spans`.
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
  if missing:
    counts["example not in file"] = len(missing)
    for example_id in missing:
      result[example_id] = ()
  if counts:
    logger.warning("%s: %s", path, ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
  return result


def write_predictions(path: str, examples: Sequence[Example],
                      spans: Mapping[str, Sequence[Span]]) -> None:
  """Writes spans in the predictions format, atomically."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    for e in examples:
      record = {"id": e.id, "spans": [{"start": s.start, "end": s.end, "text": s.text}
                                      for s in spans.get(e.id, ())]}
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
  os.replace(tmp, path)


def spans_from_labels(sentence: str, offsets: Sequence[tuple[int, int]],
                      labels: Sequence[int]) -> tuple[Span, ...]:
  """Contiguous positive tokens -> spans by character offsets.

  Tokens with empty offsets (special tokens, padding) end a run and are never part of a
  span.
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
  return tuple(Span(a, b, sentence[a:b]) for a, b in spans if sentence[a:b].strip())


class Detector:
  """An exported `BertForTokenClassification` span detector, run in PyTorch."""

  def __init__(self, path: str, *, device: str = "auto", batch_size: int = 32):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top

    from axk.features import clap as clap_lib  # pylint: disable=g-import-not-at-top
    from axk.features import hub  # pylint: disable=g-import-not-at-top

    self._torch = torch
    self.path = hub.resolve(path, "spans.detector")
    self.info = hub.describe(path, self.path)
    self.device = clap_lib.pick_device(device)
    self.batch_size = batch_size
    self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path)
    if not self.tokenizer.is_fast:
      raise ValueError(f"{self.path}: the detector needs a fast tokenizer (character "
                       "offsets)")
    self.model = transformers.AutoModelForTokenClassification.from_pretrained(self.path)
    self.model.to(self.device).eval()

  def __call__(self, sentences: Sequence[str]) -> list[tuple[Span, ...]]:
    """Spans of each sentence."""
    import tqdm  # pylint: disable=g-import-not-at-top
    torch = self._torch
    out = []
    for i in tqdm.trange(0, len(sentences), self.batch_size, desc="span detector",
                         unit="batch", disable=len(sentences) <= self.batch_size):
      batch = list(sentences[i:i + self.batch_size])
      enc = self.tokenizer(batch, padding=True, truncation=True, return_offsets_mapping=True,
                           return_tensors="pt")
      offsets = enc.pop("offset_mapping").tolist()
      with torch.no_grad():
        logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits
      labels = logits.argmax(-1).cpu().tolist()
      mask = enc["attention_mask"].tolist()
      for sentence, off, lab, m in zip(batch, offsets, labels, mask):
        # Padding has offsets (0, 0) already; the mask makes it explicit.
        off = [tuple(o) if keep else (0, 0) for o, keep in zip(off, m)]
        out.append(spans_from_labels(sentence, off, lab))
    return out


def detect(detector: Detector, examples: Sequence[Example]) -> dict[str, tuple[Span, ...]]:
  """Example id -> detected spans."""
  found = detector([e.sentence for e in examples])
  return {e.id: s for e, s in zip(examples, found)}


def distinct(spans_by_id: Mapping[str, Sequence[Span]]) -> list[str]:
  """Sorted distinct normalised span texts."""
  return sorted({normalise(s.text) for spans in spans_by_id.values() for s in spans})
