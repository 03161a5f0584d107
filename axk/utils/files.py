"""Atomic file writes: the one way axk writes an output file.

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
import shutil
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
  """Yields a temporary folder to fill; on success it takes the place of folder `path`.

  A reader sees the old folder or the whole new one (the old one is moved aside, the new
  one renamed in, then the old one removed). An exception leaves `path` untouched.
  """
  path = os.path.abspath(os.fspath(path))
  parent, name = os.path.split(path)
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
  old = os.path.join(parent, f".{name}.old-{os.getpid()}")
  for stale in (tmp, old):  # left by a process with this pid that was killed
    shutil.rmtree(stale, ignore_errors=True)
  os.makedirs(tmp)
  try:
    yield tmp
    if os.path.exists(path):
      os.replace(path, old)
    os.replace(tmp, path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def write_bytes(path: str, data: bytes) -> None:
  """Atomically writes `data` to `path`."""
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    f.write(data)


def write_text(path: str, text: str) -> None:
  """Atomically writes `text` (UTF-8) to `path`."""
  write_bytes(path, text.encode("utf-8"))


def _jsonable(x):
  if hasattr(x, "tolist"):
    return x.tolist()
  if isinstance(x, (set, tuple)):
    return list(x)
  return str(x)


def write_json(path: str, payload: Any, *, sort_keys: bool = True) -> None:
  """Atomically writes `payload` as indented JSON (NumPy values become lists)."""
  write_text(path, json.dumps(payload, indent=2, sort_keys=sort_keys, default=_jsonable)
             + "\n")


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
