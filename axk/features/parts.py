"""Part files: the results of each finished batch of spans, the unit of resumption.

`<workdir>/parts/<source>-<run key>/shard-<i>-of-<n>/part-<hash>.npz`, one per batch of
`batch_size` acquisition keys, written atomically when the batch is done; the name hashes
the batch's keys. A part that does not load (truncated, emptied, overwritten) is named in
a warning, moved aside to `<name>.damaged`, and its keys count as not done, so that the
next acquisition recomputes exactly them. Parts are read memory-mapped (`read_parts`), each
member's CRC checked.
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


def part_path(parts_dir: str, shard_index: int, num_shards: int, keys) -> str:
  """Where the part file of a batch of keys goes: its name hashes the keys."""
  sub = os.path.join(parts_dir, f"shard-{shard_index:05d}-of-{num_shards:05d}")
  name = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
  return os.path.join(sub, f"part-{name}.npz")


def write_part(parts_dir: str, shard_index: int, num_shards: int, arrays: Mapping) -> str:
  """Writes one batch's results atomically; the name hashes the batch's keys (`text`)."""
  path = part_path(parts_dir, shard_index, num_shards, arrays["text"])
  with files.atomic_path(path) as tmp:
    np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
  return path


def set_aside(path: str, error: Exception, what: str) -> None:
  """Moves a file that does not load to `<path>.damaged`, with one warning line."""
  logger.warning("%s %s does not load (%s: %s); moved to %s.damaged, recomputing it", what,
                 path, type(error).__name__, error, os.path.basename(path))
  os.replace(path, f"{path}.damaged")


def load_npz(path: str, what: str, *, mmap: bool = False) -> dict[str, np.ndarray] | None:
  """All arrays of an .npz file, or None (after `set_aside`) when it does not load.

  With `mmap`, members of `MMAP_MIN_BYTES` or more are read-only views of one memory map
  of the file (`np.savez` stores its members uncompressed) and smaller ones are copies, so
  that holding every part costs little memory; each member's CRC is still checked, by
  streaming it once.
  """
  try:
    if mmap:
      return _mmap_npz(path)
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except LOAD_ERRORS as e:
    set_aside(path, e, what)
    return None


# Members at least this large stay memory-mapped; smaller ones are copied, so that a part
# holds one map (one file descriptor) at most.
MMAP_MIN_BYTES = 1 << 20


def _mmap_npz(path: str) -> dict[str, np.ndarray]:
  out = {}
  whole = None
  with zipfile.ZipFile(path) as z, open(path, "rb") as f:
    for info in z.infolist():
      if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
        raise ValueError(f"member {info.filename} is compressed or not an array")
      with z.open(info) as member:  # reads it through once: a bad CRC raises BadZipFile
        while member.read(1 << 24):
          pass
      f.seek(info.header_offset)
      local = f.read(30)  # the local file header; name and extra field lengths at 26
      name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(
          local[28:30], "little")
      f.seek(info.header_offset + 30 + name_len + extra_len)
      read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                     (2, 0): np.lib.format.read_array_header_2_0}[np.lib.format.read_magic(f)]
      shape, fortran, dtype = read_header(f)
      if dtype.hasobject:
        raise ValueError(f"member {info.filename} holds objects")
      key = info.filename[:-len(".npy")]
      if int(np.prod(shape)) == 0:
        out[key] = np.zeros(shape, dtype)
        continue
      if whole is None:
        whole = np.memmap(path, dtype=np.uint8, mode="r")
      try:
        view = np.ndarray(shape, dtype, buffer=whole, offset=f.tell(),
                          order="F" if fortran else "C")
      except TypeError as e:  # the header promises more bytes than the file holds
        raise ValueError(f"member {info.filename}: {e}") from None
      out[key] = view if view.nbytes >= MMAP_MIN_BYTES else np.array(view)
  return out


def part_files(parts_dir: str) -> list[str]:
  """Every worker's part files under `parts_dir`."""
  return sorted(glob.glob(os.path.join(parts_dir, "shard-*", "part-*.npz")))


def read_parts(parts_dir: str, *, mmap: bool = True) -> dict[str, dict]:
  """Key -> its results, from every part file of `parts_dir` (every worker's).

  Parts that do not load are set aside (see the module docstring); their keys are absent.
  With `mmap` (the default) results are read-only views of memory-mapped parts
  (`load_npz`), so that neither the assembly nor `finished` holds every clip's AST tokens
  in memory at once (1.9 MB a clip in the full layout).
  """
  out = {}
  paths = part_files(parts_dir)
  if mmap:
    _allow_open_files(len(paths) + 256)
  for path in paths:
    arrays = load_npz(path, "part file", mmap=mmap)
    if arrays is None or "text" not in arrays:
      continue
    for i, text in enumerate(arrays["text"]):
      out[str(text)] = {k: v[i] for k, v in arrays.items()}
  return out


def _allow_open_files(n: int) -> None:
  """Raises this process's soft limit of open files towards `n` (a mapped part holds one)."""
  try:
    import resource  # pylint: disable=g-import-not-at-top
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < n:
      want = n if hard == resource.RLIM_INFINITY else min(n, hard)
      resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
  except (ImportError, ValueError, OSError):  # Not Unix, or not allowed: keep the limit.
    pass


def finished(parts_dir: str) -> set[str]:
  """Keys already in a loadable part file of `parts_dir`."""
  return set(read_parts(parts_dir))
