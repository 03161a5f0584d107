"""Offline tests of the feature pipeline with tiny random CLAP, AST and Stable Audio models.

Every model is built from a tiny config, saved with `save_pretrained` into a session
temporary folder and loaded back through the pipeline's own loading code. The audio
database is synthetic (tones, chirps and noise in WAV, FLAC and OGG, plus a corrupt file).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

# pylint: disable=g-import-not-at-top,wrong-import-position
from conftest import assert_same_features
from axk import hub
from axk.data import spans as spans_lib
from axk.data.auditorybench import normalise
from axk.data.types import Example
from axk.data.types import Span
from axk.features import ast as ast_lib
from axk.features import audio as audio_lib
from axk.features import clap as clap_lib
from axk.features import detector as detector_lib
from axk.features import generation
from axk.features import parts
from axk.features import pipeline
from axk.features import retrieval
from axk.features import shards
from axk.features import tiny
from test_generation import CraftedClap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="session")
def clap(models):
  return clap_lib.ClapEncoder(models["clap"], device="cpu", batch_size=4)


@pytest.fixture(scope="session")
def ast(models):
  return ast_lib.AstEncoder(models["ast"], num_tokens=3, device="cpu", batch_size=4)


@pytest.fixture(scope="session")
def audio_db(tmp_path_factory) -> str:
  folder = str(tmp_path_factory.mktemp("audio_db"))
  return tiny.write_synthetic_database(folder, 10)


def _load_config(variant: str):
  from configs import features as module  # pylint: disable=g-import-not-at-top
  return module.get_config(variant)


def _config(models, audio_db, **overrides):
  """The smoke config on the tiny models and pitch/dev of the shipped sample data."""
  c = _load_config("smoke")
  c.models.tiny = False
  c.models.clap, c.models.ast, c.models.generator = (
      models["clap"], models["ast"], models["generator"])
  c.database.synthetic_clips = 0
  c.database.dir = audio_db
  c.data.tasks = ("pitch",)
  c.data.splits = ("dev",)
  c.batch_size = 8
  c.ast.token_layout, c.ast.num_audio_tokens = "time", 3
  c.generation.steps = 2
  c.generation.seconds = 0.25
  c.generation.n = 2
  c.generation.spans_per_call = 4
  c.source = "retrieval"
  for key, value in overrides.items():
    node = c
    *path, leaf = key.split(".")
    for part in path:
      node = node[part]
    node[leaf] = value
  return c


# ----------------------------------------------------------------------------------------
# Audio, spans, models.
# ----------------------------------------------------------------------------------------


def test_decode_resample_and_corrupt(tmp_path):
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  rate = 22_050
  t = np.arange(rate // 2) / rate
  stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.zeros_like(t)], axis=1) * 0.5
  for ext in ("wav", "flac", "ogg"):
    path = tmp_path / f"a.{ext}"
    sf.write(path, stereo.astype(np.float32), rate)
    for target in (48_000, 16_000):
      wave = audio_lib.load(str(path), target)
      assert wave.ndim == 1 and wave.dtype == np.float32
      assert abs(len(wave) - target // 2) <= 2
      # Mono is the channel mean: half the amplitude of the left channel.
      assert 0.2 < np.abs(wave).max() < 0.3
  bad = tmp_path / "bad.wav"
  bad.write_bytes(b"RIFF....WAVEjunk")
  with pytest.raises(audio_lib.DecodeError):
    audio_lib.load(str(bad), 16_000)


def test_span_normalise_dedupe_and_sharding():
  spans = {"a": (Span(0, 5, "Dog  Bark"),), "b": (Span(0, 9, " dog bark "), Span(1, 2, "x"))}
  assert spans_lib.distinct(spans) == ["dog bark", "x"]
  assert normalise("  The\tSound  of RAIN ") == "the sound of rain"
  keys = [f"span {i}" for i in range(200)]
  counts = np.bincount([parts.shard_of(k, 4) for k in keys], minlength=4)
  assert counts.sum() == 200 and counts.min() > 20
  assert spans_lib.spans_from_labels("ab cd ef", [(0, 0), (0, 2), (3, 5), (6, 8), (0, 0)],
                                     [1, 1, 1, 0, 1]) == (Span(0, 5, "ab cd"),)


def test_predictions_file(tmp_path):
  examples = [Example(f"pitch/dev/{i}", "pitch", "dev", "The Bell rang [MASK] than rain.",
                      "higher", (), ("higher", "lower"), 0) for i in (1, 2)]
  path = tmp_path / "pitch_dev.jsonl"
  path.write_text(
      json.dumps({"id": "pitch/dev/1", "spans": [{"start": 4, "end": 8, "text": "bell"},
                                                 {"start": 50, "end": 60, "text": "x"}]})
      + "\n" + json.dumps({"id": "other/dev/9", "spans": []}) + "\n")
  got = spans_lib.read_predictions(str(spans_lib.predictions_path(str(tmp_path), "pitch",
                                                                   "dev")), examples)
  assert got == {"pitch/dev/1": (Span(4, 8, "Bell"),), "pitch/dev/2": ()}


def test_spans_stage_predictions_with_gold_train(models, audio_db, tmp_path):
  config = _config(models, audio_db, stage="spans", **{
      "data.splits": ("train", "dev"), "spans.source": "predictions",
      "spans.predictions": str(tmp_path / "predictions"), "spans.gold_splits": "train"})
  examples, _ = pipeline.load_data(config)
  dev = examples["pitch"]["dev"]
  predicted = {e.id: (Span(0, 3, e.sentence[:3]),) for e in dev}
  spans_lib.write_predictions(str(tmp_path / "predictions" / "pitch_dev.jsonl"), dev, predicted)
  pipeline.run(config, str(tmp_path / "w"))
  got = spans_lib.read_predictions(str(tmp_path / "w" / "spans" / "pitch_dev.jsonl"), dev)
  assert got == predicted
  train = examples["pitch"]["train"]
  got = spans_lib.read_predictions(str(tmp_path / "w" / "spans" / "pitch_train.jsonl"), train)
  assert got == spans_lib.gold_spans(train)


def test_detector_spans(tmp_path):
  sentence = "the dog bark has a [MASK] pitch"
  positive = detector_lib.Detector(
      tiny.build_detector(str(tmp_path / "pos"), positive_bias=5.0), device="cpu")
  assert positive([sentence]) == [(Span(0, len(sentence), sentence),)]
  negative = detector_lib.Detector(
      tiny.build_detector(str(tmp_path / "neg"), positive_bias=-5.0), device="cpu")
  assert negative([sentence, "a cat"]) == [(), ()]


def test_offline_hub_id_fails_fast(monkeypatch, waits):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(hub.ModelNotAvailable, match="local-dir"):
    hub.resolve("axk-test/no-such-model", "models.clap")
  assert not waits  # No sleep, no connection attempt: it fails at once.


def test_clap_fast_mel_matches_extractor_and_batches(clap):
  rng = np.random.default_rng(0)
  for n in (1000, 30_000, clap.extractor.nb_max_samples):
    wave = (rng.standard_normal(n) * 0.1).astype(np.float32)
    fast, longer = clap._features(wave)  # pylint: disable=protected-access
    ref = clap.extractor([wave], sampling_rate=clap.sampling_rate,
                         return_tensors="np")["input_features"][0]
    np.testing.assert_allclose(fast, ref, atol=1e-4)
    assert not longer
  waves = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (9000, 60_000, 20_000)]
  together = clap.audio(waves)
  alone = np.concatenate([clap.audio([w]) for w in waves])
  np.testing.assert_allclose(together, alone, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_ast_pooling(ast):
  waves = [np.sin(np.arange(8000) * f).astype(np.float32) for f in (0.05, 0.3)]
  pooled, tokens = ast(waves)
  assert pooled.shape == (2, ast.dim) and tokens.shape == (2, 3, ast.dim)
  hidden = ast.model(**ast.extractor(waves, sampling_rate=16_000,
                                     return_tensors="pt")).last_hidden_state
  np.testing.assert_allclose(pooled, hidden.mean(1).detach().numpy(), atol=1e-5)


# ----------------------------------------------------------------------------------------
# Retrieval.
# ----------------------------------------------------------------------------------------


def test_retrieval_matches_brute_force_and_caches(clap, audio_db, tmp_path):
  db = retrieval.AudioDatabase(retrieval.list_folder(audio_db))
  assert len(db.clips) == 11  # 10 clips + broken.wav
  db.embed(clap, str(tmp_path / "cache"), chunk_size=4)
  assert db.valid.sum() == 10 and not db.valid[db.index["broken"]]

  # Brute-force reference: decode every clip, embed it alone, rank by numpy cosine.
  ref = np.zeros_like(db.embeddings)
  for i, c in enumerate(db.clips):
    if c.id != "broken":
      ref[i] = clap.audio([audio_lib.load(c.path, clap.sampling_rate, max_seconds=30)])[0]
  np.testing.assert_allclose(db.embeddings, ref, atol=1e-5)
  queries = clap.text([f"{w} sound" for w in ("dog", "rain", "bell", "engine")])
  expected = queries @ ref.T
  expected[:, ~db.valid] = -np.inf
  idx, scores = db.search(queries, top_k=3)
  np.testing.assert_array_equal(idx, np.argsort(-expected, axis=1, kind="stable")[:, :3])
  np.testing.assert_allclose(scores, np.sort(expected, axis=1)[:, ::-1][:, :3], atol=1e-6)
  # The planted nearest clip is excluded: the next one takes its place.
  planted = db.clips[idx[0, 0]].id
  idx_x, _ = db.search(queries[:1], top_k=2, exclude={planted})
  assert idx_x[0, 0] == idx[0, 1]

  # A second embedding reuses the cache; a changed database recomputes.
  calls = clap.audio_calls
  again = retrieval.AudioDatabase(retrieval.list_folder(audio_db))
  again.embed(clap, str(tmp_path / "cache"), chunk_size=4)
  assert clap.audio_calls == calls
  np.testing.assert_array_equal(again.embeddings, db.embeddings)
  changed = retrieval.AudioDatabase(db.clips[:-1])
  changed.embed(clap, str(tmp_path / "cache"), chunk_size=4)
  assert clap.audio_calls > calls and changed.fingerprint != db.fingerprint


def _write_tfds_audio(data_dir: str) -> None:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class TinyAudio(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = "tiny_audio"
    VERSION = tfds.core.Version("1.0.0")
    code_path = None

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
          "clip_id": tfds.features.Text(), "caption": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(3):
        wave = (np.sin(np.arange(8000) * 0.05 * (i + 1)) * 8000).astype(np.int16)
        yield i, {"audio": wave, "clip_id": f"tf{i}", "caption": f"tone {i}"}

  TinyAudio(data_dir=data_dir, file_format="array_record").download_and_prepare()


def test_tfds_database_without_tensorflow(clap, tmp_path):
  _write_tfds_audio(str(tmp_path / "tfds"))
  c = _load_config("retrieval").database
  c.tfds_name, c.tfds_data_dir, c.tfds_sample_rate = "tiny_audio", str(tmp_path / "tfds"), 16000
  c.tfds_id_key, c.tfds_caption_key = "clip_id", "caption"
  db = retrieval.AudioDatabase.from_config(c)
  assert [x.id for x in db.clips] == ["tf0", "tf1", "tf2"]
  assert db.clips[2].caption == "tone 2"
  wave = db.load(1, 48_000)
  assert abs(len(wave) - 24_000) <= 2 and 0.2 < np.abs(wave).max() < 0.3
  db.embed(clap, str(tmp_path / "cache"))
  assert db.valid.all()
  assert "tensorflow" not in sys.modules


# ----------------------------------------------------------------------------------------
# Generation and rejection sampling.
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generator(models):
  return generation.AudioGenerator(models["generator"], device="cpu")


def _sampler(generator, clap, folder, keep_rejected=True, **params):
  p = generation.GenerationParams(**{"steps": 2, "seconds": 0.25, "n": 3, "rule": "best",
                                     **params})
  return generation.RejectionSampler(generator, clap, generation.ClipCache(folder), p,
                                     spans_per_call=1, keep_rejected=keep_rejected)


def test_rejection_thresholds_and_call_counts(generator, clap, tmp_path):
  spans = ["dog bark", "bell"]
  calls = generator.calls
  accept_all = _sampler(generator, clap, str(tmp_path / "a"), tau=-1.0)(spans)
  assert [r.has_audio for r in accept_all] == [True, True]
  assert [r.tried for r in accept_all] == [3, 3]  # "best" scores all n
  assert generator.calls - calls == 2  # one span's n clips per call, spans_per_call=1
  for r, span in zip(accept_all, spans):
    # The score is the cosine of the accepted clip's audio and the span's text.
    assert r.score == pytest.approx(float(r.clap_audio @ clap.text([span])[0]), abs=1e-4)
  calls = generator.calls
  b = str(tmp_path / "b")
  reject_all = _sampler(generator, clap, b, keep_rejected=False, tau=1.01)(spans)
  assert [r.has_audio for r in reject_all] == [False, False]
  assert all(r.key == "" and not r.clap_audio.any() for r in reject_all)
  assert generator.calls - calls == 2

  # The rejected candidates are known from the sidecars: a rerun draws nothing.
  calls = generator.calls
  again = _sampler(generator, clap, b, keep_rejected=False, tau=1.01)(spans)
  assert generator.calls == calls and [r.score for r in again] == [r.score for r in reject_all]
  # A lower threshold needs a clip that was not kept: only that one (the best of each span)
  # is drawn again, identically.
  clips = generator.clips
  relaxed = _sampler(generator, clap, b, keep_rejected=False, tau=-1.0)(spans)
  assert generator.clips - clips == 2
  for r, ref in zip(relaxed, accept_all):
    assert r.key == ref.key
    np.testing.assert_allclose(r.wave, ref.wave, atol=1e-6)
  # Cached accepted clips are reused without drawing.
  calls = generator.calls
  cached = _sampler(generator, clap, b, tau=-1.0)(spans)
  assert generator.calls == calls
  np.testing.assert_allclose(cached[0].clap_audio, relaxed[0].clap_audio, atol=1e-6)


def test_seeds_do_not_depend_on_batching(generator, clap, tmp_path):
  one = _sampler(generator, clap, str(tmp_path / "one"), tau=-1.0)
  solo = one(["rain"])[0]
  many = _sampler(generator, clap, str(tmp_path / "many"), tau=-1.0)
  many.spans_per_call = 3
  batched = many(["bell", "rain", "dog"])[1]
  assert solo.key == batched.key
  np.testing.assert_allclose(solo.wave, batched.wave, atol=1e-4)
  sidecar = generation.ClipCache(str(tmp_path / "one")).sidecar(solo.key)
  assert sidecar["seed"] == generation.candidate_seed(0, "rain", int(sidecar["candidate"]))
  # Prompted with "{span} sound", scored against the span (the published code's texts).
  assert sidecar["prompt"] == "rain sound" and sidecar["score_text"] == "rain"
  assert sidecar["audio"]


class _CraftedGenerator:
  """Clips whose CLAP score (under `_CraftedClap`) is a given function of their seed."""

  info = {"fingerprint": "crafted"}
  sampling_rate = 16_000
  device = torch.device("cpu")

  def __init__(self, score_of_seed):
    self.score_of_seed, self.calls, self.clips = score_of_seed, 0, 0

  def __call__(self, prompts, seeds, params):
    self.calls += 1
    self.clips += len(seeds)
    return [np.full((1, 320), 0.5 * self.score_of_seed[s], np.float32) for s in seeds]


_CraftedClap = CraftedClap  # One fake CLAP for the rejection tests (test_generation.py).


def _first_of_all(spans, score_of, params):
  """Reference: all n candidates of each span, then the first with score >= tau."""
  out = {}
  for span in spans:
    seeds = [generation.candidate_seed(params.base_seed, span, q) for q in range(params.n)]
    scores = [score_of(span, seed) for seed in seeds]
    passing = [q for q, sc in enumerate(scores) if sc >= params.tau]
    out[span] = (seeds[passing[0]], scores[passing[0]]) if passing else None
  return out


@pytest.mark.parametrize("spans_per_call", [1, 3])
def test_lazy_first_rule_selects_what_drawing_all_selects(spans_per_call, tmp_path):
  rng = np.random.default_rng(0)
  params = generation.GenerationParams(n=6, tau=0.5, rule="first")
  spans = [f"span {i}" for i in range(24)]
  crafted = {"span 0": [0.9, 0.2, 0.2, 0.2, 0.2, 0.2],  # the first
             "span 1": [0.1, 0.6, 0.95, 0.2, 0.2, 0.2],  # the first passing, not the best
             "span 2": [0.1, 0.2, 0.3, 0.4, 0.49, 0.3],  # none
             "span 3": [0.1, 0.2, 0.3, 0.4, 0.7, 0.8]}   # the fifth
  score_of_seed = {}
  for span in spans:
    scores = crafted.get(span, (rng.uniform(0, 1, 6).round(2) + 0.005).tolist())
    for q, sc in enumerate(scores):
      score_of_seed[generation.candidate_seed(0, span, q)] = sc
  expected = _first_of_all(spans, lambda span, seed: score_of_seed[seed], params)
  gen, clap = _CraftedGenerator(score_of_seed), _CraftedClap()
  sampler = generation.RejectionSampler(gen, clap, generation.ClipCache(str(tmp_path)),
                                        params, spans_per_call=spans_per_call)
  got = sampler(spans)
  for span, r in zip(spans, got):
    if expected[span] is None:
      assert not r.has_audio and r.key == "", span
      continue
    seed, score = expected[span]
    assert r.has_audio and r.score == pytest.approx(score, abs=1e-3), span
    assert r.key == generation.clip_key("crafted", f"{span} sound", params, seed), span
  assert [got[i].tried for i in range(4)] == [1, 2, 6, 5]
  assert gen.clips < 0.6 * len(spans) * 6  # lazily: far fewer clips than all n
  # The "best" rule takes a round's best clip instead.
  best = generation.RejectionSampler(
      _CraftedGenerator(score_of_seed), clap, generation.ClipCache(str(tmp_path / "best")),
      dataclasses.replace(params, rule="best"))(["span 1"])[0]
  assert best.score == pytest.approx(0.95, abs=1e-3)
  # A rerun decides everything from the sidecars and the kept clips.
  gen.calls = 0
  again = sampler(spans)
  assert gen.calls == 0 and [r.key for r in again] == [r.key for r in got]


def test_lazy_first_rule_on_the_tiny_pipeline(generator, clap, tmp_path):
  params = generation.GenerationParams(steps=2, seconds=0.25, n=6, rule="first")
  spans = ["dog bark", "bell", "rain", "engine", "bird song"]
  text = {s: t for s, t in zip(spans, clap.text(spans))}
  scores = {}
  for span in spans:  # Every candidate of the span in one call, as the published code draws.
    seeds = [generation.candidate_seed(0, span, q) for q in range(6)]
    waves = generator([f"{span} sound"] * len(seeds), seeds, params)
    stored = [generation.flac_round_trip(w, generator.sampling_rate)[1] for w in waves]
    embs = clap.audio([audio_lib.from_array(w, generator.sampling_rate, clap.sampling_rate,
                                            channels_last=False) for w in stored])
    scores[span] = (seeds, (embs @ text[span]).tolist())
  # A threshold in the widest gap near the median, so batching noise cannot flip a decision.
  values = sorted(v for _, sc in scores.values() for v in sc)
  lo = len(values) // 3
  gap = max(range(lo, 2 * lo), key=lambda q: values[q + 1] - values[q])
  params = dataclasses.replace(params, tau=(values[gap] + values[gap + 1]) / 2)
  expected = _first_of_all(spans, lambda span, seed: dict(zip(*scores[span]))[seed], params)
  got = generation.RejectionSampler(generator, clap, generation.ClipCache(str(tmp_path)),
                                    params, spans_per_call=2)(spans)
  assert any(r.has_audio for r in got) and any(r.tried > 1 for r in got)
  for span, r in zip(spans, got):
    if expected[span] is None:
      assert not r.has_audio, span
    else:
      assert r.key == generation.clip_key(generator.info["fingerprint"], f"{span} sound",
                                          params, expected[span][0]), span
      assert r.score == pytest.approx(expected[span][1], abs=1e-4), span


def test_musicgen_generator(tmp_path, clap):
  path = tiny.build_musicgen(str(tmp_path / "musicgen"))
  gen = generation.AudioGenerator(path, generation.MUSICGEN, device="cpu")
  sampler = generation.RejectionSampler(
      gen, clap, generation.ClipCache(str(tmp_path / "clips")),
      generation.GenerationParams(pipeline_class=generation.MUSICGEN, seconds=0.25,
                                  guidance_scale=3.0, n=2, tau=-1.0))
  result = sampler(["dog bark"])[0]
  assert result.has_audio and gen.calls == 1 and result.wave.ndim == 1


# ----------------------------------------------------------------------------------------
# The pipeline: resumption, sharding, shards.
# ----------------------------------------------------------------------------------------


def _read_all(features_dir: str, task: str, split: str) -> dict:
  return shards.load_features(features_dir, task, split)


def test_generation_run_resumes_without_recomputing(models, audio_db, tmp_path, monkeypatch):
  config = _config(models, audio_db, source="generation", **{"generation.tau.pitch": -0.2})
  workdir = str(tmp_path / "w")
  seen = []
  original_call = generation.RejectionSampler.__call__

  def counting(self, spans, *args, **kwargs):
    seen.append(list(spans))
    return original_call(self, spans, *args, **kwargs)

  monkeypatch.setattr(generation.RejectionSampler, "__call__", counting)
  original_write = parts.write_part
  writes = []

  def failing(*args, **kwargs):
    if len(writes) == 2:
      raise KeyboardInterrupt("simulated interruption")
    writes.append(original_write(*args, **kwargs))
    return writes[-1]

  monkeypatch.setattr(parts, "write_part", failing)
  with pytest.raises(KeyboardInterrupt):
    pipeline.run(config, workdir)
  first = [s for batch in seen[:2] for s in batch]
  assert len(first) == 16 and len(seen) == 3  # two batches written, the third lost

  monkeypatch.setattr(parts, "write_part", original_write)
  seen.clear()
  out = pipeline.run(config, workdir)
  second = [s for batch in seen for s in batch]
  assert not set(first) & set(second)  # finished spans are not recomputed
  examples, _ = pipeline.load_data(config)
  distinct = spans_lib.distinct(spans_lib.gold_spans(examples["pitch"]["dev"]))
  assert sorted(first + second) == distinct

  # The shards read back (without torch) equal the part files.
  features = _read_all(out["generation"], "pitch", "dev")
  stored = parts.read_parts(parts.folder(
      workdir, "generation", shards.read_manifest(out["generation"])["run_key"]))
  assert len(features) == len(examples["pitch"]["dev"])
  has_audio = []
  for e in examples["pitch"]["dev"]:
    got = features[e.id]
    assert got["sentence"] == e.sentence
    assert [(s["start"], s["end"], s["text"]) for s in got["spans"]] == [
        (s.start, s.end, s.text) for s in e.spans]
    for s in got["spans"]:
      part = stored["pitch|" + normalise(s["text"])]
      for key in ("ast_pooled", "ast_tokens", "clap_text", "clap_audio"):
        assert s[key].dtype == np.float16
        np.testing.assert_array_equal(s[key], part[key])
      assert s["has_audio"] == bool(part["has_audio"]) and s["source"] == str(part["source"])
      assert s["clap_score"] == pytest.approx(float(part["clap_score"]))
      assert s["ast_tokens"].shape == (3, 32)
      if not s["has_audio"]:
        assert s["source"] == "" and not s["clap_audio"].any() and not s["ast_pooled"].any()
      has_audio.append(s["has_audio"])
  assert any(has_audio) and not all(has_audio)  # tau splits the tiny model's clips
  manifest = shards.read_manifest(out["generation"])
  assert manifest["params"]["generation"]["tau"]["pitch"] == -0.2
  assert manifest["rejection"]["pitch"] == {"tau": -0.2, "n": 2, "rule": "first",
                                            "fallback": "none"}
  assert manifest["inputs"]["pitch/dev"]["sha256"] == examples_sha(config)
  assert set(manifest["models"]) == {"clap", "ast", "generator"}
  shards.check_manifest(manifest, csv_sha256={"pitch/dev": examples_sha(config)},
                        spans_source="gold", num_audio_tokens=3)
  with pytest.raises(shards.FeaturesMismatch):
    shards.check_manifest(manifest, csv_sha256={"pitch/dev": "0" * 64})


def examples_sha(config) -> str:
  _, inputs = pipeline.load_data(config)
  return inputs["pitch/dev"]["sha256"]


def test_retrieval_sharded_equals_single(models, audio_db, tmp_path):
  single = pipeline.run(_config(models, audio_db), str(tmp_path / "single"))["retrieval"]
  workdir = str(tmp_path / "sharded")
  for index in (0, 1):
    pipeline.run(_config(models, audio_db, stage="acquire", num_shards=2, shard_index=index),
                 workdir)
    if index == 0:
      with pytest.raises(RuntimeError, match="no results"):
        pipeline.run(_config(models, audio_db, stage="assemble", num_shards=2), workdir)
  sharded = pipeline.run(_config(models, audio_db, stage="assemble", num_shards=2),
                         workdir)["retrieval"]
  a, b = _read_all(single, "pitch", "dev"), _read_all(sharded, "pitch", "dev")
  assert_same_features(a, b)
  spans = [s for v in a.values() for s in v["spans"]]
  assert all(s["has_audio"] and s["source"] and s["source"] != "broken" for s in spans)
  for features_dir in (single, sharded):
    assert shards.read_manifest(features_dir)["database"]["num_undecodable"] == 1


def test_a_new_source_is_one_class_and_a_config_section(models, audio_db, clap, tmp_path,
                                                         monkeypatch):
  from axk.data.auditorybench import normalise as norm  # pylint: disable=reimported
  from axk.features import sources

  class AnswerSource(sources.RetrievalSource):
    """Retrieval for each span's gold answer instead of its text (the module's example)."""
    name = "answer"

    def keys(self, example, spans):
      return [norm(example.answer)] * len(spans)

  monkeypatch.setitem(sources.SOURCES, "answer", AnswerSource)
  config = _config(models, audio_db, source="answer")
  config.answer = config.retrieval.copy_and_resolve_references()
  config.answer.features_dir = "features_answer"
  out = pipeline.run(config, str(tmp_path / "w"))["answer"]
  manifest = shards.verify(out)
  assert manifest["source"] == "answer"
  with open(os.path.join(out, shards.ACQUISITIONS), encoding="utf-8") as f:
    acquired = {r["text"]: r["source"] for r in map(json.loads, f)}
  # Reference: the top-1 clip of "<answer> sound", searched by hand.
  db = retrieval.AudioDatabase(retrieval.list_folder(audio_db))
  db.embed(clap, str(tmp_path / "cache"), chunk_size=4)
  idx, _ = db.search(clap.text(["higher sound", "lower sound"]), top_k=1)
  assert acquired == {"higher": db.clips[idx[0, 0]].id, "lower": db.clips[idx[1, 0]].id}
  examples, _ = pipeline.load_data(config)
  answers = {e.id: e.answer for e in examples["pitch"]["dev"]}
  for example_id, row in _read_all(out, "pitch", "dev").items():
    assert row["spans"] and {s["source"] for s in row["spans"]} == {
        acquired[answers[example_id]]}


def test_reader_imports_no_torch(models, audio_db, tmp_path):
  out = pipeline.run(_config(models, audio_db), str(tmp_path / "w"))["retrieval"]
  code = ("import sys; from axk.features import shards; "
          f"f = shards.load_features({out!r}, 'pitch', 'dev'); "
          "m = shards.read_manifest(" + repr(out) + "); "
          "assert f and m['source'] == 'retrieval'; "
          "assert 'torch' not in sys.modules and 'tensorflow' not in sys.modules; print(len(f))")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=False)
  assert result.returncode == 0, result.stderr[-2000:]


def test_configs_load():
  for variant in ("retrieval", "generation", "smoke"):
    c = _load_config(variant)
    assert c.entry == "axk.features.pipeline:run"
  assert _load_config("generation").source == "generation"
  with pytest.raises(ValueError):
    _load_config("nope")
