"""A third method, whole in one file: each span's audio tokens, projected to the model's width,
are appended to the sentence and BERT self-attends over text and audio together.

The Flax module, its registration (`axk.methods.Method`) and its PyTorch inference are all
here; nothing of axk changes to train, predict, export, report or tabulate it.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax.numpy as jnp

from axk import methods
from axk.models import bert as bert_lib


class Model(nn.Module):
  """`bert/...` plus `audio_in/...`: audio tokens [b, s, t, audio_dim] -> [b, s*t, width],
  appended after the text; the MLM head reads the text positions only."""

  config: bert_lib.BertConfig
  audio_dim: int = 768

  def setup(self):
    self.bert = bert_lib.Bert(self.config, head="mlm")
    self.audio_in = bert_lib.Dense(self.config, self.config.hidden_size,
                                   ("audio_embed", "embed"))

  def __call__(self, batch, *, positions=None, deterministic=True):
    x = self.bert.embed(batch["input_ids"], batch["token_type_ids"],
                        deterministic=deterministic)
    tokens = batch["span_audio_tokens"]
    b, s, t, _ = tokens.shape
    audio = self.audio_in(tokens.astype(x.dtype)).reshape(b, s * t, -1)
    audio_mask = jnp.repeat(batch["span_has_audio"] > 0, t, axis=1)
    h = self.bert.encode(jnp.concatenate([x, audio], axis=1),
                         jnp.concatenate([batch["attention_mask"] > 0, audio_mask], axis=1)
                         .astype(jnp.int32), deterministic=deterministic)
    return self.bert.heads(h[:, :x.shape[1]], deterministic=deterministic,
                           positions=positions)


@methods.register
class ConcatFusion(methods.Method):
  name = "concat_fusion"
  title = "Concatenated audio tokens"
  model_class = Model
  audio = "tokens"
  inputs = ("input_ids", "attention_mask", "token_type_ids", "span_audio_tokens",
            "span_has_audio")
  aux_table = (("audio_in/dense/kernel", "audio_in.weight", "kernel1"),
               ("audio_in/dense/bias", "audio_in.bias", "bias"))
  aux_file = "audio_in.safetensors"
  torch_class = "concat_fusion:ConcatTorch"


class ConcatTorch:
  """The export in PyTorch: `BertForMaskedLM` run over the embeddings with the projected
  audio tokens appended."""

  def __init__(self, model, audio_in):
    self.model, self.audio_in = model, audio_in

  @classmethod
  def from_export(cls, export_dir: str) -> "ConcatTorch":
    import torch  # pylint: disable=g-import-not-at-top
    from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
    from axk.pt import load_export  # pylint: disable=g-import-not-at-top
    model, meta = load_export(export_dir, "concat_fusion.json")
    state = load_file(os.path.join(export_dir, "audio_in.safetensors"))
    audio_in = torch.nn.Linear(meta["audio_dim"], meta["hidden_size"])
    audio_in.load_state_dict({k[len("audio_in."):]: v for k, v in state.items()})
    return cls(model.eval(), audio_in.eval())

  def __call__(self, input_ids, attention_mask, token_type_ids, span_audio_tokens,
               span_has_audio):
    import torch  # pylint: disable=g-import-not-at-top
    with torch.no_grad():
      bert = self.model.bert
      x = bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
      b, s, t, _ = span_audio_tokens.shape
      audio = self.audio_in(span_audio_tokens.float()).reshape(b, s * t, -1)
      mask = torch.cat([attention_mask > 0, (span_has_audio > 0).repeat_interleave(t, 1)], 1)
      bias = torch.where(mask, 0.0, torch.finfo(torch.float32).min)[:, None, None, :]
      h = bert.encoder(torch.cat([x, audio], 1), attention_mask=bias)[0]
      return self.model.cls(h[:, :input_ids.shape[1]])
