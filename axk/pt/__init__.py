"""PyTorch inference of exported axk models (AudioBERT, ITH), for users outside JAX.

Imported only by code that asks for it; nothing in training imports torch.
"""

import json
import os


def load_export(export_dir: str, meta_file: str):
  """(`BertForMaskedLM` of `export_dir/base`, with its PEFT adapter when the export has one,
  the export's metadata dict from `meta_file`)."""
  import transformers
  with open(os.path.join(export_dir, meta_file)) as f:
    meta = json.load(f)
  model = transformers.BertForMaskedLM.from_pretrained(
      os.path.join(export_dir, "base"), local_files_only=True)
  if meta["use_lora"]:
    import peft
    model = peft.PeftModel.from_pretrained(model, os.path.join(export_dir, "adapter"))
  return model, meta
