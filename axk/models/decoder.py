"""Decoder-only language models in flax.linen: Llama 3 and Gemma 2, configured from their HF
`config.json`.

One module covers both families; `DecoderConfig.model_type` ("llama" or "gemma2") switches
what differs:

  * RMSNorm: Llama's `weight * x_normed`; Gemma's `(1 + weight) * x_normed` (statistics and
    product in float32, as transformers' `Gemma2RMSNorm`).
  * The gated MLP's activation: SiLU (Llama), GELU with the tanh approximation (Gemma 2's
    `gelu_pytorch_tanh`).
  * Gemma 2 only: the embedding scaled by sqrt(hidden_size) (the factor rounded to the model
    dtype first, as transformers does), norms after attention and after the MLP as well as
    before them, attention logits soft-capped (`attn_logit_softcapping`) and scaled by
    `query_pre_attn_scalar ** -0.5` instead of `head_dim ** -0.5`, final logits soft-capped
    (`final_logit_softcapping`), and local layers (`layer_types[i] == "sliding_attention"`)
    that see only the last `sliding_window` positions.
  * RoPE: the "default" inverse frequencies, or Llama 3's "llama3" rescaling (transformers'
    `_compute_llama3_parameters`); other RoPE types are refused in one line.

Both use grouped-query attention (`num_key_value_heads`; query head h reads key/value head
h // (num_attention_heads // num_key_value_heads), as transformers' `repeat_kv`) and tie the
output projection to the embedding when `tie_word_embeddings` says so.

Parameter tree of `Decoder(config)` (logical axes in brackets):

    embed_tokens/embedding[vocab, embed]
    layer_{i}/attention_norm/scale[embed]                 before attention (both)
    layer_{i}/attention/{q_proj,k_proj,v_proj}/kernel[embed, heads, kv]
    layer_{i}/attention/o_proj/kernel[heads, kv, embed]
    layer_{i}/attention_out_norm/scale[embed]             after attention (Gemma 2)
    layer_{i}/mlp_norm/scale[embed]                       before the MLP (both)
    layer_{i}/mlp/{gate_proj,up_proj}/kernel[embed, mlp], mlp/down_proj/kernel[mlp, embed]
    layer_{i}/mlp_out_norm/scale[embed]                   after the MLP (Gemma 2)
    norm/scale[embed]
    lm_head/kernel[embed, vocab]                          (untied embeddings only)

Key/value heads carry the `heads` name too, so the rules that split query heads over `model`
split them as well (a count the axis does not divide is replicated by
`axk.train.sharding.logical_to_sharding`).

Positions and padding: a call without `positions` numbers its tokens 0, 1, 2, ... (from the
cache's fill level when a cache is passed), which is transformers' default when no
`position_ids` are given. Padding goes on the right, masked by `attention_mask`; left-padded
rows need `positions` (e.g. `cumsum(mask) - 1`, what transformers' `generate` passes). Causal
and sliding-window masks count slots (cache indices), as transformers' masks do.

KV cache (functional): `init_cache` makes an empty one for `max_length` slots; a call with
`cache=` writes its tokens' keys and values at the cache's fill level, attends over every
filled slot, and returns the new cache under "cache". Prefill is such a call with the prompt,
each decoding step one with a single token. Every layer keeps all `max_length` slots (local
layers mask the old ones rather than dropping them).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from axk.models.bert import constrain

Array = jax.Array

MODEL_TYPES = ("llama", "gemma2")
ROPE_TYPES = ("default", "llama3")
LAYER_TYPES = ("full_attention", "sliding_attention")
# The one activation each family's checkpoints use (HF `hidden_act` / `hidden_activation`).
ACTIVATIONS = {"llama": "silu", "gemma2": "gelu_pytorch_tanh"}


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Architecture and numerics of a Llama or Gemma 2 model (the fields of HF's
  `LlamaConfig` and `Gemma2Config` that the forward pass reads)."""

  model_type: str = "llama"
  vocab_size: int = 128256
  hidden_size: int = 4096
  intermediate_size: int = 14336
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int = 8
  head_dim: int = 128
  rms_norm_eps: float = 1e-5
  max_position_embeddings: int = 8192
  tie_word_embeddings: bool = False
  initializer_range: float = 0.02
  # RoPE: "default" or "llama3" (with its four parameters).
  rope_type: str = "default"
  rope_theta: float = 10000.0
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_position_embeddings: int = 8192
  # One of LAYER_TYPES per layer; `sliding_window` applies to the "sliding_attention" ones.
  layer_types: tuple[str, ...] = ()
  sliding_window: int | None = None
  # Gemma 2 (None: not used).
  query_pre_attn_scalar: float | None = None
  attn_logit_softcapping: float | None = None
  final_logit_softcapping: float | None = None
  # Numerics: parameters in `param_dtype`, matmuls in `dtype`; norms' statistics, attention
  # logits and softmax, and the output logits in float32.
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    if not self.layer_types:
      object.__setattr__(self, "layer_types", ("full_attention",) * self.num_hidden_layers)

  @property
  def gemma(self) -> bool:
    return self.model_type == "gemma2"

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], **overrides) -> "DecoderConfig":
    """From a HF `config.json` dict; a field this module cannot honour is a `ValueError`
    of one line naming it. `overrides` (e.g. dtype) win."""
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
      raise ValueError(f"model_type {model_type!r} is not supported; axk's decoder reads "
                       f"{' and '.join(MODEL_TYPES)} checkpoints.")
    gemma = model_type == "gemma2"
    act = hf.get("hidden_activation" if gemma else "hidden_act") or hf.get("hidden_act")
    if act != ACTIVATIONS[model_type]:
      raise ValueError(f"hidden_act {act!r} is not supported for {model_type}; axk's decoder "
                       f"computes {ACTIVATIONS[model_type]!r}.")
    for flag in ("attention_bias", "mlp_bias", "use_bidirectional_attention"):
      if hf.get(flag):
        raise ValueError(f"{flag}=true is not supported; axk's decoder has no biases and is "
                         "causal.")
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    if any(isinstance(v, Mapping) for v in rope.values()):
      raise ValueError("rope_parameters per layer type are not supported; axk's decoder has "
                       "one RoPE for all layers.")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
      raise ValueError(f"rope_type {rope_type!r} is not supported; axk's decoder computes "
                       f"{' and '.join(repr(t) for t in ROPE_TYPES)} RoPE.")
    if rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
      raise ValueError("partial_rotary_factor other than 1 is not supported.")
    heads = hf["num_attention_heads"]
    layers = hf["num_hidden_layers"]
    layer_types = hf.get("layer_types") or (
        ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
        if gemma else ["full_attention"] * layers)
    unknown = sorted(set(layer_types) - set(LAYER_TYPES))
    if unknown or len(layer_types) != layers:
      raise ValueError(f"layer_types must be {layers} of {LAYER_TYPES}, got {layer_types}.")
    max_positions = hf.get("max_position_embeddings", 8192)
    kwargs = dict(
        model_type=model_type,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        max_position_embeddings=max_positions,
        # HF's defaults when the field is absent: Gemma 2 ties, Llama does not.
        tie_word_embeddings=hf.get("tie_word_embeddings", gemma),
        initializer_range=hf.get("initializer_range", 0.02),
        rope_type=rope_type,
        rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
        layer_types=tuple(layer_types),
    )
    if rope_type == "llama3":
      kwargs.update(
          rope_factor=rope["factor"], rope_low_freq_factor=rope["low_freq_factor"],
          rope_high_freq_factor=rope["high_freq_factor"],
          rope_original_max_position_embeddings=hf.get(
              "original_max_position_embeddings",
              rope.get("original_max_position_embeddings", max_positions)))
    if gemma:  # Absent fields take Gemma2Config's defaults.
      kwargs.update(
          sliding_window=hf.get("sliding_window", 4096),
          query_pre_attn_scalar=hf.get("query_pre_attn_scalar", 256),
          attn_logit_softcapping=hf.get("attn_logit_softcapping", 50.0),
          final_logit_softcapping=hf.get("final_logit_softcapping", 30.0))
    kwargs.update(overrides)
    return cls(**kwargs)

  def to_hf(self) -> dict[str, Any]:
    """The HF `config.json` fields of this architecture (`from_hf` reads them back)."""
    out = {k: getattr(self, k) for k in (
        "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
        "max_position_embeddings", "tie_word_embeddings", "initializer_range", "rope_theta")}
    out.update(layer_types=list(self.layer_types), attention_bias=False, mlp_bias=False,
               hidden_act=ACTIVATIONS[self.model_type])
    rope = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
    if self.rope_type == "llama3":
      rope.update(factor=self.rope_factor, low_freq_factor=self.rope_low_freq_factor,
                  high_freq_factor=self.rope_high_freq_factor,
                  original_max_position_embeddings=self.rope_original_max_position_embeddings)
    out["rope_parameters"] = rope
    if self.gemma:
      out.update(hidden_activation=ACTIVATIONS["gemma2"], sliding_window=self.sliding_window,
                 query_pre_attn_scalar=self.query_pre_attn_scalar,
                 attn_logit_softcapping=self.attn_logit_softcapping,
                 final_logit_softcapping=self.final_logit_softcapping)
    return out


def inverse_frequencies(config: DecoderConfig) -> np.ndarray:
  """RoPE's inverse frequencies [head_dim // 2], float32, computed as transformers does
  ("default", and "llama3" as in `_compute_llama3_parameters`)."""
  dim = config.head_dim
  exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
  inv_freq = (np.float32(1.0) / (np.float32(config.rope_theta) ** exponents)).astype(np.float32)
  if config.rope_type == "default":
    return inv_freq
  factor = config.rope_factor
  low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
  old_context = config.rope_original_max_position_embeddings
  low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
  wavelen = (2 * math.pi / inv_freq).astype(np.float32)
  scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq).astype(np.float32)
  smooth = ((old_context / wavelen - low) / (high - low)).astype(np.float32)
  smoothed = ((1 - smooth) * scaled / factor + smooth * scaled).astype(np.float32)
  medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def rotate(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
  """RoPE on x [batch, length, heads, head_dim] at positions [batch, length] (the two halves
  of the head rotated together, transformers' `rotate_half`)."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
  angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rotated * sin


def _init(config: DecoderConfig, axes: tuple[str, ...]):
  return nn.with_logical_partitioning(
      nn.initializers.normal(stddev=config.initializer_range), axes)


class RMSNorm(nn.Module):
  """RMSNorm over the last axis; Gemma's form multiplies by (1 + scale), its scale starting
  at zero."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config
    init = nn.initializers.zeros_init() if c.gemma else nn.initializers.ones_init()
    scale = self.param("scale", nn.with_logical_partitioning(init, ("embed",)),
                       (x.shape[-1],), c.param_dtype)
    xf = x.astype(jnp.float32)
    normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + c.rms_norm_eps)
    if c.gemma:
      return (normed * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)
    return scale.astype(c.dtype) * normed.astype(x.dtype)


class Kernel(nn.Module):
  """`x` contracted over its last `contract` axes with a bias-free kernel [*in, *features]
  whose logical axes are `axes`."""

  config: DecoderConfig
  features: tuple[int, ...]
  axes: tuple[str, ...]
  contract: int = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config
    kernel = self.param("kernel", _init(c, self.axes),
                        x.shape[-self.contract:] + tuple(self.features), c.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=c.dtype)
    return jax.lax.dot_general(
        x, kernel, ((tuple(range(x.ndim - self.contract, x.ndim)), tuple(range(self.contract))),
                    ((), ())))


class Attention(nn.Module):
  """Grouped-query self-attention with RoPE, optional logit soft-capping and a KV cache."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, x: Array, positions: Array, mask: Array, kv_cache=None, start=0):
    c = self.config
    h, g, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    q = Kernel(c, (h, d), ("embed", "heads", "kv"), name="q_proj")(x)
    k = Kernel(c, (g, d), ("embed", "heads", "kv"), name="k_proj")(x)
    v = Kernel(c, (g, d), ("embed", "heads", "kv"), name="v_proj")(x)
    q = constrain(q, ("batch", "length", "heads", "kv"))
    inv_freq = inverse_frequencies(c)
    q, k = rotate(q, positions, inv_freq), rotate(k, positions, inv_freq)
    if kv_cache is not None:
      k = jax.lax.dynamic_update_slice(kv_cache[0], k.astype(kv_cache[0].dtype),
                                       (0, start, 0, 0))
      v = jax.lax.dynamic_update_slice(kv_cache[1], v.astype(kv_cache[1].dtype),
                                       (0, start, 0, 0))
    new_cache = (k, v)
    b, t = q.shape[:2]
    q = q.reshape(b, t, g, h // g, d)  # Query head i reads key/value head i // (h // g).
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k.astype(q.dtype),
                        preferred_element_type=jnp.float32)
    scale = (c.query_pre_attn_scalar if c.query_pre_attn_scalar is not None else d) ** -0.5
    scores = scores * scale
    if c.attn_logit_softcapping is not None:
      cap = c.attn_logit_softcapping
      scores = jnp.tanh(scores / cap) * cap
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v.astype(q.dtype))
    out = constrain(out.reshape(b, t, h, d), ("batch", "length", "heads", "kv"))
    return Kernel(c, (c.hidden_size,), ("heads", "kv", "embed"), contract=2,
                  name="o_proj")(out), new_cache


class MLP(nn.Module):
  """down(act(gate(x)) * up(x)): SiLU for Llama, GELU (tanh) for Gemma 2."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config
    gate = Kernel(c, (c.intermediate_size,), ("embed", "mlp"), name="gate_proj")(x)
    up = Kernel(c, (c.intermediate_size,), ("embed", "mlp"), name="up_proj")(x)
    act = jax.nn.gelu(gate, approximate=True) if c.gemma else jax.nn.silu(gate)
    hidden = constrain(act * up, ("batch", "length", "mlp"))
    return Kernel(c, (c.hidden_size,), ("mlp", "embed"), name="down_proj")(hidden)


class Layer(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x, positions, mask, kv_cache=None, start=0):
    c = self.config
    a, new_cache = Attention(c, name="attention")(
        RMSNorm(c, name="attention_norm")(x), positions, mask, kv_cache, start)
    if c.gemma:
      a = RMSNorm(c, name="attention_out_norm")(a)
    x = x + a
    m = MLP(c, name="mlp")(RMSNorm(c, name="mlp_norm")(x))
    if c.gemma:
      m = RMSNorm(c, name="mlp_out_norm")(m)
    return constrain(x + m, ("batch", "length", "embed")), new_cache


def init_cache(config: DecoderConfig, batch: int, max_length: int, dtype=None) -> dict:
  """An empty KV cache for `batch` rows of up to `max_length` tokens.

  {"keys", "values": one [batch, max_length, kv heads, head_dim] array per layer,
   "mask": [batch, max_length] (1 at slots holding a real token), "end": slots filled}.
  """
  dtype = jnp.dtype(dtype or config.dtype)
  shape = (batch, max_length, config.num_key_value_heads, config.head_dim)
  zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_hidden_layers))
  return {"keys": zeros, "values": tuple(jnp.zeros(shape, dtype) for _ in zeros),
          "mask": jnp.zeros((batch, max_length), jnp.int32), "end": jnp.zeros((), jnp.int32)}


class Decoder(nn.Module):
  """A causal language model: `__call__(input_ids, attention_mask=None, positions=None,
  cache=None)` -> {"logits" [batch, length, vocab] float32, "hidden_states" (after the final
  norm), and "cache" when one was passed}."""

  config: DecoderConfig

  def setup(self):
    c = self.config
    if c.model_type not in MODEL_TYPES:
      raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {c.model_type!r}")
    self.embed_tokens = nn.Embed(c.vocab_size, c.hidden_size, dtype=c.dtype,
                                 param_dtype=c.param_dtype,
                                 embedding_init=_init(c, ("vocab", "embed")))
    self.layers = [Layer(c, name=f"layer_{i}") for i in range(c.num_hidden_layers)]
    self.norm = RMSNorm(c)
    if not c.tie_word_embeddings:
      self.lm_head = Kernel(c, (c.vocab_size,), ("embed", "vocab"))

  def __call__(self, input_ids: Array, attention_mask: Array | None = None,
               positions: Array | None = None, cache: Mapping[str, Any] | None = None):
    c = self.config
    b, t = input_ids.shape
    start = jnp.zeros((), jnp.int32) if cache is None else cache["end"]
    if attention_mask is None:
      attention_mask = jnp.ones((b, t), jnp.int32)
    if positions is None:
      positions = jnp.broadcast_to(start + jnp.arange(t), (b, t))

    x = self.embed_tokens(input_ids)
    if c.gemma:  # The factor in the model dtype first, as transformers does.
      x = x * jnp.asarray(c.hidden_size ** 0.5, c.dtype)
    x = constrain(x, ("batch", "length", "embed"))

    if cache is None:
      key_mask = attention_mask.astype(bool)
    else:
      key_mask = jax.lax.dynamic_update_slice(
          cache["mask"], attention_mask.astype(cache["mask"].dtype), (0, start)).astype(bool)
    query_slots = start + jnp.arange(t)
    key_slots = jnp.arange(key_mask.shape[1])
    causal = key_slots[None, :] <= query_slots[:, None]
    full = causal[None] & key_mask[:, None, :]  # [batch, queries, keys]
    masks = {"full_attention": full, "sliding_attention": full}  # No window: all global.
    if c.sliding_window is not None:
      near = query_slots[:, None] - key_slots[None, :] < c.sliding_window
      masks["sliding_attention"] = full & near[None]

    keys, values = [], []
    for i, layer in enumerate(self.layers):
      kv = None if cache is None else (cache["keys"][i], cache["values"][i])
      x, (k, v) = layer(x, positions, masks[c.layer_types[i]], kv, start)
      keys.append(k)
      values.append(v)
    hidden = self.norm(x)

    if c.tie_word_embeddings:
      logits = self.embed_tokens.attend(hidden)
    else:
      logits = self.lm_head(hidden)
    logits = logits.astype(jnp.float32)
    if c.final_logit_softcapping is not None:
      cap = c.final_logit_softcapping
      logits = jnp.tanh(logits / cap) * cap
    out = {"logits": constrain(logits, ("batch", "length", "vocab")), "hidden_states": hidden}
    if cache is not None:
      out["cache"] = {"keys": tuple(keys), "values": tuple(values),
                      "mask": key_mask.astype(cache["mask"].dtype), "end": start + t}
    return out


def log_likelihood(logits: Array, input_ids: Array, attention_mask: Array | None = None):
  """Per row, the summed log-probability of each token after the first given the ones before
  it (logits [batch, length, vocab] of the same ids); masked tokens are not scored. Returns
  (sum [batch], number of tokens scored [batch])."""
  if attention_mask is None:
    attention_mask = jnp.ones_like(input_ids)
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  token = jnp.take_along_axis(logp, input_ids[:, 1:, None], axis=-1)[..., 0]
  scored = attention_mask[:, 1:].astype(jnp.float32)
  return (token * scored).sum(-1), scored.sum(-1)


def init_params(model: Decoder, rng: Array, length: int = 8) -> dict:
  """Random parameters of `model` as a plain (unboxed) dict."""
  ids = jnp.zeros((1, length), jnp.int32)
  return nn.meta.unbox(model.init(rng, ids)["params"])


def logical_axes(model: Decoder, length: int = 8) -> dict:
  """The logical axis names of every parameter of `model` (a tree of PartitionSpecs)."""
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               jnp.zeros((1, length), jnp.int32)))
  return nn.get_partition_spec(abstract["params"])
