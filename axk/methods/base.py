"""The method contract: what the product needs from a way of giving BERT span audio.

A method (AudioBERT, ITH, or one of yours) is a subclass of `Method` registered with
`@register`. Training, evaluation, predict, the demo, `report.html`, the model cards, the
exports (JAX and PyTorch) and the papers' tables ask the method, never its name:

    @methods.register
    class Concat(methods.Method):
      name = "concat"                      # config.model.name; the export's `concat.json`
      title = "Concatenated audio tokens"  # tables, results.md, cards
      model_class = ConcatModel            # Model(bert_config, audio_dim=..., **fields)
      audio = "tokens"                     # "pooled" | "tokens" | "none": what it reads
      inputs = (...)                       # the batch fields its Model reads
      aux_table = (...)                    # its own parameters <-> PyTorch names
      torch_class = "mylab.concat:ConcatTorch"   # PyTorch inference of its export

`config.model.name` names a registered method, or a module that registers one when
imported ("mylab.concat"); `config.plugins` lists modules imported at start.

What a subclass may override (defaults in brackets): `gate` ["none"; "lora": a per-example
LoRA gate in the batch, `lora_gate()`; "fusion": a per-token gate sown by the module under
`intermediates/fusion/gate`], `lora_gate()` [ones], `uses_lora` [whether `model_class` has
LoRA fields], `meta()` / `fields_from_meta()` [the `Model` fields, as JSON], `export_notes()`,
`published_row` [its row in the tasks' published tables], `summary` [""; one sentence for
model cards: how it gives BERT audio], `card_usage()`, `card_limitations()` [from `gate`].
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from typing import Any, ClassVar, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from axk.hf import convert
from axk.hf import io as hf_io
from axk.models import bert as bert_lib
from axk.models import lora as lora_lib
from axk.pt import resolve_export
from axk.utils import files
from axk.utils.tree import flatten, unflatten

AUDIO_KINDS = ("pooled", "tokens", "none")
GATES = ("none", "lora", "fusion")
# `config.model` fields that describe the BERT every method starts from; the others are the
# method's own and go to its `Model`.
BERT_FIELDS = ("name", "init", "revision", "tiny", "dtype", "param_dtype", "remat", "dropout")
# The `Model` dataclass fields that are not the method's options.
_NOT_FIELDS = ("parent", "name", "config", "audio_dim")
LORA_FIELDS = ("use_lora", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets")


class MethodError(ValueError):
  """An unknown method, or a method class that breaks the contract (one line)."""


class Method:
  """One method (see the module docstring). Instances are stateless; `get(name)` returns one."""

  name: ClassVar[str] = ""
  title: ClassVar[str] = ""
  model_class: ClassVar[type[nn.Module]]
  audio: ClassVar[str] = "none"
  inputs: ClassVar[tuple[str, ...]] = ()
  gate: ClassVar[str] = "none"
  aux_table: ClassVar[tuple] = ()  # (axk path, PyTorch name, transform of `axk.hf.convert`)
  aux_file: ClassVar[str] = ""  # The export's safetensors file of those parameters.
  torch_class: ClassVar[str] = ""  # "module:Class" with `from_export(dir)`.
  published_row: ClassVar[str] = ""  # Key of its row in `axk.tasks` published tables.
  summary: ClassVar[str] = ""  # How it gives BERT span audio, one sentence (model cards).

  # -- the model -----------------------------------------------------------------------------
  @classmethod
  def fields(cls) -> dict[str, Any]:
    """The `Model`'s own options with their defaults (the method's `config.model` fields)."""
    return {f.name: f.default for f in dataclasses.fields(cls.model_class)
            if f.name not in _NOT_FIELDS and f.default is not dataclasses.MISSING}

  @classmethod
  def uses_lora(cls) -> bool:
    return "use_lora" in cls.fields()

  def build(self, bert_config: bert_lib.BertConfig, audio_dim: int, **fields) -> nn.Module:
    """`model_class(bert_config, audio_dim=audio_dim, **fields)`, checked: ValueError
    ("<field>=<value>: ...") for an unknown field or one its `check()` refuses."""
    known = set(self.fields())
    unknown = sorted(set(fields) - known)
    if unknown:
      cls = self.model_class
      raise ValueError(f"{unknown[0]}: not a field of {cls.__module__}.{cls.__qualname__} "
                       f"(its fields: {', '.join(sorted(known))}).")
    model = self.model_class(bert_config, audio_dim=audio_dim, **fields)
    if hasattr(model, "check"):
      model.check()
    return model

  def lora_gate(self, arrays: Mapping[str, np.ndarray], model) -> np.ndarray:
    """The per-row LoRA gate [rows] float32 of encoded rows (all on by default)."""
    del model
    return np.ones(arrays["input_ids"].shape[0], np.float32)

  def without_audio(self, arrays: Mapping[str, np.ndarray], model) -> dict[str, np.ndarray]:
    """The same rows with no span audio: `span_has_audio` zeroed, the gate recomputed."""
    out = dict(arrays)
    out["span_has_audio"] = np.zeros_like(arrays["span_has_audio"])
    out["lora_gate"] = self.lora_gate(out, model)
    return out

  def dummy_batch(self, audio_dim: int) -> dict:
    """A one-row batch of every input (for shapes)."""
    ids = jnp.zeros((1, 4), jnp.int32)
    batch = {"input_ids": ids, "attention_mask": jnp.ones_like(ids), "token_type_ids": ids,
             "span_ids": ids, "span_has_audio": jnp.ones((1, 1), jnp.int32),
             "lora_gate": jnp.ones((1,), jnp.float32)}
    if self.audio == "tokens":
      batch["span_audio_tokens"] = jnp.zeros((1, 1, 2, audio_dim), jnp.float32)
    elif self.audio == "pooled":
      batch["span_audio"] = jnp.zeros((1, 1, audio_dim), jnp.float32)
    return batch

  # -- export --------------------------------------------------------------------------------
  def meta(self, model) -> dict:
    """The export's `<name>.json`: everything needed to build the same `Model` again."""
    return {"method": self.name, "audio_dim": int(model.audio_dim),
            "hidden_size": model.config.hidden_size,
            "use_lora": bool(getattr(model, "use_lora", False)),
            "fields": {k: _jsonable(getattr(model, k)) for k in self.fields()}}

  def fields_from_meta(self, meta: Mapping) -> dict:
    """The `Model` fields of an export's `<name>.json` (inverse of `meta`)."""
    defaults = self.fields()
    return {k: tuple(v) if isinstance(defaults.get(k), tuple) else v
            for k, v in meta["fields"].items() if k in defaults}

  def has_aux(self, model) -> bool:
    """Whether the export has `aux_file` (parameters of `aux_table` exist in `model`)."""
    return bool(self.aux_table and self.aux_file)

  def export(self, params, model, out_dir: str, *, tokenizer_from: str | None = None,
             base_model_name_or_path: str | None = None) -> list[str]:
    """Writes `base/` (`BertForMaskedLM`, or `RobertaForMaskedLM` for a RoBERTa backbone),
    `adapter/` (PEFT LoRA, when the model trains LoRA),
    `aux_file` (the method's own weights by `aux_table`) and `<name>.json`; returns notes for
    results.md."""
    hf_io.save(params["bert"], model.config, os.path.join(out_dir, "base"), head="mlm",
               tokenizer_from=tokenizer_from)
    lora = bool(getattr(model, "use_lora", False))
    if lora:
      lora_lib.export_adapter(params, model, out_dir, base_model_name_or_path)
    architecture = convert.ARCHITECTURES[model.config.model_type]["mlm"]
    written = [f"export/base ({architecture})"] + (["export/adapter (PEFT LoRA)"] if lora else [])
    written += self.export_aux(params, model, out_dir)
    run = f"; run with {self.torch_class.replace(':', '.')}" if self.torch_class else ""
    return [f"Export: {', '.join(written)}{run}."]

  def export_aux(self, params, model, out_dir: str, **meta) -> list[str]:
    """Writes `aux_file` (the method's own weights by `aux_table`) and `<name>.json`
    (`meta(model)` and `meta`); returns what it wrote beyond the json."""
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    written = []
    if self.has_aux(model):
      flat = {k: v for k, v in flatten(params).items()
              if not k.startswith(("bert/", "lora/"))}
      aux = convert.aux_to_torch(flat, self.aux_table)
      with files.atomic_path(os.path.join(out_dir, self.aux_file)) as tmp:
        save_file({k: np.asarray(v, np.float32) for k, v in aux.items()}, tmp)
      written.append(f"export/{self.aux_file}")
    files.write_json(os.path.join(out_dir, f"{self.name}.json"), {**self.meta(model), **meta})
    return written

  def load(self, path: str) -> "Loaded":
    """The export in folder `path` as a JAX model (see `load_export`)."""
    meta = _read_json(os.path.join(path, f"{self.name}.json"))
    cfg = bert_lib.BertConfig.from_hf(hf_io.read_config(os.path.join(path, "base")))
    fields = self.fields_from_meta(meta)
    state = {}
    if fields.get("use_lora"):
      adapter_config, state = _adapter(path)
      fields.update(_lora_settings(adapter_config))
    module = self.build(cfg, int(meta["audio_dim"]), **fields)
    dummy = self.dummy_batch(int(meta["audio_dim"]))
    abstract = jax.eval_shape(
        lambda: nn.meta.unbox(module.init(jax.random.key(0), dummy)["params"]))
    shapes = {k: tuple(v.shape) for k, v in flatten(abstract).items()}
    flat = {f"bert/{k}": np.asarray(v) for k, v in flatten(jax.device_get(hf_io.load_params(
        os.path.join(path, "base"), bert_lib.Bert(cfg, head="mlm")))).items()}
    if state:
      flat.update(_lora_params(state, shapes))
    aux = os.path.join(path, self.aux_file) if self.aux_file else ""
    if aux and os.path.isfile(aux):
      flat.update(_aux_params(aux, shapes, self.aux_table))
    missing = sorted(set(shapes) - set(flat))
    if missing:
      raise ValueError(f"{path}: the export lacks {missing[:4]}")
    dtype = jnp.dtype(cfg.param_dtype)
    params = unflatten({k: jnp.asarray(flat[k], dtype) for k in shapes})
    return Loaded(module, params, self, path)

  def load_torch(self, path: str):
    """The export in folder `path` as the method's PyTorch module (`torch_class`)."""
    if not self.torch_class:
      raise MethodError(f"method {self.name!r} has no PyTorch inference (torch_class).")
    module, _, cls = self.torch_class.partition(":")
    return getattr(importlib.import_module(module), cls).from_export(path)

  # -- what people read ----------------------------------------------------------------------
  def card_usage(self, repo_id: str) -> list[str]:
    """Model-card lines: how to load and call the export (PyTorch and JAX)."""
    args = ", ".join(self.inputs)
    lines = []
    if self.torch_class:
      module, _, cls = self.torch_class.partition(":")
      lines += ["PyTorch (with axk and its requirements installed):", "", "```python",
                f"from {module} import {cls}",
                f'model = {cls}.from_pretrained("{repo_id}")  # or a local folder, revision=...',
                f"logits = model({args})  # [batch, length, vocab]", "```", ""]
    lines += ["JAX (axk):", "", "```python", "from axk import methods",
              f'model = methods.load_export("{repo_id}")',
              "logits = model(**batch)  # the same inputs, as arrays", "```", ""]
    return lines


  def card_limitations(self) -> list[str]:
    """Model-card bullets: what a model of this method cannot do (from its `gate`)."""
    lines = []
    if self.gate == "lora":
      lines.append("An input with no audio at any span runs with the LoRA adapter off: it is "
                   "then the base BERT, which knows no more of sounds than before training.")
    elif self.gate == "fusion":
      lines.append("The fusion acts only on the tokens of spans that have accepted audio; a "
                   "sentence without them is answered by the fine-tuned text model alone.")
    lines.append("Its audio inputs (span ids and audio features) come from axk's span detector "
                 "and feature pipeline, which `python -m axk.predict` runs for a sentence; "
                 "with `transformers` alone, `base/` is a text model without the audio.")
    return lines


@dataclasses.dataclass
class Loaded:
  """A loaded export: `module` (Flax), `params`, its `method` and the local `path`."""

  module: nn.Module
  params: dict
  method: Method
  path: str
  steps: dict = dataclasses.field(default_factory=dict)  # Compiled steps, for reuse.

  def __post_init__(self):
    self._apply = jax.jit(lambda p, batch: self.module.apply({"params": p}, batch)["logits"])

  @property
  def kind(self) -> str:
    return self.method.name

  def __call__(self, **inputs) -> jax.Array:
    """Logits [batch, length, vocab] from the named inputs (the method's `inputs`)."""
    missing = [k for k in self.method.inputs if k not in inputs]
    if missing:
      raise KeyError(f"{self.method.name} needs inputs {missing}")
    return self._apply(self.params, {k: jnp.asarray(inputs[k]) for k in self.method.inputs})


# -- the registry --------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
  """Class decorator: makes `cls` the method `cls.name` (checked against the contract)."""
  if not cls.name or not isinstance(cls.name, str):
    raise MethodError(f"{cls.__name__}: a method needs a `name`.")
  if cls.audio not in AUDIO_KINDS:
    raise MethodError(f"{cls.__name__}.audio={cls.audio!r}: one of {', '.join(AUDIO_KINDS)}.")
  if cls.gate not in GATES:
    raise MethodError(f"{cls.__name__}.gate={cls.gate!r}: one of {', '.join(GATES)}.")
  if not isinstance(getattr(cls, "model_class", None), type):
    raise MethodError(f"{cls.__name__}: a method needs a `model_class` (a flax Module).")
  if not cls.inputs:
    raise MethodError(f"{cls.__name__}: a method needs its `inputs`.")
  known = _REGISTRY.get(cls.name)
  if known is not None and known.__qualname__ != cls.__qualname__:
    raise MethodError(f"method {cls.name!r} is registered twice ({known.__module__}."
                      f"{known.__qualname__} and {cls.__module__}.{cls.__qualname__}).")
  _REGISTRY[cls.name] = cls
  return cls


def names() -> tuple[str, ...]:
  """The registered methods, in registration order."""
  return tuple(_REGISTRY)


def get(name: str) -> Method:
  """The method `name`: registered, or registered by importing the module `name`."""
  if name not in _REGISTRY and name:
    try:
      module = importlib.import_module(name)
    except ModuleNotFoundError as e:
      if not (e.name and name.startswith(e.name)):
        raise  # The module exists but one of its imports is missing.
    else:
      found = [c for c in _REGISTRY.values() if c.__module__ == module.__name__]
      if len(found) == 1:
        _REGISTRY.setdefault(name, found[0])
  if name not in _REGISTRY:
    raise MethodError(f"no method {name!r}; known: {', '.join(_REGISTRY)} (a method of your "
                      "own: a module that registers it, named in --config.model.name or "
                      "--config.plugins).")
  return _REGISTRY[name]()


def of_export(path: str) -> Method | None:
  """The method whose `<name>.json` the export folder `path` holds, or None."""
  for name, cls in _REGISTRY.items():
    if name == cls.name and os.path.isfile(os.path.join(path, f"{name}.json")):
      return cls()
  meta = [f for f in os.listdir(path) if f.endswith(".json")] if os.path.isdir(path) else []
  for f in meta:  # A method of a module not imported yet: its json names the method.
    try:
      name = _read_json(os.path.join(path, f)).get("method")
    except (OSError, ValueError, AttributeError):
      continue
    if name and f == f"{name}.json":
      try:
        return get(name)
      except (MethodError, ImportError):
        return None
  return None


def load_export(name_or_dir: str, *, revision: str | None = None, **hub_kwargs) -> Loaded:
  """Any method's export, from a folder or a hub repo id (`hub_kwargs`: cache_dir, token,
  local_files_only), as a JAX model."""
  path = resolve_export(name_or_dir, revision=revision, **hub_kwargs)
  method = of_export(path)
  if method is None:
    raise MethodError(f"{name_or_dir}: not an axk method export (no <method>.json).")
  return method.load(path)


# -- reading exports -----------------------------------------------------------------------------
def _jsonable(x):
  if isinstance(x, tuple):
    return list(x)
  if isinstance(x, (np.generic,)):
    return x.item()
  return x


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
              lora_targets=tuple(sorted({lora_lib.from_peft_module(t) for t in targets})))


def _lora_params(state: dict[str, np.ndarray], shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
  flat = lora_lib.from_peft(state)
  out = {}
  for path, x in flat.items():
    full = f"lora/{path}"
    if full not in shapes:
      raise ValueError(f"adapter tensor for {path!r} has no place in the model")
    out[full] = np.reshape(x, shapes[full])
  return out


def _aux_params(file: str, shapes: dict[str, tuple], table) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  state = load_file(file)
  return {path: convert.from_hf(state[torch_name], transform, shapes[path])
          for path, torch_name, transform in table if path in shapes}
