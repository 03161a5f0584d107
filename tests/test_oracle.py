"""The oracle feature source (`configs/features.py:oracle`): vectors from the gold answers.

The features are built on the shipped sample data through the ordinary pipeline and read
back from the shards; what they should hold is derived here from the CSV files themselves
(span1/span2 columns and answers, read with `csv`), not from the source's code.
"""

from __future__ import annotations

import collections
import csv
import json
import os

import numpy as np
import pytest

from axk.data.types import Example
from axk.data.types import Span
from axk.features import pipeline
from axk.features import shards
from axk.features import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "axk", "data", "sample")
SPLITS = ("train", "dev")


def _config(variant: str):
  from configs import features as module  # pylint: disable=g-import-not-at-top
  c = module.get_config(variant)
  c.data.dir = "sample"
  c.data.splits = SPLITS
  c.ast.num_audio_tokens = 3
  return c


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, str]:
  """Features folders of `oracle` and `oracle_shuffled` on the sample data."""
  root = tmp_path_factory.mktemp("oracle")
  return {v: pipeline.run(_config(v), str(root / v))["oracle"]
          for v in ("oracle", "oracle_shuffled")}


def _csv_rows(task_dir: str, split: str) -> list[dict]:
  with open(os.path.join(SAMPLE, task_dir, f"{split}.csv"), encoding="utf-8") as f:
    return list(csv.DictReader(f))


def _key(v: np.ndarray) -> bytes:
  return np.asarray(v, np.float16).tobytes()


def _pitch_pairs(features_dir: str, split: str) -> list[tuple[str, bytes, bytes]]:
  """Per CSV row (in file order) whose two spans occur verbatim in the sentence: (answer,
  vector at span1, vector at span2), the spans found by their text in the shard's spans."""
  got = shards.load_features(features_dir, "pitch", split)
  rows = _csv_rows("sound_pitch_comparsion", split)
  out = []
  for number in sorted(int(i.rsplit("/", 1)[1]) for i in got):  # ids: 1-based data rows
    row, record = rows[number - 1], got[f"pitch/{split}/{number}"]
    assert record["sentence"] == row["sentence"], number
    by_text = {s["text"].lower(): s for s in record["spans"]}
    if not {row["span1"].lower(), row["span2"].lower()} <= set(by_text):
      continue  # A span the loader matched loosely or not at all (the sample has such rows).
    s1, s2 = by_text[row["span1"].lower()], by_text[row["span2"].lower()]
    for s in (s1, s2):
      assert s["has_audio"]
      # Every audio token is the span's vector; entries of RMS 1 (norm sqrt(768)).
      np.testing.assert_array_equal(s["ast_tokens"], np.broadcast_to(s["ast_pooled"],
                                                                     s["ast_tokens"].shape))
      np.testing.assert_allclose(np.linalg.norm(s["ast_pooled"].astype(np.float32)),
                                 np.sqrt(768), rtol=1e-3)
    out.append((row["answer"].strip().lower(), _key(s1["ast_pooled"]), _key(s2["ast_pooled"])))
  return out


def test_pitch_the_high_vector_goes_to_the_span_the_answer_says(built):
  pairs = [p for split in SPLITS for p in _pitch_pairs(built["oracle"], split)]
  answers = collections.Counter(a for a, _, _ in pairs)
  assert answers["higher"] >= 3 and answers["lower"] >= 3
  # The "high" vector: span1's in a row answered "higher" (span1 is higher than span2).
  high = next(v1 for a, v1, _ in pairs if a == "higher")
  low = next(v2 for a, _, v2 in pairs if a == "higher")
  assert high != low
  for answer, v1, v2 in pairs:
    assert (v1, v2) == ((high, low) if answer == "higher" else (low, high)), answer


def test_pitch_keys_are_per_example_not_per_span_text():
  # The same two span texts, higher in one row and lower in the other.
  sentence = "The hum of a fridge has a [MASK] pitch than the hiss of a kettle."
  spans = tuple(Span(sentence.index(t), sentence.index(t) + len(t), t)
                for t in ("hum of a fridge", "hiss of a kettle"))
  rows = [Example(f"pitch/dev/{i}", "pitch", "dev", sentence, answer, spans,
                  ("higher", "lower"), i - 1) for i, answer in ((1, "higher"), (2, "lower"))]
  config = _config("oracle")
  source = sources.OracleSource(config, "/nonexistent", {})
  keys = [source.keys(e, e.spans) for e in rows]
  assert len({k for row in keys for k in row}) == 4  # no key is shared between the rows
  arrays = source.acquire([k for row in keys for k in row])["ast_pooled"]
  # Row 1's span 1 has row 2's span 2 vector and the other way round.
  np.testing.assert_array_equal(arrays[0], arrays[3])
  np.testing.assert_array_equal(arrays[1], arrays[2])
  assert not np.array_equal(arrays[0], arrays[1])
  # Spans come in sentence order; a span 2 written first still gets span 2's role.
  swapped = sources.oracle_roles(rows[0], "higher", spans[::-1])
  assert swapped == ["low", "high"]


def test_animal_one_vector_per_gold_animal(built):
  vectors: dict[str, set] = collections.defaultdict(set)
  for split in SPLITS:
    got = shards.load_features(built["oracle"], "animal", split)
    sentences = {r["sentence"]: r["animal"].strip().lower()
                 for r in _csv_rows("animal_sound_recognition", split)}
    for record in got.values():
      for s in record["spans"]:
        assert s["has_audio"]
        vectors[sentences[record["sentence"]]].add(_key(s["ast_pooled"]))
  assert len(vectors) >= 3
  assert all(len(v) == 1 for v in vectors.values()), vectors.keys()  # same animal, same vector
  assert len(set.union(*vectors.values())) == len(vectors)  # other animal, other vector


def test_manifest_says_oracle(built):
  for variant, features_dir in built.items():
    manifest = shards.verify(features_dir)
    assert manifest["source"] == "oracle" and manifest["models"] == {}
    assert manifest["oracle"]["kind"] == variant
    assert manifest["oracle"]["shuffled"] == (variant == "oracle_shuffled")
    assert "ORACLE" in manifest["oracle"]["note"]
    assert manifest["spans"]["source"] == "gold"


def test_shuffled_is_a_permutation_of_the_oracle_vectors(built):
  moved = 0
  for split in SPLITS:
    truth = _pitch_pairs(built["oracle"], split)
    shuffled = _pitch_pairs(built["oracle_shuffled"], split)
    # Only the "high" and "low" vectors, always one of each per row.
    assert {v for p in truth for v in p[1:]} == {v for p in shuffled for v in p[1:]}
    assert all(p[1] != p[2] for p in shuffled)
    for task in ("pitch", "animal"):
      # Per row, its spans' vectors: the same multiset, handed to other rows.
      a = shards.load_features(built["oracle"], task, split)
      b = shards.load_features(built["oracle_shuffled"], task, split)
      vec = lambda rec: tuple(_key(s["ast_pooled"]) for s in rec["spans"])
      assert collections.Counter(map(vec, a.values())) == collections.Counter(
          map(vec, b.values())), (task, split)
      moved += sum(vec(a[i]) != vec(b[i]) for i in a)
  assert moved > 0


def test_the_oracle_refuses_detected_spans_before_any_stage(tmp_path):
  config = _config("oracle")
  config.spans.source = "detector"
  config.spans.detector = "/nonexistent/detector"
  with pytest.raises(ValueError, match=r"^spans\.source='detector'"):
    pipeline.run(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "spans")


@pytest.mark.e2e  # The chain: oracle features, an ITH run on them, its results and card.
def test_a_run_on_oracle_features_says_so_in_every_results_file(built, tmp_path):
  from axk.hf import card
  from axk.runs import masked_word
  from configs import ith as ith_config
  config = ith_config.get_config("smoke")
  config.features.dir = built["oracle"]
  config.spans.predictions = ""
  config.data.tasks = ("pitch",)
  config.data.splits = SPLITS
  config.train.epochs = 1
  workdir = tmp_path / "run"
  results = masked_word.run(config, str(workdir))
  assert results["pitch"]["dev"]["with_audio"] == 100.0
  saved = json.loads((workdir / "results.json").read_text())
  assert next(iter(saved)) == "oracle" and saved["oracle"]["kind"] == "oracle"
  assert set(saved["pitch"]) == {"dev"}
  md = (workdir / "results.md").read_text()
  assert md.splitlines()[0].endswith("trained on ORACLE features (not audio)")
  assert "**ORACLE features: built from the gold answers" in md
  text = open(card.write_card(str(workdir / "export")), encoding="utf-8").read()
  assert "**Not a usable model: ORACLE features" in text and "- oracle" in text
