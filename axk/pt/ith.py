"""Imagine to Hear inference in PyTorch from an axk export (`<workdir>/export/`).

    model = IthTorch.from_export("workdir/export")
    model = IthTorch.from_pretrained("org/axk-ith")   # a hub id (or a folder)
    logits = model(input_ids, attention_mask, token_type_ids, span_ids, span_audio_tokens,
                   span_has_audio)   # [batch, length, vocab]

The fusion here goes span by span (a plain loop, the way the method is written down), while
axk's JAX module fuses all spans of a batch in one masked operation; the two must agree.
`ith.json` carries the module's options: `fusion_gate` (False: no gate, `z` written back),
`gate_on` (what the gate multiplies, "text" or "audio") and `audio_activation` ("relu" or
"gelu"); an export without them predates them and means a gate on the text and GELU.
"""

from __future__ import annotations

import math
import os

import torch
from safetensors.torch import load_file

from axk.pt import load_export
from axk.pt import resolve_export
from torch import nn
from torch.nn import functional as F


ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class AudioMLP(nn.Module):
  def __init__(self, audio_dim: int, width: int, activation: str = "relu"):
    super().__init__()
    self.fc1 = nn.Linear(audio_dim, width)
    self.fc2 = nn.Linear(width, width)
    self.activation = ACTIVATIONS[activation]

  def forward(self, x):
    return self.fc2(self.activation(self.fc1(x)))


class Fusion(nn.Module):
  """Gated cross-attention of a span's text tokens to that span's audio tokens; `gate` False:
  no gate (`z` is the output), `gate_on`: what the gate multiplies ("text" or "audio")."""

  def __init__(self, width: int, heads: int, eps: float, gate: bool = True,
               gate_on: str = "text"):
    super().__init__()
    self.heads = heads
    self.gate, self.gate_on = gate, gate_on
    self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
    self.out = nn.Linear(width, width)
    self.attention_norm = nn.LayerNorm(width, eps=eps)
    self.ffn_in = nn.Linear(width, 4 * width)
    self.ffn_out = nn.Linear(4 * width, width)
    self.ffn_norm = nn.LayerNorm(width, eps=eps)
    if gate:
      self.gate_x = nn.Linear(width, width)
      self.gate_z = nn.Linear(width, width)

  def mix(self, x, z):
    """The gated output of text tokens `x` and fusion output `z`."""
    if not self.gate:
      return z
    g = torch.sigmoid(self.gate_x(x) + self.gate_z(z))
    return g * x + (1 - g) * z if self.gate_on == "text" else g * z + (1 - g) * x

  def fuse(self, x, audio):
    """x [n, width] text tokens of one span, audio [t, width] its audio tokens."""
    n, w = x.shape
    d = w // self.heads
    q = self.query(x).view(n, self.heads, d).transpose(0, 1)
    k = self.key(audio).view(-1, self.heads, d).transpose(0, 1)
    v = self.value(audio).view(-1, self.heads, d).transpose(0, 1)
    probs = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1)
    ctx = (probs @ v).transpose(0, 1).reshape(n, w)
    y = self.attention_norm(x + self.out(ctx))
    z = self.ffn_norm(y + self.ffn_out(F.gelu(self.ffn_in(y))))
    return self.mix(x, z)

  def forward_batched(self, hidden, span_ids, audio, span_has_audio):
    """All spans at once (every token attends to each span's audio, then keeps its own
    span's result); equal to `forward`, and what a training loop should use."""
    b, l, w = hidden.shape
    s, t = audio.shape[1], audio.shape[2]
    h, d = self.heads, w // self.heads
    q = self.query(hidden).view(b, l, h, d)
    k = self.key(audio).view(b, s, t, h, d)
    v = self.value(audio).view(b, s, t, h, d)
    probs = torch.softmax(torch.einsum("blhd,bsthd->bshlt", q, k) / math.sqrt(d), dim=-1)
    ctx = torch.einsum("bshlt,bsthd->bslhd", probs, v)
    inside = (span_ids[:, None, :] == torch.arange(1, s + 1, device=span_ids.device)[
        None, :, None]).to(hidden.dtype)
    ctx = torch.einsum("bsl,bslhd->blhd", inside, ctx).reshape(b, l, w)
    y = self.attention_norm(hidden + self.out(ctx))
    z = self.ffn_norm(y + self.ffn_out(F.gelu(self.ffn_in(y))))
    fused = self.mix(hidden, z)
    here = torch.einsum("bsl,bs->bl", inside, (span_has_audio > 0).to(hidden.dtype)) > 0
    return torch.where(here[..., None], fused, hidden)

  def forward(self, hidden, span_ids, audio, span_has_audio):
    """Span by span: the reference form."""
    out = hidden.clone()
    for b in range(hidden.shape[0]):
      for s in range(audio.shape[1]):
        tokens = (span_ids[b] == s + 1).nonzero().flatten()
        if span_has_audio[b, s] and len(tokens):
          out[b, tokens] = self.fuse(hidden[b, tokens], audio[b, s])
    return out


class IthTorch(nn.Module):
  """Base `BertForMaskedLM` (or `RobertaForMaskedLM`) + audio MLP + fusion, as exported by
  axk."""

  def __init__(self, model, audio_mlp, fusion, fusion_layer: int):
    super().__init__()
    self.model, self.audio_mlp, self.fusion = model, audio_mlp, fusion
    self._inputs = None
    # The backbone: `.bert` of a `BertForMaskedLM`, `.roberta` of a `RobertaForMaskedLM`.
    bert = (model.get_base_model() if hasattr(model, "get_base_model") else model).base_model
    target = bert.embeddings if fusion_layer == 0 else bert.encoder.layer[fusion_layer - 1]
    target.register_forward_hook(self._fuse)

  @classmethod
  def from_export(cls, export_dir: str) -> "IthTorch":
    model, meta = load_export(export_dir, "ith.json")
    width = meta["hidden_size"]
    mlp = AudioMLP(meta["audio_dim"], width, meta.get("audio_activation", "gelu"))
    fusion = Fusion(width, meta["num_attention_heads"], meta["layer_norm_eps"],
                    gate=bool(meta.get("fusion_gate", True)),
                    gate_on=meta.get("gate_on", "text"))
    state = load_file(os.path.join(export_dir, "fusion.safetensors"))
    mlp.load_state_dict({k[len("audio_mlp."):]: v for k, v in state.items()
                         if k.startswith("audio_mlp.")})
    fusion.load_state_dict({k[len("fusion."):]: v for k, v in state.items()
                            if k.startswith("fusion.")})
    return cls(model, mlp, fusion, meta["fusion_layer"]).eval()

  @classmethod
  def from_pretrained(cls, name_or_dir: str, *, revision: str | None = None,
                      **hub_kwargs) -> "IthTorch":
    """Loads an export from a local folder or a hub repo id (at `revision`); `hub_kwargs`:
    `cache_dir`, `token`, `local_files_only`."""
    return cls.from_export(resolve_export(name_or_dir, revision=revision, **hub_kwargs))

  def _fuse(self, module, inputs, output):
    span_ids, audio, has_audio = self._inputs
    hidden = output[0] if isinstance(output, tuple) else output
    fused = self.fusion(hidden, span_ids, audio, has_audio)
    return (fused,) + tuple(output[1:]) if isinstance(output, tuple) else fused

  @torch.no_grad()
  def forward(self, input_ids, attention_mask, token_type_ids, span_ids, span_audio_tokens,
              span_has_audio):
    self._inputs = (span_ids, self.audio_mlp(span_audio_tokens.float()), span_has_audio)
    try:
      return self.model(input_ids=input_ids, attention_mask=attention_mask,
                        token_type_ids=token_type_ids).logits
    finally:
      self._inputs = None
