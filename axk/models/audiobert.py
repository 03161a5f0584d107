"""AudioBERT: BERT + per-example gated LoRA + audio added at the first token of each span.

Inputs beyond BERT's: `span_ids` [batch, length] (k on the tokens of the k-th span, 0
elsewhere, as `axk.data.encode` makes them), `span_audio` [batch, spans, audio_dim] (the
pooled AST vector of each span's audio), `span_has_audio` [batch, spans] and `lora_gate`
[batch] (1 where the detector found a span with audio). The audio vector goes through a
learned projection to the model width and is added to the embedding output at the first
token of its span; spans without audio add nothing. Examples whose gate is 0 and that have
no audio get exactly the base BERT (selects, not adds of zeros, keep this bit for bit).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from axk.models import bert as bert_lib
from axk.models import lora as lora_lib


def span_onehot(span_ids, num_spans: int):
  """[batch, length] span ids -> [batch, spans, length] booleans (token in span k+1)."""
  k = jnp.arange(1, num_spans + 1)
  return span_ids[:, None, :] == k[None, :, None]


def first_token_onehot(span_ids, num_spans: int):
  """[batch, spans, length]: True at the first token of each span."""
  inside = span_onehot(span_ids, num_spans)
  return inside & (jnp.cumsum(inside, axis=-1) == 1)


class AudioBert(nn.Module):
  """AudioBERT as the paper describes it (see the module docstring).

  Parameters: `bert/...`, `mlm_head/...` (the base model), `lora/...` (if `use_lora`) and
  `audio_proj/...` (if `use_audio`).
  """

  config: bert_lib.BertConfig
  audio_dim: int = 768
  use_lora: bool = True
  use_audio: bool = True
  lora_rank: int = 64
  lora_alpha: float = 128.0
  lora_dropout: float = 0.01
  lora_targets: tuple[str, ...] = ("query", "key", "value")

  def setup(self):
    self.bert = bert_lib.Bert(self.config, head="mlm")
    if self.use_lora:
      self.lora = lora_lib.Lora(self.config, self.lora_rank, self.lora_alpha, self.lora_targets)
    if self.use_audio:
      self.audio_proj = bert_lib.Dense(self.config, self.config.hidden_size,
                                       ("audio_embed", "embed"))

  def __call__(self, input_ids, attention_mask, token_type_ids, span_ids, span_audio,
               span_has_audio, lora_gate, *, positions=None, deterministic=True):
    x = self.bert.embed(input_ids, token_type_ids, deterministic=deterministic)
    if self.use_audio:
      first = first_token_onehot(span_ids, span_audio.shape[1])
      weight = (first & (span_has_audio[:, :, None] > 0)).astype(x.dtype)  # [b, s, l]
      audio = self.audio_proj(span_audio.astype(x.dtype))  # [b, s, embed]
      delta = jnp.einsum("bsl,bse->ble", weight, audio)
      x = jnp.where(weight.sum(1)[..., None] > 0, x + delta, x)
    lora = self.lora() if self.use_lora else None
    x = self.bert.encode(x, attention_mask, deterministic=deterministic, lora=lora,
                         lora_gate=lora_gate, lora_dropout=self.lora_dropout)
    return self.bert.heads(x, deterministic=deterministic, positions=positions)
