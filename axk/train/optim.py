"""AdamW with warm-up + cosine (or constant), gradient clipping, freezing by parameter path,
and a learning-rate factor by parameter path.

Freezing is a selection of parameter paths (regular expressions in the config), not a copy
of the model: the train step differentiates only the selected leaves, so frozen weights get
neither gradients nor optimizer state.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import optax


def trainable_paths(flat_params: Mapping[str, object], patterns: Sequence[str],
                    frozen: Sequence[str] = ()) -> list[str]:
  """Paths that match any of `patterns` (full match) and none of `frozen`."""
  keep = [re.compile(p) for p in patterns]
  drop = [re.compile(p) for p in frozen]
  out = [k for k in flat_params
         if any(r.fullmatch(k) for r in keep) and not any(r.fullmatch(k) for r in drop)]
  if not out:
    raise ValueError(f"No parameter matches train.trainable={list(patterns)} "
                     f"(minus train.frozen={list(frozen)}).")
  return sorted(out)


SCHEDULES = ("cosine", "constant")


def schedule(train_config, total_steps: int) -> optax.Schedule:
  """Linear warm-up over `warmup_ratio` of the steps, then by `train_config.schedule`:
  "cosine" decays to zero at the last step, "constant" stays at the peak (with no warm-up:
  the peak from the first step, as transformers' AdamW without a scheduler)."""
  warmup = int(round(train_config.warmup_ratio * total_steps))
  kind = train_config.get("schedule", "cosine")
  if kind == "constant":
    peak = optax.constant_schedule(train_config.learning_rate)
    if not warmup:
      return peak
    ramp = optax.linear_schedule(0.0, train_config.learning_rate, warmup)
    return optax.join_schedules([ramp, peak], [warmup])
  if kind != "cosine":
    raise ValueError(f"train.schedule={kind!r}: must be one of {', '.join(SCHEDULES)}")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_config.learning_rate, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=0.0)


def path_factors(paths: Sequence[str], scales: Sequence) -> dict[str, float]:
  """`{path: factor}` for `train.lr_scales`, pairs `(regex, factor)` (full match; the first
  pair that matches a path gives its factor, 1 where none does)."""
  pairs = []
  for pair in scales:
    if len(pair) != 2 or float(pair[1]) < 0:
      raise ValueError(f"train.lr_scales={tuple(scales)}: each entry is (path regex, factor "
                       f">= 0), not {tuple(pair)!r}")
    pairs.append((re.compile(pair[0]), float(pair[1])))
  return {k: next((f for r, f in pairs if r.fullmatch(k)), 1.0) for k in paths}


def scale_by_path(scales: Sequence) -> optax.GradientTransformation:
  """Multiplies each update of a flat `{path: array}` tree by its `path_factors` factor: with
  AdamW before it, a per-path learning rate (its weight decay scaled alike)."""
  path_factors((), scales)  # Checks the pairs before any step.

  def update(updates, state, params=None):
    del params
    factors = path_factors(list(updates), scales)
    return {k: u if factors[k] == 1.0 else u * factors[k] for k, u in updates.items()}, state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make(train_config, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW (decoupled weight decay, not on biases and LayerNorm) with global-norm clipping,
  and `train.lr_scales`' factors on the paths they name."""
  lr = schedule(train_config, total_steps)

  def decay_mask(params):  # params: a flat {path: array} dict.
    return {k: not k.endswith(("/bias", "/scale")) for k in params}

  parts = []
  if train_config.clip_norm:
    parts.append(optax.clip_by_global_norm(train_config.clip_norm))
  parts.append(optax.adamw(lr, b1=train_config.b1, b2=train_config.b2, eps=train_config.eps,
                           weight_decay=train_config.weight_decay, mask=decay_mask))
  scales = tuple(train_config.get("lr_scales", ()) or ())
  if scales:
    parts.append(scale_by_path(scales))
  return optax.chain(*parts), lr
