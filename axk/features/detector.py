"""Spans from an exported span detector, run in PyTorch (`spans.source=detector`).

The detector is a Hugging Face `BertForTokenClassification` (or `RobertaForTokenClassification`)
directory (what `configs/span.py` exports). Label 1 means inside a span; contiguous positive tokens form
one span, whose text is cut from the sentence by the tokens' character offsets
(`axk.data.spans.spans_from_labels`).

A sentence longer than the detector reads (the least of its position embeddings and its
tokenizer's `model_max_length`) is cut around its `[MASK]` as the masked-word encoding cuts
it (`axk.data.encode.mask_window`), with a warning; its spans lie in the window kept.
"""

from __future__ import annotations

from collections.abc import Sequence
import logging

from axk import hub
from axk.data import encode as enc
from axk.data.spans import spans_from_labels
from axk.data.types import Example
from axk.data.types import Span

logger = logging.getLogger(__name__)


class Detector:
  """An exported `*ForTokenClassification` span detector (BERT or RoBERTa), run in PyTorch."""

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
    self.max_length = min(int(self.tokenizer.model_max_length),
                          int(self.model.config.max_position_embeddings))

  def _cut(self, ids: list[int], special: list[int], where: str, warn) -> list[int]:
    """Positions of `ids` the detector reads: all, or the window around `[MASK]`."""
    length = len(ids)
    words = [i for i, s in enumerate(special) if not s]
    head = words[0] if words else length
    tail = length - (words[-1] + 1 if words else head)
    mask_at = next((i for i in words if ids[i] == self.tokenizer.mask_token_id), head)
    start, end = enc.mask_window(length, mask_at, self.max_length, head=head, tail=tail)
    if (start, end) != (head, length - tail) and warn is not None:
      warn(enc.cut_note(where, length, (start, end), self.max_length, head=head, tail=tail,
                        reader="the span detector"))
    return [*range(head), *range(start, end), *range(length - tail, length)]

  def __call__(self, sentences: Sequence[str], *, names: Sequence[str] | None = None,
               warn=logger.warning) -> list[tuple[Span, ...]]:
    """Spans of each sentence; `names` (default "sentence <n>") name the sentences in the
    warning `warn` gets for each one cut around its `[MASK]`."""
    import tqdm  # pylint: disable=g-import-not-at-top
    torch = self._torch
    out = []
    for i in tqdm.trange(0, len(sentences), self.batch_size, desc="span detector",
                         unit="batch", disable=len(sentences) <= self.batch_size):
      batch = list(sentences[i:i + self.batch_size])
      texts = [enc.model_text(s, self.tokenizer) for s in batch]  # `[MASK]` as its own.
      tokens = self.tokenizer([t for t, _ in texts], return_offsets_mapping=True,
                              return_special_tokens_mask=True, verbose=False)
      rows, offsets = [], []
      for j in range(len(batch)):
        where = names[i + j] if names is not None else f"sentence {i + j + 1}"
        keep = self._cut(tokens["input_ids"][j], tokens["special_tokens_mask"][j], where,
                         warn)
        rows.append({k: [tokens[k][j][p] for p in keep] for k in tokens
                     if k not in ("offset_mapping", "special_tokens_mask")})
        offsets.append([texts[j][1](tokens["offset_mapping"][j][p]) for p in keep])
      inputs = self.tokenizer.pad(rows, return_tensors="pt")
      with torch.no_grad():
        logits = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).logits
      labels = logits.argmax(-1).cpu().tolist()
      for sentence, off, lab in zip(batch, offsets, labels):
        # Padding comes after the row's own tokens, which `off` lists.
        out.append(spans_from_labels(sentence, off, lab[:len(off)]))
    return out

  def detect(self, examples: Sequence[Example]) -> dict[str, tuple[Span, ...]]:
    """Example id -> detected spans."""
    found = self([e.sentence for e in examples], names=[e.id for e in examples])
    return {e.id: s for e, s in zip(examples, found)}
