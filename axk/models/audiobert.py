"""AudioBERT: BERT + per-example gated LoRA + audio added at the first token of each span.

The Flax module of the method `audiobert` (`axk/methods/audiobert.py`: its inputs, LoRA
gate, export and PyTorch names); `configs/audiobert.py` selects it with
`config.model.name = "audiobert"`. `Model.check()` validates the method's fields (one line
naming the field) before any work.

Inputs beyond BERT's: `span_ids` [batch, length] (k on the tokens of the k-th span, 0
elsewhere, as `axk.data.encode` makes them), `span_audio` [batch, spans, audio_dim] (the
pooled AST vector of each span's audio), `span_has_audio` [batch, spans] and `lora_gate`
[batch] (by default 1 where the detector found a span with audio).

The injection, at the embedding output, at the first token of each span with audio (spans
without audio change nothing):
  * `injection="add"` (default, the paper: "add it to the input embedding of the first token
    of the span") adds the vector there; `"replace"` overwrites that token's embedding by it,
    as the published code does.
  * `audio_projection="auto"` (default, the paper and the published code) uses the AST vector
    as it is when its width equals the model's, and a learned linear projection to the model
    width otherwise; `"always"` projects at any width (axk's earlier behaviour).
  * `audio_adapter="residual"` (default) passes the pooled AST vector `a` through a trained
    residual adapter first, `a + W2 gelu(W1 a + b1) + b2` (width `audio_dim` throughout),
    standing in for the audio encoder the paper fine-tunes (axk stores AST frozen, offline).
    W2 and b2 start at zero, so the untrained model is exactly the plain addition; `"none"`
    uses the stored vector untouched (then, at equal widths, nothing on the audio side trains).
The published code also embeds the sequence a second time after its replacement (a bug, not
reproduced). Examples whose gate is 0 and that have no audio get exactly the base BERT
(selects, not adds of zeros, keep this bit for bit).
"""

from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax.numpy as jnp

from axk.models import bert as bert_lib
from axk.models import lora as lora_lib
from axk.models.spans import first_token_onehot

# Per-example LoRA gate: on for rows with a span that has audio, with any span, or always.
LORA_GATES = ("span_audio", "span", "always")
INJECTIONS = ("add", "replace")  # `Model.injection`: add the audio vector, or overwrite.
# `Model.audio_projection`: a learned projection only when the widths differ, or always.
PROJECTIONS = ("auto", "always")
# `Model.audio_adapter`: a trained residual adapter on the pooled AST vector, or none.
ADAPTERS = ("residual", "none")


class AudioAdapter(nn.Module):
  """`a + W2 gelu(W1 a + b1) + b2` over the last axis (its width kept); W2 and b2 start at
  zero, so at initialisation it is the identity."""

  config: bert_lib.BertConfig

  @nn.compact
  def __call__(self, a):
    width = a.shape[-1]
    h = bert_lib.Dense(self.config, width, ("audio_embed", "audio_hidden"), name="fc1")(a)
    h = nn.gelu(h, approximate=False)
    return a + bert_lib.Dense(self.config, width, ("audio_hidden", "audio_embed"), zero=True,
                              name="fc2")(h)


class Model(nn.Module):
  """AudioBERT as the paper describes it (see the module docstring).

  Parameters: `bert/...`, `mlm_head/...` (the base model), `lora/...` (if `use_lora`),
  `audio_adapter/...` (if `adapts`) and `audio_proj/...` (if `projects`).
  """

  config: bert_lib.BertConfig
  audio_dim: int = 768
  use_lora: bool = True  # Train a LoRA subtree, switched on per example by `lora_gate`.
  use_audio: bool = True  # Inject the AST vector at each span's first token.
  injection: str = "add"  # One of INJECTIONS: "add" (the paper) or "replace" (published code).
  audio_projection: str = "auto"  # One of PROJECTIONS: "auto" (only when widths differ).
  audio_adapter: str = "residual"  # One of ADAPTERS: the trained residual adapter, or none.
  lora_rank: int = 64
  lora_alpha: float = 128.0
  lora_dropout: float = 0.01
  lora_targets: tuple[str, ...] = ("query", "key", "value")
  lora_gate: str = "span_audio"  # One of LORA_GATES; read by the input builder.

  def check(self) -> None:
    """ValueError("<field>=<value>: <what is allowed>") for a field that cannot work."""
    if self.lora_gate not in LORA_GATES:
      raise ValueError(f"lora_gate={self.lora_gate!r}: must be one of {', '.join(LORA_GATES)}.")
    if self.injection not in INJECTIONS:
      raise ValueError(f"injection={self.injection!r}: must be one of {', '.join(INJECTIONS)}.")
    if self.audio_projection not in PROJECTIONS:
      raise ValueError(f"audio_projection={self.audio_projection!r}: must be one of "
                       f"{', '.join(PROJECTIONS)}.")
    if self.audio_adapter not in ADAPTERS:
      raise ValueError(f"audio_adapter={self.audio_adapter!r}: must be one of "
                       f"{', '.join(ADAPTERS)}.")
    if self.use_lora:
      try:
        lora_lib.check_targets(self.lora_targets)
      except ValueError as e:
        raise ValueError(f"lora_targets={tuple(self.lora_targets)}: {e}") from None
      if int(self.lora_rank) <= 0:
        raise ValueError(f"lora_rank={self.lora_rank}: must be a positive integer.")

  @property
  def projects(self) -> bool:
    """Whether the audio vector goes through the learned projection `audio_proj`."""
    return self.use_audio and (self.audio_projection == "always"
                               or int(self.audio_dim) != self.config.hidden_size)

  @property
  def adapts(self) -> bool:
    """Whether the audio vector goes through the trained adapter `audio_adapter`."""
    return self.use_audio and self.audio_adapter == "residual"

  def setup(self):
    self.bert = bert_lib.Bert(self.config, head="mlm")
    if self.adapts:
      self.audio_adapter_ = AudioAdapter(self.config, name="audio_adapter")
    if self.use_lora:
      self.lora = lora_lib.Lora(self.config, self.lora_rank, self.lora_alpha,
                                tuple(self.lora_targets))
    if self.projects:
      self.audio_proj = bert_lib.Dense(self.config, self.config.hidden_size,
                                       ("audio_embed", "embed"))

  def __call__(self, batch: Mapping, *, positions=None, deterministic=True):
    """Masked-LM outputs ({"hidden_states", "logits"}) of the `INPUTS` fields of `batch`."""
    span_ids, span_audio = batch["span_ids"], batch["span_audio"]
    x = self.bert.embed(batch["input_ids"], batch["token_type_ids"],
                        deterministic=deterministic)
    if self.use_audio:
      first = first_token_onehot(span_ids, span_audio.shape[1])
      weight = (first & (batch["span_has_audio"][:, :, None] > 0)).astype(x.dtype)  # [b, s, l]
      audio = span_audio.astype(x.dtype)
      audio = self.audio_adapter_(audio) if self.adapts else audio  # [b, s, audio_dim]
      audio = self.audio_proj(audio) if self.projects else audio  # [b, s, embed]
      delta = jnp.einsum("bsl,bse->ble", weight, audio)  # Spans' first tokens are distinct.
      x = jnp.where(weight.sum(1)[..., None] > 0,
                    x + delta if self.injection == "add" else delta, x)
    lora = self.lora() if self.use_lora else None
    x = self.bert.encode(x, batch["attention_mask"], deterministic=deterministic, lora=lora,
                         lora_gate=batch["lora_gate"], lora_dropout=self.lora_dropout)
    return self.bert.heads(x, deterministic=deterministic, positions=positions)

