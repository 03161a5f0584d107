"""Atomic file writes: the one way axk writes an output file (and JSON lines read back,
`json_lines`).

A reader sees either the old file or the whole new one, never a partial write: the content
goes to a temporary file in the same folder (unique per process, so concurrent writers never
share one), is flushed to disk, then renamed over the target with `os.replace`. An exception
leaves the target untouched and removes the temporary file.

Multi-process jobs: files every process would write identically are written by process 0
alone; `writer_only` turns a write function into one that does nothing on other processes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from typing import Any, Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path to write; on success it replaces `path`.

  For writers that need a file name (np.savez, soundfile, safetensors). Parent folders are
  created. The temporary name keeps the target's extension (some writers append one).
  """
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  stem, ext = os.path.splitext(os.path.basename(path))
  tmp = os.path.join(folder, f".{stem}.tmp-{os.getpid()}{ext}")
  try:
    yield tmp
    if os.path.isfile(tmp):
      with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
  """Yields a temporary folder to fill; on success it takes the place of `path`.

  An existing `path` is first renamed aside and removed only once the new folder is in
  place, so a crash leaves either the old or the new folder (plus, at worst, a `.old-*`
  sibling), never a half-written one.
  """
  import shutil
  import tempfile
  path = os.path.abspath(os.fspath(path))
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
  try:
    yield tmp
    old = None
    if os.path.exists(path):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
      os.replace(path, os.path.join(old, "x"))
    os.replace(tmp, path)
    if old:
      shutil.rmtree(old, ignore_errors=True)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: str, data: bytes) -> None:
  """Atomically writes `data` to `path`."""
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    f.write(data)


def write_text(path: str, text: str) -> None:
  """Atomically writes `text` (UTF-8) to `path`."""
  write_bytes(path, text.encode("utf-8"))


def jsonable(x):
  """What `write_json` writes for a value JSON has no type for."""
  if hasattr(x, "tolist"):
    return x.tolist()
  if isinstance(x, (set, tuple)):
    return list(x)
  return str(x)


def write_json(path: str, payload: Any, *, sort_keys: bool = True) -> None:
  """Atomically writes `payload` as indented JSON (NumPy values become lists)."""
  write_text(path, json.dumps(payload, indent=2, sort_keys=sort_keys, default=jsonable)
             + "\n")


def read_json(path: str, default: Any = None) -> Any:
  """The JSON value in `path`, or `default` when the file is missing, unreadable or not
  JSON (a run's own files that may not be written yet, or were cut short)."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return default


def json_lines(path: str) -> Iterator[tuple[int, Any]]:
  """(line number, value) of each non-blank line of a JSON-lines file; ValueError naming
  the file and line for a line that is not JSON (the caller checks the values' fields)."""
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        yield number, json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number}: not a JSON object ({e.msg})") from None


def sha256_file(path: str) -> str:
  """Hex sha256 of a file's content, read in blocks (checkpoints, shards, data files)."""
  import hashlib
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def is_writer() -> bool:
  """Whether this process writes the job's shared files (process 0)."""
  import jax
  return jax.process_index() == 0


def writer_only(fn: F) -> F:
  """`fn` runs on process 0 only; elsewhere the call does nothing and returns None."""

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    if not is_writer():
      return None
    return fn(*args, **kwargs)

  return wrapper  # type: ignore[return-value]
