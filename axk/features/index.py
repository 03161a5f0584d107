"""The CLAP embedding index of an audio database: every clip's audio embedding, computed once.

The embeddings are computed in chunks of `chunk_size` clips, each chunk written atomically
as it finishes, under `<cache_dir>/<fingerprint>/`, where the fingerprint hashes the clip
list (ids, paths, sizes, modification times) and the CLAP model: a second run reuses the
chunks, an interrupted one finishes the missing chunks, a chunk that does not load is named,
set aside and recomputed, and a changed database or model starts a new cache. Clips that
cannot be decoded get a zero embedding, are marked invalid (never retrieved), and are
counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
import logging
import os

import numpy as np
import tqdm

from axk import hub
from axk.features import audio as audio_lib
from axk.features import parts
from axk.features.database import Clip
from axk.utils import files

logger = logging.getLogger(__name__)

# Missing chunk indices -> (chunk index, its arrays) as each is done (`embed`'s `compute`).
ChunkComputer = Callable[[Sequence[int]], Iterator[tuple[int, Mapping[str, np.ndarray]]]]


def cache_fingerprint(content: str, clap) -> str:
  """The name of a database's cache folder: its content fingerprint and the CLAP model."""
  return hub.digest({"content": content, "clap": clap.info["fingerprint"],
                     "rate": clap.sampling_rate})


def embed(clips: Sequence[Clip], load: Callable[[int, int], np.ndarray], clap,
          cache_dir: str, fingerprint: str, *, description: Mapping, chunk_size: int = 256,
          shard_index: int = 0, num_shards: int = 1,
          compute: ChunkComputer | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Computes (or loads) the CLAP audio embeddings of every clip.

  A worker first does the chunks whose index % num_shards == shard_index, then any chunk
  still missing, so that workers that share the cache folder split the work and a lone
  worker still finishes it all.

  Args:
    clips: the database's clips, in order.
    load: clip index, sampling rate -> mono float32 audio (raises `audio.DecodeError`).
    clap: the CLAP encoder.
    cache_dir: the chunks go to `<cache_dir>/<fingerprint>/`.
    fingerprint: the database's and the model's (`cache_fingerprint`).
    description: the database's manifest entry, written beside the chunks.
    chunk_size, shard_index, num_shards: as above.
    compute: missing chunk indices -> (index, chunk) pairs in any order (`chunk_arrays`'s
      arrays), e.g. `axk.features.ray_stream.database_chunks` on Ray; None: this process,
      a chunk at a time.

  Returns:
    (embeddings `[N, D]` float32, zero rows for undecodable clips; valid `[N]` bool).
  """
  folder = os.path.join(cache_dir, fingerprint)
  os.makedirs(folder, exist_ok=True)
  num_chunks = -(-len(clips) // chunk_size)
  chunk_path = lambda c: os.path.join(folder, f"chunk-{c:05d}-of-{num_chunks:05d}.npz")
  order = ([c for c in range(num_chunks) if c % num_shards == shard_index] +
           [c for c in range(num_chunks) if c % num_shards != shard_index])
  # Chunks that do not load (truncated, emptied) are set aside, named, and recomputed.
  def load_chunk(c: int) -> dict | None:
    if not os.path.exists(chunk_path(c)):
      return None
    z = parts.load_npz(chunk_path(c), "database chunk")
    size = min(chunk_size, len(clips) - c * chunk_size)
    if z is not None and {len(z.get(k, ())) for k in ("embeddings", "valid")} != {size}:
      parts.set_aside(chunk_path(c), ValueError(f"not {size} clips"), "database chunk")
      return None
    return z

  def in_process(missing: Sequence[int]):
    for c in missing:
      z = load_chunk(c)  # another worker may have finished it meanwhile
      if z is not None:
        yield c, z
        continue
      lo, hi = c * chunk_size, min((c + 1) * chunk_size, len(clips))
      waves, ok = [], np.zeros(hi - lo, bool)
      for j in range(lo, hi):
        try:
          waves.append(load(j, clap.sampling_rate))
          ok[j - lo] = True
        except audio_lib.DecodeError as e:
          logger.warning("database: skipping undecodable clip %s (%s)", clips[j].id, e)
      yield c, chunk_arrays(clips[lo:hi], ok, clap.audio(waves) if waves else None, clap.dim)

  loaded = {c: z for c in order if (z := load_chunk(c)) is not None}
  missing = [c for c in order if c not in loaded]
  if missing:
    logger.info("database: embedding %d of %d chunks into %s", len(missing), num_chunks,
                folder)
  bar = tqdm.tqdm(total=len(clips), desc="database CLAP", unit="clip",
                  initial=(num_chunks - len(missing)) * chunk_size, disable=not missing)
  for c, z in (compute or in_process)(missing):
    if not os.path.exists(chunk_path(c)):
      with files.atomic_path(chunk_path(c)) as tmp:
        np.savez(tmp, **z)
    loaded[c] = z
    bar.update(len(z["valid"]))
  bar.close()
  embeddings = np.concatenate(
      [loaded[c]["embeddings"] for c in range(num_chunks)]).astype(np.float32)
  valid = np.concatenate([loaded[c]["valid"] for c in range(num_chunks)])
  manifest = {"fingerprint": fingerprint, "num_clips": len(clips),
              "num_undecodable": int((~valid).sum()), "clap": clap.info, **description}
  files.write_json(os.path.join(folder, "manifest.json"), manifest)
  if (~valid).any():
    logger.warning("database: %d of %d clips could not be decoded and are never retrieved",
                   int((~valid).sum()), len(clips))
  return embeddings, valid


def chunk_arrays(clips: Sequence[Clip], ok: np.ndarray, embeddings: np.ndarray | None,
                 dim: int) -> dict[str, np.ndarray]:
  """A chunk as stored: every clip's embedding (zeros where `ok` is False; `embeddings` are
  those of the decodable clips, in order), `valid` and `ids`."""
  emb = np.zeros((len(clips), dim), np.float32)
  if embeddings is not None and len(embeddings):
    emb[np.asarray(ok, bool)] = embeddings
  return {"embeddings": emb, "valid": np.asarray(ok, bool),
          "ids": np.array([cl.id for cl in clips])}
