"""A throwaway method file: ITH whose fusion writes `z` back without the gate.

It exists to show what adding a method takes: this file plus a config (built in
`tests/test_extend.py`); no shared run, loop or input code changes. It reuses ITH's pieces
and registers itself as a method (`axk.methods.Method`).
"""

from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from axk import methods
from axk.models import bert as bert_lib
from axk.models import ith
from axk.models.spans import span_onehot


class UngatedFusion(nn.Module):
  """Cross-attention + FFN as in ITH; the span tokens become `z` itself."""

  config: bert_lib.BertConfig

  @nn.compact
  def __call__(self, x, span_ids, audio, span_has_audio):
    c = self.config
    h, d = c.num_attention_heads, c.head_dim
    q = bert_lib.Projection(c, (h, d), 1, ("embed", "heads", "kv"), name="query")(x)
    k = bert_lib.Projection(c, (h, d), 1, ("embed", "heads", "kv"), name="key")(audio)
    v = bert_lib.Projection(c, (h, d), 1, ("embed", "heads", "kv"), name="value")(audio)
    probs = jax.nn.softmax(jnp.einsum("blhd,bsthd->bshlt", q, k) / jnp.sqrt(d), axis=-1)
    inside = span_onehot(span_ids, audio.shape[1])
    ctx = jnp.einsum("bsl,bshlt,bsthd->blhd", inside.astype(x.dtype), probs, v)
    a = bert_lib.Projection(c, c.hidden_size, 2, ("heads", "kv", "embed"), name="out")(ctx)
    z = bert_lib.LayerNorm(c, name="norm")(x + a)
    fuse = jnp.einsum("bsl,bs->bl", inside.astype(x.dtype), span_has_audio.astype(x.dtype))
    return jnp.where(fuse[..., None] > 0, z, x)


class Model(nn.Module):
  config: bert_lib.BertConfig
  audio_dim: int = 768

  def check(self) -> None:
    pass

  def setup(self):
    self.bert = bert_lib.Bert(self.config, head="mlm")
    self.audio_mlp = ith.AudioMLP(self.config)
    self.fusion = UngatedFusion(self.config)

  def __call__(self, batch: Mapping, *, positions=None, deterministic=True):
    x = self.bert.embed(batch["input_ids"], batch["token_type_ids"],
                        deterministic=deterministic)
    audio = self.audio_mlp(batch["span_audio_tokens"].astype(x.dtype))
    x = self.fusion(x, batch["span_ids"], audio, batch["span_has_audio"])
    x = self.bert.encode(x, batch["attention_mask"], deterministic=deterministic)
    return self.bert.heads(x, deterministic=deterministic, positions=positions)


@methods.register
class FusionWithoutGate(methods.Method):
  name = "fusion_without_gate"
  title = "ITH without its gate"
  model_class = Model
  audio = "tokens"
  inputs = methods.get("ith").inputs
