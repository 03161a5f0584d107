"""Part files: the results of each finished batch of spans, the unit of resumption.

`<workdir>/parts/<source>-<run key>/shard-<i>-of-<n>/part-<hash>.npz`, one per batch of
`batch_size` acquisition keys, written atomically when the batch is done; the name hashes
the batch's keys. A part that does not load (truncated, emptied, overwritten) is named in
a warning, moved aside to `<name>.damaged`, and its keys count as not done, so that the
next acquisition recomputes exactly them.
"""

from __future__ import annotations

from collections.abc import Mapping
import glob
import hashlib
import logging
import os
import zipfile
import zlib

import numpy as np

from axk.utils import files

logger = logging.getLogger(__name__)

# What np.load raises on a truncated or overwritten .npz file.
LOAD_ERRORS = (zipfile.BadZipFile, EOFError, ValueError, KeyError, OSError, zlib.error)


def shard_of(key: str, num_shards: int) -> int:
  """Which of `num_shards` workers acquires `key` (a stable hash)."""
  return int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) % num_shards


def folder(workdir: str, source: str, run_key: str) -> str:
  """The parts folder of one source's run."""
  return os.path.join(workdir, "parts", f"{source}-{run_key}")


def write_part(parts_dir: str, shard_index: int, num_shards: int, arrays: Mapping) -> str:
  """Writes one batch's results atomically; the name hashes the batch's keys (`text`)."""
  sub = os.path.join(parts_dir, f"shard-{shard_index:05d}-of-{num_shards:05d}")
  name = hashlib.sha256("\n".join(arrays["text"]).encode()).hexdigest()[:16]
  path = os.path.join(sub, f"part-{name}.npz")
  with files.atomic_path(path) as tmp:
    np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
  return path


def set_aside(path: str, error: Exception, what: str) -> None:
  """Moves a file that does not load to `<path>.damaged`, with one warning line."""
  logger.warning("%s %s does not load (%s: %s); moved to %s.damaged, recomputing it", what,
                 path, type(error).__name__, error, os.path.basename(path))
  os.replace(path, f"{path}.damaged")


def load_npz(path: str, what: str) -> dict[str, np.ndarray] | None:
  """All arrays of an .npz file, or None (after `set_aside`) when it does not load."""
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except LOAD_ERRORS as e:
    set_aside(path, e, what)
    return None


def _part_files(parts_dir: str) -> list[str]:
  return sorted(glob.glob(os.path.join(parts_dir, "shard-*", "part-*.npz")))


def read_parts(parts_dir: str) -> dict[str, dict]:
  """Key -> its results, from every part file of `parts_dir` (every worker's).

  Parts that do not load are set aside (see the module docstring); their keys are absent.
  """
  out = {}
  for path in _part_files(parts_dir):
    arrays = load_npz(path, "part file")
    if arrays is None or "text" not in arrays:
      continue
    for i, text in enumerate(arrays["text"]):
      out[str(text)] = {k: v[i] for k, v in arrays.items()}
  return out


def finished(parts_dir: str) -> set[str]:
  """Keys already in a loadable part file of `parts_dir`."""
  return set(read_parts(parts_dir))
