"""A throwaway method file: ITH whose fusion writes `z` back without the gate.

It exists to show what adding a method takes: this file plus a config (built in
`tests/test_extend.py`); no shared run, loop or input code changes. It reuses ITH's pieces
and declares what the masked-word run reads (`Model`, `AUDIO`, `INPUTS`, `lora_gate_of`,
`export`).
"""

from __future__ import annotations

import os
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from axk.models import bert as bert_lib
from axk.models import ith
from axk.models.spans import span_onehot

AUDIO = ith.AUDIO
INPUTS = ith.INPUTS
lora_gate_of = ith.lora_gate_of


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


def export(params, model: Model, out_dir: str, *, tokenizer_from=None,
           base_model_name_or_path=None) -> list[str]:
  from axk import hf
  hf.save(params["bert"], model.config, os.path.join(out_dir, "base"), head="mlm",
          tokenizer_from=tokenizer_from)
  return ["Export: export/base (BertForMaskedLM)."]
