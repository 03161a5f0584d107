"""AudioBERT and ITH exports loaded back into axk (JAX), from a folder or a hub repo id.

    from axk.hf import exports
    model = exports.load_audiobert("org/axk-audiobert")   # or "workdir/export"
    logits = model(input_ids=..., attention_mask=..., token_type_ids=..., span_ids=...,
                   span_audio=..., span_has_audio=..., lora_gate=...)
    model = exports.load_ith("workdir/animal/export", revision=None)

The export's files are read as written: `base/` through `axk.hf.load_params`, the PEFT
adapter by its PEFT names (`lora_A` [rank, in], `lora_B` [out, rank]), and the audio modules
by the model file's `AUX_TABLE`. Everything else (sizes, LoRA settings, fusion layer) comes
from the export's JSON files, so the result is the trained model, not a new one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from axk.hf import convert
from axk.hf import io as hf_io
from axk.models import bert as bert_lib
from axk.utils.tree import flatten, unflatten


def _model_file(kind: str):
  from axk.models import audiobert, ith  # pylint: disable=g-import-not-at-top
  return {"audiobert": audiobert, "ith": ith}[kind]
_PEFT_NAME = re.compile(r"layer\.(?P<i>\d+)\.(?P<m>attention\.self\.query|attention\.self\.key|"
                        r"attention\.self\.value|attention\.output\.dense)\.lora_(?P<ab>[AB])"
                        r"\.weight$")
_TARGET = {"attention.self.query": "query", "attention.self.key": "key",
           "attention.self.value": "value", "attention.output.dense": "out"}


@dataclasses.dataclass
class Loaded:
  """A loaded export: `module` (Flax), `params`, `kind` and the local `path`."""

  module: nn.Module
  params: dict
  kind: str
  path: str

  def __post_init__(self):
    self._apply = jax.jit(lambda p, batch: self.module.apply({"params": p}, batch)["logits"])

  def __call__(self, **inputs) -> jax.Array:
    """Logits [batch, length, vocab] from the named inputs (the model file's `INPUTS`)."""
    names = _model_file(self.kind).INPUTS
    missing = [k for k in names if k not in inputs]
    if missing:
      raise KeyError(f"{self.kind} needs inputs {missing}")
    return self._apply(self.params, {k: jnp.asarray(inputs[k]) for k in names})


def _read_json(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _adapter(export_dir: str) -> tuple[dict, dict[str, np.ndarray]]:
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  folder = os.path.join(export_dir, "adapter")
  return (_read_json(os.path.join(folder, "adapter_config.json")),
          load_file(os.path.join(folder, "adapter_model.safetensors")))


def _lora_settings(adapter_config: dict) -> dict:
  targets = adapter_config["target_modules"]
  targets = targets if isinstance(targets, list) else [targets]
  return dict(lora_rank=int(adapter_config["r"]), lora_alpha=float(adapter_config["lora_alpha"]),
              lora_dropout=float(adapter_config.get("lora_dropout", 0.0)),
              lora_targets=tuple(sorted({_TARGET.get(t, t) for t in targets})))


def _lora_params(state: dict[str, np.ndarray], shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
  """PEFT LoRA tensors -> flat `lora/layer_{i}_{target}/{a,b}` arrays of `shapes`."""
  out = {}
  for name, x in state.items():
    m = _PEFT_NAME.search(name)
    if m is None:
      raise ValueError(f"adapter tensor {name!r} is not a LoRA weight of a BERT attention layer")
    path = f"lora/layer_{m['i']}_{_TARGET[m['m']]}/{'a' if m['ab'] == 'A' else 'b'}"
    if path not in shapes:
      raise ValueError(f"adapter tensor {name!r} has no place in the model ({path})")
    out[path] = np.reshape(np.asarray(x).T, shapes[path])  # A [rank, in], B [out, rank]
  return out


def _aux_params(file: str, shapes: dict[str, tuple], table) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  state = load_file(file)
  out = {}
  for axk_path, torch_name, transform in table:
    if axk_path in shapes:
      out[axk_path] = convert._from_hf(state[torch_name], transform, shapes[axk_path])  # pylint: disable=protected-access
  return out


def _assemble(module: nn.Module, dummy: tuple, export_dir: str, extra: dict) -> dict:
  """The module's parameter tree, filled from the export (every leaf must be found)."""
  abstract = jax.eval_shape(lambda: nn.meta.unbox(module.init(jax.random.key(0), *dummy)["params"]))
  shapes = {k: tuple(v.shape) for k, v in flatten(abstract).items()}
  base = os.path.join(export_dir, "base")
  bert = bert_lib.Bert(module.config, head="mlm")
  flat = {f"bert/{k}": np.asarray(v) for k, v in flatten(
      jax.device_get(hf_io.load_params(base, bert))).items()}
  flat.update(extra)
  missing = sorted(set(shapes) - set(flat))
  if missing:
    raise ValueError(f"{export_dir}: the export lacks {missing[:4]}")
  dtype = jnp.dtype(module.config.param_dtype)
  return unflatten({k: jnp.asarray(flat[k], dtype) for k in shapes})


def _dummy(audio_dim: int, tokens: bool) -> tuple:
  """A one-row batch (the model's positional argument) for shapes."""
  ids = jnp.zeros((1, 4), jnp.int32)
  batch = {"input_ids": ids, "attention_mask": jnp.ones_like(ids), "token_type_ids": ids,
           "span_ids": ids, "span_has_audio": jnp.ones((1, 1), jnp.int32),
           "lora_gate": jnp.ones((1,), jnp.float32)}
  if tokens:
    batch["span_audio_tokens"] = jnp.zeros((1, 1, 2, audio_dim), jnp.float32)
  else:
    batch["span_audio"] = jnp.zeros((1, 1, audio_dim), jnp.float32)
  return (batch,)


def _load(name_or_dir: str, revision: str | None, hub_kwargs: Mapping[str, Any], model_lib,
          kind: str, fields, aux_file) -> Loaded:
  """An export of method file `model_lib`: its `<kind>.json` metadata gives the `Model`
  fields (`fields(meta)`), its adapter the LoRA, `aux_file(meta)` its own weights."""
  from axk.pt import resolve_export  # pylint: disable=g-import-not-at-top  (no torch)
  path = resolve_export(name_or_dir, revision=revision, **hub_kwargs)
  meta = _read_json(os.path.join(path, f"{kind}.json"))
  cfg = bert_lib.BertConfig.from_hf(hf_io.read_config(os.path.join(path, "base")))
  lora, state = ({}, {})
  if meta["use_lora"]:
    adapter_config, state = _adapter(path)
    lora = _lora_settings(adapter_config)
  module = model_lib.Model(cfg, audio_dim=int(meta["audio_dim"]), use_lora=bool(meta["use_lora"]),
                           **fields(meta), **lora)
  dummy = _dummy(int(meta["audio_dim"]), tokens=model_lib.AUDIO == "tokens")
  abstract = jax.eval_shape(lambda: nn.meta.unbox(module.init(jax.random.key(0), *dummy)["params"]))
  shapes = {k: tuple(v.shape) for k, v in flatten(abstract).items()}
  extra = _lora_params(state, shapes) if state else {}
  if aux_file(meta):
    extra.update(_aux_params(os.path.join(path, aux_file(meta)), shapes, model_lib.AUX_TABLE))
  return Loaded(module, _assemble(module, dummy, path, extra), kind, path)


def load_audiobert(name_or_dir: str, *, revision: str | None = None, **hub_kwargs: Any) -> Loaded:
  """AudioBERT from an export folder or hub repo id (`hub_kwargs`: cache_dir, token,
  local_files_only)."""
  from axk.models import audiobert as audiobert_lib  # pylint: disable=g-import-not-at-top
  return _load(name_or_dir, revision, hub_kwargs, audiobert_lib, "audiobert",
               # Exports from before `injection`/`audio_projection`: added, always projected.
               lambda m: {"use_audio": bool(m["use_audio"]),
                          "lora_gate": m.get("lora_gate", "span_audio"),
                          "injection": m.get("injection", "add"),
                          "audio_projection": m.get("audio_projection", "always")},
               lambda m: ("audio_projection.safetensors"
                          if m["use_audio"] and m.get("projected", True) else ""))


def load_ith(name_or_dir: str, *, revision: str | None = None, **hub_kwargs: Any) -> Loaded:
  """ITH from an export folder or hub repo id (`hub_kwargs`: cache_dir, token,
  local_files_only)."""
  from axk.models import ith as ith_lib  # pylint: disable=g-import-not-at-top
  return _load(name_or_dir, revision, hub_kwargs, ith_lib, "ith",
               lambda m: {"fusion_layer": int(m["fusion_layer"]),
                          # Exports from before these fields: a gate on the text, GELU.
                          "fusion_gate": bool(m.get("fusion_gate", True)),
                          "gate_on": m.get("gate_on", "text"),
                          "audio_activation": m.get("audio_activation", "gelu"),
                          "fusion_norm_eps": float(m["layer_norm_eps"])},
               lambda m: "fusion.safetensors")
