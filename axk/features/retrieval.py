"""The audio database AudioBERT retrieves from: clips, their CLAP embeddings, top-k search.

`AudioDatabase` holds the clips of a folder, a TFDS dataset or webdataset shards
(`axk.features.database`), their CLAP audio embeddings (computed once and cached,
`axk.features.index`), and searches them by cosine; `config.database` says which. The
feature source that retrieves a clip per span is `axk.features.sources.retrieval`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import os

import numpy as np

from axk import hub
from axk.features import audio as audio_lib
from axk.features import index as embedding_index
from axk.features.database import Clip
from axk.features.database.folder import list_folder
from axk.features.database.tfds import TfdsAudio
from axk.features.database.webdataset import SHARD_SUFFIX
from axk.features.database.webdataset import WebDataset


def _file_stamp(path: str) -> tuple[int, int]:
  try:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns
  except OSError:
    return -1, -1


class AudioDatabase:
  """Clips, their CLAP audio embeddings, and top-k cosine search.

  Attributes:
    clips: the entries, in a fixed order.
    embeddings: `[N, D]` float32, L2-normalised; zero rows for undecodable clips.
    valid: `[N]` bool, False for undecodable clips.
    fingerprint: hash of the clip list and the CLAP model.
    info: manifest entry.
  """

  def __init__(self, clips: Sequence[Clip], *, max_seconds: float | None = 30.0,
               tfds_audio: TfdsAudio | None = None, shards: WebDataset | None = None,
               description: dict | None = None):
    if not clips:
      raise ValueError("the audio database is empty")
    self.clips = list(clips)
    self.index = {c.id: i for i, c in enumerate(self.clips)}
    self.max_seconds = max_seconds
    self._tfds = tfds_audio
    self.shards = shards
    self.description = dict(description or {})
    self.embeddings: np.ndarray | None = None
    self.valid: np.ndarray | None = None
    self.fingerprint = ""

  @classmethod
  def from_config(cls, db_config, *, shard_index: int = 0,
                  num_shards: int = 1) -> "AudioDatabase":
    """Builds the database that `config.database` describes.

    With webdataset shards, workers `shard_index` of `num_shards` that share the cache
    folder index different shards first.
    """
    max_seconds = float(db_config.max_seconds) if db_config.max_seconds else None
    if db_config.tfds_name:
      tfds_audio = TfdsAudio(db_config.tfds_data_dir, db_config.tfds_name,
                             db_config.tfds_split, audio_key=db_config.tfds_audio_key,
                             id_key=db_config.tfds_id_key,
                             caption_key=db_config.tfds_caption_key,
                             sample_rate=db_config.tfds_sample_rate)
      return cls(tfds_audio.clips, max_seconds=max_seconds, tfds_audio=tfds_audio,
                 description={"kind": "tfds", "name": db_config.tfds_name,
                              "folder": tfds_audio.folder, "split": db_config.tfds_split})
    if not db_config.dir:
      raise ValueError("retrieval needs a database: set --config.database.dir=FOLDER (audio "
                       "files) or --config.database.tfds_name=NAME")
    if database_format(db_config) == "webdataset":
      cache_dir = db_config.get("cache_dir", "")
      shards = WebDataset(db_config.dir, db_config.get("shards", ""),
                          caption_key=db_config.get("caption_key", "text"),
                          index_dir=os.path.join(cache_dir, "webdataset_index") if cache_dir
                          else "", shard_index=shard_index, num_shards=num_shards)
      return cls(shards.clips, max_seconds=max_seconds, shards=shards,
                 description={**shards.describe(), "shards": db_config.get("shards", "")})
    clips = list_folder(db_config.dir, db_config.metadata)
    return cls(clips, max_seconds=max_seconds,
               description={"kind": "folder", "dir": os.path.abspath(
                   os.path.expanduser(db_config.dir)), "metadata": db_config.metadata})

  def load(self, i: int, target_rate: int) -> np.ndarray:
    """Clip `i` as mono float32 at `target_rate`. Raises `audio.DecodeError`."""
    clip = self.clips[i]
    if clip.path.startswith("wds:"):
      return self.shards.load(clip.path, target_rate, self.max_seconds)
    if clip.path.startswith("tfds:"):
      try:
        return self._tfds.load(clip.path, target_rate, self.max_seconds)
      except audio_lib.DecodeError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        raise audio_lib.DecodeError(f"{clip.path}: {e}") from e
    return audio_lib.load(clip.path, target_rate, max_seconds=self.max_seconds)

  def content_fingerprint(self) -> str:
    """Hash of the clip list: ids, relative paths, sizes, modification times.

    Shard members count by position, size and CRC-32 instead of the shard's time stamp, so
    that copied shards keep their embeddings.
    """
    # Paths relative to the database root, so that a moved database keeps its cache.
    root = self.description.get("folder") or self.description.get("dir") or "/"
    rows = []
    for c in self.clips:
      if c.path.startswith("wds:"):
        shard, offset, size, crc = self.shards.member(c.path)
        rows.append((c.id, os.path.relpath(shard, root), c.path.rsplit("#", 1)[1], offset,
                     size, crc))
        continue
      is_tfds = c.path.startswith("tfds:")
      file_path = c.path[len("tfds:"):].rsplit("#", 1)[0] if is_tfds else c.path
      rel = os.path.relpath(c.path[len("tfds:"):] if is_tfds else c.path, root)
      rows.append((c.id, rel, *_file_stamp(file_path)))
    return hub.digest({"clips": rows, "max_seconds": self.max_seconds})

  def embed(self, clap, cache_dir: str, *, chunk_size: int = 256, shard_index: int = 0,
            num_shards: int = 1, compute=None) -> None:
    """Computes (or loads) the CLAP audio embeddings of every clip, in chunks cached under
    `<cache_dir>/<fingerprint>/` that workers sharing the folder split
    (`axk.features.index.embed`; `compute` computes the missing chunks elsewhere)."""
    self.fingerprint = embedding_index.cache_fingerprint(self.content_fingerprint(), clap)
    self.embeddings, self.valid = embedding_index.embed(
        self.clips, self.load, clap, cache_dir, self.fingerprint, description=self.description,
        chunk_size=chunk_size, shard_index=shard_index, num_shards=num_shards, compute=compute)

  @property
  def info(self) -> dict:
    return {**self.description, "fingerprint": self.fingerprint, "num_clips": len(self.clips),
            "num_undecodable": int((~self.valid).sum()) if self.valid is not None else None}

  def search(self, queries: np.ndarray, top_k: int = 1,
             exclude: Iterable[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine search.

    Args:
      queries: `[Q, D]` normalised text embeddings.
      top_k: results per query.
      exclude: clip ids never to return.

    Returns:
      (indices `[Q, k]` int64, scores `[Q, k]` float32), best first; index -1 (score -inf)
      where fewer than k clips are eligible.
    """
    scores = np.asarray(queries, np.float32) @ self.embeddings.T
    eligible = self.valid.copy()
    for clip_id in exclude:
      i = self.index.get(clip_id)
      if i is not None:
        eligible[i] = False
    scores[:, ~eligible] = -np.inf
    k = min(top_k, scores.shape[1])
    # Stable sort: ties go to the clip listed first, so results do not depend on batching.
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, order, axis=1)
    order = np.where(np.isfinite(top), order, -1)
    if k < top_k:
      pad = top_k - k
      order = np.pad(order, ((0, 0), (0, pad)), constant_values=-1)
      top = np.pad(top, ((0, 0), (0, pad)), constant_values=-np.inf)
    return order, top.astype(np.float32)


def database_format(db_config) -> str:
  """`folder` or `webdataset`: `database.format`, or with `auto` what `database.dir` holds.

  Raises:
    ValueError: an unknown format, or `auto` on a folder holding both `.tar` shards and
      loose audio files (which would be read is not guessed).
  """
  fmt = db_config.get("format", "auto")
  if fmt not in ("auto", "folder", "webdataset"):
    raise ValueError(f"database.format={fmt!r}; expected auto, folder or webdataset")
  if fmt != "auto":
    return fmt
  if db_config.get("shards", ""):
    return "webdataset"
  num_tars = num_audio = 0
  for _, _, names in os.walk(os.path.expanduser(db_config.dir)):
    num_tars += sum(n.endswith(SHARD_SUFFIX) for n in names)
    num_audio += sum(n.lower().endswith(audio_lib.AUDIO_EXTENSIONS) for n in names)
  if num_tars and num_audio:
    raise ValueError(f"database.dir={db_config.dir!r} holds {num_tars} .tar shards and "
                     f"{num_audio} audio files; set database.format=webdataset or folder")
  return "webdataset" if num_tars else "folder"


def read_exclude(ids: Sequence[str], path: str) -> set[str]:
  """Clip ids to exclude: the config list plus one id per line of `path` ('#' comments)."""
  out = {str(i) for i in ids}
  if path:
    with open(os.path.expanduser(path), encoding="utf-8") as f:
      out.update(line.split("#")[0].strip() for line in f if line.split("#")[0].strip())
  return out
