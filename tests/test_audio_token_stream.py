"""ITH's audio tokens stream from the shards: the full AST sequence end to end.

Features are built in the `full` layout (every AST output token, specials included) on the
tiny AST (2 x 4 patches: 10 tokens a clip); the arrays handed to the loop hold references,
not tokens, and a batch reads only its own rows' records, with the values the shards hold.
An ITH smoke run on these features trains and evaluates.
"""

import os

import numpy as np
import pytest

from axk.features import pipeline
from axk.features import shards
from axk.runs import masked_word
from axk.train import data as data_lib
from configs import ith as ith_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _features_config():
  from configs import features as module  # pylint: disable=g-import-not-at-top
  c = module.get_config("smoke")
  c.source = "retrieval"
  c.data.tasks, c.data.splits = ("pitch",), ("train", "dev")
  c.database.synthetic_clips = 8
  c.ast.token_layout = "full"
  return c


@pytest.fixture(scope="module")
def full_features(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("full_features"))
  return pipeline.run(_features_config(), workdir)["retrieval"]


def _ith_config(features_dir):
  c = ith_config.get_config("smoke")
  c.data.tasks, c.data.splits = ("pitch",), ("train", "dev")
  c.features.dir = features_dir
  c.spans.predictions = ""
  c.train.epochs = 1
  return c


def test_full_layout_is_recorded_in_the_manifest(full_features):
  manifest = shards.read_manifest(full_features)
  assert manifest["params"]["ast"]["token_layout"] == "full"
  assert manifest["dims"]["num_audio_tokens"] == 2 + 2 * 4  # specials + the whole grid


def test_batches_read_only_their_rows(full_features, tmp_path):
  config = _ith_config(full_features)
  experiment = masked_word.MaskedWord(
      masked_word._for_tasks(config, ("pitch",), {"pitch": 1e-3}), str(tmp_path),
      masked_word.Inputs(features_dir=full_features))
  tokens = experiment.train_arrays["span_audio_tokens"]
  # Lazy: references into the shards, nothing read yet.
  assert isinstance(tokens, data_lib.SpanTokens)
  assert tokens.shape[2:] == (10, 32)
  assert tokens.cells and all(isinstance(c, shards.TokenRef) for c in tokens.cells)
  store = tokens.cells[0].store
  reads_before = store.reads
  batches = data_lib.TrainBatches(experiment.train_arrays, batch_size=4, epochs=1, seed=0)
  rows = np.asarray(batches.indices[0])
  batch = batches[0]
  with_audio = experiment.train_arrays["span_has_audio"][rows].any(axis=1)
  assert store.reads - reads_before == int(with_audio.sum())  # one record per row, no more
  # The values: the shards' own tokens, read eagerly (all at once) for comparison.
  eager = shards.load_features(full_features, "pitch", "train")
  ids = [experiment.train_ids[r] for r in rows]
  assert batch["span_audio_tokens"].shape == (4, tokens.shape[1], 10, 32)
  for b, example_id in enumerate(ids):
    spans = sorted(eager[example_id]["spans"], key=lambda s: s["start"])
    for j in range(tokens.shape[1]):
      want = (spans[j]["ast_tokens"] if j < len(spans) and spans[j]["has_audio"]
              else np.zeros((10, 32), np.float16))
      np.testing.assert_array_equal(batch["span_audio_tokens"][b, j], want)


@pytest.mark.e2e  # The chain: full-layout features, then an ITH run on them.
def test_ith_smoke_trains_and_evaluates_on_full_tokens(full_features, tmp_path):
  results = masked_word.run(_ith_config(full_features), str(tmp_path))
  assert results["pitch"]["dev"]["with_audio"] > 0
  assert 0 <= results["pitch"]["dev"]["accuracy"] <= 100


def test_span_tokens_reads_only_the_cells_of_the_rows_taken():
  cells = [np.full((2, 3), v, np.float32) for v in (1.0, 2.0, 3.0)]
  asked = []

  def read(batch):
    asked.append([int(c[0, 0]) for c in batch])
    return [np.asarray(c) for c in batch]

  index = np.array([[0, -1], [-1, -1], [1, 2]])  # row 1: no audio at all
  x = data_lib.SpanTokens(cells, index, (2, 3), read=read)
  assert x.shape == (3, 2, 2, 3) and len(x) == 3 and x.dtype == np.float16
  got = x[np.array([2, 1])]
  assert asked == [[2, 3]]  # row 2's two cells, nothing for row 1
  want = np.zeros((2, 2, 2, 3), np.float16)
  want[0, 0], want[0, 1] = 2.0, 3.0
  np.testing.assert_array_equal(got, want)
  view = x[:1]  # a slice stays lazy
  assert isinstance(view, data_lib.SpanTokens) and asked == [[2, 3]]
  np.testing.assert_array_equal(np.asarray(view)[0, 0], np.ones((2, 3)))
  np.testing.assert_array_equal(x[1], np.zeros((2, 2, 3)))


def test_parts_are_memory_mapped_and_still_checked(tmp_path, caplog):
  """The assembly reads parts' large members (here full AST sequences) as memory maps, no
  clip's tokens copied into memory, equal to `np.load`'s arrays; small members are copied;
  a part with a flipped byte is still set aside."""
  import zipfile
  from axk.features import parts
  rng = np.random.default_rng(0)
  arrays = {"text": np.array(["a", "bb", "c"]), "has_audio": np.array([True, False, True]),
            "ast_tokens": rng.standard_normal((3, 1214, 768)).astype(np.float16),
            "topk_ids": np.zeros((3, 0), dtype=str), "source": np.array(["x", "", "y"])}
  path = parts.write_part(str(tmp_path), 0, 1, arrays)
  results = parts.read_parts(str(tmp_path))
  with np.load(path) as z:
    for i, key in enumerate(z["text"]):
      for name in z.files:
        np.testing.assert_array_equal(results[str(key)][name], z[name][i])
        assert np.asarray(results[str(key)][name]).dtype == np.asarray(z[name][i]).dtype
  def mapped(x):
    while x is not None and not isinstance(x, np.memmap):
      x = x.base
    return x is not None

  assert mapped(results["bb"]["ast_tokens"]) and not mapped(results["bb"]["has_audio"])
  with zipfile.ZipFile(path) as z:
    info = z.getinfo("ast_tokens.npy")
  raw = bytearray(open(path, "rb").read())
  raw[info.header_offset + 30 + len(info.filename) + 500] ^= 0xFF  # inside the array data
  open(path, "wb").write(bytes(raw))
  assert parts.finished(str(tmp_path)) == set()
  assert os.path.exists(path + ".damaged")
  assert any("Bad CRC" in r.getMessage() for r in caplog.records)
