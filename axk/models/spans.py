"""Span masks from `span_ids` ([batch, length]: k on the tokens of the k-th span, 0 elsewhere,
as `axk.data.encode` makes them), shared by the audio models."""

from __future__ import annotations

import jax.numpy as jnp


def span_onehot(span_ids, num_spans: int):
  """[batch, length] span ids -> [batch, spans, length] booleans (token in span k+1)."""
  k = jnp.arange(1, num_spans + 1)
  return span_ids[:, None, :] == k[None, :, None]


def first_token_onehot(span_ids, num_spans: int):
  """[batch, spans, length]: True at the first token of each span."""
  inside = span_onehot(span_ids, num_spans)
  return inside & (jnp.cumsum(inside, axis=-1) == 1)
