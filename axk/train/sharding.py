"""The one place where logical axis names meet a device mesh.

Models name their axes (`batch`, `length`, `embed`, `heads`, `kv`, `mlp`, `vocab`, ...); the
config holds the mesh shape and the rules that map logical names to mesh axes
(`configs/common.py`: t5x's minimal set, batch -> data; vocab, mlp, heads -> model). Names
without a rule are replicated. Everything here derives shardings from those two, so a new
mesh or rule set never touches model code.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


class MeshError(ValueError):
  """A mesh or batch size that cannot work on the available devices (a config fault)."""


def _shape_items(shape) -> list[tuple[str, int]]:
  items = list(shape.items()) if isinstance(shape, Mapping) else [tuple(x) for x in shape]
  return [(str(n), int(s)) for n, s in items]


def resolve_shape(shape, num_devices: int, exact: bool = True) -> dict[str, int]:
  """Mesh axis sizes with -1 resolved; `MeshError` (one line) when they cannot fit
  (`exact`: when they do not use all `num_devices`; else only when they need more)."""
  items = _shape_items(shape)
  sizes = [s for _, s in items]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise MeshError(f"--config.mesh.shape={tuple(items)}: sizes must be positive, with at "
                    "most one -1 (all remaining devices).")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % known:
      raise MeshError(f"--config.mesh.shape={tuple(items)}: {num_devices} devices do not "
                      f"divide into axes of {known}.")
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) > num_devices or (exact and int(np.prod(sizes)) != num_devices):
    raise MeshError(f"--config.mesh.shape={tuple(items)}: needs {int(np.prod(sizes))} devices, "
                    f"{num_devices} are available.")
  return dict(zip([n for n, _ in items], sizes))


def check_config(config) -> None:
  """Fails fast, before any work, when `config.mesh` cannot be built on this job's devices or
  a batch size does not divide by the mesh axes the batch is split over."""
  # Not `exact`: a Trainer may be given a subset of the devices.
  sizes = resolve_shape(config.mesh.shape, jax.device_count(), exact=False)
  axes = nn.logical_to_mesh_axes(("batch",), rules_of(config.mesh.rules))[0]
  axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  unknown = [a for a in axes if a not in sizes]
  if unknown:
    raise MeshError(f"--config.mesh.rules: batch maps to mesh axis {unknown[0]!r}, which "
                    f"--config.mesh.shape does not have ({', '.join(sizes)}).")
  split = int(np.prod([sizes[a] for a in axes]))
  for name in ("batch_size", "eval_batch_size"):
    value = int(config.train[name])
    if value % split:
      raise MeshError(f"--config.train.{name}={value}: must divide by the {split} devices the "
                      f"batch is split over (mesh {sizes}).")


def make_mesh(shape: Mapping[str, int] | Sequence[tuple[str, int]],
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with named axes; one size may be -1 (all remaining devices).

  Axes are `Auto`, so shardings propagate through ops without explicit annotations.
  """
  devices = list(jax.devices() if devices is None else devices)
  resolved = resolve_shape(shape, len(devices))
  names, sizes = tuple(resolved), list(resolved.values())
  grid = np.asarray(devices, dtype=object).reshape(sizes)
  return Mesh(grid, names, axis_types=(AxisType.Auto,) * len(names))


def rules_of(config_rules) -> tuple[tuple[str, Any], ...]:
  return tuple((str(a), None if b is None or b == "" else b) for a, b in config_rules)


def logical_to_sharding(logical: Any, mesh: Mesh, rules, shapes: Any = None) -> Any:
  """A tree of logical PartitionSpecs -> a tree of NamedShardings on `mesh`.

  With `shapes` (a tree of the same structure whose leaves have `.shape`: arrays or
  `jax.ShapeDtypeStruct`s), a dimension whose size does not divide over the mesh axes its
  name maps to is replicated instead (RoBERTa's vocabulary of 50,265 on a `model` axis of 2),
  with one log line naming the parameters; JAX refuses such a split otherwise."""
  out = nn.logical_to_mesh_sharding(logical, mesh, rules_of(rules))
  if shapes is None:
    return out
  replicated_dims = []

  def fit(path, sh, leaf):
    if not isinstance(sh, NamedSharding):
      return sh
    spec = list(sh.spec) + [None] * (len(leaf.shape) - len(sh.spec))
    for dim, axes in enumerate(spec):
      names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
      if leaf.shape[dim] % int(np.prod([mesh.shape[a] for a in names] or [1])):
        spec[dim] = None
        replicated_dims.append(f"{jax.tree_util.keystr(path)}[{dim}]={leaf.shape[dim]}")
    return NamedSharding(mesh, P(*spec))

  out = jax.tree_util.tree_map_with_path(fit, out, shapes,
                                         is_leaf=lambda x: isinstance(x, NamedSharding))
  if replicated_dims:
    logging.info("Replicated where the mesh does not divide the size: %s",
                 ", ".join(replicated_dims))
  return out


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
  """Leading (example) axis over whatever `batch` maps to; other axes replicated."""
  spec = nn.logical_to_mesh_axes(("batch",), rules_of(rules))
  return NamedSharding(mesh, P(*spec))


@contextlib.contextmanager
def activate(mesh: Mesh, rules):
  """Mesh and logical rules in scope, so `nn.with_logical_constraint` takes effect."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules_of(rules)):
    yield


def global_batch(local: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict:
  """Process-local rows of a batch -> global arrays sharded over the batch axis."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}
