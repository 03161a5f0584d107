"""A database that is a TFDS dataset, read without TensorFlow."""

from __future__ import annotations

import glob
import json
import os
import zlib

import numpy as np

from axk.features import audio as audio_lib
from axk.features.database import Clip


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
