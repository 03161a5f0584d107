"""Model locations: local directories or hub ids, resolved without hanging offline.

Every model field of the features config takes either a local directory (used as is) or a
Hugging Face hub id. A hub id is looked up in the local cache first; it is downloaded only
when the hub answers a short connection probe, so an offline machine fails in seconds with
a message that says how to get the files, instead of retrying for minutes.

`fingerprint` identifies a model directory by the content of its small JSON files (configs,
tokenizer and scheduler settings) and the names and sizes of its weight files; it goes
into the features manifest and into cache keys, so that changed weights invalidate caches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import urllib.parse

logger = logging.getLogger(__name__)

# Seconds to wait for the hub before declaring the machine offline.
PROBE_TIMEOUT_S = 3.0
_JSON_LIMIT = 1 << 20  # hash the content of JSON files up to this size
# Weights for other frameworks (stable-audio-open also ships a multi-GB training
# checkpoint): never needed by transformers/diffusers loading in PyTorch.
_NOT_PYTORCH = ["*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.tflite", "*.ot"]


class ModelNotAvailable(RuntimeError):
  """A model that is neither a local directory nor reachable on the hub."""


def _offline() -> bool:
  return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
             for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_reachable() -> bool:
  endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
  host = urllib.parse.urlparse(endpoint).hostname or "huggingface.co"
  try:
    with socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S):
      return True
  except OSError:
    return False


def resolve(name_or_path: str, what: str = "model") -> str:
  """Returns a local directory holding `name_or_path`.

  Args:
    name_or_path: a local directory, or a hub id such as `laion/clap-htsat-fused`.
    what: the config field, for error messages (e.g. `models.clap`).

  Raises:
    ModelNotAvailable: not a directory, not in the local hub cache, and the hub cannot be
      reached (or `HF_HUB_OFFLINE` is set).
  """
  path = os.path.expanduser(str(name_or_path))
  if os.path.isdir(path):
    return path
  if os.path.exists(path) or path.startswith((".", "/", "~")):
    raise ModelNotAvailable(f"{what}={name_or_path!r}: not a directory")
  hint = (f"download it where there is a network (`huggingface-cli download {name_or_path} "
          f"--local-dir DIR`) and pass --config.{what}=DIR")
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ModelNotAvailable(f"{what}={name_or_path!r} is not a local directory and "
                            f"huggingface_hub is not installed; {hint}") from e
  try:
    return huggingface_hub.snapshot_download(name_or_path, local_files_only=True)
  except Exception:  # pylint: disable=broad-except
    pass  # Not cached: try the network below.
  if _offline():
    raise ModelNotAvailable(f"{what}={name_or_path!r} is not a local directory, not in the "
                            f"hub cache, and HF_HUB_OFFLINE is set; {hint}")
  if not _hub_reachable():
    raise ModelNotAvailable(f"{what}={name_or_path!r} is not a local directory or cached, "
                            f"and the hub cannot be reached (offline?); {hint}")
  logger.info("downloading %s from the hub", name_or_path)
  try:
    return huggingface_hub.snapshot_download(name_or_path, etag_timeout=PROBE_TIMEOUT_S,
                                             ignore_patterns=_NOT_PYTORCH)
  except Exception as e:  # pylint: disable=broad-except
    raise ModelNotAvailable(f"{what}={name_or_path!r}: download failed ({e}); {hint}") from e


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
  """Manifest entry for a model: as configured, where it was found, fingerprint."""
  return {"name": str(name_or_path), "path": os.path.abspath(path),
          "fingerprint": fingerprint(path)}


def stable_json(obj) -> str:
  """Canonical JSON for hashing (sorted keys, no whitespace)."""
  return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj, n: int = 16) -> str:
  """Hex sha256 of `stable_json(obj)`, truncated to `n` characters."""
  return hashlib.sha256(stable_json(obj).encode()).hexdigest()[:n]
