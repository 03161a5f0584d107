"""Checkpoints: one orbax `CheckpointManager` per workdir.

Saved: the train state `{"step", "params", "opt"}` and, for checkpoints written after an
evaluation, its metrics (orbax writes them only when the manager has a `best_fn`). Kept: the
latest `keep` checkpoints plus the best one on the selection metric (ties: the earliest step;
a NaN metric counts as the worst). Restores go against an abstract target that carries shardings, so a
checkpoint written on one mesh restores onto another (8 devices -> 1 and back).

Damage: every saved step folder gets `axk_sha256.json`, the size and SHA-256 of each of its
files, written once orbax has committed the step. Resuming (`restore_latest`) checks the
newest step against it (sizes, then hashes) and restores it; a step that fails either (files
missing, truncated or changed, an empty folder, orbax refusing it) is moved, never deleted,
to `<workdir>/checkpoints.damaged/<step>-<reason>` with one warning, and the next older step
is tried. When none restores, nothing is moved and `CheckpointDamaged` says which folder to
remove. Orbax's own data has no checksums: flipped bytes inside a compressed chunk restore
without an error, which is why the hashes are ours.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import sys
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from axk.utils import files

# In each step folder: {relative path: [size, sha256]} of the files orbax wrote.
CHECKSUMS = "axk_sha256.json"
DAMAGED = "checkpoints.damaged"  # Beside `checkpoints/`: step folders that did not restore.


class CheckpointDamaged(RuntimeError):
  """No checkpoint of a folder restores; the message names the folder and each step's fault."""


def _file_table(step_dir: str) -> dict[str, list]:
  table = {}
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if rel == CHECKSUMS:
        continue
      table[rel] = [os.path.getsize(path), files.sha256_file(path)]
  return table


def check_step_dir(step_dir: str) -> tuple[str, str] | None:
  """(reason slug, detail) when `step_dir` is visibly damaged, else None.

  Without a checksum file (a step saved by an older axk, or a run killed between orbax's
  commit and the checksum write) only an empty folder is detected here; orbax's restore
  finds the rest.
  """
  if not os.path.isdir(step_dir) or not any(os.scandir(step_dir)):
    return "empty", "the step folder is empty"
  table_path = os.path.join(step_dir, CHECKSUMS)
  if not os.path.exists(table_path):
    return None
  try:
    with open(table_path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    return "checksums", f"{CHECKSUMS} does not load ({e})"
  for rel, (size, _) in saved.items():  # Sizes first: cheap, and finds truncation.
    path = os.path.join(step_dir, rel)
    if not os.path.exists(path):
      return "missing", f"{rel} is missing"
    if os.path.getsize(path) != size:
      return "truncated", f"{rel} has {os.path.getsize(path)} bytes, {size} were saved"
  actual = _file_table(step_dir)
  for rel, (_, digest) in saved.items():
    if actual[rel][1] != digest:
      return "corrupted", f"{rel} does not match its saved SHA-256"
  return None


def _reason_of(error: Exception) -> tuple[str, str]:
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  detail = (lines[0] if lines else type(error).__name__)[:200]
  return "unreadable", f"orbax cannot restore it: {type(error).__name__}: {detail}"


@contextlib.contextmanager
def _quiet_unraisable():
  """Tensorstore's failed reads leave coroutines whose errors Python prints as "Exception
  ignored in ..." pages; a refused restore is reported in one warning instead."""
  previous = sys.unraisablehook
  sys.unraisablehook = lambda _: None
  try:
    yield
  finally:
    gc.collect()
    sys.unraisablehook = previous


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _first_restorable(steps: list[int], step_dir: Callable[[int], str],
                      restore: Callable[[int], Any]) -> tuple[Any, int | None, list]:
  """Tries `steps` newest first: (restored, step, [(step, reason, detail) of newer ones])."""
  failed = []
  for step in sorted(steps, reverse=True):
    fault = check_step_dir(step_dir(step))
    if fault is None:
      try:
        with _quiet_unraisable():
          return restore(step), step, failed
      except Exception as e:  # noqa: BLE001 - any refusal of orbax's is damage here.
        fault = _reason_of(e)
    failed.append((step, *fault))
  return None, None, failed


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

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: Any, metrics: dict[str, float] | None = None,
           force: bool = True) -> None:
    if metrics is not None:
      metrics = {**metrics, "step": int(step)}
    self.manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=force)
    self.manager.wait_until_finished()
    if jax.process_index() == 0 and os.path.isdir(self.step_dir(step)):
      files.write_json(os.path.join(self.step_dir(step), CHECKSUMS),
                       _file_table(self.step_dir(step)))
    _sync("axk: checkpoint checksums written")

  def restore_latest(self, target: Any) -> tuple[Any, int]:
    """Restores the newest step that restores (see the module docstring): (state, step).

    Newer steps that do not restore are moved to `checkpoints.damaged/`, each with one
    warning. Raises `CheckpointDamaged` when no step restores (nothing is moved then).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    state, step, failed = _first_restorable(
        list(self.manager.all_steps()), self.step_dir,
        lambda s: self.manager.restore(s, args=ocp.args.StandardRestore(abstract)))
    if step is None:
      faults = "; ".join(f"step {s}: {detail}" for s, _, detail in failed)
      raise CheckpointDamaged(
          f"No checkpoint in {self.directory} restores ({faults}). Remove that folder (or "
          f"move it away) to start this run from the beginning.")
    if failed:
      damaged = os.path.join(os.path.dirname(self.directory), DAMAGED)
      for bad, reason, detail in failed:
        dest = os.path.join(damaged, f"{bad}-{reason}")
        if jax.process_index() == 0:
          n = 1
          while os.path.exists(dest):  # An earlier run moved the same step aside.
            n += 1
            dest = os.path.join(damaged, f"{bad}-{reason}-{n}")
          os.makedirs(damaged, exist_ok=True)
          shutil.move(self.step_dir(bad), dest)
        logging.warning("Checkpoint step %d does not restore (%s): moved to %s; resuming from "
                        "step %d.", bad, detail, dest, step)
      _sync("axk: damaged checkpoints moved")
      self.manager.reload()
    logging.info("Restored step %d from %s", step, self.directory)
    return state, step

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
  steps = list(manager.all_steps())
  if not steps:
    raise FileNotFoundError(f"--config.resume={directory}: no checkpoint there.")
  abstract = {"params": jax.tree.map(ocp.utils.to_shape_dtype_struct, target_params)}
  # The parameters alone out of a saved {"step", "params", "opt"}: a partial restore, which
  # StandardRestore refuses (its tree must match the saved one).
  args = ocp.args.PyTreeRestore(
      item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
      partial_restore=True)
  # Another run's folder: damaged steps are reported and skipped, never moved.
  restored, step, failed = _first_restorable(
      steps, lambda s: os.path.join(directory, str(s)), lambda s: manager.restore(s, args=args))
  manager.close()
  faults = "; ".join(f"step {s}: {detail}" for s, _, detail in failed)
  if step is None:
    raise CheckpointDamaged(f"--config.resume={directory}: no checkpoint there restores "
                            f"({faults}). Pass another run's workdir.")
  if failed:
    logging.warning("--config.resume=%s: skipped checkpoints that do not restore (%s); using "
                    "step %d.", directory, faults, step)
  return restored["params"], step
