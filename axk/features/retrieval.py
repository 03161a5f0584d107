"""AudioBERT's audio source: CLAP retrieval from a configured audio database.

The database is either

  * a folder of audio files (`.wav`, `.flac`, `.ogg`, `.mp3`, searched recursively), with an
    optional metadata file (CSV with a header, or JSON lines) giving `id`, `path` (relative
    to the folder) and `caption` per clip; without one, a clip's id is its path relative to
    the folder, without extension; or
  * a TFDS dataset stored as `array_record` or `tfrecord` files, read without TensorFlow:
    records are parsed with the `tf.train.Example` protos that TFDS ships, and the audio
    feature (an integer or float tensor, or encoded bytes) is decoded with NumPy or
    soundfile; or
  * webdataset tar shards, the form LAION-Audio-630K is distributed in (AudioBERT's
    database): each clip is a group of members sharing a key (`<key>.flac` + `<key>.json`
    with its caption). Shards are read member by member in stream mode, never unpacked;
    each clip's offset and size go into an index (cached per shard), and a clip is later
    read by seeking to it, its bytes checked against the CRC-32 the scan recorded.

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
import posixpath
import tarfile
import time
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
  """One database entry.

  `path` is a file path, `tfds:<file>#<record>` for TFDS, or `wds:<shard>#<member>` for a
  webdataset shard.
  """

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
# Webdataset tar shards (LAION-Audio-630K).
# ----------------------------------------------------------------------------------------

SHARD_SUFFIX = ".tar"
_AUDIO_EXTS = tuple(e.lstrip(".") for e in audio_lib.AUDIO_EXTENSIONS)
# Bump when the per-shard index layout changes, so that stale indexes are rebuilt.
_INDEX_VERSION = 1
# Problems logged one line each; the rest are counted (all of them are in the shard indexes).
_MAX_LOGGED = 20
# Why a group or member of a shard is not a clip, and why a clip has no caption.
SKIP_REASONS = ("no_audio", "extra_audio")
CAPTION_PROBLEMS = ("no_json", "bad_json", "no_caption_field")


def split_member(name: str) -> tuple[str, str]:
  """Webdataset's grouping rule: `dir/key.ext1.ext2` -> (`dir/key`, `ext1.ext2`).

  The key runs to the first dot of the file name and members sharing a key form one sample;
  the extension is lower-cased.
  """
  name = name[2:] if name.startswith("./") else name
  folder, base = posixpath.split(name)
  stem, _, ext = base.partition(".")
  return posixpath.join(folder, stem) if folder else stem, ext.lower()


def find_shards(folder: str, pattern: str = "") -> list[str]:
  """The `.tar` shards under `folder` (at any depth), or the files `pattern` matches.

  `pattern` is a glob relative to `folder` in which `**` spans folders, e.g.
  `freesound/train_*/*.tar`. Compressed shards (`.tar.gz`) cannot be read by seeking and
  are not looked for.
  """
  pattern = pattern or os.path.join("**", "*" + SHARD_SUFFIX)
  paths = glob.glob(os.path.join(os.path.expanduser(folder), pattern), recursive=True)
  return sorted(p for p in paths if os.path.isfile(p))


def _check_tar(path: str) -> None:
  """Raises ValueError naming `path` unless it opens as an uncompressed tar (first header)."""
  try:
    with tarfile.open(path, mode="r:"):
      pass
  except (tarfile.TarError, OSError) as e:
    raise ValueError(f"database shard {path}: not an uncompressed tar archive ({e})") from e


def _crc32(handle) -> int:
  crc = 0
  for block in iter(lambda: handle.read(1 << 20), b""):
    crc = zlib.crc32(block, crc)
  return crc


def _captions(raw: bytes, caption_key: str) -> tuple[list[str], str]:
  """The captions in a JSON member (a string or a list of strings) and the problem, if any."""
  try:
    meta = json.loads(raw)
  except (ValueError, UnicodeDecodeError):
    return [], "bad_json"
  value = meta.get(caption_key) if isinstance(meta, dict) else None
  value = [value] if isinstance(value, str) else value
  captions = [v for v in value if isinstance(v, str) and v.strip()] if isinstance(
      value, list) else []
  return captions, "" if captions else "no_caption_field"


def scan_shard(path: str, caption_key: str = "text") -> dict:
  """Lists the clips of one shard in a single pass, member by member (tarfile mode `r|`).

  Nothing is written to disk: audio members are only checksummed as they stream past, JSON
  members parsed for their captions.

  Returns:
    `{"num_members", "clips", "skipped"}`: a clip is `{"key", "member", "offset", "size",
    "crc32", "captions", "caption_problem"}` (`offset`: where the member's data starts in
    the shard file, `TarInfo.offset_data`); a skipped entry is `{"key", "reason",
    "members"}` with a reason of `SKIP_REASONS`.

  Raises:
    ValueError: naming the shard (and the last member read) when it is not a tar archive or
      is cut short.
  """
  groups: dict[str, dict] = {}
  num_members, last = 0, ""
  try:
    with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
      for info in tar:
        if not info.isfile():
          continue
        num_members += 1
        last = info.name
        key, ext = split_member(info.name)
        group = groups.setdefault(key, {"audio": [], "json": None, "members": []})
        group["members"].append(info.name)
        if ext.rsplit(".", 1)[-1] in _AUDIO_EXTS:
          group["audio"].append({"member": info.name, "offset": info.offset_data,
                                 "size": info.size, "crc32": _crc32(tar.extractfile(info))})
        elif ext == "json" and group["json"] is None:
          group["json"] = tar.extractfile(info).read()
  except (tarfile.TarError, OSError, EOFError) as e:
    after = f" after member {last!r}" if last else ""
    raise ValueError(f"database shard {path}: not a readable tar archive{after} ({e}); "
                     "replace it or leave it out with database.shards") from e
  clips, skipped = [], []
  for key, group in groups.items():
    if not group["audio"]:
      skipped.append({"key": key, "reason": "no_audio", "members": group["members"]})
      continue
    for extra in group["audio"][1:]:
      skipped.append({"key": key, "reason": "extra_audio", "members": [extra["member"]]})
    captions, problem = ([], "no_json") if group["json"] is None else _captions(
        group["json"], caption_key)
    clips.append({"key": key, **group["audio"][0], "captions": captions,
                  "caption_problem": problem})
  return {"num_members": num_members, "clips": clips, "skipped": skipped}


class WebDataset:
  """Audio of webdataset tar shards: listed by streaming each shard once, read by seeking.

  Each shard's listing (`scan_shard`) is cached as `<index_dir>/<shard name>.index.json`,
  stamped with the shard's size and modification time, so later runs (other workers, the
  `assemble` stage) neither rescan nor decode anything to list the database. A clip's audio
  is read back by seeking to its recorded offset; its bytes must match the CRC-32 recorded
  by the scan, else the clip is reported as undecodable.

  Attributes:
    folder: the database folder; a shard's name is its path relative to it, without `.tar`.
    shards: the shard files, sorted.
    clips: one `Clip` per key with audio: id `<shard name>/<key>`, caption its first caption.
    captions: clip id -> every caption of its JSON member (LAION lists several).
    counts: members, clips, skipped groups or members by reason, clips without a caption
      by problem.
    problems: `<clip id>: <reason>` for every skipped group or member and caption problem.
  """

  def __init__(self, folder: str, pattern: str = "", *, caption_key: str = "text",
               index_dir: str = "", shard_index: int = 0, num_shards: int = 1):
    self.folder = os.path.abspath(os.path.expanduser(folder))
    if not os.path.isdir(self.folder):
      raise FileNotFoundError(f"database.dir={folder!r} is not a directory")
    self.shards = find_shards(self.folder, pattern)
    if not self.shards:
      raise FileNotFoundError(f"database {self.folder}: no shards match "
                              f"{pattern or '**/*' + SHARD_SUFFIX!r}")
    outside = [p for p in self.shards if os.path.relpath(p, self.folder).startswith("..")]
    if outside:
      raise ValueError(f"database.shards={pattern!r} matches files outside database.dir "
                       f"{self.folder}, e.g. {outside[0]}")
    self.caption_key = caption_key
    self.index_dir = index_dir
    indexes = {i: index for i in range(len(self.shards))
               if (index := self._cached_index(i)) is not None}
    # Shards without an index: a file that is not a tar fails now, before any long scan.
    missing = [i for i in range(len(self.shards)) if i not in indexes]
    for i in missing:
      _check_tar(self.shards[i])
    # Workers sharing the index folder start with different shards, and take up each
    # other's finished indexes.
    for i in ([i for i in missing if i % num_shards == shard_index] +
              [i for i in missing if i % num_shards != shard_index]):
      indexes[i] = self._cached_index(i) or self._scan(i)
    self.clips, self.captions, self.problems = [], {}, []
    self._members: dict[str, tuple[str, int, int, int]] = {}
    self.counts = {"num_members": 0, "skipped": dict.fromkeys(SKIP_REASONS, 0),
                   "without_caption": dict.fromkeys(CAPTION_PROBLEMS, 0)}
    for i, path in enumerate(self.shards):
      name, index = self.shard_name(path), indexes[i]
      self.counts["num_members"] += index["num_members"]
      for entry in index["skipped"]:
        self.counts["skipped"][entry["reason"]] += 1
        self.problems.append(f"{name}/{entry['key']}: {entry['reason']} "
                             f"({', '.join(entry['members'])})")
      for entry in index["clips"]:
        clip_id = f"{name}/{entry['key']}"
        clip_path = f"wds:{path}#{entry['member']}"
        self._members[clip_path] = (path, entry["offset"], entry["size"], entry["crc32"])
        self.captions[clip_id] = list(entry["captions"])
        self.clips.append(Clip(clip_id, clip_path, entry["captions"][0] if entry[
            "captions"] else ""))
        if entry["caption_problem"]:
          self.counts["without_caption"][entry["caption_problem"]] += 1
          self.problems.append(f"{clip_id}: {entry['caption_problem']}")
    self.counts["num_clips"] = len(self.clips)
    for line in self.problems[:_MAX_LOGGED]:
      logger.warning("database: %s", line)
    if len(self.problems) > _MAX_LOGGED:
      logger.warning("database: %d more problems like these (counts in the manifest, every "
                     "one in the shard indexes under %s)", len(self.problems) - _MAX_LOGGED,
                     self.index_dir or "the scan")
    self._handles: dict[str, object] = {}

  def shard_name(self, path: str) -> str:
    return os.path.relpath(path, self.folder)[:-len(SHARD_SUFFIX)].replace(os.sep, "/")

  def _stamp(self, i: int) -> dict:
    st = os.stat(self.shards[i])
    return {"version": _INDEX_VERSION, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "caption_key": self.caption_key}

  def _index_path(self, i: int) -> str:
    return (os.path.join(self.index_dir, self.shard_name(self.shards[i]) + ".index.json")
            if self.index_dir else "")

  def _cached_index(self, i: int) -> dict | None:
    """Shard `i`'s cached listing, when there is one and its stamp matches the shard."""
    cache = self._index_path(i)
    if not cache or not os.path.exists(cache):
      return None
    try:
      with open(cache, encoding="utf-8") as f:
        index = json.load(f)
    except (OSError, ValueError) as e:
      logger.warning("database: index %s does not load (%s); scanning the shard again",
                     cache, e)
      return None
    return index if index.get("stamp") == self._stamp(i) else None

  def _scan(self, i: int) -> dict:
    """Shard `i`'s listing by a streaming pass, cached when there is an index folder."""
    start = time.time()
    index = {"stamp": self._stamp(i), **scan_shard(self.shards[i], self.caption_key)}
    logger.info("database: indexed %s (%d members, %d clips) in %.1f s", self.shards[i],
                index["num_members"], len(index["clips"]), time.time() - start)
    if self.index_dir:
      files.write_text(self._index_path(i), json.dumps(index, ensure_ascii=False))
    return index

  def member(self, clip_path: str) -> tuple[str, int, int, int]:
    """(shard path, data offset, size, CRC-32) of a `wds:` clip."""
    return self._members[clip_path]

  def read(self, clip_path: str) -> bytes:
    """The bytes of a clip's audio member, read by seeking into its shard.

    Raises:
      audio.DecodeError: naming shard and member, when the shard cannot be read or the
        bytes there are not the member the scan indexed (the shard changed since).
    """
    shard, offset, size, crc = self._members[clip_path]
    where = clip_path[len("wds:"):]
    try:
      handle = self._handles.get(shard)
      if handle is None:
        if len(self._handles) >= 8:  # clips are read in shard order: few handles are needed
          self._handles.pop(next(iter(self._handles))).close()
        handle = self._handles[shard] = open(shard, "rb")  # pylint: disable=consider-using-with
      handle.seek(offset)
      data = handle.read(size)
    except OSError as e:
      raise audio_lib.DecodeError(f"{where}: {e}") from e
    if len(data) != size or zlib.crc32(data) != crc:
      raise audio_lib.DecodeError(f"{where}: the {size} bytes at offset {offset} are not the "
                                  "indexed member (the shard changed since it was indexed)")
    return data

  def load(self, clip_path: str, target_rate: int, max_seconds: float | None) -> np.ndarray:
    """Mono float32 audio at `target_rate` of a `wds:<shard>#<member>` clip."""
    data = self.read(clip_path)
    try:
      return audio_lib.load(data, target_rate, max_seconds=max_seconds)
    except audio_lib.DecodeError as e:
      reason = str(e).removeprefix("<bytes>: ")
      raise audio_lib.DecodeError(f"{clip_path[len('wds:'):]}: {reason}") from e

  def describe(self) -> dict:
    """The manifest entry: where the shards are, what they hold, what was left out."""
    return {"kind": "webdataset", "dir": self.folder, "num_shards": len(self.shards),
            "caption_key": self.caption_key, **self.counts,
            "problems": self.problems[:_MAX_LOGGED], "num_problems": len(self.problems)}


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
