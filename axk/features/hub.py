"""Model locations for the feature pipeline (`axk.hub.resolve`) and model fingerprints.

`fingerprint` identifies a model directory by the content of its small JSON files (configs,
tokenizer and scheduler settings) and the names and sizes of its weight files; it goes
into the features manifest and into cache keys, so that changed weights invalidate caches.
"""

from __future__ import annotations

import hashlib
import json
import os

from axk import hub
from axk.hub import ModelNotAvailable  # noqa: F401  (re-exported)

_JSON_LIMIT = 1 << 20  # hash the content of JSON files up to this size
# Weights for other frameworks (stable-audio-open also ships a multi-GB training
# checkpoint): never needed by transformers/diffusers loading in PyTorch.
_NOT_PYTORCH = ["*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.tflite", "*.ot"]


def resolve(name_or_path: str, what: str = "model") -> str:
  """A local directory for a model field (see `axk.hub.resolve`); weights of other
  frameworks (stable-audio-open also ships a multi-GB training checkpoint) are not fetched."""
  return hub.resolve(name_or_path, what, ignore_patterns=_NOT_PYTORCH)


def fingerprint(path: str) -> str:
  """A short hash of a model directory: JSON file contents, weight file names and sizes."""
  digest = hashlib.sha256()
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(files):
      if name.startswith("."):
        continue
      full = os.path.join(root, name)
      rel = os.path.relpath(full, path)
      size = os.path.getsize(full)
      digest.update(f"{rel}\0{size}\0".encode())
      if name.endswith((".json", ".txt", ".model")) and size <= _JSON_LIMIT:
        with open(full, "rb") as f:
          digest.update(f.read())
  return digest.hexdigest()[:16]


def describe(name_or_path: str, path: str) -> dict[str, str]:
  """Manifest entry for a model: as configured, where it was found, fingerprint, and its
  exact revision (hub commit or content hash, `axk.hub.describe`)."""
  return {"name": str(name_or_path), "path": os.path.abspath(path),
          "fingerprint": fingerprint(path), **hub.describe(name_or_path, path)}


def stable_json(obj) -> str:
  """Canonical JSON for hashing (sorted keys, no whitespace)."""
  return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj, n: int = 16) -> str:
  """Hex sha256 of `stable_json(obj)`, truncated to `n` characters."""
  return hashlib.sha256(stable_json(obj).encode()).hexdigest()[:n]
