"""The one place where logical axis names meet a device mesh.

Models name their axes (`batch`, `length`, `embed`, `heads`, `kv`, `mlp`, `vocab`, ...); the
config holds the mesh shape and the rules that map logical names to mesh axes
(`configs/common.py`: t5x's minimal set, batch -> data; vocab, mlp, heads -> model). Names
without a rule are replicated. Everything here derives shardings from those two, so a new
mesh or rule set never touches model code.
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


def make_mesh(shape: Mapping[str, int] | Sequence[tuple[str, int]],
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with named axes; one size may be -1 (all remaining devices).

  Axes are `Auto`, so shardings propagate through ops without explicit annotations.
  """
  items = list(shape.items()) if isinstance(shape, Mapping) else [tuple(x) for x in shape]
  names = tuple(n for n, _ in items)
  sizes = [int(s) for _, s in items]
  devices = list(jax.devices() if devices is None else devices)
  if sizes.count(-1) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {dict(items)}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not divide into mesh {dict(items)}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"Mesh {dict(zip(names, sizes))} needs {int(np.prod(sizes))} devices, "
                     f"{len(devices)} are available")
  grid = np.asarray(devices, dtype=object).reshape(sizes)
  return Mesh(grid, names, axis_types=(AxisType.Auto,) * len(names))


def rules_of(config_rules) -> tuple[tuple[str, Any], ...]:
  return tuple((str(a), None if b is None or b == "" else b) for a, b in config_rules)


def logical_to_sharding(logical: Any, mesh: Mesh, rules) -> Any:
  """A tree of logical PartitionSpecs -> a tree of NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical, mesh, rules_of(rules))


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
