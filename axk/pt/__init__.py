"""PyTorch inference of exported axk models (AudioBERT, ITH), for users outside JAX.

Imported only by code that asks for it; nothing in training imports torch.
"""

import json
import os

from axk import hub


def resolve_export(name_or_dir: str, *, revision: str | None = None,
                   cache_dir: str | None = None, token: str | bool | None = None,
                   local_files_only: bool = False) -> str:
  """A local folder holding the export `name_or_dir`: the folder itself, or the hub repo's
  snapshot at `revision` (downloaded into the hub cache; from the cache alone offline)."""
  if os.path.isdir(os.path.expanduser(name_or_dir)):
    return os.path.expanduser(name_or_dir)
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  try:
    return huggingface_hub.snapshot_download(
        name_or_dir, revision=revision, cache_dir=cache_dir, token=token,
        local_files_only=local_files_only or hub.offline())
  except Exception as e:  # pylint: disable=broad-except
    denied = hub.access_message(e, name_or_dir)
    if denied:
      raise PermissionError(denied) from None
    raise


def load_export(export_dir: str, meta_file: str):
  """(the `*ForMaskedLM` of `export_dir/base` (BERT's or RoBERTa's), with its PEFT adapter
  when the export has one, the export's metadata dict from `meta_file`)."""
  import transformers
  with open(os.path.join(export_dir, meta_file)) as f:
    meta = json.load(f)
  model = transformers.AutoModelForMaskedLM.from_pretrained(
      os.path.join(export_dir, "base"), local_files_only=True)
  if meta.get("use_lora"):
    import peft
    model = peft.PeftModel.from_pretrained(model, os.path.join(export_dir, "adapter"))
  return model, meta
