"""AudioBERT as a method: retrieved audio added at each span's first token, LoRA switched on
per example (the module: `axk.models.audiobert`; PyTorch: `axk.pt.audiobert`)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from axk.methods import base
from axk.models import audiobert as model_lib


@base.register
class AudioBert(base.Method):
  """AudioBERT (see `axk.models.audiobert`)."""

  name = "audiobert"
  title = "AudioBERT"
  model_class = model_lib.Model
  audio = "pooled"  # One AST vector per span.
  inputs = ("input_ids", "attention_mask", "token_type_ids", "span_ids", "span_audio",
            "span_has_audio", "lora_gate")
  gate = "lora"
  # The audio path's own weights <-> `axk.pt.audiobert.AudioBertTorch`'s `audio_adapter`
  # (fc1, fc2) and `audio_proj`; rows of parameters a model lacks are skipped. The file keeps
  # the name it had when it held the projection alone.
  aux_table = tuple(
      [(f"audio_adapter/{n}/dense/{p}", f"audio_adapter.{n}.{t}", tr)
       for n in ("fc1", "fc2") for p, t, tr in (("kernel", "weight", "kernel1"),
                                                 ("bias", "bias", "bias"))]
      + [("audio_proj/dense/kernel", "audio_proj.weight", "kernel1"),
         ("audio_proj/dense/bias", "audio_proj.bias", "bias")])
  aux_file = "audio_projection.safetensors"
  torch_class = "axk.pt.audiobert:AudioBertTorch"
  published_row = "audiobert"
  summary = ("the audio of each auditory span (in the paper retrieved with CLAP, embedded "
             "with AST) is added at the span's first token, and a LoRA adapter is switched on "
             "only for inputs whose spans have audio.")

  def lora_gate(self, arrays: Mapping[str, np.ndarray], model) -> np.ndarray:
    """On for rows with a span that has audio, with any span, or always (`model.lora_gate`,
    one of `axk.models.audiobert.LORA_GATES`)."""
    mode = getattr(model, "lora_gate", "span_audio")
    has_span = (arrays["span_ids"] > 0).any(axis=1)
    has_audio = arrays["span_has_audio"].any(axis=1)
    gate = {"span_audio": has_audio, "span": has_span, "always": np.ones_like(has_span)}
    return gate[mode].astype(np.float32)

  def has_aux(self, model) -> bool:
    return model.projects or model.adapts

  def meta(self, model) -> dict:
    # The keys `axk.pt.audiobert` reads.
    return {"method": self.name, "audio_dim": model.audio_dim, "use_lora": model.use_lora,
            "use_audio": model.use_audio, "lora_gate": model.lora_gate,
            "injection": model.injection, "audio_projection": model.audio_projection,
            "projected": model.projects, "audio_adapter": model.audio_adapter,
            "adapted": model.adapts,
            "injected_at": "embedding output, first token of each span"}

  def fields_from_meta(self, meta: Mapping) -> dict:
    # Exports from before `injection`/`audio_projection`: added, always projected; from
    # before `audio_adapter`: no adapter.
    return {"use_lora": bool(meta["use_lora"]), "use_audio": bool(meta["use_audio"]),
            "lora_gate": meta.get("lora_gate", "span_audio"),
            "injection": meta.get("injection", "add"),
            "audio_projection": meta.get("audio_projection", "always"),
            "audio_adapter": meta.get("audio_adapter", "none")}

  def card_usage(self, repo_id: str) -> list[str]:
    lines = super().card_usage(repo_id)
    # PEFT 0.21 joins `subfolder` twice for hub adapters: load from the snapshot instead.
    lines += ["The LoRA adapter alone, with PEFT (the base model is the export's `base/`):",
              "", "```python", "from huggingface_hub import snapshot_download",
              "from peft import PeftModel", "from transformers import AutoModelForMaskedLM",
              f'path = snapshot_download("{repo_id}")  # locally: path = "<the export\'s folder>"',
              'base = AutoModelForMaskedLM.from_pretrained(f"{path}/base")',
              'model = PeftModel.from_pretrained(base, f"{path}/adapter")', "```", ""]
    return lines
