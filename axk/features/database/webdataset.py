"""A database that is webdataset tar shards (LAION-Audio-630K), read by seeking."""

from __future__ import annotations

import glob
import json
import logging
import os
import posixpath
import tarfile
import time
import zlib

import numpy as np

from axk.features import audio as audio_lib
from axk.features.database import Clip
from axk.utils import files

logger = logging.getLogger(__name__)

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
