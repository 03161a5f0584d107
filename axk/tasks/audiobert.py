"""AudioBERT on AuditoryBench: gated LoRA + retrieved audio at the spans (see configs/audiobert.py).

Trained: the LoRA subtree and the audio projection; the base BERT and its MLM head stay frozen
(the optimizer's path selection). Export (`<workdir>/export/`): `base/` (transformers
`BertForMaskedLM`), `adapter/` (a PEFT LoRA adapter for it), `audio_projection.safetensors`
and `audiobert.json`; `axk.pt.audiobert.AudioBertTorch` runs inference from it in PyTorch.
"""

from __future__ import annotations

import json
import os

import numpy as np

from axk import hf
from axk.hf import convert
from axk.models import audiobert as audiobert_lib
from axk.tasks import mlm
from axk.utils.tree import flatten


class AudioBertTask(mlm.MaskedWordTask):
  name = "AudioBERT"

  def build_module(self):
    m = self.config.model
    return audiobert_lib.AudioBert(
        self.bert_config, audio_dim=self.audio_dim, use_lora=m.use_lora, use_audio=m.use_audio, lora_rank=m.lora_rank,
        lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
        lora_targets=tuple(m.lora_targets))

  def inputs(self, batch):
    return (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
            batch["span_ids"], batch["span_audio"], batch["span_has_audio"], batch["lora_gate"])

  def export(self, params, out_dir):
    return export(params, self.module, self.bert_config, self.config.model.lora_gate,
                  out_dir, tokenizer_from=self.path)


def export(params, module: audiobert_lib.AudioBert, bert_config, lora_gate: str, out_dir: str,
           tokenizer_from: str | None = None) -> list[str]:
  """Writes base model, PEFT adapter, audio projection and `audiobert.json` to `out_dir`."""
  from safetensors.numpy import save_file
  os.makedirs(out_dir, exist_ok=True)
  hf.save(params["bert"], bert_config, os.path.join(out_dir, "base"), head="mlm",
          tokenizer_from=tokenizer_from)
  if module.use_lora:
    write_adapter(params["lora"], module, os.path.join(out_dir, "adapter"))
  if module.use_audio:
    aux = convert.aux_to_torch(flatten({"audio_proj": params["audio_proj"]}))
    save_file({k: v.astype(np.float32) for k, v in aux.items()},
              os.path.join(out_dir, "audio_projection.safetensors"))
  _write_json(os.path.join(out_dir, "audiobert.json"), {
      "audio_dim": module.audio_dim, "use_lora": module.use_lora,
      "use_audio": module.use_audio, "lora_gate": lora_gate,
      "injection": "embedding output, first token of each span"})
  parts = ["export/base (BertForMaskedLM)"]
  parts += ["export/adapter (PEFT LoRA)"] if module.use_lora else []
  parts += ["export/audio_projection.safetensors"] if module.use_audio else []
  return [f"Export: {', '.join(parts)}; run with axk.pt.audiobert.AudioBertTorch."]


def write_adapter(lora_params, module, adapter_dir: str) -> None:
  """The LoRA subtree as a PEFT adapter directory for the exported `BertForMaskedLM`
  (`<adapter_dir>/../base`), written by PEFT itself (`axk.pt.peft_adapter`)."""
  from axk.pt import peft_adapter  # Runs PEFT in a child process: no torch here.
  peft_adapter.write_adapter(
      convert.lora_to_peft(flatten(lora_params)), adapter_dir,
      os.path.join(os.path.dirname(adapter_dir), "base"), rank=module.lora_rank,
      alpha=module.lora_alpha, dropout=module.lora_dropout,
      target_modules=convert.peft_target_modules(module.lora_targets))


def _write_json(path, payload):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2)
  os.replace(tmp, path)


def run(config, workdir: str):
  return mlm.run(config, workdir, AudioBertTask)
