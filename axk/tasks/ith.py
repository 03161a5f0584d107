"""Imagine to Hear on AuditoryBench: generated audio fused at the spans (see configs/ith.py).

Trained: everything but the frozen feature models (BERT fully fine-tuned, audio MLP, fusion),
or, with `model.use_lora`, LoRA + audio MLP + fusion. Export (`<workdir>/export/`): `base/`
(transformers `BertForMaskedLM`), `fusion.safetensors` (audio MLP and fusion weights),
`ith.json` (and `adapter/` with LoRA); `axk.pt.ith.IthTorch` runs inference from it.
"""

from __future__ import annotations

import json
import os

import numpy as np

from axk import hf
from axk.hf import convert
from axk.models import ith as ith_lib
from axk.tasks import audiobert as audiobert_task
from axk.tasks import mlm
from axk.utils.tree import flatten


class IthTask(mlm.MaskedWordTask):
  name = "Imagine to Hear"
  uses_audio_tokens = True

  def build_module(self):
    m = self.config.model
    return ith_lib.ImagineToHear(
        self.bert_config, audio_dim=self.audio_dim, fusion_layer=m.fusion_layer,
        use_lora=m.use_lora, lora_rank=m.lora_rank, lora_alpha=m.lora_alpha,
        lora_dropout=m.lora_dropout, lora_targets=tuple(m.lora_targets))

  def inputs(self, batch):
    return (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
            batch["span_ids"], batch["span_audio_tokens"], batch["span_has_audio"])

  def export(self, params, out_dir):
    return export(params, self.module, self.bert_config, out_dir, tokenizer_from=self.path)


def export(params, module: ith_lib.ImagineToHear, bert_config, out_dir: str,
           tokenizer_from: str | None = None) -> list[str]:
  """Writes base model, fusion weights, `ith.json` (and a PEFT adapter) to `out_dir`."""
  from safetensors.numpy import save_file
  os.makedirs(out_dir, exist_ok=True)
  hf.save(params["bert"], bert_config, os.path.join(out_dir, "base"), head="mlm",
          tokenizer_from=tokenizer_from)
  aux = convert.aux_to_torch(flatten({"audio_mlp": params["audio_mlp"],
                                      "fusion": params["fusion"]}))
  save_file({k: v.astype(np.float32) for k, v in aux.items()},
            os.path.join(out_dir, "fusion.safetensors"))
  if module.use_lora:
    audiobert_task.write_adapter(params["lora"], module, os.path.join(out_dir, "adapter"))
  tmp = os.path.join(out_dir, "ith.json.tmp")
  with open(tmp, "w") as f:
    json.dump({"audio_dim": module.audio_dim, "hidden_size": bert_config.hidden_size,
               "num_attention_heads": bert_config.num_attention_heads,
               "layer_norm_eps": bert_config.layer_norm_eps,
               "fusion_layer": module.fusion_layer, "use_lora": module.use_lora}, f, indent=2)
  os.replace(tmp, os.path.join(out_dir, "ith.json"))
  lora = ", export/adapter (PEFT LoRA)" if module.use_lora else ""
  return [f"Export: export/base (BertForMaskedLM), export/fusion.safetensors (audio MLP + "
          f"fusion){lora}; run with axk.pt.ith.IthTorch."]


def run(config, workdir: str):
  return mlm.run(config, workdir, IthTask)
