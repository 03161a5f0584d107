"""LoRA as a parameter subtree of its own, `params["lora"]`, used by `axk.models.bert`.

For each encoder layer and target projection (`query`, `key`, `value`, `out` of the
self-attention), `a` maps the projection's input to `rank` and `b` maps back to its output:
`y = x W + b_W + gate * (alpha / rank) * dropout(x) a b`. `a` starts like PEFT's
(Kaiming-uniform), `b` at zero, so training starts from the base model. The gate is per
example (`axk.models.bert.apply_lora`): zero reproduces the base model bit for bit.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from axk.models.bert import BertConfig

TARGETS = ("query", "key", "value", "out")


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
    unknown = set(self.targets) - set(TARGETS)
    if unknown:
      raise ValueError(f"LoRA targets {sorted(unknown)} not in {TARGETS}.")
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
