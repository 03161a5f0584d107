"""AudioBERT inference in PyTorch from an axk export (`<workdir>/export/`).

    model = AudioBertTorch.from_export("workdir/export")
    logits = model(input_ids, attention_mask, token_type_ids, span_ids, span_audio,
                   span_has_audio, lora_gate)   # [batch, length, vocab]

    model = AudioBertTorch.from_pretrained("org/axk-audiobert")   # a hub id (or a folder)

The base `BertForMaskedLM` (or `RobertaForMaskedLM`) runs once over the whole batch with PEFT's mixed-batch inference:
`adapter_names` names the adapter for the rows whose gate is 1 and `"__base__"` (no
adapter) for the others. The audio vector of each span with audio (through the exported
residual adapter, `a + fc2(gelu(fc1(a)))`, and the projection, each when there is one) is
added to the embedding output at the span's first token, or replaces it (`audiobert.json`'s
`injection`: "add" or "replace"), by a forward hook on the embeddings. Exports without these
fields predate them: added, always projected, no adapter.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file

from axk.pt import load_export
from axk.pt import resolve_export


def first_token_onehot(span_ids: torch.Tensor, num_spans: int) -> torch.Tensor:
  """[batch, spans, length]: True at the first token of each span."""
  k = torch.arange(1, num_spans + 1, device=span_ids.device)
  inside = span_ids[:, None, :] == k[None, :, None]
  return inside & (torch.cumsum(inside.int(), dim=-1) == 1)


class AudioAdapter(torch.nn.Module):
  """The residual adapter on the pooled AST vector: `a + fc2(gelu(fc1(a)))` (exact GELU)."""

  def __init__(self, width: int):
    super().__init__()
    self.fc1 = torch.nn.Linear(width, width)
    self.fc2 = torch.nn.Linear(width, width)

  def forward(self, a: torch.Tensor) -> torch.Tensor:
    return a + self.fc2(torch.nn.functional.gelu(self.fc1(a)))


class AudioBertTorch(torch.nn.Module):
  """Base BERT + optional PEFT LoRA adapter + audio adapter and projection, as exported by
  axk."""

  def __init__(self, model, audio_proj: torch.nn.Linear | None, use_lora: bool, *,
               use_audio: bool | None = None, injection: str = "add",
               audio_adapter: AudioAdapter | None = None):
    super().__init__()
    self.model = model
    self.audio_adapter = audio_adapter
    self.audio_proj = audio_proj
    self.use_lora = use_lora
    self.use_audio = audio_proj is not None if use_audio is None else use_audio
    self.injection = injection
    self._delta = None
    base = model.get_base_model() if use_lora else model
    base.base_model.embeddings.register_forward_hook(self._inject)  # `.bert` or `.roberta`

  @classmethod
  def from_export(cls, export_dir: str) -> "AudioBertTorch":
    model, meta = load_export(export_dir, "audiobert.json")
    proj = adapter = None
    projected = meta["use_audio"] and meta.get("projected", True)
    adapted = meta["use_audio"] and meta.get("adapted", False)
    if projected or adapted:
      state = load_file(os.path.join(export_dir, "audio_projection.safetensors"))
    if projected:
      proj = torch.nn.Linear(state["audio_proj.weight"].shape[1],
                             state["audio_proj.weight"].shape[0])
      proj.load_state_dict({"weight": state["audio_proj.weight"],
                            "bias": state["audio_proj.bias"]})
    if adapted:
      adapter = AudioAdapter(state["audio_adapter.fc1.weight"].shape[1])
      adapter.load_state_dict({k[len("audio_adapter."):]: v for k, v in state.items()
                               if k.startswith("audio_adapter.")})
    return cls(model, proj, meta["use_lora"], use_audio=bool(meta["use_audio"]),
               injection=meta.get("injection", "add"), audio_adapter=adapter).eval()

  @classmethod
  def from_pretrained(cls, name_or_dir: str, *, revision: str | None = None,
                      **hub_kwargs) -> "AudioBertTorch":
    """Loads an export from a local folder or a hub repo id (at `revision`); `hub_kwargs`:
    `cache_dir`, `token`, `local_files_only`."""
    return cls.from_export(resolve_export(name_or_dir, revision=revision, **hub_kwargs))

  def _inject(self, module, inputs, output):
    if self._delta is None:
      return output
    delta, where = self._delta
    return torch.where(where[..., None], output + delta if self.injection == "add" else delta,
                       output)

  @torch.no_grad()
  def forward(self, input_ids, attention_mask, token_type_ids, span_ids, span_audio,
              span_has_audio, lora_gate):
    if self.use_audio:
      first = first_token_onehot(span_ids, span_audio.shape[1])
      weight = (first & (span_has_audio[:, :, None] > 0)).float()
      audio = span_audio.float()
      audio = self.audio_adapter(audio) if self.audio_adapter is not None else audio
      audio = self.audio_proj(audio) if self.audio_proj is not None else audio
      self._delta = (torch.einsum("bsl,bse->ble", weight, audio), weight.sum(1) > 0)
    try:
      kwargs = dict(input_ids=input_ids, attention_mask=attention_mask,
                    token_type_ids=token_type_ids)
      if not self.use_lora:
        return self.model(**kwargs).logits
      # One pass: PEFT applies the adapter only to the rows named with it.
      adapter = self.model.active_adapter
      names = [adapter if g > 0 else "__base__" for g in lora_gate.tolist()]
      return self.model(**kwargs, adapter_names=names).logits
    finally:
      self._delta = None
