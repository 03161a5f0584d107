"""Model locations: local directories or Hugging Face hub ids, resolved without hanging.

Every model field in axk (BERT weights, CLAP, AST, the generator, the span detector) takes a
local directory (used as is) or a hub id. A hub id is looked up in the local hub cache
first; it is downloaded only when the hub answers a short connection probe, so an offline
machine fails in seconds, with a message saying which flag takes a local directory, instead
of retrying for minutes. `fingerprint` identifies a model directory by content, for
manifests and cache keys. Imports neither torch nor jax.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import urllib.parse
from typing import Sequence

logger = logging.getLogger(__name__)

# Seconds to wait for the hub before declaring the machine offline.
PROBE_TIMEOUT_S = 3.0
# Weights for other frameworks (stable-audio-open also ships a multi-GB training
# checkpoint): never needed by transformers/diffusers loading in PyTorch.
NOT_PYTORCH = ("*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.tflite", "*.ot")
_JSON_LIMIT = 1 << 20  # hash the content of JSON files up to this size


class ModelNotAvailable(RuntimeError):
  """A model that is neither a local directory nor reachable on the hub."""


def offline() -> bool:
  return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
             for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable() -> bool:
  endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
  host = urllib.parse.urlparse(endpoint).hostname or "huggingface.co"
  try:
    with socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S):
      return True
  except OSError:
    return False


def resolve(name_or_path: str, what: str = "model", *,
            allow_patterns: Sequence[str] | None = None,
            ignore_patterns: Sequence[str] | None = None, hint: str = "") -> str:
  """Returns a local directory holding `name_or_path`.

  Args:
    name_or_path: a local directory, or a hub id such as `laion/clap-htsat-fused`.
    what: the config field, for error messages (e.g. `models.clap`, `model.init`).
    allow_patterns, ignore_patterns: which files of a hub repository to download.
    hint: an extra sentence for the offline error (e.g. an offline variant to use).

  Raises:
    ModelNotAvailable: a path that is not a directory; or not in the local hub cache while
      the hub cannot be reached (or `HF_HUB_OFFLINE` is set).
  """
  path = os.path.expanduser(str(name_or_path))
  if os.path.isdir(path):
    return path
  if os.path.exists(path) or path.startswith((".", "/", "~")) or path.count("/") > 1:
    raise ModelNotAvailable(f"--config.{what}={name_or_path}: directory does not exist.")
  advice = (f"download it where there is a network (`huggingface-cli download {name_or_path} "
            f"--local-dir DIR`) and pass --config.{what}=DIR" + (f"; {hint}" if hint else ""))
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ModelNotAvailable(f"--config.{what}={name_or_path!r} is not a local directory and "
                            f"huggingface_hub is not installed; {advice}.") from e
  kwargs = dict(allow_patterns=list(allow_patterns) if allow_patterns else None,
                ignore_patterns=list(ignore_patterns) if ignore_patterns else None)
  try:
    return huggingface_hub.snapshot_download(name_or_path, local_files_only=True, **kwargs)
  except Exception:  # pylint: disable=broad-except
    pass  # Not cached: try the network below.
  if offline() or not hub_reachable():
    raise ModelNotAvailable(f"Cannot get {name_or_path!r} (--config.{what}): not a local "
                            f"directory, not in the hub cache, and the hub is not reachable; "
                            f"{advice}.")
  logger.info("downloading %s from the hub", name_or_path)
  try:
    return huggingface_hub.snapshot_download(name_or_path, etag_timeout=PROBE_TIMEOUT_S,
                                             **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    raise ModelNotAvailable(f"--config.{what}={name_or_path!r}: download failed ({e}); "
                            f"{advice}.") from e


def fingerprint(path: str) -> str:
  """A short hash of a model directory: JSON file contents, weight file names and sizes.

  Names are relative to `path`, so a copied or moved model keeps its fingerprint.
  """
  h = hashlib.sha256()
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(files):
      if name.startswith("."):
        continue
      full = os.path.join(root, name)
      rel = os.path.relpath(full, path)
      size = os.path.getsize(full)
      h.update(f"{rel}\0{size}\0".encode())
      if name.endswith((".json", ".txt", ".model")) and size <= _JSON_LIMIT:
        with open(full, "rb") as f:
          h.update(f.read())
  return h.hexdigest()[:16]


def describe(name_or_path: str, path: str) -> dict[str, str]:
  """Manifest entry for a model: as configured, where it was found, fingerprint."""
  return {"name": str(name_or_path), "path": os.path.abspath(path),
          "fingerprint": fingerprint(path)}


def stable_json(obj) -> str:
  """Canonical JSON for hashing (sorted keys, no whitespace)."""
  return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj, n: int = 16) -> str:
  """Hex sha256 of `stable_json(obj)`, truncated to `n` characters."""
  return hashlib.sha256(stable_json(obj).encode()).hexdigest()[:n]
