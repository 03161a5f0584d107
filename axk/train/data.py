"""Batches for the train and eval steps: seeded, resumable, per-host, few shapes.

A split is a dict of numpy arrays with the same number of rows (the output of
`axk.data.encode`), or of arrays read a batch of rows at a time (`axk.data.encoded`: a
split on disk). Training batches come from a grain `MapDataset` over row indices,
shuffled with the run's seed, repeated for the epochs and batched, which has random access:
batch `step` is the same whatever happened before, so a resumed run continues with exactly
the batches the interrupted one would have seen. Every process computes the same global
batch of row indices and reads only the rows its own devices hold (`process_rows`). Token
axes are cut to the batch's longest row rounded up to `bucket` tokens, so the jitted steps
compile once per bucket, not once per length.

An array may also be a `SpanTokens`: ITH's audio tokens `[rows, spans, tokens, dim]` whose
cells (one span's tokens) are read only when a batch takes their row, so a split's audio
tokens are never all in host memory (the full AST sequence is 1214 x 768 a span).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import numpy as np

# Keys whose axis 1 is the token axis (trimmed to the bucket length).
TOKEN_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids", "span_ids",
                        "span_labels", "mlm_labels", "offsets"})


class SpanTokens:
  """A lazy `[rows, spans, tokens, dim]` array: cell `(r, s)` is `cells[index[r, s]]`, or
  zeros where `index` is -1 (no span, or a span without audio).

  `x[rows]` (an int array or int) reads and returns those rows as numpy, the cells through
  `read` (a list of cells -> their `[tokens, dim]` arrays, e.g. `shards.read_tokens`, which
  reads a batch's records in one call; by default `np.asarray` per cell); `x[a:b]` is a lazy
  view; `np.asarray(x)` reads every row (only for a few rows: model init).
  """

  def __init__(self, cells, index: np.ndarray, cell_shape: tuple[int, int],
               dtype=np.float16, read: Callable[[list], list] | None = None):
    self.cells = cells
    self.index = np.asarray(index, np.int64)
    self.cell_shape = tuple(int(d) for d in cell_shape)
    self.dtype = np.dtype(dtype)
    self.read = read or (lambda cells: [np.asarray(c) for c in cells])

  @property
  def shape(self) -> tuple[int, ...]:
    return self.index.shape + self.cell_shape

  @property
  def ndim(self) -> int:
    return len(self.shape)

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, key):
    if isinstance(key, slice):
      return SpanTokens(self.cells, self.index[key], self.cell_shape, self.dtype, self.read)
    if np.ndim(key) == 0:
      return self[np.asarray([key])][0]
    index = self.index[np.asarray(key)]
    out = np.zeros(index.shape + self.cell_shape, self.dtype)
    positions = list(zip(*np.nonzero(index >= 0)))
    for pos, value in zip(positions, self.read([self.cells[index[p]] for p in positions])):
      out[pos] = value
    return out

  def __array__(self, dtype=None, copy=None):
    del copy
    out = self[np.arange(len(self))]
    return out if dtype is None else out.astype(dtype)


def num_rows(arrays: Mapping[str, np.ndarray]) -> int:
  sizes = {len(v) for v in arrays.values()}
  if len(sizes) != 1:
    raise ValueError(f"Arrays of different row counts: { {k: len(v) for k, v in arrays.items()} }")
  return sizes.pop()


def row_lengths(arrays: Mapping[str, Any]) -> np.ndarray:
  """Each row's real tokens: the mask's own `lengths` where it keeps them (a split on disk,
  `axk.data.encoded`, whose mask is never read whole), else the mask's row sums."""
  mask = arrays["attention_mask"]
  lengths = getattr(mask, "lengths", None)
  return np.asarray(lengths) if lengths is not None else np.asarray(mask).sum(axis=1)


def bucket_length(attention_mask: np.ndarray, bucket: int, limit: int) -> int:
  longest = int(attention_mask.sum(axis=1).max()) if len(attention_mask) else 1
  return min(limit, max(bucket, int(math.ceil(longest / bucket)) * bucket))


def take(arrays: Mapping[str, np.ndarray], rows: np.ndarray, length: int) -> dict:
  out = {}
  for k, v in arrays.items():
    x = v[rows]
    if k in TOKEN_KEYS:
      x = x[:, :length]
    out[k] = x
  return out


def process_rows(global_batch: int, sharding: jax.sharding.Sharding | None = None) -> np.ndarray:
  """Rows of a global batch that this process feeds, in the order in which
  `jax.make_array_from_process_local_data` lays process-local rows onto its devices.

  With the batch `sharding`, these are the rows this process's devices hold, wherever the
  mesh puts those devices (a batch axis replicated over processes needs every row on every
  process). Without it, the process's contiguous share, which is the same for the default
  mesh (the devices of one process are adjacent along `data`).
  """
  if sharding is None:
    n = jax.process_count()
    if global_batch % n:
      raise ValueError(f"Batch size {global_batch} is not divisible by {n} processes.")
    per = global_batch // n
    return np.arange(jax.process_index() * per, (jax.process_index() + 1) * per)
  index = sharding.addressable_devices_indices_map((global_batch,))
  spans = sorted({(s[0].start or 0, global_batch if s[0].stop is None else s[0].stop)
                  for s in index.values()})
  return np.concatenate([np.arange(a, b) for a, b in spans])


class TrainBatches:
  """Random-access training batches: `batches[step]` -> this process's rows of that step.

  `group_by_length` > 0 groups rows of similar length into batches, which cuts padding: each
  epoch's seeded permutation is cut into windows of `group_by_length` batches, each window is
  sorted by row length and cut into batches, and the epoch's batches are shuffled (the last
  incomplete batch of an epoch is dropped). 0: plain shuffled batches.
  """

  def __init__(self, arrays: Mapping[str, np.ndarray], *, batch_size: int, epochs: int,
               seed: int, bucket: int = 16, sharding: jax.sharding.Sharding | None = None,
               group_by_length: int = 0):
    self.arrays = dict(arrays)
    self.n = num_rows(arrays)
    if batch_size > self.n:
      raise ValueError(f"Batch size {batch_size} exceeds the {self.n} training examples.")
    self.batch_size = batch_size
    self.bucket = bucket
    self.limit = self.arrays["input_ids"].shape[1]
    self.local = process_rows(batch_size, sharding)
    self.seed, self.epochs, self.group = seed, epochs, int(group_by_length)
    if self.group > 0:
      self.lengths = row_lengths(self.arrays)
      self._epoch: tuple[int, np.ndarray] | None = None
      return
    # Each epoch is reshuffled (grain reseeds a shuffle per repetition); batches may span an
    # epoch boundary, as in a stream; the last incomplete batch is dropped.
    import grain  # Here: evaluation and predict never load it (with orbax, seconds).
    self.indices = (grain.MapDataset.range(self.n).seed(seed).shuffle()
                    .repeat(epochs).batch(batch_size, drop_remainder=True))

  def __len__(self) -> int:
    if self.group > 0:
      return self.epochs * (self.n // self.batch_size)
    return len(self.indices)

  @property
  def steps_per_epoch(self) -> float:
    return self.n / self.batch_size

  def _grouped(self, epoch: int) -> np.ndarray:
    """[batches, batch_size] row indices of `epoch` (grouped by length), kept for the
    epoch's steps."""
    if self._epoch is None or self._epoch[0] != epoch:
      rng = np.random.default_rng([self.seed, epoch])
      order = rng.permutation(self.n)
      window = self.group * self.batch_size
      chunks = [order[i:i + window] for i in range(0, self.n, window)]
      order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
      batches = order[:self.n // self.batch_size * self.batch_size].reshape(-1, self.batch_size)
      self._epoch = (epoch, batches[rng.permutation(len(batches))])
    return self._epoch[1]

  def __getitem__(self, step: int) -> dict:
    if self.group > 0:
      per_epoch = self.n // self.batch_size
      rows = self._grouped(step // per_epoch)[step % per_epoch]
    else:
      rows = np.asarray(self.indices[step])
    # The length is decided on the global batch so every process agrees on the shape.
    length = bucket_length(self.arrays["attention_mask"][rows], self.bucket, self.limit)
    return take(self.arrays, rows[self.local], length)

  def iterate(self, start: int) -> Iterator[tuple[int, dict]]:
    for step in range(start, len(self)):
      yield step, self[step]


def to_device(items: Iterable[tuple[int, dict]], put: Callable[[dict], Any]
              ) -> Iterator[tuple[int, dict, Any]]:
  """`(step, local)` -> `(step, local, put(local))`, lazily.

  The train loop asks for the next item right after dispatching a step, so the next batch is
  read, trimmed and transferred (`put`) while the device runs the current step; `local` stays
  on the host for the example ids of an error message.
  """
  for step, local in items:
    yield step, local, put(local)


def eval_batches(arrays: Mapping[str, np.ndarray], batch_size: int, bucket: int = 16,
                 sharding: jax.sharding.Sharding | None = None) -> Iterator[dict]:
  """Every row once, in order; the last batch is padded with copies of row 0 and carries
  `valid` (1 for real rows) so that shapes stay fixed. Each process gets its rows of every
  batch (`process_rows`)."""
  n = num_rows(arrays)
  limit = arrays["input_ids"].shape[1]
  local = process_rows(batch_size, sharding)
  for start in range(0, n, batch_size):
    rows = np.arange(start, min(start + batch_size, n))
    valid = np.ones(batch_size, np.int32)
    if len(rows) < batch_size:
      valid[len(rows):] = 0
      rows = np.concatenate([rows, np.zeros(batch_size - len(rows), rows.dtype)])
    length = bucket_length(arrays["attention_mask"][rows], bucket, limit)
    batch = take(arrays, rows[local], length)
    batch["valid"] = valid[local]
    yield batch
