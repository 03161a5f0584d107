"""Nested parameter dicts <-> flat {"a/b/c": leaf} dicts."""

from __future__ import annotations

from typing import Any, Mapping


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
  """Nested dict -> {"a/b/c": leaf}."""
  out = {}
  for k, v in tree.items():
    path = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, path + "/"))
    else:
      out[path] = v
  return out


def unflatten(flat: Mapping[str, Any]) -> dict:
  """{"a/b/c": leaf} -> nested dict."""
  out: dict = {}
  for path, v in flat.items():
    node = out
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out
