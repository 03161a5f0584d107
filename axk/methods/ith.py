"""Imagine to Hear as a method: generated audio tokens fused into the span tokens by gated
cross-attention (the module: `axk.models.ith`; PyTorch: `axk.pt.ith`)."""

from __future__ import annotations

from typing import Mapping

from axk.methods import base
from axk.models import ith as model_lib

# The audio MLP and the fusion <-> `axk.pt.ith` (transforms of `axk.hf.convert.TABLE`).
# Rows of parameters a model lacks (the gate, with `fusion_gate=False`) are skipped.
AUX_TABLE = tuple(
    [(f"audio_mlp/{n}/dense/{p}", f"audio_mlp.{n}.{t}", tr)
     for n in ("fc1", "fc2") for p, t, tr in (("kernel", "weight", "kernel1"),
                                               ("bias", "bias", "bias"))]
    + [(f"fusion/{n}/{p}", f"fusion.{n}.{t}", tr)
       for n in ("query", "key", "value") for p, t, tr in (("kernel", "weight", "kernel1"),
                                                           ("bias", "bias", "bias"))]
    + [("fusion/out/kernel", "fusion.out.weight", "kernel2"),
       ("fusion/out/bias", "fusion.out.bias", "bias")]
    + [(f"fusion/{n}/ln/{p}", f"fusion.{n}.{t}", "copy")
       for n in ("attention_norm", "ffn_norm") for p, t in (("scale", "weight"),
                                                             ("bias", "bias"))]
    + [(f"fusion/{n}/dense/{p}", f"fusion.{n}.{t}", tr)
       for n in ("ffn_in", "ffn_out", "gate_x", "gate_z")
       for p, t, tr in (("kernel", "weight", "kernel1"), ("bias", "bias", "bias"))])


@base.register
class Ith(base.Method):
  """ITH (see `axk.models.ith`); its LoRA, with `use_lora`, is on for every input."""

  name = "ith"
  title = "Imagine to Hear (ITH)"
  model_class = model_lib.Model
  audio = "tokens"  # A sequence of AST tokens per span.
  inputs = ("input_ids", "attention_mask", "token_type_ids", "span_ids", "span_audio_tokens",
            "span_has_audio")
  gate = "fusion"
  aux_table = AUX_TABLE
  aux_file = "fusion.safetensors"
  torch_class = "axk.pt.ith:IthTorch"
  published_row = "ith"

  def meta(self, model) -> dict:
    # The keys `axk.pt.ith` reads.
    c = model.config
    return {"method": self.name, "audio_dim": model.audio_dim, "hidden_size": c.hidden_size,
            "num_attention_heads": c.num_attention_heads,
            "layer_norm_eps": float(model.fusion_norm_eps), "fusion_layer": model.fusion_layer,
            "fusion_gate": bool(model.fusion_gate), "gate_on": model.gate_on,
            "audio_activation": model.audio_activation, "use_lora": model.use_lora}

  def fields_from_meta(self, meta: Mapping) -> dict:
    return {"use_lora": bool(meta["use_lora"]), "fusion_layer": int(meta["fusion_layer"]),
            # Exports from before these fields: a gate on the text, GELU.
            "fusion_gate": bool(meta.get("fusion_gate", True)),
            "gate_on": meta.get("gate_on", "text"),
            "audio_activation": meta.get("audio_activation", "gelu"),
            "fusion_norm_eps": float(meta["layer_norm_eps"])}
