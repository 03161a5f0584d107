"""AudioBERT inference in PyTorch from an axk export (`<workdir>/export/`).

    model = AudioBertTorch.from_export("workdir/export")
    logits = model(input_ids, attention_mask, token_type_ids, span_ids, span_audio,
                   span_has_audio, lora_gate)   # [batch, length, vocab]

The base `BertForMaskedLM` runs with the PEFT adapter enabled for the examples whose gate
is 1 and disabled for the others; the projected audio vector of each span with audio is
added to the embedding output at the span's first token (a forward hook on the embeddings).
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file

from axk.pt import load_export


def first_token_onehot(span_ids: torch.Tensor, num_spans: int) -> torch.Tensor:
  """[batch, spans, length]: True at the first token of each span."""
  k = torch.arange(1, num_spans + 1, device=span_ids.device)
  inside = span_ids[:, None, :] == k[None, :, None]
  return inside & (torch.cumsum(inside.int(), dim=-1) == 1)


class AudioBertTorch(torch.nn.Module):
  """Base BERT + optional PEFT LoRA adapter + audio projection, as exported by axk."""

  def __init__(self, model, audio_proj: torch.nn.Linear | None, use_lora: bool):
    super().__init__()
    self.model = model
    self.audio_proj = audio_proj
    self.use_lora = use_lora
    self._delta = None
    base = model.get_base_model() if use_lora else model
    base.bert.embeddings.register_forward_hook(self._inject)

  @classmethod
  def from_export(cls, export_dir: str) -> "AudioBertTorch":
    model, meta = load_export(export_dir, "audiobert.json")
    proj = None
    if meta["use_audio"]:
      state = load_file(os.path.join(export_dir, "audio_projection.safetensors"))
      proj = torch.nn.Linear(state["audio_proj.weight"].shape[1],
                             state["audio_proj.weight"].shape[0])
      proj.load_state_dict({"weight": state["audio_proj.weight"],
                            "bias": state["audio_proj.bias"]})
    return cls(model, proj, meta["use_lora"]).eval()

  def _inject(self, module, inputs, output):
    if self._delta is None:
      return output
    delta, where = self._delta
    return torch.where(where[..., None], output + delta, output)

  @torch.no_grad()
  def forward(self, input_ids, attention_mask, token_type_ids, span_ids, span_audio,
              span_has_audio, lora_gate):
    if self.audio_proj is not None:
      first = first_token_onehot(span_ids, span_audio.shape[1])
      weight = (first & (span_has_audio[:, :, None] > 0)).float()
      audio = self.audio_proj(span_audio.float())
      self._delta = (torch.einsum("bsl,bse->ble", weight, audio), weight.sum(1) > 0)
    try:
      kwargs = dict(input_ids=input_ids, attention_mask=attention_mask,
                    token_type_ids=token_type_ids)
      if not self.use_lora:
        return self.model(**kwargs).logits
      on = self.model(**kwargs).logits
      with self.model.disable_adapter():
        off = self.model(**kwargs).logits
      return torch.where(lora_gate[:, None, None] > 0, on, off)
    finally:
      self._delta = None
