"""Imagine to Hear: BERT with a gated cross-attention fusion of each span's audio tokens.

The Flax module of the method `ith` (`axk/methods/ith.py`: its inputs, export and PyTorch
names); `configs/ith.py` selects it with `config.model.name = "ith"`. `Model.check()`
validates the method's fields before any work.

For every span with accepted audio, the span's text tokens (queries) attend to that span's
audio tokens (keys and values, after a two-layer audio MLP: Linear, ReLU, Linear as the
published code; `audio_activation="gelu"` for GELU); residual + LayerNorm, a GELU
feed-forward (4x width) + residual + LayerNorm give `z`; a gate
`g = sigmoid(W1 x + b1 + W2 z + b2)` mixes `fused = g * x + (1 - g) * z`, written back at the
span's positions. The fusion's LayerNorms use PyTorch's default eps 1e-5, as the published
code (`fusion_norm_eps`).

Gate orientation: the paper weighs the text, `fused = g * x + (1 - g) * z` (the default,
`gate_on="text"`); the published code weighs the audio, `g' = sigmoid(W_a z + W_t x)`,
`fused = g' * z + (1 - g') * x` (`gate_on="audio"`). The two are one family of functions:
`1 - sigmoid(a) = sigmoid(-a)`, so negating the gate's weights and biases turns one into the
other; only the parameterisation (and so the initial gate) differs. `fusion_gate=False` is
the paper's "w/o FG" ablation: `z` itself is written back at the span's positions and no
gate parameters exist.

`apply(..., mutable=["intermediates"])` also returns the gate per token
(`intermediates/fusion/gate`, [batch, length]: the mean over channels of the weight on the
text tokens, `g` with `gate_on="text"` and `1 - g'` with `gate_on="audio"`, so it reads the
same in both) and where the fusion acted (`intermediates/fusion/fused`). Without a gate
(`fusion_gate=False`) nothing is sown under `gate`; `fused` is still sown. By default the
fusion acts on the embedding output (before layer 0); `fusion_layer=k` puts it after
encoder layer k.

All spans of all examples go through one batched operation: the audio is padded to
[batch, spans, audio_tokens], every token attends to the audio of each span, and a one-hot
over spans picks, for each token, its own span's result (attention, LayerNorm, feed-forward
and gate act per token, so this equals attending span by span). Tokens outside every span and
spans without audio are left exactly as they were (a select, bit for bit).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from axk.models import bert as bert_lib
from axk.models import lora as lora_lib
from axk.models.spans import span_onehot

# The audio MLP's activation (`Model.audio_activation`) and the gate's orientation
# (`Model.gate_on`: what `g` multiplies).
ACTIVATIONS = {"relu": nn.relu, "gelu": lambda x: nn.gelu(x, approximate=False)}
GATE_ON = ("text", "audio")


class AudioMLP(nn.Module):
  """Two layers over the stored AST tokens: audio_dim -> width -> width, `activation` between
  (one of `ACTIVATIONS`)."""

  config: bert_lib.BertConfig
  activation: str = "relu"

  @nn.compact
  def __call__(self, tokens):
    c = self.config
    h = bert_lib.Dense(c, c.hidden_size, ("audio_embed", "embed"), name="fc1")(tokens)
    h = ACTIVATIONS[self.activation](h)
    return bert_lib.Dense(c, c.hidden_size, ("embed", "embed_out"), name="fc2")(h)


class GatedCrossAttentionFusion(nn.Module):
  """The fusion module (see the module docstring): `gate` False drops the gate (`z` is
  written back), `gate_on` is what the gate multiplies ("text": the paper, "audio": the
  published code), `norm_eps` the LayerNorms' epsilon (None: the BERT config's)."""

  config: bert_lib.BertConfig
  gate: bool = True
  gate_on: str = "text"
  norm_eps: float | None = None

  @nn.compact
  def __call__(self, x, span_ids, audio, audio_mask, span_has_audio, *, deterministic=True):
    """Fuses `audio` [b, s, t, e] into the span tokens of `x` [b, l, e].

    Args:
      x: hidden states [batch, length, embed].
      span_ids: [batch, length], k on the tokens of the k-th span, 0 elsewhere.
      audio: [batch, spans, audio_tokens, embed], after the audio MLP.
      audio_mask: [batch, spans, audio_tokens], 1 on real audio tokens.
      span_has_audio: [batch, spans], 1 where the span has accepted audio.
    """
    c = self.config
    if self.norm_eps is not None:
      c = dataclasses.replace(c, layer_norm_eps=float(self.norm_eps))
    h, d = c.num_attention_heads, c.head_dim
    qkv_axes = ("embed", "heads", "kv")
    q = bert_lib.Projection(c, (h, d), 1, qkv_axes, name="query")(x)
    k = bert_lib.Projection(c, (h, d), 1, qkv_axes, name="key")(audio)
    v = bert_lib.Projection(c, (h, d), 1, qkv_axes, name="value")(audio)
    q = bert_lib.constrain(q, ("batch", "length", "heads", "kv"))
    # Spans fold into the batch: each (example, span) is one attention of all the example's
    # tokens (queries, repeated per span) over that span's audio tokens, so the fused
    # `jax.nn.dot_product_attention` fits; the one-hot below keeps each token's own span.
    b, s, t = audio_mask.shape
    qs = jnp.broadcast_to(q[:, None], (b, s) + q.shape[1:]).reshape((b * s,) + q.shape[1:])
    # A span with no audio token would softmax over nothing; it attends to its padding
    # instead, and its result is never used (it is not fused, see `fuse_here`).
    keep = (audio_mask > 0) | ~jnp.any(audio_mask > 0, axis=-1, keepdims=True)
    bias = jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min).reshape(b * s, 1, 1, t)
    ctx = bert_lib.attention(qs, k.reshape((b * s,) + k.shape[2:]),
                             v.reshape((b * s,) + v.shape[2:]), bias, c,
                             deterministic=deterministic, module=self)
    ctx = ctx.reshape((b, s) + ctx.shape[1:])  # [b, s, l, h, d]
    inside = span_onehot(span_ids, audio.shape[1])  # [b, s, l]
    ctx = jnp.einsum("bsl,bslhd->blhd", inside.astype(ctx.dtype), ctx)
    a = bert_lib.Projection(c, c.hidden_size, 2, ("heads", "kv", "embed"), name="out")(ctx)
    a = nn.Dropout(c.hidden_dropout_prob)(a, deterministic=deterministic)
    y = bert_lib.LayerNorm(c, name="attention_norm")(x + a)
    f = bert_lib.Dense(c, 4 * c.hidden_size, ("embed", "mlp"), name="ffn_in")(y)
    f = nn.gelu(f, approximate=False)
    f = bert_lib.Dense(c, c.hidden_size, ("mlp", "embed"), name="ffn_out")(f)
    f = nn.Dropout(c.hidden_dropout_prob)(f, deterministic=deterministic)
    z = bert_lib.LayerNorm(c, name="ffn_norm")(y + f)
    fuse_here = jnp.einsum("bsl,bs->bl", inside.astype(jnp.float32),
                           (span_has_audio > 0).astype(jnp.float32)) > 0
    # Where it acted and the gate per token (mean over channels of the weight on the text),
    # for `predict` and the reports: `apply(..., mutable=["intermediates"])` returns them;
    # otherwise `sow` is a no-op and costs nothing.
    self.sow("intermediates", "fused", fuse_here)
    if self.gate:
      g = jax.nn.sigmoid(
          bert_lib.Dense(c, c.hidden_size, ("embed", "embed_out"), name="gate_x")(x)
          + bert_lib.Dense(c, c.hidden_size, ("embed", "embed_out"), name="gate_z")(z))
      on_text = g if self.gate_on == "text" else 1.0 - g
      fused = on_text * x + (1.0 - on_text) * z
      self.sow("intermediates", "gate", jnp.mean(on_text.astype(jnp.float32), axis=-1))
    else:
      fused = z  # "w/o FG": the fusion output itself.
    out = jnp.where(fuse_here[..., None], fused.astype(x.dtype), x)
    return bert_lib.constrain(out, ("batch", "length", "embed"))


class Model(nn.Module):
  """ITH: `bert/...`, `mlm_head/...`, `audio_mlp/...`, `fusion/...` (+ `lora/...`).

  `use_lora` trains LoRA adapters (on for every input) instead of the full BERT. The fusion
  options are described in the module docstring.
  """

  config: bert_lib.BertConfig
  audio_dim: int = 768
  fusion_layer: int = 0  # 0: fusion on the embedding output; k: after encoder layer k.
  fusion_gate: bool = True  # False: the paper's "w/o FG" ablation (z written back, no gate).
  gate_on: str = "text"  # What g multiplies: "text" (the paper) or "audio" (published code).
  audio_activation: str = "relu"  # The audio MLP's: "relu" (published code) or "gelu".
  fusion_norm_eps: float = 1e-5  # The fusion's LayerNorms (PyTorch's default, as published).
  use_lora: bool = False
  lora_rank: int = 64
  lora_alpha: float = 128.0
  lora_dropout: float = 0.01
  lora_targets: tuple[str, ...] = ("query", "key", "value")
  # The BERT head (`axk.models.bert.HEADS`): "mlm" (AuditoryBench), "sequence_classification"
  # (GLUE, `axk.runs.sentence`).
  head: str = "mlm"

  def check(self) -> None:
    """ValueError("<field>=<value>: <what is allowed>") for a field that cannot work."""
    n = self.config.num_hidden_layers
    if not (isinstance(self.fusion_layer, int) and 0 <= self.fusion_layer <= n):
      raise ValueError(f"fusion_layer={self.fusion_layer}: must be an integer in [0, {n}] "
                       f"(0: the embedding output, k: after encoder layer k; the model has "
                       f"{n} layers).")
    if not isinstance(self.fusion_gate, bool):
      raise ValueError(f"fusion_gate={self.fusion_gate!r}: must be True or False.")
    if self.gate_on not in GATE_ON:
      raise ValueError(f"gate_on={self.gate_on!r}: must be one of {', '.join(GATE_ON)} (what "
                       "the gate multiplies).")
    if self.audio_activation not in ACTIVATIONS:
      raise ValueError(f"audio_activation={self.audio_activation!r}: must be one of "
                       f"{', '.join(ACTIVATIONS)}.")
    if self.head not in ("mlm", "sequence_classification"):
      raise ValueError(f"head={self.head!r}: must be mlm or sequence_classification.")
    if not float(self.fusion_norm_eps) > 0:
      raise ValueError(f"fusion_norm_eps={self.fusion_norm_eps}: must be positive.")
    if self.use_lora:
      try:
        lora_lib.check_targets(self.lora_targets)
      except ValueError as e:
        raise ValueError(f"lora_targets={tuple(self.lora_targets)}: {e}") from None

  def setup(self):
    self.bert = bert_lib.Bert(self.config, head=self.head)
    self.audio_mlp = AudioMLP(self.config, self.audio_activation)
    self.fusion = GatedCrossAttentionFusion(self.config, gate=self.fusion_gate,
                                            gate_on=self.gate_on,
                                            norm_eps=self.fusion_norm_eps)
    if self.use_lora:
      self.lora = lora_lib.Lora(self.config, self.lora_rank, self.lora_alpha,
                                tuple(self.lora_targets))

  def __call__(self, batch: Mapping, *, positions=None, deterministic=True):
    """The head's outputs ({"hidden_states", "logits"}: masked-LM, or a sequence head's)
    of the `INPUTS` fields of `batch`."""
    lora = self.lora() if self.use_lora else None
    encode = dict(deterministic=deterministic, lora=lora, lora_dropout=self.lora_dropout)
    span_has_audio = batch["span_has_audio"]
    x = self.bert.embed(batch["input_ids"], batch["token_type_ids"],
                        deterministic=deterministic)
    x = self.bert.encode(x, batch["attention_mask"], stop=self.fusion_layer, **encode)
    audio = self.audio_mlp(batch["span_audio_tokens"].astype(x.dtype))
    audio_mask = jnp.broadcast_to(span_has_audio[:, :, None], audio.shape[:3])
    x = self.fusion(x, batch["span_ids"], audio, audio_mask, span_has_audio,
                    deterministic=deterministic)
    x = self.bert.encode(x, batch["attention_mask"], start=self.fusion_layer, **encode)
    return self.bert.heads(x, deterministic=deterministic, positions=positions)

