"""AudioBERT's retrieval database as published: webdataset tar shards (LAION-Audio-630K form).

The shards are written here: synthetic FLAC and WAV clips with JSON captions, plus the faults
a downloaded set can have (a group without its JSON, a JSON without audio, a JSON that does
not parse, an undecodable clip, an extra member). Retrieval runs on tiny random CLAP and AST
models; the expected ids, captions, samples and top-1 clips are computed independently here
(the test's own record of what it wrote, `tarfile` extraction, soundfile, NumPy cosine).
"""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import tarfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sf = pytest.importorskip("soundfile")

# pylint: disable=g-import-not-at-top,wrong-import-position
from axk.features import audio as audio_lib
from axk.features import clap as clap_lib
from axk.features import pipeline
from axk.features import retrieval
from axk.features import shards as shards_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _encode(wave: np.ndarray, rate: int, fmt: str) -> bytes:
  buf = io.BytesIO()
  sf.write(buf, wave, rate, format=fmt, subtype="PCM_16")
  return buf.getvalue()


def _clip(rng, rate: int, seconds: float, channels: int = 1) -> np.ndarray:
  t = np.arange(int(rate * seconds)) / rate
  wave = 0.4 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t) + 0.1 * rng.standard_normal(t.size)
  wave = wave.astype(np.float32)
  return np.stack([wave, 0.5 * wave], axis=1) if channels == 2 else wave


def _write_tar(path: str, members: list[tuple[str, bytes]]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tarfile.open(path, "w") as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shard_db(tmp_path_factory) -> dict:
  """Three shards in two folders; returns the folder and what each clip should be."""
  root = str(tmp_path_factory.mktemp("laion"))
  rng = np.random.default_rng(0)
  expect = {}  # id -> (format, rate, original samples, captions)

  def audio(shard: str, key: str, fmt: str, rate: int, captions, channels: int = 1):
    wave = _clip(rng, rate, float(rng.uniform(0.3, 0.8)), channels)
    expect[f"{shard}/{key}"] = (fmt, rate, wave, captions)
    return _encode(wave, rate, fmt.upper())

  js = lambda value: json.dumps({"text": value, "tag": ["x"]}).encode()
  _write_tar(os.path.join(root, "train", "0.tar"), [
      ("a1.flac", audio("train/0", "a1", "flac", 48_000, ["dog barking", "a dog barks"])),
      ("a1.json", js(["dog barking", "a dog barks"])),  # LAION's form: a list of captions
      ("a2.json", js("rain on a roof")),  # the JSON before the audio; a plain string
      ("a2.flac", audio("train/0", "a2", "flac", 44_100, ["rain on a roof"])),
      ("a3.flac", audio("train/0", "a3", "flac", 48_000, [])),  # no JSON member
      ("a4.json", js(["a caption without audio"])),  # no audio: skipped
      ("a5.flac", audio("train/0", "a5", "flac", 16_000, ["bell"], channels=2)),
      ("a5.json", js(["bell"])),
      ("a5.txt", b"an extra member, ignored"),
  ])
  _write_tar(os.path.join(root, "train", "1.tar"), [
      ("b1.wav", audio("train/1", "b1", "wav", 22_050, ["engine idling"])),
      ("b1.json", js(["engine idling"])),
      ("b2.flac", b"fLaC but not really audio" * 20),  # listed, undecodable
      ("b2.json", js(["broken clip"])),
      ("b3.flac", audio("train/1", "b3", "flac", 48_000, [])),
      ("b3.json", b"{not json"),
  ])
  _write_tar(os.path.join(root, "test", "0.tar"), [
      # The same key as in train/0: ids stay distinct through the shard name.
      ("a1.flac", audio("test/0", "a1", "flac", 48_000, ["cat meowing"])),
      ("a1.json", js(["cat meowing"])),
      ("sub/c1.flac", audio("test/0", "sub/c1", "flac", 32_000, ["water"])),
      ("sub/c1.json", js(["water"])),
  ])
  return {"dir": root, "expect": expect, "broken": "train/1/b2"}


def _load_config(variant: str):
  from configs import features as module  # pylint: disable=g-import-not-at-top
  return module.get_config(variant)


def _db_config(folder: str, cache_dir: str = "", **overrides):
  c = _load_config("retrieval").database
  c.dir, c.cache_dir = folder, cache_dir
  for k, v in overrides.items():
    c[k] = v
  return c


def _no_tar_scan(monkeypatch):
  """From here on, any tarfile scan fails the test: clips must be read by seeking."""
  def refuse(*args, **kwargs):
    raise AssertionError("a shard was opened with tarfile again")
  monkeypatch.setattr(tarfile, "open", refuse)


# ----------------------------------------------------------------------------------------
# Listing, captions, problems, the index cache.
# ----------------------------------------------------------------------------------------


def test_shards_listed_with_ids_captions_and_problems(shard_db, tmp_path, monkeypatch):
  db = retrieval.AudioDatabase.from_config(_db_config(shard_db["dir"], str(tmp_path)))
  expected_ids = ["test/0/a1", "test/0/sub/c1", "train/0/a1", "train/0/a2", "train/0/a3",
                  "train/0/a5", "train/1/b1", "train/1/b2", "train/1/b3"]
  assert [c.id for c in db.clips] == expected_ids
  want = {i: v[3] for i, v in shard_db["expect"].items()}
  want["train/1/b2"] = ["broken clip"]
  assert db.shards.captions == want
  assert {c.id: c.caption for c in db.clips} == {i: (v[0] if v else "")
                                                 for i, v in want.items()}
  info = db.info
  assert info["kind"] == "webdataset" and info["num_shards"] == 3
  assert info["num_members"] == 19 and info["num_clips"] == 9
  assert info["skipped"] == {"no_audio": 1, "extra_audio": 0}
  assert info["without_caption"] == {"no_json": 1, "bad_json": 1, "no_caption_field": 0}
  assert sorted(info["problems"]) == ["train/0/a3: no_json",
                                      "train/0/a4: no_audio (a4.json)",
                                      "train/1/b3: bad_json"]
  assert len(glob.glob(os.path.join(str(tmp_path), "webdataset_index", "**", "*.index.json"),
                       recursive=True)) == 3

  # A second listing reads the cached indexes: no shard is opened as a tar again.
  _no_tar_scan(monkeypatch)
  scanned = []
  monkeypatch.setattr(retrieval, "scan_shard", lambda *a, **k: scanned.append(a))
  again = retrieval.AudioDatabase.from_config(_db_config(shard_db["dir"], str(tmp_path)))
  assert not scanned and again.clips == db.clips
  assert again.content_fingerprint() == db.content_fingerprint()


def test_shard_glob_and_format_detection(shard_db, tmp_path):
  only_train = retrieval.AudioDatabase.from_config(
      _db_config(shard_db["dir"], shards="train/*.tar"))
  assert {c.id.split("/")[0] for c in only_train.clips} == {"train"}
  assert len(only_train.clips) == 7

  mixed = tmp_path / "mixed"
  shutil.copytree(os.path.join(shard_db["dir"], "test"), mixed / "test")
  sf.write(str(mixed / "loose.wav"), np.zeros(800, np.float32), 16_000)
  with pytest.raises(ValueError, match="holds 1 .tar shards and 1 audio files"):
    retrieval.AudioDatabase.from_config(_db_config(str(mixed)))
  as_folder = retrieval.AudioDatabase.from_config(_db_config(str(mixed), format="folder"))
  assert [c.id for c in as_folder.clips] == ["loose"]
  with pytest.raises(FileNotFoundError, match="no shards match"):
    retrieval.AudioDatabase.from_config(_db_config(str(tmp_path / "mixed" / "test"),
                                                   format="webdataset", shards="*.tgz"))


def test_bad_shards_fail_with_one_line_naming_them(shard_db, tmp_path):
  not_tar = tmp_path / "not_tar"
  not_tar.mkdir()
  (not_tar / "00.tar").write_bytes(b"<html>rate limited</html>" * 40)
  with pytest.raises(ValueError, match=r"00\.tar: not an uncompressed tar archive"):
    retrieval.AudioDatabase.from_config(_db_config(str(not_tar)))

  # A shard cut short in its third member (a partial download): named with the last member.
  cut = tmp_path / "cut"
  cut.mkdir()
  with open(os.path.join(shard_db["dir"], "train", "0.tar"), "rb") as f:
    data = f.read()
  with tarfile.open(os.path.join(shard_db["dir"], "train", "0.tar")) as tar:
    third = tar.getmembers()[2]
  (cut / "0.tar").write_bytes(data[:third.offset_data + 10])
  with pytest.raises(ValueError, match=r"0\.tar: not a readable tar archive after member "
                     r"'a2\.json'"):
    retrieval.AudioDatabase.from_config(_db_config(str(cut)))


# ----------------------------------------------------------------------------------------
# Reading a clip back by seeking.
# ----------------------------------------------------------------------------------------


def test_clip_read_by_seeking_round_trips(shard_db, tmp_path, monkeypatch):
  folder = str(tmp_path / "db")
  shutil.copytree(shard_db["dir"], folder)
  db = retrieval.AudioDatabase.from_config(_db_config(folder))
  # Reference bytes: each member extracted by tarfile in the ordinary (random access) way.
  members = {}
  for shard in ("test/0", "train/0", "train/1"):
    with tarfile.open(os.path.join(folder, shard + ".tar")) as tar:
      for info in tar.getmembers():
        members[f"{shard}/{info.name}"] = tar.extractfile(info).read()
  _no_tar_scan(monkeypatch)
  for i, clip in enumerate(db.clips):
    if clip.id == shard_db["broken"]:
      with pytest.raises(audio_lib.DecodeError, match=r"train/1\.tar#b2\.flac"):
        db.load(i, 48_000)
      continue
    fmt, rate, original, _ = shard_db["expect"][clip.id]
    raw = members[f"{clip.id}.{fmt}"]
    assert db.shards.read(clip.path) == raw
    reference, ref_rate = sf.read(io.BytesIO(raw), dtype="float32")
    reference = reference.mean(axis=1) if reference.ndim == 2 else reference
    assert ref_rate == rate
    np.testing.assert_array_equal(db.load(i, rate), reference)
    # And the samples the test wrote, up to 16-bit quantisation.
    mono = original.mean(axis=1) if original.ndim == 2 else original
    np.testing.assert_allclose(db.load(i, rate), mono, atol=1.5 / 32768)

  # A shard changed after indexing: the bytes at the recorded offset no longer match.
  i = db.index["train/0/a2"]
  shard, offset, size, _ = db.shards.member(db.clips[i].path)
  with open(shard, "r+b") as f:
    f.seek(offset + size // 2)
    f.write(b"\x00" * 16)
  with pytest.raises(audio_lib.DecodeError, match=r"train/0\.tar#a2\.flac: .* not the indexed"):
    db.load(i, 48_000)


# ----------------------------------------------------------------------------------------
# The paper's retrieval on the shards, end to end.
# ----------------------------------------------------------------------------------------


def _reference_top1(cache_dir: str, ids: list[str], queries: np.ndarray,
                    exclude: set[str]) -> list[str]:
  """Top-1 by NumPy cosine over the cached chunk files, read directly."""
  (folder,) = glob.glob(os.path.join(cache_dir, "*", "manifest.json"))
  chunks = sorted(glob.glob(os.path.join(os.path.dirname(folder), "chunk-*.npz")))
  loaded = [np.load(c) for c in chunks]
  assert [str(i) for z in loaded for i in z["ids"]] == ids
  emb = np.concatenate([z["embeddings"] for z in loaded]).astype(np.float64)
  valid = np.concatenate([z["valid"] for z in loaded])
  norms = np.linalg.norm(emb, axis=1, keepdims=True)
  emb = np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)
  q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  cos = q @ emb.T
  cos[:, ~valid | np.isin(ids, sorted(exclude))] = -np.inf
  return [ids[j] for j in np.argmax(cos, axis=1)]


def test_retrieval_on_shards_matches_numpy_cosine_and_excludes(shard_db, models, tmp_path,
                                                                monkeypatch):
  torch.set_num_threads(1)
  cache = str(tmp_path / "cache")

  def run(workdir: str, exclude=()):
    c = _load_config("smoke")
    c.source = "retrieval"
    c.models.tiny = False
    c.models.clap, c.models.ast = models["clap"], models["ast"]
    c.database.synthetic_clips = 0
    c.database.dir, c.database.cache_dir, c.database.chunk_size = shard_db["dir"], cache, 4
    c.data.tasks, c.data.splits = ("pitch",), ("dev",)
    c.retrieval.exclude_ids = tuple(exclude)
    out = pipeline.run(c, workdir)["retrieval"]
    with open(os.path.join(out, shards_lib.ACQUISITIONS), encoding="utf-8") as f:
      return out, [json.loads(line) for line in f]

  out, rows = run(str(tmp_path / "w1"))
  db = retrieval.AudioDatabase.from_config(_db_config(shard_db["dir"], cache))
  ids = [c.id for c in db.clips]
  clap = clap_lib.ClapEncoder(models["clap"], device="cpu", batch_size=8)
  queries = clap.text([f"{r['text']} sound" for r in rows])
  assert [r["source"] for r in rows] == _reference_top1(cache, ids, queries, set())
  manifest = shards_lib.read_manifest(out)["database"]
  assert manifest["kind"] == "webdataset" and manifest["num_undecodable"] == 1
  assert manifest["skipped"]["no_audio"] == 1 and manifest["num_clips"] == 9
  captions = {c.id: c.caption for c in db.clips}
  assert all(r.get("caption", "") == captions[r["source"]] for r in rows)
  assert shard_db["broken"] not in {i for r in rows for i, _ in r["top_k"]}

  # Exclude the clip retrieved most often: it is never returned, the rest follow NumPy.
  # The shards are indexed: listing and the AST step of the retrieved clips read by seeking.
  sources = [r["source"] for r in rows]
  planted = max(set(sources), key=sources.count)
  _no_tar_scan(monkeypatch)
  out2, rows2 = run(str(tmp_path / "w2"), exclude=(planted, "no/such/clip"))
  assert [r["text"] for r in rows2] == [r["text"] for r in rows]
  assert [r["source"] for r in rows2] == _reference_top1(cache, ids, queries, {planted})
  assert planted not in {i for r in rows2 for i, _ in r["top_k"]}
  assert shards_lib.read_manifest(out2)["database"]["excluded"] == {"ids": 2,
                                                                    "in_database": 1}
  # Both runs embedded into one cache: one fingerprint folder.
  assert len(glob.glob(os.path.join(cache, "*", "manifest.json"))) == 1


def test_embedding_cache_resumes_a_lost_chunk(shard_db, models, tmp_path):
  torch.set_num_threads(1)
  clap = clap_lib.ClapEncoder(models["clap"], device="cpu", batch_size=8)
  cache = str(tmp_path / "cache")
  db = retrieval.AudioDatabase.from_config(_db_config(shard_db["dir"], cache))
  db.embed(clap, cache, chunk_size=4)
  assert int((~db.valid).sum()) == 1 and not db.valid[db.index[shard_db["broken"]]]
  chunks = sorted(glob.glob(os.path.join(cache, db.fingerprint, "chunk-*.npz")))
  assert len(chunks) == 3
  os.remove(chunks[1])  # an interrupted run: the middle chunk never landed
  calls = clap.audio_calls
  again = retrieval.AudioDatabase.from_config(_db_config(shard_db["dir"], cache))
  again.embed(clap, cache, chunk_size=4)
  assert clap.audio_calls == calls + 1  # that chunk alone, in one CLAP batch
  np.testing.assert_array_equal(again.embeddings, db.embeddings)
  # Its clips, embedded one by one from the samples the test wrote, agree.
  for i in range(4, 8):
    clip = db.clips[i]
    if clip.id == shard_db["broken"]:
      continue
    _, rate, original, _ = shard_db["expect"][clip.id]
    mono = original.mean(axis=1) if original.ndim == 2 else original
    ref = clap.audio([audio_lib.resample(mono, rate, clap.sampling_rate)])[0]
    np.testing.assert_allclose(again.embeddings[i], ref, atol=5e-4)  # clips differ by > 0.1
