"""AudioBERT's audio source: CLAP retrieval from a configured audio database.

The database is either

  * a folder of audio files (`.wav`, `.flac`, `.ogg`, `.mp3`, searched recursively), with an
    optional metadata file (CSV with a header, or JSON lines) giving `id`, `path` (relative
    to the folder) and `caption` per clip; without one, a clip's id is its path relative to
    the folder, without extension; or
  * a TFDS dataset stored as `array_record` or `tfrecord` files, read without TensorFlow:
    records are parsed with the `tf.train.Example` protos that TFDS ships, and the audio
    feature (an integer or float tensor, or encoded bytes) is decoded with NumPy or
    soundfile.

The CLAP audio embedding of every clip is computed once, in chunks of `chunk_size` clips,
each chunk written atomically as it finishes, under
`<cache_dir>/<fingerprint>/`, where the fingerprint hashes the clip list (ids, paths, sizes,
modification times) and the CLAP model: a second run reuses the chunks, an interrupted one
finishes the missing chunks, a chunk that does not load is named, set aside and recomputed,
and a changed database or model starts a new cache. Clips that cannot be decoded get a zero
embedding, are never retrieved, and are counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import csv
import dataclasses
import glob
import json
import logging
import os
import zlib

import numpy as np
import tqdm

from axk import hub
from axk.features import audio as audio_lib
from axk.features import parts
from axk.utils import files

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Clip:
  """One database entry: `path` is a file path, or `tfds:<file>#<record>` for TFDS."""

  id: str
  path: str
  caption: str = ""


# ----------------------------------------------------------------------------------------
# Listing a database.
# ----------------------------------------------------------------------------------------


def _read_metadata(path: str) -> list[dict[str, str]]:
  if path.endswith((".jsonl", ".json")):
    with open(path, encoding="utf-8") as f:
      return [json.loads(line) for line in f if line.strip()]
  with open(path, encoding="utf-8", newline="") as f:
    return list(csv.DictReader(f))


def list_folder(folder: str, metadata: str = "") -> list[Clip]:
  """Clips of a folder, from its metadata file when given, else by scanning it.

  Raises:
    FileNotFoundError: the folder (or metadata file) does not exist.
    ValueError: metadata rows without `path`, or duplicate ids.
  """
  folder = os.path.expanduser(folder)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"database.dir={folder!r} is not a directory")
  clips = []
  if metadata:
    meta_path = metadata if os.path.isabs(metadata) else os.path.join(folder, metadata)
    for i, row in enumerate(_read_metadata(meta_path)):
      if not row.get("path"):
        raise ValueError(f"{meta_path}: row {i + 1} has no `path`")
      rel = row["path"]
      clip_id = str(row.get("id") or os.path.splitext(rel)[0])
      clips.append(Clip(clip_id, os.path.join(folder, rel), str(row.get("caption") or "")))
  else:
    for root, dirs, files in os.walk(folder):
      dirs.sort()
      for name in sorted(files):
        if name.lower().endswith(audio_lib.AUDIO_EXTENSIONS):
          full = os.path.join(root, name)
          rel = os.path.relpath(full, folder)
          clips.append(Clip(os.path.splitext(rel)[0].replace(os.sep, "/"), full))
  ids = [c.id for c in clips]
  if len(set(ids)) != len(ids):
    dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
    raise ValueError(f"database {folder}: duplicate clip ids, e.g. {dup}")
  return clips


def _tfds_files(data_dir: str, name: str, split: str) -> tuple[str, list[str], dict]:
  """Dataset folder, record files of `split` and `features.json` of a TFDS dataset."""
  base = os.path.join(os.path.expanduser(data_dir), name)
  candidates = [base] if os.path.exists(os.path.join(base, "dataset_info.json")) else sorted(
      glob.glob(os.path.join(base, "*")), reverse=True)  # newest version first
  for folder in candidates:
    info_path = os.path.join(folder, "dataset_info.json")
    if not os.path.exists(info_path):
      continue
    files = sorted(glob.glob(os.path.join(folder, f"*-{split}.array_record-*")) +
                   glob.glob(os.path.join(folder, f"*-{split}.tfrecord-*")))
    with open(os.path.join(folder, "features.json"), encoding="utf-8") as f:
      features = json.load(f)
    return folder, files, features
  raise FileNotFoundError(f"no TFDS dataset {name!r} under {data_dir!r} (expected "
                          f"{base}[/<version>]/dataset_info.json)")


def _read_tfrecord(path: str) -> list[bytes]:
  """Records of a TFRecord file (length, crc, data, crc framing; CRCs not checked)."""
  out = []
  with open(path, "rb") as f:
    while True:
      header = f.read(12)
      if len(header) < 12:
        break
      length = int.from_bytes(header[:8], "little")
      out.append(f.read(length))
      f.read(4)
  return out


class _RecordFile:
  """Random access to the records of one array_record or tfrecord file."""

  def __init__(self, path: str):
    self.path = path
    if ".tfrecord-" in os.path.basename(path):
      self._records = _read_tfrecord(path)
      self._reader = None
    else:
      from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
      self._reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")
      self._records = None

  def __len__(self) -> int:
    return len(self._records) if self._records is not None else self._reader.num_records()

  def __getitem__(self, index: int) -> bytes:
    if self._records is not None:
      return self._records[index]
    return self._reader.read([index])[0]


def _feature_json(features: dict, key: str) -> dict:
  """The JSON description of feature `key` (nested keys with '/')."""
  node = features
  for part in key.split("/"):
    node = node["featuresDict"]["features"][part]
  return node


def _parse_example(record: bytes):
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  return tf_example_pb2.Example.FromString(record).features.feature


class TfdsAudio:
  """Audio of a TFDS dataset, read without TensorFlow.

  Attributes:
    clips: one `Clip` per record.
    sample_rate: from the dataset's Audio feature, else `sample_rate` as given.
  """

  def __init__(self, data_dir: str, name: str, split: str, *, audio_key: str = "audio",
               id_key: str = "", caption_key: str = "", sample_rate: int = 0):
    self.folder, files, features = _tfds_files(data_dir, name, split)
    if not files:
      raise FileNotFoundError(f"{self.folder}: no array_record/tfrecord files for split "
                              f"{split!r}")
    self.audio_key = audio_key
    node = _feature_json(features, audio_key)
    spec = node.get("audio") or node.get("tensor") or {}
    self.dtype = np.dtype(spec.get("dtype", "int64"))
    self.file_format = spec.get("fileFormat", "") or ""
    self.encoding = (spec.get("encoding") or "none").lower()
    self.sample_rate = int(spec.get("sampleRate", 0) or sample_rate)
    if not self.sample_rate:
      raise ValueError(f"{self.folder}: feature {audio_key!r} has no sample rate; set "
                       "database.tfds_sample_rate")
    dims = spec.get("shape", {}).get("dimensions", ["-1"])
    self.channels = int(dims[1]) if len(dims) > 1 and int(dims[1]) > 0 else 1
    self._files = {f: None for f in files}
    self.clips = []
    for path in files:
      reader = self._reader(path)
      for i in range(len(reader)):
        clip_id, caption = f"{os.path.basename(path)}#{i}", ""
        if id_key or caption_key:
          feats = _parse_example(reader[i])
          if id_key:
            clip_id = feats[id_key].bytes_list.value[0].decode() if feats[
                id_key].bytes_list.value else str(feats[id_key].int64_list.value[0])
          if caption_key and feats[caption_key].bytes_list.value:
            caption = feats[caption_key].bytes_list.value[0].decode()
        self.clips.append(Clip(clip_id, f"tfds:{path}#{i}", caption))

  def _reader(self, path: str) -> _RecordFile:
    if self._files.get(path) is None:
      self._files[path] = _RecordFile(path)
    return self._files[path]

  def load(self, clip_path: str, target_rate: int, max_seconds: float | None) -> np.ndarray:
    """Mono float32 audio at `target_rate` of a `tfds:<file>#<index>` clip."""
    path, index = clip_path[len("tfds:"):].rsplit("#", 1)
    feature = _parse_example(self._reader(path)[int(index)])[self.audio_key]
    if self.file_format:
      return audio_lib.load(feature.bytes_list.value[0], target_rate, max_seconds=max_seconds)
    if feature.bytes_list.value:
      raw = feature.bytes_list.value[0]
      if self.encoding == "zlib":
        raw = zlib.decompress(raw)
      wave = np.frombuffer(raw, dtype=self.dtype)
    elif feature.float_list.value:
      wave = np.asarray(feature.float_list.value, dtype=np.float32)
    else:
      wave = np.asarray(feature.int64_list.value, dtype=self.dtype)
    if self.channels > 1:
      wave = wave.reshape(-1, self.channels)
    if max_seconds is not None:
      wave = wave[:int(max_seconds * self.sample_rate)]
    return audio_lib.from_array(wave, self.sample_rate, target_rate)


# ----------------------------------------------------------------------------------------
# The database: clips, cached CLAP embeddings, search.
# ----------------------------------------------------------------------------------------


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
               tfds_audio: TfdsAudio | None = None, description: dict | None = None):
    if not clips:
      raise ValueError("the audio database is empty")
    self.clips = list(clips)
    self.index = {c.id: i for i, c in enumerate(self.clips)}
    self.max_seconds = max_seconds
    self._tfds = tfds_audio
    self.description = dict(description or {})
    self.embeddings: np.ndarray | None = None
    self.valid: np.ndarray | None = None
    self.fingerprint = ""

  @classmethod
  def from_config(cls, db_config) -> "AudioDatabase":
    """Builds the database that `config.database` describes."""
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
    clips = list_folder(db_config.dir, db_config.metadata)
    return cls(clips, max_seconds=max_seconds,
               description={"kind": "folder", "dir": os.path.abspath(
                   os.path.expanduser(db_config.dir)), "metadata": db_config.metadata})

  def load(self, i: int, target_rate: int) -> np.ndarray:
    """Clip `i` as mono float32 at `target_rate`. Raises `audio.DecodeError`."""
    clip = self.clips[i]
    if clip.path.startswith("tfds:"):
      try:
        return self._tfds.load(clip.path, target_rate, self.max_seconds)
      except audio_lib.DecodeError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        raise audio_lib.DecodeError(f"{clip.path}: {e}") from e
    return audio_lib.load(clip.path, target_rate, max_seconds=self.max_seconds)

  def content_fingerprint(self) -> str:
    """Hash of the clip list: ids, relative paths, sizes, modification times."""
    # Paths relative to the database root, so that a moved database keeps its cache.
    root = self.description.get("folder") or self.description.get("dir") or "/"
    rows = []
    for c in self.clips:
      is_tfds = c.path.startswith("tfds:")
      file_path = c.path[len("tfds:"):].rsplit("#", 1)[0] if is_tfds else c.path
      rel = os.path.relpath(c.path[len("tfds:"):] if is_tfds else c.path, root)
      rows.append((c.id, rel, *_file_stamp(file_path)))
    return hub.digest({"clips": rows, "max_seconds": self.max_seconds})

  def embed(self, clap, cache_dir: str, *, chunk_size: int = 256, shard_index: int = 0,
            num_shards: int = 1) -> None:
    """Computes (or loads) the CLAP audio embeddings of every clip.

    Chunks are written atomically as they finish. A worker first does the chunks whose
    index % num_shards == shard_index, then any chunk still missing, so that workers that
    share the cache folder split the work and a lone worker still finishes it all.
    """
    self.fingerprint = hub.digest({"content": self.content_fingerprint(),
                                   "clap": clap.info["fingerprint"],
                                   "rate": clap.sampling_rate})
    folder = os.path.join(cache_dir, self.fingerprint)
    os.makedirs(folder, exist_ok=True)
    num_chunks = -(-len(self.clips) // chunk_size)
    chunk_path = lambda c: os.path.join(folder, f"chunk-{c:05d}-of-{num_chunks:05d}.npz")
    order = ([c for c in range(num_chunks) if c % num_shards == shard_index] +
             [c for c in range(num_chunks) if c % num_shards != shard_index])
    # Chunks that do not load (truncated, emptied) are set aside, named, and recomputed.
    def load_chunk(c: int) -> dict | None:
      if not os.path.exists(chunk_path(c)):
        return None
      z = parts.load_npz(chunk_path(c), "database chunk")
      size = min(chunk_size, len(self.clips) - c * chunk_size)
      if z is not None and {len(z.get(k, ())) for k in ("embeddings", "valid")} != {size}:
        parts.set_aside(chunk_path(c), ValueError(f"not {size} clips"), "database chunk")
        return None
      return z

    loaded = {c: z for c in order if (z := load_chunk(c)) is not None}
    missing = [c for c in order if c not in loaded]
    if missing:
      logger.info("database: embedding %d of %d chunks into %s", len(missing), num_chunks,
                  folder)
    bar = tqdm.tqdm(total=len(self.clips), desc="database CLAP", unit="clip",
                    initial=(num_chunks - len(missing)) * chunk_size, disable=not missing)
    for c in missing:
      z = load_chunk(c)  # another worker may have finished it meanwhile
      if z is not None:
        loaded[c] = z
        continue
      lo, hi = c * chunk_size, min((c + 1) * chunk_size, len(self.clips))
      waves, ok = [], np.zeros(hi - lo, bool)
      for j in range(lo, hi):
        try:
          waves.append(self.load(j, clap.sampling_rate))
          ok[j - lo] = True
        except audio_lib.DecodeError as e:
          logger.warning("database: skipping undecodable clip %s (%s)", self.clips[j].id, e)
      emb = np.zeros((hi - lo, clap.dim), np.float32)
      if waves:
        emb[ok] = clap.audio(waves)
      loaded[c] = {"embeddings": emb, "valid": ok,
                   "ids": np.array([cl.id for cl in self.clips[lo:hi]])}
      with files.atomic_path(chunk_path(c)) as tmp:
        np.savez(tmp, **loaded[c])
      bar.update(hi - lo)
    bar.close()
    self.embeddings = np.concatenate(
        [loaded[c]["embeddings"] for c in range(num_chunks)]).astype(np.float32)
    self.valid = np.concatenate([loaded[c]["valid"] for c in range(num_chunks)])
    manifest = {"fingerprint": self.fingerprint, "num_clips": len(self.clips),
                "num_undecodable": int((~self.valid).sum()), "clap": clap.info,
                **self.description}
    files.write_json(os.path.join(folder, "manifest.json"), manifest)
    if (~self.valid).any():
      logger.warning("database: %d of %d clips could not be decoded and are never retrieved",
                     int((~self.valid).sum()), len(self.clips))

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


def read_exclude(ids: Sequence[str], path: str) -> set[str]:
  """Clip ids to exclude: the config list plus one id per line of `path` ('#' comments)."""
  out = {str(i) for i in ids}
  if path:
    with open(os.path.expanduser(path), encoding="utf-8") as f:
      out.update(line.split("#")[0].strip() for line in f if line.split("#")[0].strip())
  return out
