"""Audio databases that retrieval searches, in the formats they come in.

A database is a list of `Clip`s and a way to read each clip's audio. It is either

  * a folder of audio files (`.wav`, `.flac`, `.ogg`, `.mp3`, searched recursively), with an
    optional metadata file (CSV with a header, or JSON lines) giving `id`, `path` (relative
    to the folder) and `caption` per clip; without one, a clip's id is its path relative to
    the folder, without extension (`folder.py`); or
  * a TFDS dataset stored as `array_record` or `tfrecord` files, read without TensorFlow:
    records are parsed with the `tf.train.Example` protos that TFDS ships, and the audio
    feature (an integer or float tensor, or encoded bytes) is decoded with NumPy or
    soundfile (`tfds.py`); or
  * webdataset tar shards, the form LAION-Audio-630K is distributed in (AudioBERT's
    database): each clip is a group of members sharing a key (`<key>.flac` + `<key>.json`
    with its caption). Shards are read member by member in stream mode, never unpacked;
    each clip's offset and size go into an index (cached per shard), and a clip is later
    read by seeking to it, its bytes checked against the CRC-32 the scan recorded
    (`webdataset.py`).

The searchable database over any of them is `axk.features.retrieval.AudioDatabase`.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Clip:
  """One database entry.

  `path` is a file path, `tfds:<file>#<record>` for TFDS, or `wds:<shard>#<member>` for a
  webdataset shard.
  """

  id: str
  path: str
  caption: str = ""
