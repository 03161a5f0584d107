"""Spans from an exported span detector, run in PyTorch (`spans.source=detector`).

The detector is a Hugging Face `BertForTokenClassification` directory (what
`configs/span.py` exports). Label 1 means inside a span; contiguous positive tokens form
one span, whose text is cut from the sentence by the tokens' character offsets
(`axk.data.spans.spans_from_labels`).
"""

from __future__ import annotations

from collections.abc import Sequence

from axk import hub
from axk.data.spans import spans_from_labels
from axk.data.types import Example
from axk.data.types import Span


class Detector:
  """An exported `BertForTokenClassification` span detector, run in PyTorch."""

  def __init__(self, path: str, *, device: str = "auto", batch_size: int = 32):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top

    from axk.features import clap as clap_lib  # pylint: disable=g-import-not-at-top

    self._torch = torch
    self.path = hub.resolve(path, "spans.detector", ignore_patterns=hub.NOT_PYTORCH)
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

  def detect(self, examples: Sequence[Example]) -> dict[str, tuple[Span, ...]]:
    """Example id -> detected spans."""
    found = self([e.sentence for e in examples])
    return {e.id: s for e, s in zip(examples, found)}
