"""LoRA, all of it: the parameter subtree `params["lora"]`, its per-example gated update,
and its mapping to PEFT adapters.

For each encoder layer and target projection (`query`, `key`, `value`, `out` of the
self-attention), `a` maps the projection's input to `rank` and `b` maps back to its output:
`y = x W + b_W + gate * (alpha / rank) * dropout(x) a b`. `a` starts like PEFT's
(Kaiming-uniform), `b` at zero, so training starts from the base model. The gate is per
example (`apply_lora`, called by `axk.models.bert`'s attention): zero reproduces the base
model bit for bit.

PEFT: `to_peft` names the subtree as PEFT names the adapter of a transformers
`BertForMaskedLM` (`base_model.model.bert.encoder.layer.{i}.attention.self.query.lora_A.weight`,
...; `...model.roberta.encoder...` for a `RobertaForMaskedLM`), and `write_adapter` writes a PEFT adapter folder that `peft.PeftModel.from_pretrained`
loads onto the exported base model.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from axk.pt import peft_adapter
from axk.utils.tree import flatten


TARGETS = ("query", "key", "value", "out")
# `config` of the modules below: an `axk.models.bert.BertConfig` (not imported: bert imports
# this module for `apply_lora`).
BertConfig = Any


def _kaiming_uniform(fan_in: int):
  # PEFT initialises lora_A as torch's Linear default: kaiming_uniform(a=sqrt(5)), which is
  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class _Pair(nn.Module):
  """`a` [*in, rank] and `b` [rank, *out] of one projection."""

  config: BertConfig
  rank: int
  in_shape: tuple[int, ...]
  in_axes: tuple[str, ...]
  out_shape: tuple[int, ...]
  out_axes: tuple[str, ...]

  @nn.compact
  def __call__(self):
    dtype = self.config.param_dtype
    a = self.param("a", nn.with_logical_partitioning(
        _kaiming_uniform(math.prod(self.in_shape)), self.in_axes + ("lora_rank",)),
        self.in_shape + (self.rank,), dtype)
    b = self.param("b", nn.with_logical_partitioning(
        nn.initializers.zeros_init(), ("lora_rank",) + self.out_axes),
        (self.rank,) + self.out_shape, dtype)
    return a, b


class Lora(nn.Module):
  """Creates the LoRA matrices of every layer (`lora/layer_{i}_{target}/{a,b}`); calling it
  returns them in the form `Bert(..., lora=...)` takes."""

  config: BertConfig
  rank: int = 64
  alpha: float = 128.0
  targets: tuple[str, ...] = ("query", "key", "value")

  @nn.compact
  def __call__(self) -> dict:
    c = self.config
    check_targets(self.targets)
    h, d, e = c.num_attention_heads, c.head_dim, c.hidden_size
    shapes = {  # target -> (input shape, input axes, output shape, output axes)
        "query": ((e,), ("embed",), (h, d), ("heads", "kv")),
        "key": ((e,), ("embed",), (h, d), ("heads", "kv")),
        "value": ((e,), ("embed",), (h, d), ("heads", "kv")),
        "out": ((h, d), ("heads", "kv"), (e,), ("embed",)),
    }
    out = {}
    for i in range(c.num_hidden_layers):
      layer = {}
      for t in self.targets:
        a, b = _Pair(c, self.rank, *shapes[t], name=f"layer_{i}_{t}")()
        layer[t] = {"a": a, "b": b, "scale": self.alpha / self.rank}
      out[f"layer_{i}"] = layer
    return out


def check_targets(targets) -> None:
  """ValueError naming the unknown entries of `targets` and the known ones."""
  unknown = sorted(set(targets) - set(TARGETS))
  if unknown or not targets:
    raise ValueError(f"LoRA targets {unknown or '()'} not in {TARGETS}.")


def apply_lora(y, x, ab: Mapping[str, Any], gate, *, contract: int, dropout: float,
               deterministic: bool, module: nn.Module):
  """`y + gate * (dropout(x) @ a @ b) * scale`, exactly `y` where the gate is zero.

  `ab` holds `a` [*in, rank], `b` [rank, *out] and the scalar `scale` (alpha / rank). The
  gate is per example ([batch]); examples whose gate is 0 get `y` itself (a select, not an
  add of zeros), so the base model's output is reproduced bit for bit. `module` is the
  calling module (the dropout's scope).
  """
  del module  # The dropout below binds to the calling module's scope.
  xd = nn.Dropout(dropout)(x, deterministic=deterministic) if dropout else x
  in_axes = "".join("xyz"[:contract])
  a = jnp.einsum(f"bl{in_axes},{in_axes}r->blr", xd, ab["a"].astype(x.dtype))
  out_axes = "ijk"[:ab["b"].ndim - 1]
  delta = jnp.einsum(f"blr,r{out_axes}->bl{out_axes}", a, ab["b"].astype(x.dtype))
  delta = delta * ab["scale"]
  if gate is None:
    return y + delta
  g = gate.astype(y.dtype).reshape((-1,) + (1,) * (y.ndim - 1))
  return jnp.where(g != 0, y + g * delta, y)


# -- PEFT ------------------------------------------------------------------------------------
# PEFT's lora_A.weight is [rank, in], lora_B.weight is [out, rank].
_PEFT_MODULES = {"query": "attention.self.query", "key": "attention.self.key",
                 "value": "attention.self.value", "out": "attention.output.dense"}
# PEFT's name of encoder layer i's modules in a transformers `*ForMaskedLM`: its backbone is
# `bert` in BERT's, `roberta` in RoBERTa's (the model's `base_model_prefix`).
PEFT_PREFIX = "base_model.model.{backbone}.encoder.layer."
_LORA_PATH = re.compile(r"^layer_(?P<i>\d+)_(?P<t>query|key|value|out)/(?P<m>a|b)$")


def to_peft(flat_lora: Mapping[str, np.ndarray], model_type: str = "bert"
            ) -> dict[str, np.ndarray]:
  """`{"layer_{i}_{target}/a|b": array}` (the lora subtree, flat) -> PEFT state dict of a
  `model_type` ("bert" or "roberta") model."""
  prefix = PEFT_PREFIX.format(backbone=model_type)
  out = {}
  for path, x in flat_lora.items():
    m = _LORA_PATH.match(path)
    if m is None:
      raise KeyError(f"Not a LoRA parameter path: {path!r}")
    x = np.asarray(x)
    name = f"{prefix}{m['i']}.{_PEFT_MODULES[m['t']]}"
    if m["m"] == "a":  # [*in, rank] -> [rank, in]
      out[f"{name}.lora_A.weight"] = np.ascontiguousarray(x.reshape(-1, x.shape[-1]).T)
    else:  # [rank, *out] -> [out, rank]
      out[f"{name}.lora_B.weight"] = np.ascontiguousarray(x.reshape(x.shape[0], -1).T)
  return out


_PEFT_NAME = re.compile(r"layer\.(?P<i>\d+)\.(?P<m>attention\.self\.query|attention\.self\.key|"
                        r"attention\.self\.value|attention\.output\.dense)\.lora_(?P<ab>[AB])"
                        r"\.weight$")
_FROM_PEFT_MODULE = {v: k for k, v in _PEFT_MODULES.items()}


def from_peft(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """PEFT state dict -> `{"layer_{i}_{target}/a|b": array}` (A [rank, in] and B [out, rank]
  transposed; the caller reshapes to the subtree's shapes). Inverse of `to_peft`."""
  out = {}
  for name, x in state.items():
    m = _PEFT_NAME.search(name)
    if m is None:
      raise ValueError(f"adapter tensor {name!r} is not a LoRA weight of a BERT attention layer")
    target = _FROM_PEFT_MODULE[m["m"]]
    out[f"layer_{m['i']}_{target}/{'a' if m['ab'] == 'A' else 'b'}"] = np.asarray(x).T
  return out


def from_peft_module(module: str) -> str:
  """An axk LoRA target of a PEFT `target_modules` entry ("query", "attention.output.dense")."""
  return _FROM_PEFT_MODULE.get(module, module)


def peft_target_modules(targets) -> list[str]:
  """PEFT `target_modules` (module-name suffixes) for axk LoRA targets."""
  return sorted(_PEFT_MODULES[t] if t == "out" else t for t in targets)


def write_adapter(flat_lora: Mapping[str, np.ndarray], *, rank: int, alpha: float,
                  dropout: float, targets, adapter_dir: str,
                  base_model_name_or_path: str | None = None,
                  model_type: str = "bert") -> None:
  """The LoRA subtree (flat) as a PEFT adapter folder for the exported `BertForMaskedLM`
  (`RobertaForMaskedLM` for `model_type="roberta"`; `<adapter_dir>/../base`), written by
  PEFT itself (`axk.pt.peft_adapter`, in a child process: no torch here).
  `base_model_name_or_path` defaults to that folder."""
  peft_adapter.write_adapter(
      to_peft(flat_lora, model_type), adapter_dir, os.path.join(os.path.dirname(adapter_dir), "base"),
      rank=rank, alpha=alpha, dropout=dropout, target_modules=peft_target_modules(targets),
      base_model_name_or_path=base_model_name_or_path)


def export_adapter(params, model, out_dir: str, base_model_name_or_path: str | None) -> None:
  """`out_dir/adapter/` from `params["lora"]` of a model with the LoRA fields (`lora_rank`,
  `lora_alpha`, `lora_dropout`, `lora_targets`)."""
  write_adapter(flatten(params["lora"]), rank=model.lora_rank, alpha=model.lora_alpha,
                dropout=model.lora_dropout, targets=model.lora_targets,
                adapter_dir=os.path.join(out_dir, "adapter"),
                base_model_name_or_path=base_model_name_or_path,
                model_type=model.config.model_type)
