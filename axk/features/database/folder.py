"""A database that is a folder of audio files, listed by a metadata file or by a scan."""

from __future__ import annotations

import csv
import json
import os

from axk.features import audio as audio_lib
from axk.features.database import Clip


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
