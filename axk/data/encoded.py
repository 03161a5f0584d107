"""A split encoded once to disk and read back a batch at a time, so that training on a
400k-pair task holds neither its texts nor its padded token arrays in host memory, and a
second start skips the tokenizer.

A split's folder (the layout of Megatron-LM's indexed datasets: ragged token files and an
offset index):

    meta.json          the key it was built for, its rows, width and columns; written last
    offsets.npy        int64 [rows + 1]: row r's tokens are [offsets[r], offsets[r + 1])
    <column>.bin       each token column (input_ids int32, token_type_ids uint8), the rows'
                       tokens back to back, unpadded
    labels.npy         per row (-1 or NaN where a split has no labels)
    index.npy          per row: its index in the source (a leaderboard file's `index`)
    ids.bin, ids.npy   the rows' ids, UTF-8 back to back, and their byte offsets

`EncodedSplit` reads it as the dict of arrays the loop batches (`axk.train.data`):
`split["input_ids"][rows]` is `[len(rows), width]` padded with the pad id,
`split["attention_mask"][rows]` comes from the row lengths. Host memory holds the per-row
index (offsets, lengths, labels, source index: about 28 bytes a row, 11 MB for 400k rows);
each row of a batch is one `pread` per column, so the token files stay out of the process's
resident memory (a memory map would count every page it touched).

A folder is written whole into a temporary sibling and moved into place
(`axk.utils.files.atomic_dir`): an interrupted build leaves no folder, and the next start
builds it again. `open_split` returns None for a folder built for another key (other source
files, tokenizer or length) or damaged since (a token file of the wrong size, an unreadable
index), which the caller then builds again.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from axk import hub
from axk.utils import files

FORMAT = 1
META = "meta.json"


def file_stamps(paths: Sequence[str]) -> list[list]:
  """[path, size, mtime_ns] of each file: a key part that changes when a source file does."""
  out = []
  for path in paths:
    st = os.stat(path)
    out.append([os.path.abspath(path), st.st_size, st.st_mtime_ns])
  return out


class Chunk:
  """Rows to append: their ids, source indices, labels and, per token column, each row's
  tokens (1-D arrays)."""

  def __init__(self, ids: Sequence[str], index: Sequence[int], labels: Sequence,
               columns: Mapping[str, Sequence[np.ndarray]]):
    self.ids, self.index, self.labels, self.columns = ids, index, labels, columns


def build(folder: str, key: Mapping, chunks: Iterable[Chunk], *, dtypes: Mapping[str, str],
          label_dtype: str, pads: Mapping[str, int], width: int) -> "EncodedSplit":
  """Writes `chunks` as a split folder for `key` and opens it.

  Args:
    dtypes: each token column's stored dtype (e.g. input_ids int32, token_type_ids uint8).
    pads: each token column's padding value when read back.
    width: the columns of a read (the longest row may be shorter: reads are cut to it).
  """
  with files.atomic_dir(folder) as tmp:
    outs = {name: open(os.path.join(tmp, f"{name}.bin"), "wb") for name in dtypes}
    lengths, labels, index, id_ends = [], [], [], []
    try:
      with open(os.path.join(tmp, "ids.bin"), "wb") as id_file:
        id_bytes = 0
        first = next(iter(dtypes))
        for chunk in chunks:
          lengths += [len(t) for t in chunk.columns[first]]
          for name, dtype in dtypes.items():
            rows = chunk.columns[name]
            if [len(t) for t in rows] != lengths[len(lengths) - len(rows):]:
              raise ValueError(f"{folder}: column {name} has rows of other lengths than "
                               f"{first}")
            if rows:
              outs[name].write(np.concatenate(rows).astype(dtype).tobytes())
          for row_id in chunk.ids:
            data = row_id.encode("utf-8")
            id_file.write(data)
            id_bytes += len(data)
            id_ends.append(id_bytes)
          labels += list(chunk.labels)
          index += list(chunk.index)
    finally:
      for f in outs.values():
        f.close()
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    np.save(os.path.join(tmp, "offsets.npy"), offsets)
    np.save(os.path.join(tmp, "labels.npy"), np.asarray(labels, label_dtype))
    np.save(os.path.join(tmp, "index.npy"), np.asarray(index, np.int64))
    np.save(os.path.join(tmp, "ids.npy"), np.asarray([0] + id_ends, np.int64))
    longest = max(lengths, default=0)
    files.write_json(os.path.join(tmp, META), {
        "format": FORMAT, "key": dict(key), "digest": hub.digest(key, 64),
        "rows": len(lengths),
        "tokens": int(offsets[-1]), "longest": longest, "width": int(max(1, min(width, longest))),
        "dtypes": dict(dtypes), "pads": {k: int(v) for k, v in pads.items()}})
  return EncodedSplit(folder)


def open_split(folder: str, key: Mapping) -> "EncodedSplit | None":
  """The split in `folder` if it was built for `key`, else None (absent, built for another
  key or format, or damaged: a file missing, cut short or unreadable, which is logged)."""
  meta = files.read_json(os.path.join(folder, META))
  if not meta or meta.get("format") != FORMAT or meta.get("digest") != hub.digest(key, 64):
    return None
  for name, dtype in meta["dtypes"].items():
    path = os.path.join(folder, f"{name}.bin")
    size = os.path.getsize(path) if os.path.isfile(path) else -1
    if size != int(meta["tokens"]) * np.dtype(dtype).itemsize:
      logging.warning("%s: %d bytes, %d expected; the split is built again.", path, size,
                      int(meta["tokens"]) * np.dtype(dtype).itemsize)
      return None
  try:
    split = EncodedSplit(folder)
  except (OSError, ValueError, KeyError, EOFError) as e:
    logging.warning("%s: unreadable (%s); the split is built again.", folder, e)
    return None
  if len(split.lengths) != split.rows or len(split.ids) != split.rows:
    logging.warning("%s: its index does not hold %d rows; the split is built again.", folder,
                    split.rows)
    return None
  return split


class _Rows:
  """A `[rows, width]` column read by rows (`col[rows]`), rows of `lengths` tokens."""

  def __init__(self, lengths: np.ndarray, width: int):
    self.lengths, self.width = lengths, width

  @property
  def shape(self) -> tuple[int, int]:
    return (len(self.lengths), self.width)

  @property
  def ndim(self) -> int:
    return 2

  def __len__(self) -> int:
    return len(self.lengths)


class _Ragged(_Rows):
  """One token column: `col[rows]` -> `[len(rows), width]` int32, padded with `pad`."""

  def __init__(self, path: str, dtype: str, starts: np.ndarray, lengths: np.ndarray,
               width: int, pad: int):
    super().__init__(lengths, width)
    self.path, self.dtype, self.starts, self.pad = path, np.dtype(dtype), starts, pad
    self._fd: int | None = None

  def __getitem__(self, key) -> np.ndarray:
    if isinstance(key, slice):
      return self[np.arange(len(self))[key]]
    if np.ndim(key) == 0:
      return self[np.asarray([key])][0]
    rows = np.asarray(key, np.int64)
    out = np.full((len(rows), self.width), self.pad, np.int32)
    if self._fd is None:
      self._fd = os.open(self.path, os.O_RDONLY)
    size = self.dtype.itemsize
    for i, r in enumerate(rows.tolist()):
      n = min(int(self.lengths[r]), self.width)
      if n:
        data = os.pread(self._fd, n * size, int(self.starts[r]) * size)
        out[i, :n] = np.frombuffer(data, self.dtype)
    return out

  def __del__(self):
    if self._fd is not None:
      os.close(self._fd)


class _Mask(_Rows):
  """The attention mask from the row lengths: `mask[rows]` -> `[len(rows), width]` int32;
  `lengths` is what `axk.train.data.row_lengths` reads."""

  def __getitem__(self, key) -> np.ndarray:
    lengths = self.lengths[key]
    return (np.arange(self.width) < np.expand_dims(lengths, -1)).astype(np.int32)


class _Texts:
  """The rows' ids: `ids[i]` -> str, read from disk when asked (an error message's)."""

  def __init__(self, path: str, ends: np.ndarray):
    self.path, self.ends = path, ends

  def __len__(self) -> int:
    return len(self.ends) - 1

  def __getitem__(self, i: int) -> str:
    a, b = int(self.ends[i]), int(self.ends[i + 1])
    with open(self.path, "rb") as f:
      f.seek(a)
      return f.read(b - a).decode("utf-8")

  def __iter__(self) -> Iterator[str]:
    with open(self.path, "rb") as f:
      for a, b in zip(self.ends[:-1].tolist(), self.ends[1:].tolist()):
        yield f.read(b - a).decode("utf-8")


class EncodedSplit(Mapping):
  """A split folder as the loop's arrays: `input_ids`, `attention_mask`, `token_type_ids`
  (each `[rows, width]` on reading rows), `labels` (in memory); `ids` and `index` per row;
  `lengths` the rows' token counts."""

  def __init__(self, folder: str):
    self.folder = folder
    self.meta = files.read_json(os.path.join(folder, META))
    offsets = np.load(os.path.join(folder, "offsets.npy"))
    self.lengths = np.diff(offsets).astype(np.int32)
    width = int(self.meta["width"])
    starts = offsets[:-1]
    self._arrays = {name: _Ragged(os.path.join(folder, f"{name}.bin"), dtype, starts,
                                  self.lengths, width, self.meta["pads"].get(name, 0))
                    for name, dtype in self.meta["dtypes"].items()}
    self._arrays["attention_mask"] = _Mask(self.lengths, width)
    self._arrays["labels"] = np.load(os.path.join(folder, "labels.npy"))
    self.index = np.load(os.path.join(folder, "index.npy"))
    self.ids = _Texts(os.path.join(folder, "ids.bin"), np.load(os.path.join(folder, "ids.npy")))

  def __getitem__(self, key: str):
    return self._arrays[key]

  def __iter__(self):
    return iter(self._arrays)

  def __len__(self) -> int:
    return len(self._arrays)

  @property
  def rows(self) -> int:
    return int(self.meta["rows"])
