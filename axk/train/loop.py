"""The training loop every axk model goes through.

A run plugs in as an `Experiment` (below): its parameters, loss, predictions and metrics. The loop
owns everything else: the mesh and shardings, the optimizer and freezing, the resumable input
order, checkpoints and resume, NaN/Inf stops, preemption, progress, metrics and results.

Resume order: a checkpoint in this workdir, then `config.resume` (another run's parameters),
then the experiment's pretrained weights (`config.model.init`), then random initialisation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from typing import Any, Mapping, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from axk.train import checkpoint as ckpt_lib
from axk.train import data as data_lib
from axk.train import metrics as metrics_lib
from axk.train import optim
from axk.train import sharding
from axk.train.progress import StepBar
from axk.utils import files
from axk.utils.tree import flatten, unflatten


class Experiment(Protocol):
  """What a run gives the loop: a model, its data and its metrics.

  Attributes:
    name: used in titles and file names.
    train_arrays: training rows (dict of numpy arrays, as `axk.data.encode` makes them).
    eval_arrays: `{"<task>/<split>": {view: arrays}}` to evaluate; a view is one encoding of
      the split's examples (e.g. the paper protocol's inputs and the candidates' inputs).
    selection: the metric that picks the best checkpoint, `"<task>/<split>/<metric>"` or
      `"mean/<split>/<metric>"` (mean over tasks), higher is better.
  """

  name: str
  train_arrays: Mapping[str, np.ndarray]
  eval_arrays: Mapping[str, Mapping[str, np.ndarray]]
  selection: str
  # Optional `labels`: entries put first in results.json (e.g. `oracle`: what the run's
  # inputs were, when they were not what its results would otherwise be read as).

  def init_params(self, rng: jax.Array) -> dict:
    """Random parameters (also traced abstractly for shapes)."""

  def logical_axes(self) -> dict:
    """Logical PartitionSpecs with the structure of the parameters."""

  def pretrained_params(self) -> dict | None:
    """Host parameters from pretrained weights, or None to start from scratch."""

  def loss(self, params: dict, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
    """Scalar loss and auxiliary scalars (jittable)."""

  def predict(self, params: dict, batch: dict) -> dict:
    """Per-row outputs (jittable); leading axis = batch rows."""

  def evaluate(self, key: str, views: Mapping[str, Mapping[str, np.ndarray]],
               outputs: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, float]:
    """Metrics of one eval set from its views' arrays and all their rows' outputs (host)."""

  def finish(self, params: dict, workdir: str, outputs: Mapping[str, Mapping]) -> list[str]:
    """Writes predictions and exports (process 0); returns notes for results.md."""


# results.json: `results[task][split][metric]` plus this key, the step the final parameters
# come from and its selection metric.
SELECTION_KEY = "selection"


class NonFiniteError(FloatingPointError):
  pass


@dataclasses.dataclass
class _Stop:
  """Set by SIGTERM or the first Ctrl-C: finish the step, save, exit cleanly."""

  requested: bool = False
  signame: str = ""

  def __call__(self, signum, frame):
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt  # A second Ctrl-C: stop now.
    self.requested, self.signame = True, signal.Signals(signum).name
    logging.warning("%s received: saving a checkpoint and stopping after this step.",
                    self.signame)


def _install(stop: _Stop):
  previous = {}
  for sig in (signal.SIGTERM, signal.SIGINT):
    try:
      previous[sig] = signal.signal(sig, stop)
    except ValueError:  # Not the main thread (e.g. inside some test runners).
      pass
  return previous


def _gather(tree):
  """Global (possibly sharded, possibly multi-host) arrays -> host numpy."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def _any_process(flag: bool) -> bool:
  """Whether `flag` is set on any process; every process gets the same answer.

  A signal reaches the processes of a job at different steps; deciding alone would have one
  process save (a collective) while another runs the next train step, and both would hang.
  """
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def selection_value(results: Mapping[str, Mapping[str, Mapping[str, float]]],
                    selection: str) -> float:
  task, split, metric = selection.split("/")
  if task == "mean":
    values = [s[split][metric] for s in results.values() if split in s and metric in s[split]]
    return float(np.mean(values)) if values else float("nan")
  return float(results[task][split][metric])


# The start `Trainer.init_state` names when it restored this workdir's own checkpoint.
CHECKPOINT_SOURCE = "checkpoint step"


class Trainer:
  """Builds the sharded train/eval steps of an experiment and runs them."""

  def __init__(self, config, workdir: str, experiment: Experiment, devices=None):
    self.config, self.workdir, self.experiment = config, workdir, experiment
    tc = config.train
    self.mesh = sharding.make_mesh(dict(config.mesh.shape), devices)
    self.rules = sharding.rules_of(config.mesh.rules)
    # Before the batches: each process reads the rows that its devices hold in this sharding.
    self.batch_sharding = sharding.batch_sharding(self.mesh, self.rules)
    # epochs = 0: evaluation of the starting parameters only (e.g. a pretrained baseline).
    self.batches = data_lib.TrainBatches(
        experiment.train_arrays, batch_size=tc.batch_size, epochs=tc.epochs, seed=config.seed,
        sharding=self.batch_sharding, group_by_length=tc.get("group_by_length", 0)
    ) if tc.epochs else None
    self.total_steps = len(self.batches) if self.batches else 0
    self.tx, self.lr = optim.make(tc, self.total_steps)
    self.rng = jax.random.key(config.seed)

    abstract = jax.eval_shape(experiment.init_params, self.rng)
    flat_abstract = flatten(abstract)
    self.trainable = optim.trainable_paths(flat_abstract, tc.trainable, tc.frozen)
    param_sh = sharding.logical_to_sharding(experiment.logical_axes(), self.mesh, self.rules,
                                            abstract)
    flat_sh = flatten(param_sh)
    train_sh = {k: flat_sh[k] for k in self.trainable}
    abstract_opt = jax.eval_shape(self.tx.init, {k: flat_abstract[k] for k in self.trainable})
    rep = sharding.replicated(self.mesh)
    opt_sh = optax.tree_utils.tree_map_params(
        self.tx, lambda _, s: s, abstract_opt, train_sh, transform_non_params=lambda _: rep,
        is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    self.param_sharding = param_sh
    self.state_sharding = {"step": rep, "params": param_sh, "opt": opt_sh}
    abstract_state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract,
                      "opt": abstract_opt}
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
        self.state_sharding)
    self.train_step = _Seeded(jax.jit(
        self._train_step, in_shardings=(self.state_sharding, self.batch_sharding, rep),
        out_shardings=(self.state_sharding, rep), donate_argnums=0), self.rng)
    self.predict_step = jax.jit(experiment.predict, in_shardings=(param_sh, self.batch_sharding),
                                out_shardings=self.batch_sharding)
    n_train = sum(int(np.prod(flat_abstract[k].shape)) for k in self.trainable)
    n_all = sum(int(np.prod(v.shape)) for v in flat_abstract.values())
    logging.info("Parameters: %d, trained: %d (%d tensors); mesh %s; %d steps",
                 n_all, n_train, len(self.trainable), dict(self.mesh.shape), self.total_steps)

  # -- steps -------------------------------------------------------------------------------
  def _train_step(self, state, batch, seed_rng):
    step = state["step"]
    rng = jax.random.fold_in(seed_rng, step)
    flat = flatten(state["params"])
    train = {k: flat[k] for k in self.trainable}

    def loss_fn(train):
      return self.experiment.loss(unflatten({**flat, **train}), batch, rng)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(train)
    updates, opt = self.tx.update(grads, state["opt"], train)
    train = optax.apply_updates(train, updates)
    new_state = {"step": step + 1, "params": unflatten({**flat, **train}), "opt": opt}
    scalars = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               "learning_rate": self.lr(step), **aux}
    return new_state, scalars

  # -- state -------------------------------------------------------------------------------
  def _put_params(self, params) -> dict:
    return jax.device_put(params, self.param_sharding)

  def init_state(self, checkpoints: ckpt_lib.Checkpoints) -> tuple[dict, str]:
    """The starting state and where it came from (see the module docstring)."""
    if checkpoints.latest_step() is not None:
      # The newest step that restores; damaged newer ones are moved aside with a warning.
      state, step = checkpoints.restore_latest(self.abstract_state)
      return state, f"{CHECKPOINT_SOURCE} {step}"
    if self.config.get("resume"):
      params, step = ckpt_lib.restore_params_from(self.config.resume,
                                                  self.abstract_state["params"])
      source = f"--config.resume={self.config.resume} (step {step})"
    else:
      host = self.experiment.pretrained_params()
      if host is not None:
        params, source = self._put_params(host), "pretrained weights"
      else:
        with sharding.activate(self.mesh, self.rules):
          params = jax.jit(self.experiment.init_params, out_shardings=self.param_sharding)(self.rng)
        source = "random initialisation"
    flat = flatten(params)
    opt = jax.jit(self.tx.init, out_shardings=self.state_sharding["opt"])(
        {k: flat[k] for k in self.trainable})
    step = jax.device_put(jnp.zeros((), jnp.int32), self.state_sharding["step"])
    return {"step": step, "params": params, "opt": opt}, source

  # -- evaluation --------------------------------------------------------------------------
  def predict(self, params, arrays, desc: str = "eval") -> dict[str, np.ndarray]:
    """Outputs for every row of `arrays`, in order, on the host."""
    chunks = []
    n = data_lib.num_rows(arrays)
    batches = data_lib.eval_batches(arrays, self.config.train.eval_batch_size,
                                    sharding=self.batch_sharding)
    total = -(-n // self.config.train.eval_batch_size)
    with sharding.activate(self.mesh, self.rules):
      for batch in StepBar(batches, total=total, desc=desc, unit="batch", leave=False,
                           disable=not metrics_lib.is_writer() or total < 4):
        valid = batch.pop("valid")
        out = self.predict_step(params, sharding.global_batch(batch, self.batch_sharding))
        out = _gather(out)
        keep = np.asarray(_gather(sharding.global_batch({"v": valid}, self.batch_sharding))["v"])
        chunks.append({k: np.asarray(v)[keep.astype(bool)] for k, v in out.items()})
    return {k: _concat([c[k] for c in chunks]) for k in chunks[0]} if chunks else {}

  def evaluate(self, params, keys) -> tuple[dict, dict]:
    """results[task][split] = metrics, and the raw outputs, for the eval sets in `keys`."""
    results, outputs = {}, {}
    for key in keys:
      views = self.experiment.eval_arrays[key]
      outputs[key] = {view: self.predict(params, arrays, f"eval {key} {view}")
                      for view, arrays in views.items()}
      task, split = key.split("/")
      results.setdefault(task, {})[split] = self.experiment.evaluate(key, views, outputs[key])
    return results, outputs


class _Seeded:
  """A jitted step called as `step(state, batch)` with the run's key as its last argument:
  an argument, not a constant of the program, so that runs with other seeds reuse the
  compiled program (JAX's persistent compilation cache keys on the program)."""

  def __init__(self, jitted, rng):
    self.jitted, self.rng = jitted, rng

  def __call__(self, state, batch):
    return self.jitted(state, batch, self.rng)

  def lower(self, state, batch):
    """The jitted step lowered; its compiled form takes (state, batch, rng)."""
    return self.jitted.lower(state, batch, self.rng)


def _concat(chunks: list[np.ndarray]) -> np.ndarray:
  """Concatenates batch outputs whose axis 1 (tokens) may differ by bucket: pads with 0."""
  if chunks[0].ndim >= 2:
    width = max(c.shape[1] for c in chunks)
    chunks = [np.pad(c, [(0, 0), (0, width - c.shape[1])] + [(0, 0)] * (c.ndim - 2))
              for c in chunks]
  return np.concatenate(chunks)


def _example_ids(batch: Mapping[str, np.ndarray], ids: list[str] | None) -> list[str]:
  rows = batch.get("example_index")
  if rows is None:
    return []
  return [ids[i] if ids else str(i) for i in np.asarray(rows).tolist()]


class _FiniteChecks:
  """Train scalars still on the device, checked for NaN/Inf when they are fetched.

  The loop adds each step's scalars as it dispatches the step and flushes at log steps and
  before every checkpoint, so no checkpoint follows a step not known to be finite. A flush
  fetches everything pending in one transfer and raises at the first bad step, naming it, its
  batch's example ids and the last checkpoint known to be good.
  """

  def __init__(self, ids: list[str] | None, checkpoints: ckpt_lib.Checkpoints):
    self.ids, self.checkpoints = ids, checkpoints
    self.pending: list[tuple[int, dict, np.ndarray | None]] = []

  def add(self, step: int, scalars: dict, local: Mapping[str, np.ndarray]) -> None:
    self.pending.append((step, scalars, local.get("example_index")))

  def flush(self) -> list[dict]:
    """Host scalars of the pending steps, in order; raises NonFiniteError at the first bad one."""
    if not self.pending:
      return []
    fetched = jax.device_get([s for _, s, _ in self.pending])
    steps = self.pending
    self.pending = []
    for (step, _, rows), scalars in zip(steps, fetched):
      if not all(np.isfinite(scalars[k]) for k in ("loss", "grad_norm")):
        last = self.checkpoints.latest_step()
        saved = (f"the last good checkpoint is step {last}, nothing was saved after it"
                 if last is not None else "no checkpoint was saved")
        raise NonFiniteError(
            f"Step {step}: loss={scalars['loss']}, grad_norm={scalars['grad_norm']} are not "
            f"finite; batch examples: {_example_ids({'example_index': rows}, self.ids)}; "
            f"{saved}.")
    return fetched


# config.json: where the run's parameters first came from (a resumed run keeps its origin).
STARTED_FROM_KEY = "started_from"
# Fields that do not change what a run computes: a finished run is not run again for them.
_NOT_COMPARED = ("train.reevaluate", "jax_cache_dir")


def _fields(tree: Mapping, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping) and value:
      out.update(_fields(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def config_change(config, workdir: str) -> str:
  """The first field in which `config` differs from the one `workdir/config.json` recorded
  ("field: old -> new"), or "" when they are the same."""
  saved = files.read_json(os.path.join(workdir, "config.json"), {})
  now = json.loads(json.dumps(config.to_dict(), default=files.jsonable))
  old, new = _fields({k: saved.get(k) for k in now}), _fields(now)
  for field in sorted(set(old) | set(new)):
    if field not in _NOT_COMPARED and old.get(field) != new.get(field):
      return f"{field}: {old.get(field)!r} -> {new.get(field)!r}"
  return ""


def finished_results(config, workdir: str) -> dict | None:
  """The results of the finished run in `workdir` (its `results.json`, by task, then split)
  when it ran with this config, else None (no results yet, another config, or
  `train.reevaluate`). A finished run is not trained or evaluated again."""
  saved = files.read_json(os.path.join(workdir, "results.json"), {})
  if not saved or config.train.get("reevaluate"):
    return None
  change = config_change(config, workdir)
  if change:
    logging.info("%s: finished with another config (%s); it continues with this one.",
                 workdir, change)
    return None
  # `data.tasks` of the masked-word and span runs, `data.task` of a sentence run.
  names = config.data.tasks if "tasks" in config.data else (config.data.task,)
  results = {t: saved[t] for t in names if t in saved}
  if not results:
    return None
  logging.info("%s: finished before; its results are kept (--config.train.reevaluate=True "
               "evaluates it again).", workdir)
  return results


def train_and_evaluate(config, workdir: str, experiment: Experiment,
                       record: Mapping[str, Any] | None = None,
                       stamp: Mapping[str, Any] | None = None) -> dict:
  """Trains `experiment` as `config` says, evaluates, writes everything into `workdir`.

  `config.json` holds `config` and, beside it, the entries of `record` (what the run's
  stages resolved, say) and of `stamp` (what the caller stamps on every file of the run:
  the revisions it reads, `axk.provenance`). Returns the results dict
  (`results[task][split][metric]`), also written to `results.json` (with the selected step
  under `SELECTION_KEY`, and `stamp`) and `results.md`. It trains and evaluates whatever the
  workdir holds: a run skips a finished one with `finished_results` before building its
  experiment.
  """
  os.makedirs(workdir, exist_ok=True)
  stamp = dict(stamp or {})
  # Where a resumed run first started, from the config.json it wrote then.
  origin = files.read_json(os.path.join(workdir, "config.json"), {}).get(STARTED_FROM_KEY)
  metrics_lib.write_json(os.path.join(workdir, "config.json"),
                         {**config.to_dict(), **(record or {}), **stamp,
                          **({STARTED_FROM_KEY: origin} if origin else {})})
  tc = config.train
  trainer = Trainer(config, workdir, experiment)
  checkpoints = ckpt_lib.Checkpoints(os.path.join(workdir, "checkpoints"), keep=tc.keep,
                                     best_metric="selection")
  writer = metrics_lib.MetricWriter(workdir)
  state, source = trainer.init_state(checkpoints)
  start = int(jax.device_get(state["step"]))
  if source.startswith(CHECKPOINT_SOURCE):  # Resumed: the run itself started elsewhere.
    origin = origin or "an unrecorded start"
    logging.info("Starting at step %d of %d from %s (the run started from %s).", start,
                 trainer.total_steps, source, origin)
    source = f"{origin}; resumed from {source}"
  else:
    origin = source
    logging.info("Starting at step %d of %d from %s.", start, trainer.total_steps, source)
  metrics_lib.write_json(os.path.join(workdir, "config.json"),
                         {**config.to_dict(), **(record or {}), **stamp,
                          STARTED_FROM_KEY: origin})
  steps_per_epoch = trainer.batches.steps_per_epoch if trainer.batches else 1.0
  eval_every = tc.eval_every or max(1, int(steps_per_epoch))
  dev_keys = [k for k in experiment.eval_arrays if k.endswith("/" + tc.selection_split)]
  train_ids = getattr(experiment, "train_ids", None)

  stop = _Stop()
  previous = _install(stop)
  # Its rate and ETA leave out the first step, which compiles.
  bar = StepBar(total=trainer.total_steps, initial=start, desc=experiment.name, unit="step",
                disable=not metrics_lib.is_writer(), dynamic_ncols=True)
  checks = _FiniteChecks(train_ids, checkpoints)
  pending: list[dict] = []
  interrupted = False
  t0 = time.time()
  try:
    with sharding.activate(trainer.mesh, trainer.rules):
      batches = data_lib.to_device(trainer.batches.iterate(start) if trainer.batches else (),
                                   lambda local: sharding.global_batch(
                                       local, trainer.batch_sharding))
      item = next(batches, None)
      while item is not None:
        step, local, batch = item
        # Dispatched, not awaited: the scalars stay on the device until a result is needed.
        state, scalars = trainer.train_step(state, batch)
        checks.add(step, scalars, local)
        done = step + 1
        # The host syncs (fetches scalars, and with several processes agrees on stopping)
        # only at log steps, evaluations and checkpoints: in between it keeps feeding the
        # device. A single process reads its own stop flag every step, which costs nothing.
        log_now = done % tc.log_every == 0 or done == trainer.total_steps
        eval_now = done % eval_every == 0 and done < trainer.total_steps
        save_now = eval_now or bool(tc.checkpoint_every and done % tc.checkpoint_every == 0)
        signalled = False
        if jax.process_count() == 1 or log_now or save_now:
          signalled = _any_process(stop.requested)
        # Read before the next batch is fetched, so a signal that arrives while it is being
        # prepared stops the run after that next step, as without prefetching.
        item = next(batches, None)  # Prepared and transferred while this step runs.
        bar.update(1)
        if log_now:
          pending.extend(checks.flush())
          mean = {f"train/{k}": float(np.mean([p[k] for p in pending])) for k in pending[0]}
          mean["train/epoch"] = done / steps_per_epoch
          mean["train/steps_per_s"] = len(pending) / max(time.time() - t0, 1e-9)
          writer.write(done, mean)
          bar.set_postfix(loss=f"{mean['train/loss']:.4f}")
          pending, t0 = [], time.time()
        if eval_now:
          pending.extend(checks.flush())  # Never a checkpoint after an unchecked step.
          results, _ = trainer.evaluate(state["params"], dev_keys)
          value = selection_value(results, experiment.selection)
          writer.write(done, {f"{t}/{s}/{m}": v for t, r in results.items()
                              for s, ms in r.items() for m, v in ms.items()})
          checkpoints.save(done, state, metrics={"selection": value})
        elif save_now:
          pending.extend(checks.flush())
          checkpoints.save(done, state)
        if signalled or (tc.stop_at_step and done >= tc.stop_at_step
                         and done < trainer.total_steps):
          pending.extend(checks.flush())
          if checkpoints.latest_step() != done:
            checkpoints.save(done, state)
          interrupted = True
          logging.warning("Stopped at step %d (%s); rerun the same command to continue.", done,
                          stop.signame or ("a signal to another process" if signalled
                                           else "train.stop_at_step"))
          break
      checks.flush()
  finally:
    bar.close()
    for sig, handler in previous.items():
      signal.signal(sig, handler)

  if interrupted:
    writer.close()
    checkpoints.close()
    return {}

  # Final evaluation: dev selects between the last and the best evaluated checkpoint.
  with sharding.activate(trainer.mesh, trainer.rules):
    dev_results, dev_outputs = trainer.evaluate(state["params"], dev_keys)
    final_value = selection_value(dev_results, experiment.selection)
    if trainer.total_steps and checkpoints.latest_step() != trainer.total_steps:
      checkpoints.save(trainer.total_steps, state, metrics={"selection": final_value})
    best = checkpoints.best_step()
    params, chosen, chosen_value = state["params"], trainer.total_steps, final_value
    if tc.select_best and best is not None and best != trainer.total_steps:
      chosen_value = float(checkpoints.metrics(best)["selection"])
      params = checkpoints.restore(trainer.abstract_state, best)["params"]
      chosen = best
      results, outputs = trainer.evaluate(params, list(experiment.eval_arrays))
    else:  # The last parameters: their dev results are in hand, evaluate the rest.
      rest_results, outputs = trainer.evaluate(
          params, [k for k in experiment.eval_arrays if k not in dev_keys])
      outputs.update(dev_outputs)
      results = {}
      for key in experiment.eval_arrays:  # In the experiment's order of tasks and splits.
        t, split = key.split("/")
        part = dev_results if key in dev_keys else rest_results
        results.setdefault(t, {})[split] = part[t][split]
  writer.write(trainer.total_steps, {f"final/{t}/{s}/{m}": v for t, r in results.items()
                                     for s, ms in r.items() for m, v in ms.items()})
  host_params = _gather(params)
  how = "best on" if tc.select_best else "last step; best-on-dev selection off, metric"
  notes = [f"Parameters from step {chosen} of {trainer.total_steps} ({how} "
           f"{experiment.selection} = {chosen_value:.4g}); started from {source}."]
  notes += experiment.finish(host_params, workdir, outputs) or []
  selection = {"step": int(chosen), "total_steps": int(trainer.total_steps),
               "metric": experiment.selection, "value": chosen_value,
               "select_best": bool(tc.select_best)}
  metrics_lib.write_json(os.path.join(workdir, "results.json"),
                         {**getattr(experiment, "labels", {}), **results,
                          SELECTION_KEY: selection, **stamp})
  metrics_lib.write_text(os.path.join(workdir, "results.md"),
                         metrics_lib.results_markdown(experiment.name, results, notes))
  writer.close()
  checkpoints.close()
  if jax.process_count() > 1:
    # Process 0 writes the files; no process returns before they exist.
    multihost_utils.sync_global_devices("axk: results written")
  logging.info("Results written to %s", os.path.join(workdir, "results.md"))
  return results
