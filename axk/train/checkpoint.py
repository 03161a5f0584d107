"""Checkpoints: one orbax `CheckpointManager` per workdir.

Saved: the train state `{"step", "params", "opt"}` and, for checkpoints written after an
evaluation, its metrics (orbax writes them only when the manager has a `best_fn`). Kept: the
latest `keep` checkpoints plus the best one on the selection metric (ties: the earliest step;
a NaN metric counts as the worst). Restores go against an abstract target that carries shardings, so a
checkpoint written on one mesh restores onto another (8 devices -> 1 and back).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def _abs(path: str) -> str:
  return path if "://" in path else os.path.abspath(path)


class Checkpoints:
  """Save, keep and restore train states in `<workdir>/checkpoints`."""

  def __init__(self, directory: str, *, keep: int = 2, best_metric: str | None = None,
               best_mode: str = "max"):
    self.directory = _abs(directory)
    self.best_metric = best_metric
    self.best_mode = best_mode
    policies = [ocp.checkpoint_managers.LatestN(n=keep)]
    if best_metric:
      # Higher key = better; orbax keeps the highest key, so the earliest step wins ties.
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=self._key, reverse=False, n=1, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        # Without a `best_fn` orbax silently drops the metrics passed to `save`.
        best_fn=self._key if best_metric else None, best_mode="max",
        create=True, enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def _key(self, metrics) -> tuple[float, int]:
    """Sort key of a checkpoint's metrics: better value first, then the earlier step."""
    value = float(metrics[self.best_metric])
    if value != value:  # NaN: worst.
      value = -float("inf")
    elif self.best_mode == "min":
      value = -value
    return value, -int(metrics.get("step", 0))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def metrics(self, step: int) -> dict | None:
    """The metrics saved with `step` (None for checkpoints saved without an evaluation)."""
    return self.manager.metrics(step) if self.best_metric else None

  def best_step(self) -> int | None:
    """The kept step with the best selection metric (ties: the earliest), or None."""
    if not self.best_metric:
      return None
    scored = [(self._key(m), s) for s in self.manager.all_steps()
              if (m := self.manager.metrics(s)) is not None and self.best_metric in m]
    return max(scored)[1] if scored else None

  def save(self, step: int, state: Any, metrics: dict[str, float] | None = None,
           force: bool = True) -> None:
    if metrics is not None:
      metrics = {**metrics, "step": int(step)}
    self.manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=force)
    self.manager.wait_until_finished()

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores `step` (default: latest) onto `target`, a tree of `jax.ShapeDtypeStruct`
    with shardings (or of arrays, whose shardings are used)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    logging.info("Restoring step %d from %s", step, self.directory)
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    self.manager.close()


def restore_params_from(directory: str, target_params: Any) -> tuple[Any, int]:
  """Parameters only, from the latest checkpoint of another run (`--config.resume`).

  `directory` is a workdir or its `checkpoints` folder. Returns (params, step).
  """
  directory = _abs(directory)
  if os.path.isdir(os.path.join(directory, "checkpoints")):
    directory = os.path.join(directory, "checkpoints")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True))
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"--config.resume={directory}: no checkpoint there.")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_params)
  restored = manager.restore(step, args=ocp.args.StandardRestore(
      {"params": abstract}), )
  manager.close()
  return restored["params"], step
