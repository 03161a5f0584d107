"""Auditory spans of each example: gold, from a predictions file, or from a detector.

Three sources, chosen by `config.spans.source`:

  * `gold`: the spans of the data files (`Example.spans`).
  * `predictions`: JSON lines, one object per example,
    `{"id": "animal/test/3", "spans": [{"start": 0, "end": 5, "text": "Chirp"}, ...]}`,
    as the span detector writes them to `<workdir>/predictions/<task>_<split>.jsonl`
    (the format and its reader live in `axk/data/spans.py`).
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
import logging

from axk.data.auditorybench import normalise  # noqa: F401  (the deduplication key)
from axk.data.spans import predictions_path  # noqa: F401  (re-exported)
from axk.data.spans import read_predictions  # noqa: F401
from axk.data.spans import spans_from_labels
from axk.data.spans import write_predictions  # noqa: F401
from axk.data.types import Example
from axk.data.types import Span

logger = logging.getLogger(__name__)

SOURCES = ("gold", "predictions", "detector")


def shard_of(key: str, num_shards: int) -> int:
  """Which of `num_shards` workers acquires the normalised span `key` (stable hash)."""
  return int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) % num_shards


def gold_spans(examples: Iterable[Example]) -> dict[str, tuple[Span, ...]]:
  """Example id -> its gold spans."""
  return {e.id: tuple(e.spans) for e in examples}


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
