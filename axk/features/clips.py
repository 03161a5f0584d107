"""The clip cache: generated clips as 16-bit FLAC with a JSON sidecar each, keyed by clip.

`<cache_dir>/<key[:2]>/<key>.flac` and `<key>.json`; the key is the generation's
`clip_key`, a hash of the model, the prompt, the generation parameters and the seed
(`axk.features.generation`). Nothing here imports torch: the feature source that plays a
cached clip and the report that links it read the cache without the generator.
"""

from __future__ import annotations

import json
import os

import numpy as np

from axk.utils import files


def cached_clip_path(cache_dir: str, key: str, ext: str = "flac") -> str:
  """Where the clip cache (`ClipCache`) keeps clip `key`."""
  return os.path.join(cache_dir, key[:2], f"{key}.{ext}")


class ClipCache:
  """Generated clips as FLAC plus JSON sidecars, keyed by `clip_key`."""

  def __init__(self, folder: str):
    self.folder = folder
    os.makedirs(folder, exist_ok=True)

  def _path(self, key: str, ext: str) -> str:
    return cached_clip_path(self.folder, key, ext)

  def sidecar(self, key: str) -> dict | None:
    try:
      with open(self._path(key, "json"), encoding="utf-8") as f:
        return json.load(f)
    except (OSError, json.JSONDecodeError):
      return None

  def audio(self, key: str) -> tuple[np.ndarray, int] | None:
    """The stored clip, `[C, T]` float32 and its rate, or None."""
    path = self._path(key, "flac")
    if not os.path.exists(path):
      return None
    import soundfile as sf  # pylint: disable=g-import-not-at-top
    wave, rate = sf.read(path, dtype="float32", always_2d=True)
    return wave.T, int(rate)

  def put(self, key: str, sidecar: dict, flac: bytes | None) -> None:
    """Writes the clip (when given) and then its sidecar, each atomically."""
    os.makedirs(os.path.join(self.folder, key[:2]), exist_ok=True)
    if flac is not None:
      files.write_bytes(self._path(key, "flac"), flac)
    files.write_bytes(self._path(key, "json"),
                      json.dumps({**sidecar, "audio": flac is not None}, indent=1,
                                 sort_keys=True).encode())
