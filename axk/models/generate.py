"""Greedy decoding with `axk.models.decoder`'s KV cache, as transformers' `generate(...,
do_sample=False)` does it.

    tokens = greedy_generate(model.module, model.params, input_ids, attention_mask,
                             max_new_tokens=64, eos_token_ids=(128009,), pad_token_id=0)

Prompts of different lengths are left-padded (`attention_mask` 0 on the padding); each row's
positions count its own tokens (`cumsum(mask) - 1`), so padding changes nothing. The prompt
is one jitted prefill call into a cache of `prompt length + max_new_tokens` slots; each new
token is one jitted single-token call. A row that emits one of `eos_token_ids` keeps it and
is padded with `pad_token_id` after it; decoding stops when every row has finished or after
`max_new_tokens` tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from axk.models import decoder as decoder_lib


@functools.lru_cache(maxsize=8)
def _programs(config: decoder_lib.DecoderConfig):
  """(prefill, step) of a decoder of `config`, jitted; each returns (the greedy next token
  of every row [batch], the updated cache)."""
  module = decoder_lib.Decoder(config)

  def prefill(params, input_ids, attention_mask, positions, cache):
    out = module.apply({"params": params}, input_ids, attention_mask, positions, cache)
    return jnp.argmax(out["logits"][:, -1], axis=-1).astype(jnp.int32), out["cache"]

  def step(params, token, position, cache):
    ones = jnp.ones_like(token)[:, None]
    out = module.apply({"params": params}, token[:, None], ones, position[:, None], cache)
    return jnp.argmax(out["logits"][:, -1], axis=-1).astype(jnp.int32), out["cache"]

  return jax.jit(prefill), jax.jit(step)


def greedy_generate(module: decoder_lib.Decoder, params, input_ids, attention_mask=None, *,
                    max_new_tokens: int, eos_token_ids: Iterable[int] = (),
                    pad_token_id: int = 0) -> np.ndarray:
  """The greedy continuation of each left-padded prompt.

  Args:
    module: the decoder (`PretrainedDecoder.module`).
    params: its parameters (`PretrainedDecoder.params`).
    input_ids: [batch, length] prompts, padding on the left.
    attention_mask: [batch, length], 1 on prompt tokens, 0 on padding (None: no padding).
    max_new_tokens: the most tokens to add to a row.
    eos_token_ids: ids that end a row (it keeps the id; none: every row runs to the end).
    pad_token_id: what fills a finished row.

  Returns:
    [batch, steps] int32 new tokens, steps <= max_new_tokens (fewer when every row finished
    early): transformers' `generate(..., do_sample=False)` output after the prompt.
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
  input_ids = np.asarray(input_ids, np.int32)
  mask = (np.ones_like(input_ids) if attention_mask is None
          else np.asarray(attention_mask, np.int32))
  if input_ids.ndim != 2 or mask.shape != input_ids.shape:
    raise ValueError(f"input_ids {input_ids.shape} and attention_mask {mask.shape} must be "
                     "the same [batch, length]")
  if not mask[:, -1].all():
    raise ValueError("prompts must be left-padded: every row's last token is a prompt token")
  batch, length = input_ids.shape
  prefill, step = _programs(module.config)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
  cache = decoder_lib.init_cache(module.config, batch, length + max_new_tokens)
  token, cache = prefill(params, jnp.asarray(input_ids), jnp.asarray(mask),
                         jnp.asarray(positions), cache)
  eos = np.asarray(sorted(set(int(i) for i in eos_token_ids)), np.int32)
  position = mask.sum(axis=1).astype(np.int32)
  done = np.zeros(batch, bool)
  out = []
  while True:
    new = np.where(done, pad_token_id, np.asarray(token)).astype(np.int32)
    out.append(new)
    done |= np.isin(new, eos)
    if done.all() or len(out) == max_new_tokens:
      return np.stack(out, axis=1)
    token, cache = step(params, jnp.asarray(new), jnp.asarray(position), cache)
    position = position + 1
