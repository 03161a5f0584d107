"""AudioBERT: BERT + per-example gated LoRA + audio added at the first token of each span.

A method file: everything AudioBERT-specific is here, and `configs/audiobert.py` selects it
with `config.model.name = "audiobert"`. The shared masked-word run (`axk/runs/masked_word.py`)
reads what this module declares:

  * `Model(bert_config, audio_dim=..., **method fields of config.model)`: the flax module;
    `Model.check()` validates the method fields (one line naming the field) before any work;
  * `AUDIO`: which stored audio feature it reads ("pooled": one AST vector per span);
  * `INPUTS`: the batch fields `Model.__call__` reads;
  * `lora_gate_of(arrays, mode)`: the per-example LoRA gate it expects in the batch;
  * `AUX_TABLE` and `export()`: its extra parameters' PyTorch names and its HF/PEFT export.

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
The published code also embeds the sequence a second time after its replacement (a bug, not
reproduced). Examples whose gate is 0 and that have no audio get exactly the base BERT
(selects, not adds of zeros, keep this bit for bit).
"""

from __future__ import annotations

import os
from typing import Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from axk.models import bert as bert_lib
from axk.models import lora as lora_lib
from axk.models.spans import first_token_onehot

AUDIO = "pooled"
INPUTS = ("input_ids", "attention_mask", "token_type_ids", "span_ids", "span_audio",
          "span_has_audio", "lora_gate")
# Per-example LoRA gate: on for rows with a span that has audio, with any span, or always.
LORA_GATES = ("span_audio", "span", "always")
INJECTIONS = ("add", "replace")  # `Model.injection`: add the audio vector, or overwrite.
# `Model.audio_projection`: a learned projection only when the widths differ, or always.
PROJECTIONS = ("auto", "always")
# The audio projection <-> `axk.pt.audiobert.AudioBertTorch.audio_proj` (transforms of
# `axk.hf.convert.TABLE`).
AUX_TABLE = (
    ("audio_proj/dense/kernel", "audio_proj.weight", "kernel1"),
    ("audio_proj/dense/bias", "audio_proj.bias", "bias"),
)


def lora_gate_of(arrays: Mapping[str, np.ndarray], mode: str) -> np.ndarray:
  """The [rows] float32 gate of encoded rows: `mode` is one of `LORA_GATES`."""
  has_span = (arrays["span_ids"] > 0).any(axis=1)
  has_audio = arrays["span_has_audio"].any(axis=1)
  gate = {"span_audio": has_audio, "span": has_span, "always": np.ones_like(has_span)}
  return gate[mode].astype(np.float32)


class Model(nn.Module):
  """AudioBERT as the paper describes it (see the module docstring).

  Parameters: `bert/...`, `mlm_head/...` (the base model), `lora/...` (if `use_lora`) and
  `audio_proj/...` (if `projects`).
  """

  config: bert_lib.BertConfig
  audio_dim: int = 768
  use_lora: bool = True  # Train a LoRA subtree, switched on per example by `lora_gate`.
  use_audio: bool = True  # Inject the AST vector at each span's first token.
  injection: str = "add"  # One of INJECTIONS: "add" (the paper) or "replace" (published code).
  audio_projection: str = "auto"  # One of PROJECTIONS: "auto" (only when widths differ).
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

  def setup(self):
    self.bert = bert_lib.Bert(self.config, head="mlm")
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
      audio = self.audio_proj(audio) if self.projects else audio  # [b, s, embed]
      delta = jnp.einsum("bsl,bse->ble", weight, audio)  # Spans' first tokens are distinct.
      x = jnp.where(weight.sum(1)[..., None] > 0,
                    x + delta if self.injection == "add" else delta, x)
    lora = self.lora() if self.use_lora else None
    x = self.bert.encode(x, batch["attention_mask"], deterministic=deterministic, lora=lora,
                         lora_gate=batch["lora_gate"], lora_dropout=self.lora_dropout)
    return self.bert.heads(x, deterministic=deterministic, positions=positions)


def export(params, model: Model, out_dir: str, *, tokenizer_from: str | None = None,
           base_model_name_or_path: str | None = None) -> list[str]:
  """Writes `base/` (BertForMaskedLM), `adapter/` (PEFT LoRA), the audio projection and
  `audiobert.json` to `out_dir`; returns notes for results.md."""
  from safetensors.numpy import save_file

  from axk import hf
  from axk.hf import convert
  from axk.utils import files
  from axk.utils.tree import flatten
  hf.save(params["bert"], model.config, os.path.join(out_dir, "base"), head="mlm",
          tokenizer_from=tokenizer_from)
  if model.use_lora:
    lora_lib.export_adapter(params, model, out_dir, base_model_name_or_path)
  if model.projects:
    aux = convert.aux_to_torch(flatten({"audio_proj": params["audio_proj"]}), AUX_TABLE)
    with files.atomic_path(os.path.join(out_dir, "audio_projection.safetensors")) as tmp:
      save_file({k: v.astype(np.float32) for k, v in aux.items()}, tmp)
  files.write_json(os.path.join(out_dir, "audiobert.json"), {
      "audio_dim": model.audio_dim, "use_lora": model.use_lora,
      "use_audio": model.use_audio, "lora_gate": model.lora_gate,
      "injection": model.injection, "audio_projection": model.audio_projection,
      "projected": model.projects, "injected_at": "embedding output, first token of each span"})
  parts = ["export/base (BertForMaskedLM)"]
  parts += ["export/adapter (PEFT LoRA)"] if model.use_lora else []
  parts += ["export/audio_projection.safetensors"] if model.projects else []
  return [f"Export: {', '.join(parts)}; run with axk.pt.audiobert.AudioBertTorch."]
