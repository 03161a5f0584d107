"""Damaged and copied feature workdirs: found before any work, named in one line, repaired.

One retrieval run on tiny random models (pitch/dev of the shipped sample data, a synthetic
database inside the workdir) is the untouched reference. Each test copies that workdir,
damages the copy, and checks the outcome: `shards.verify` names the file and what is wrong
with it, and a rerun rebuilds only what is damaged, ending with features equal, array for
array, to the reference. Model calls (CLAP text and audio, AST) are counted to show what was
recomputed.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

# pylint: disable=g-import-not-at-top,wrong-import-position
from axk.features import ast as ast_lib
from axk.features import clap as clap_lib
from axk.features import parts
from axk.features import pipeline
from axk.features import shards
from conftest import assert_same_features as assert_same_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FEATURES = "features"
DEV_SHARD = f"{shards.BUILDER_NAME}/pitch/{shards.VERSION}/{shards.BUILDER_NAME}-dev.array_record"


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _config(models, **overrides):
  from configs import features as module  # pylint: disable=g-import-not-at-top
  c = module.get_config("smoke")
  c.source = "retrieval"
  c.models.tiny = False
  c.models.clap, c.models.ast = models["clap"], models["ast"]
  c.data.tasks, c.data.splits = ("pitch",), ("dev",)
  c.database.synthetic_clips = 10  # written into <workdir>/audio_db
  c.database.chunk_size = 4
  c.retrieval.features_dir = FEATURES
  c.batch_size = 8
  c.ast.token_layout, c.ast.num_audio_tokens = "time", 3
  for key, value in overrides.items():
    setattr(c, key, value)
  return c


class Calls:
  """Counts model calls: CLAP text and audio batches, AST batches, and the keys acquired."""

  def __init__(self, monkeypatch):
    self.clap_text = self.clap_audio = self.ast = 0
    self.acquired: list[str] = []
    for cls, name, counter in ((clap_lib.ClapEncoder, "text", "clap_text"),
                               (clap_lib.ClapEncoder, "audio", "clap_audio"),
                               (ast_lib.AstEncoder, "__call__", "ast")):
      monkeypatch.setattr(cls, name, self._counting(getattr(cls, name), counter))
    original = parts.write_part

    def write_part(folder, shard_index, num_shards, arrays):
      self.acquired += [str(t) for t in arrays["text"]]
      return original(folder, shard_index, num_shards, arrays)

    monkeypatch.setattr(parts, "write_part", write_part)

  def _counting(self, fn, counter):
    def wrapper(*args, **kwargs):
      setattr(self, counter, getattr(self, counter) + 1)
      return fn(*args, **kwargs)
    return wrapper

  @property
  def model_calls(self) -> int:
    return self.clap_text + self.clap_audio + self.ast


@pytest.fixture(scope="module")
def reference(models, tmp_path_factory) -> str:
  """The untouched run's workdir."""
  workdir = str(tmp_path_factory.mktemp("reference") / "w")
  pipeline.run(_config(models), workdir)
  return workdir


@pytest.fixture
def copy(reference, tmp_path) -> str:
  """A copy of the reference workdir (at another absolute path)."""
  workdir = str(tmp_path / "copied")
  shutil.copytree(reference, workdir)
  return workdir


def _assert_same_features(a_dir: str, b_dir: str) -> None:
  a = shards.load_features(a_dir, "pitch", "dev")
  assert a
  assert_same_rows(a, shards.load_features(b_dir, "pitch", "dev"))


def _warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _rebuilds_identically(models, copy, reference, monkeypatch, caplog, damaged: str):
  """Reruns the copy: one warning naming `damaged`, no model call, reference features."""
  calls = Calls(monkeypatch)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    pipeline.run(_config(models), copy)
  named = [m for m in _warnings(caplog) if damaged in m]
  assert len(named) == 1 and "rebuilt" in named[0], _warnings(caplog)
  assert calls.model_calls == 0 and not calls.acquired
  shards.verify(os.path.join(copy, FEATURES))
  _assert_same_features(os.path.join(copy, FEATURES), os.path.join(reference, FEATURES))


def test_untouched_features_verify_and_every_file_is_listed(reference):
  features_dir = os.path.join(reference, FEATURES)
  manifest = shards.verify(features_dir, num_audio_tokens=3)
  on_disk = {os.path.relpath(os.path.join(root, name), features_dir)
             for root, _, names in os.walk(features_dir)
             for name in names} - {shards.MANIFEST, shards.VERIFIED}
  assert set(manifest["files"]) == on_disk
  shard = os.path.join(features_dir, DEV_SHARD + "-00000-of-00001")
  entry = manifest["files"][DEV_SHARD + "-00000-of-00001"]
  assert entry["size"] == os.path.getsize(shard)
  assert entry["sha256"] == shards.sha256_file(shard)
  # The last hashes are remembered: an unchanged folder is not read again.
  assert os.path.exists(os.path.join(features_dir, shards.VERIFIED))


def test_truncated_shard_is_named_and_rebuilt(models, copy, reference, monkeypatch, caplog):
  shard = os.path.join(copy, FEATURES, DEV_SHARD + "-00000-of-00001")
  size = os.path.getsize(shard)
  with open(shard, "r+b") as f:
    f.truncate(size // 2)
  with pytest.raises(shards.FeaturesMismatch) as e:
    shards.verify(os.path.join(copy, FEATURES))
  message = str(e.value)
  assert "\n" not in message and shard in message and f"{size // 2} bytes" in message
  assert not shards.verified(os.path.join(copy, FEATURES))  # the stage is not done
  _rebuilds_identically(models, copy, reference, monkeypatch, caplog, shard)


def test_same_size_change_is_found_by_hash(copy):
  shard = os.path.join(copy, FEATURES, DEV_SHARD + "-00000-of-00001")
  with open(shard, "r+b") as f:
    f.seek(100)
    byte = f.read(1)
    f.seek(100)
    f.write(bytes([byte[0] ^ 0xFF]))
  with pytest.raises(shards.FeaturesMismatch, match="sha256"):
    shards.verify(os.path.join(copy, FEATURES))


def test_deleted_shard_is_named_and_rebuilt(models, copy, reference, monkeypatch, caplog):
  shard = os.path.join(copy, FEATURES, DEV_SHARD + "-00000-of-00001")
  os.remove(shard)
  with pytest.raises(shards.FeaturesMismatch, match="missing") as e:
    shards.verify(os.path.join(copy, FEATURES))
  assert shard in str(e.value) and "\n" not in str(e.value)
  _rebuilds_identically(models, copy, reference, monkeypatch, caplog, shard)


def test_corrupt_manifest_is_named_and_rebuilt(models, copy, reference, monkeypatch, caplog):
  manifest = os.path.join(copy, FEATURES, shards.MANIFEST)
  with open(manifest, "r+b") as f:
    f.truncate(os.path.getsize(manifest) // 3)
  with pytest.raises(shards.FeaturesMismatch, match="corrupt manifest") as e:
    shards.verify(os.path.join(copy, FEATURES))
  assert manifest in str(e.value) and "\n" not in str(e.value)
  _rebuilds_identically(models, copy, reference, monkeypatch, caplog, manifest)


def test_other_num_audio_tokens_is_refused_in_one_line(reference):
  with pytest.raises(shards.FeaturesMismatch) as e:
    shards.verify(os.path.join(reference, FEATURES), num_audio_tokens=16)
  message = str(e.value)
  assert "\n" not in message and shards.MANIFEST in message
  assert "num_audio_tokens is 3, 16 wanted" in message and "layout 'time'" in message


def test_truncated_part_is_named_and_only_it_recomputed(models, copy, reference, monkeypatch,
                                                        caplog):
  part = sorted(glob.glob(os.path.join(copy, "parts", "*", "shard-*", "part-*.npz")))[0]
  with np.load(part) as z:
    keys = sorted(str(t) for t in z["text"])
  with open(part, "r+b") as f:
    f.truncate(os.path.getsize(part) // 2)
  shutil.rmtree(os.path.join(copy, FEATURES))  # so that the run reaches the parts
  calls = Calls(monkeypatch)
  with caplog.at_level(logging.WARNING):
    pipeline.run(_config(models), copy)
  named = [m for m in _warnings(caplog) if part in m]
  assert len(named) == 1 and "does not load" in named[0]
  assert os.path.exists(part + ".damaged")
  assert sorted(calls.acquired) == keys  # that part's keys, and no others
  _assert_same_features(os.path.join(copy, FEATURES), os.path.join(reference, FEATURES))


def test_truncated_database_chunk_is_named_and_recomputed(models, copy, reference,
                                                          monkeypatch, caplog):
  chunks = sorted(glob.glob(os.path.join(copy, "cache", "database", "*", "chunk-*.npz")))
  assert len(chunks) == 3  # 11 clips (10 + broken.wav) in chunks of 4
  chunk = chunks[1]
  with np.load(chunk) as z:
    expected = {k: z[k] for k in z.files}
  with open(chunk, "r+b") as f:
    f.truncate(os.path.getsize(chunk) - 40)
  calls = Calls(monkeypatch)
  with caplog.at_level(logging.WARNING):
    pipeline.run(_config(models, stage="database"), copy)
  named = [m for m in _warnings(caplog) if chunk in m]
  assert len(named) == 1 and "database chunk" in named[0]
  assert calls.clap_audio == 1  # that chunk's clips, in one CLAP batch
  with np.load(chunk) as z:
    for k, v in expected.items():
      np.testing.assert_array_equal(z[k], v)


def test_copied_workdir_reuses_everything(models, copy, reference, monkeypatch, caplog):
  # The features themselves verify at the new path...
  calls = Calls(monkeypatch)
  out = pipeline.run(_config(models), copy)
  assert out["retrieval"] == os.path.join(copy, FEATURES) and calls.model_calls == 0
  # ... and without them, the parts and the database embeddings (same run key, same
  # database fingerprint, though the database and the workdir moved) rebuild them.
  shutil.rmtree(os.path.join(copy, FEATURES))
  with caplog.at_level(logging.WARNING):
    pipeline.run(_config(models), copy)
  assert calls.model_calls == 0 and not calls.acquired
  assert not glob.glob(os.path.join(copy, "parts", "*", "shard-*", "*.damaged"))
  assert len(glob.glob(os.path.join(copy, "parts", "*"))) == 1
  assert len(glob.glob(os.path.join(copy, "cache", "database", "*"))) == 1
  _assert_same_features(os.path.join(copy, FEATURES), os.path.join(reference, FEATURES))


def test_local_writes_print_no_download_lines(models, copy, capfd):
  shutil.rmtree(os.path.join(copy, FEATURES))
  pipeline.run(_config(models), copy)
  out, err = capfd.readouterr()
  assert "Downloading and preparing" not in out + err
  assert "downloaded and prepared" not in out + err


def test_feature_stage_counts_as_done_only_when_it_verifies(reference, tmp_path, monkeypatch):
  from axk.runs import stages
  from configs import audiobert as audiobert_config
  workdir = tmp_path / "run"
  (workdir / "stages" / "span").mkdir(parents=True)
  (workdir / "stages" / "span" / "results.json").write_text("{}")
  shutil.copytree(os.path.join(reference, FEATURES), workdir / "stages" / "features" / "out")
  ran = []
  monkeypatch.setattr(stages, "_run", lambda command, what, folder: ran.append(what))

  def prepare():
    config = audiobert_config.get_config("smoke")
    config.features.dir, config.stages.features_output = "auto", "out"
    # The reference features are at gold spans: the run asks for gold spans everywhere.
    config.spans.gold_splits = ",".join(config.data.splits)
    return stages.prepare(config, str(workdir))

  assert prepare()["features_dir"] == str(workdir / "stages" / "features" / "out") and not ran
  os.remove(workdir / "stages" / "features" / "out" / (DEV_SHARD + "-00000-of-00001"))
  prepare()
  assert ran == ["features"]  # a damaged output reruns its stage


def test_training_refuses_damaged_features_before_any_step(reference, copy, tmp_path):
  from axk.runs import masked_word
  from configs import audiobert as audiobert_config
  shard = os.path.join(copy, FEATURES, DEV_SHARD + "-00000-of-00001")
  with open(shard, "r+b") as f:
    f.truncate(100)
  config = audiobert_config.get_config("smoke")
  config.features.dir = os.path.join(copy, FEATURES)
  with pytest.raises(shards.FeaturesMismatch, match="100 bytes") as e:
    masked_word.MaskedWord(config, str(tmp_path / "train"),
                           masked_word.Inputs(features_dir=config.features.dir))
  assert shard in str(e.value)


def test_verify_hashes_only_files_that_changed(copy, monkeypatch):
  features_dir = os.path.join(copy, FEATURES)
  shards.verify(features_dir)
  hashed = []
  original = shards.sha256_file
  monkeypatch.setattr(shards, "sha256_file", lambda p: hashed.append(p) or original(p))
  monkeypatch.setattr(shards, "_HASHED", {})  # a new process: only verified.json remembers
  shards.verify(features_dir)
  assert not hashed
  shard = os.path.join(features_dir, DEV_SHARD + "-00000-of-00001")
  os.utime(shard, ns=(0, 10**18))  # same content, new modification time
  shards.verify(features_dir)
  assert hashed == [os.path.abspath(shard)]


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
  from axk.utils import files
  target = tmp_path / "out"
  with files.atomic_dir(str(target)) as tmp:
    files.write_text(os.path.join(tmp, "a.txt"), "one")
  with pytest.raises(RuntimeError):
    with files.atomic_dir(str(target)) as tmp:
      files.write_text(os.path.join(tmp, "b.txt"), "two")
      raise RuntimeError("interrupted")
  assert sorted(os.listdir(target)) == ["a.txt"]
  with files.atomic_dir(str(target)) as tmp:
    files.write_text(os.path.join(tmp, "b.txt"), "two")
  assert sorted(os.listdir(target)) == ["b.txt"]
  assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary folder left behind
