"""ITH's CLAP rejection sampling pinned on crafted scores, its ablations and its sweeps.

The crafted generator draws a constant clip whose CLAP score (under the crafted CLAP) is a
number chosen per candidate, exact through the 16-bit FLAC cache (multiples of 2^-14), so
that every rule can be checked against hand-written expectations: first passing vs best,
`>=` at the boundary, n, per-task tau, the fallback clip, no rejection, and that a sweep over
tau and n never draws a clip twice.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

# pylint: disable=g-import-not-at-top,wrong-import-position
from axk.data.auditorybench import normalise
from axk.data.types import Example
from axk.data.types import Span
from axk.features import generation
from axk.features import pipeline
from axk.features import shards
from axk.features import sources
from axk.features import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("torch_one_thread")


class CraftedGenerator:
  """Clip of candidate j of a span: a constant whose crafted CLAP score is `scores[span][j]`
  (the fallback clip, prompt "sound": `fallback_score`)."""

  info = {"fingerprint": "crafted"}
  sampling_rate = 16_000
  device = torch.device("cpu")

  def __init__(self, scores: dict[str, list[float]], fallback_score: float = 0.125):
    self.by_seed = {generation.candidate_seed(0, span, j): v
                    for span, values in scores.items() for j, v in enumerate(values)}
    self.by_seed[generation.candidate_seed(0, generation.FALLBACK_SPAN, 0)] = fallback_score
    self.calls, self.clips, self.drawn = 0, 0, []

  def __call__(self, prompts, seeds, params):
    del params
    self.calls += 1
    self.clips += len(seeds)
    self.drawn += list(zip(prompts, seeds))
    return [np.full((1, 320), 0.5 * self.by_seed[s], np.float32) for s in seeds]


class CraftedClap:
  """Text embedding [1, 0]; a clip of constant value x embeds as [2x, sqrt(1 - 4x^2)], so its
  score against any text is 2x."""

  info = {"fingerprint": "crafted-clap"}
  sampling_rate = 16_000
  dim = 2

  def text(self, texts):
    return np.tile(np.array([1.0, 0.0], np.float32), (len(texts), 1))

  def audio(self, waves):
    s = np.clip([2 * float(np.mean(w)) for w in waves], -1, 1)
    return np.stack([s, np.sqrt(1 - s ** 2)], 1).astype(np.float32)


def _sampler(gen, folder, **params):
  p = generation.GenerationParams(**params)
  return generation.RejectionSampler(gen, CraftedClap(), generation.ClipCache(str(folder)), p,
                                     spans_per_call=4)


def _seed(span, j):
  return generation.candidate_seed(0, span, j)


# ----------------------------------------------------------------------------------------
# The rule on crafted scores.
# ----------------------------------------------------------------------------------------


def test_first_passing_not_best_and_ties_pass(tmp_path):
  scores = {"owl": [0.25, 0.625, 0.875, 0.9375, 0.125],  # first passing 1, best 3
            "bell": [0.25, 0.5, 0.875, 0.125, 0.125]}  # exactly tau at 1: passes (>=)
  gen = CraftedGenerator(scores)
  got = _sampler(gen, tmp_path / "a", tau=0.5)(["owl", "bell"])
  assert [r.accepted for r in got] == [1, 1]
  assert [r.score for r in got] == [0.625, 0.5]
  assert [r.scores for r in got] == [[0.25, 0.625], [0.25, 0.5]]
  assert got[0].key == generation.clip_key("crafted", "owl sound", generation.GenerationParams(),
                                           _seed("owl", 1))
  assert gen.clips == 4  # lazily: nothing after the accepted candidate is drawn
  # Best of n takes the best passing one (and must score all n).
  best = _sampler(CraftedGenerator(scores), tmp_path / "b", tau=0.5, rule="best")(["owl"])[0]
  assert (best.accepted, best.score) == (3, 0.9375)
  # The boundary through the whole cache path: a rerun on the sidecars decides the same.
  again = _sampler(CraftedGenerator(scores), tmp_path / "a", tau=0.5)(["owl", "bell"])
  assert [r.accepted for r in again] == [1, 1]


def test_n_bounds_the_candidates_tried(tmp_path):
  scores = {"siren": [0.125, 0.25, 0.875, 0.875, 0.875]}
  gen = CraftedGenerator(scores)
  two = _sampler(gen, tmp_path / "c", tau=0.5, n=2)(["siren"])[0]
  assert not two.has_audio and two.accepted == -1 and two.key == ""
  assert two.scores == [0.125, 0.25] and two.score == 0.25  # the best seen
  assert gen.drawn == [("siren sound", _seed("siren", 0)), ("siren sound", _seed("siren", 1))]
  three = _sampler(gen, tmp_path / "c", tau=0.5, n=3)(["siren"])[0]
  assert (three.accepted, three.score) == (2, 0.875)
  assert gen.clips == 3  # only the third candidate was new


def test_per_span_tau_shares_candidates(tmp_path):
  # One span, two thresholds (animal 0, pitch 0.6): different accepted candidates.
  gen = CraftedGenerator({"dog bark": [0.25, 0.5, 0.625, 0.125]})
  got = _sampler(gen, tmp_path, n=4)(["dog bark", "dog bark"], taus=[0.0, 0.6], ns=[4, 4])
  assert [r.accepted for r in got] == [0, 2]
  assert got[0].key != got[1].key
  assert gen.clips == 3  # candidates 0..2, each drawn once for both requests


def test_fallback_sound_clip(tmp_path):
  scores = {"hum": [0.125, 0.25], "buzz": [0.0625, 0.125]}
  none = _sampler(CraftedGenerator(scores), tmp_path / "none", tau=0.5, n=2)(["hum", "buzz"])
  assert not any(r.has_audio or r.fallback for r in none)
  gen = CraftedGenerator(scores, fallback_score=0.375)
  got = _sampler(gen, tmp_path / "sound", tau=0.5, n=2, fallback="sound")(["hum", "buzz"])
  key = generation.clip_key("crafted", "sound", generation.GenerationParams(),
                            _seed(generation.FALLBACK_SPAN, 0))
  for r in got:
    assert r.has_audio and r.fallback and r.accepted == -1 and r.key == key
    assert r.score == 0.375 and r.wave is not None
  # Drawn once for both spans, from the prompt "sound" (the published `sound_0.wav`).
  assert gen.clips == 5 and gen.drawn[-1] == ("sound", _seed(generation.FALLBACK_SPAN, 0))


def _features_config(variant="generation"):
  from configs import features as module  # pylint: disable=g-import-not-at-top
  return module.get_config(variant)


def test_no_rejection_takes_the_first_clip(tmp_path):
  c = _features_config("generation,no_rejection")
  params = sources.generation_params(c)
  taus = sources.task_taus(c)
  gen = CraftedGenerator({"rain": [-0.875, 0.875]})
  got = generation.RejectionSampler(gen, CraftedClap(), generation.ClipCache(str(tmp_path)),
                                    params)(["rain", "rain"], taus=[taus["animal"],
                                                                    taus["pitch"]])
  assert [(r.accepted, r.score) for r in got] == [(0, -0.875), (0, -0.875)]
  assert gen.clips == 1


def test_defaults_are_the_papers_then_the_published_ones():
  c = _features_config("generation")
  p = sources.generation_params(c)
  # n = 2: the paper's Figure 2 (the published code's batch of 5 is the option).
  assert (p.n, p.rule, p.fallback) == (2, "first", "none")
  assert (p.prompt_template, p.score_template) == ("{span} sound", "{span}")
  assert sources.task_taus(c) == {"animal": 0.0, "pitch": 0.6}
  assert c.generation.keep_rejected and c.spans.unit == "span"


# ----------------------------------------------------------------------------------------
# Sweeps: no clip drawn twice.
# ----------------------------------------------------------------------------------------


def _needed(scores, tau, n):
  """Reference: the candidates the first rule decides, per span (first passing or all n)."""
  out = set()
  for span, values in scores.items():
    for j in range(n):
      out.add((span, j))
      if values[j] >= tau:
        break
  return out


def test_sweep_draws_each_candidate_once(tmp_path):
  rng = np.random.default_rng(0)
  spans = [f"span {i}" for i in range(12)]
  scores = {s: (rng.integers(-8, 16, 5) / 16).tolist() for s in spans}
  gen = CraftedGenerator(scores)
  cache = tmp_path / "shared"
  drawn = set()
  # Figure 2's settings in an order that grows, shrinks and grows again.
  for tau, n in [(0.6, 2), (0.0, 5), (0.6, 1), (0.2, 5), (0.6, 5), (0.8, 5), (0.4, 3),
                 (0.8, 5)]:
    before = gen.clips
    got = _sampler(gen, cache, tau=tau, n=n)(spans)
    missing = _needed(scores, tau, n) - drawn
    assert gen.clips - before == len(missing), (tau, n)
    drawn |= missing
    for s, r in zip(spans, got):
      passing = [j for j in range(n) if scores[s][j] >= tau]
      assert r.accepted == (passing[0] if passing else -1), (tau, n, s)
  assert len(gen.drawn) == len(set(gen.drawn))  # never the same (prompt, seed) twice


def test_pipeline_runs_share_one_clip_cache(tmp_path, monkeypatch):
  """Two feature workdirs, one `generation.cache_dir`: the second setting draws nothing."""
  built = tiny.build_all(str(tmp_path / "models"))
  calls = []
  original = generation.AudioGenerator.__call__

  def counting(self, prompts, seeds, params):
    calls.append(len(prompts))
    return original(self, prompts, seeds, params)

  monkeypatch.setattr(generation.AudioGenerator, "__call__", counting)

  def config(pitch_tau):
    c = _features_config("smoke")
    c.source, c.models.tiny = "generation", False
    c.models.clap, c.models.ast, c.models.generator = (built["clap"], built["ast"],
                                                       built["stable_audio"])
    c.data.tasks, c.data.splits = ("pitch",), ("dev",)
    c.generation.steps, c.generation.seconds = 2, 0.25
    c.generation.tau.pitch = pitch_tau
    c.generation.cache_dir = str(tmp_path / "clips")
    return c

  strict = pipeline.run(config(1.01), str(tmp_path / "strict"))["generation"]
  assert sum(calls) > 0
  calls.clear()
  loose = pipeline.run(config(-1.0), str(tmp_path / "loose"))["generation"]
  assert not calls  # every candidate it decides was drawn by the first run
  with open(os.path.join(loose, shards.ACQUISITIONS), encoding="utf-8") as f:
    loose_rows = [json.loads(line) for line in f]
  with open(os.path.join(strict, shards.ACQUISITIONS), encoding="utf-8") as f:
    strict_rows = {r["text"]: r for r in map(json.loads, f)}
  for r in loose_rows:
    assert r["has_audio"] and r["accepted"] == 0 and r["tau"] == -1.0 and r["n"] == 2
    ref = strict_rows[r["text"]]
    assert not ref["has_audio"] and ref["accepted"] is None
    assert r["scores"] == ref["scores"][:1]  # the same clip, scored once


# ----------------------------------------------------------------------------------------
# Per-task thresholds through the source, the sentence ablation, the AudioLDM 2 path.
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  return tiny.build_all(str(tmp_path_factory.mktemp("models")))


def test_source_keys_and_records_are_per_task(built, tmp_path):
  c = _features_config("smoke")
  c.source, c.models.tiny = "generation", False
  c.models.clap, c.models.ast, c.models.generator = (built["clap"], built["ast"],
                                                     built["stable_audio"])
  c.generation.n = 4
  c.generation.tau.update({"animal": 0.0, "pitch": 0.6})
  source = sources.GenerationSource(c, str(tmp_path), {k: c.models[k] for k in
                                                       ("clap", "ast", "generator")})
  gen = CraftedGenerator({"dog barking": [0.25, 0.5, 0.625, 0.125]})
  source._clap = CraftedClap()  # pylint: disable=protected-access
  source._sampler = _sampler(gen, tmp_path / "clips", n=4)  # pylint: disable=protected-access
  spans = (Span(4, 15, "Dog barking"),)
  animal = Example("a1", "animal", "dev", "The Dog barking is a [MASK].", "dog", spans, (), -1)
  pitch = Example("p1", "pitch", "dev", "The Dog barking is [MASK] than a whistle.", "higher",
                  spans, ("higher", "lower"), 0)
  keys = source.keys(animal, spans) + source.keys(pitch, spans)
  assert keys == ["animal|dog barking", "pitch|dog barking"]
  out = source.acquire(keys)
  assert out["accepted"].tolist() == [0, 2] and out["has_audio"].all()
  assert out["source"][0] != out["source"][1] and gen.clips == 3
  part = sources.to_part(keys, out)
  rows = [{k: v[i] for k, v in part.items()} for i in range(2)]
  assert source.record(rows[0]) == {"task": "animal", "span": "dog barking", "tau": 0.0, "n": 4,
                                    "accepted": 0, "fallback": False, "scores": [0.25]}
  assert source.record(rows[1])["scores"] == [0.25, 0.5, 0.625]
  assert source.manifest()["rejection"]["pitch"] == {"tau": 0.6, "n": 4, "rule": "first",
                                                     "fallback": "none"}


def test_sentence_audio_fuses_every_token(built, tmp_path):
  """`sentence_audio` ("w/o DKI"): one clip per sentence, its span on every token."""
  from axk.data import encode as enc
  from axk import methods
  from axk.runs import inputs as inputs_lib
  from configs import common

  c = _features_config("smoke,sentence_audio")
  assert c.source == "generation" and c.spans.unit == "sentence"
  c.models.tiny = False
  c.models.clap, c.models.ast, c.models.generator = (built["clap"], built["ast"],
                                                     built["stable_audio"])
  c.data.tasks, c.data.splits = ("pitch",), ("dev",)
  c.generation.steps, c.generation.seconds = 2, 0.25
  c.generation.tau.pitch = -1.0
  workdir = str(tmp_path / "w")
  out = pipeline.run(c, workdir)["generation"]
  examples = pipeline.load_data(c)[0]["pitch"]["dev"]
  features = inputs_lib.FeatureSpans(out)
  rows = [features(e) for e in examples]
  for e, row in zip(examples, rows):
    assert [(s["start"], s["end"], s["text"]) for s in row] == [(0, len(e.sentence),
                                                                 e.sentence)]
    assert row[0]["has_audio"]
  with open(os.path.join(out, shards.ACQUISITIONS), encoding="utf-8") as f:
    acquired = {r["span"] for r in map(json.loads, f)}
  prompts = {normalise(e.sentence.replace("[MASK]", " ")) for e in examples}
  assert acquired == prompts and not any("[mask]" in p for p in prompts)
  cache = generation.ClipCache(os.path.join(workdir, "cache", "clips"))
  sidecar = cache.sidecar(rows[0][0]["source"])
  assert sidecar["prompt"] == normalise(examples[0].sentence.replace("[MASK]", " "))
  tokenizer = enc.load_tokenizer(common.minilm_dir())
  arrays = inputs_lib.build(examples, rows, tokenizer, method=methods.get("ith"), model=None,
                            protocol="paper", max_length=128, max_spans=4, audio_dim=32,
                            audio_tokens=shards.read_manifest(out)["dims"]["num_audio_tokens"])
  special = np.isin(arrays["input_ids"], tokenizer.all_special_ids) & (
      arrays["input_ids"] != tokenizer.mask_token_id)
  words = (arrays["attention_mask"] == 1) & ~special
  assert words.sum(1).min() > 3
  np.testing.assert_array_equal(arrays["span_ids"][words], 1)  # every sentence token
  np.testing.assert_array_equal(arrays["span_ids"][~words], 0)
  assert arrays["span_has_audio"][:, 0].all()


def test_audioldm2_generator(tmp_path):
  path = tiny.build_audioldm2(str(tmp_path / "audioldm2"))
  gen = generation.AudioGenerator(path, generation.AUDIOLDM2, device="cpu")
  params = generation.GenerationParams(pipeline_class=generation.AUDIOLDM2, steps=2,
                                       seconds=0.25, guidance_scale=3.5)
  seeds = [_seed("bell", 0), _seed("rain", 0), _seed("bell", 1)]
  waves = gen(["bell sound", "rain sound", "bell sound"], seeds, params)
  assert gen.sampling_rate == 16_000 and gen.calls == 1
  assert [w.shape[0] for w in waves] == [1, 1, 1]
  assert all(abs(w.shape[1] - 4000) <= 64 for w in waves)  # 0.25 s at 16 kHz
  # A clip depends on its prompt and seed only, not on its batch (random weights give a
  # quiet clip: compare relative to its scale).
  scale = float(np.abs(waves[2]).max())
  alone = gen(["bell sound"], seeds[2:], params)[0]
  assert scale > 0 and float(np.abs(alone - waves[2]).max()) <= 1e-3 * scale
  assert float(np.abs(waves[0] - waves[2]).max()) > 0.1 * scale  # another seed, another clip
  # Through a features run: `smoke,audioldm2` builds the tiny AudioLDM 2 pipeline.
  c = _features_config("smoke,audioldm2")
  assert (c.generation.pipeline_class, c.models.generator) == (generation.AUDIOLDM2,
                                                                "cvssp/audioldm2")
  assert pipeline.model_paths(c, str(tmp_path / "w"))["generator"].endswith("audioldm2-v1")


def test_variants_select_feature_configs():
  from configs import ith
  assert ith.get_config("smoke").stages.features_config == "configs/features.py:smoke"
  assert ith.get_config("").stages.features_config == "configs/features.py:generation"
  for mod in ("no_rejection", "sentence_audio", "audioldm2", "musicgen"):
    assert (ith.get_config(f"smoke,{mod}").stages.features_config
            == f"configs/features.py:smoke,{mod}")
    spec = ith.get_config(f"minilm,{mod},lora").stages.features_config
    assert spec == f"configs/features.py:generation,{mod}"
    assert _features_config(spec.partition(":")[2]).source == "generation"
  c = _features_config("generation,no_rejection")
  assert c.generation.n == 1 and dict(c.generation.tau) == {"animal": -1.0, "pitch": -1.0}
  c = _features_config("generation,sentence_audio")
  assert c.spans.unit == "sentence" and c.generation.prompt_template == "{span}"
  assert _features_config("generation,musicgen").generation.pipeline_class == generation.MUSICGEN
  with pytest.raises(ValueError, match="modifier"):
    _features_config("generation,nope")


# ----------------------------------------------------------------------------------------
# The generator's window (`generation.window`): the full latent window or the clip's.
# ----------------------------------------------------------------------------------------

# The tiny Stable Audio pipeline (`tiny.build_stable_audio`): 16 kHz, a VAE of downsampling
# ratios 2, 4, 8 (hop 64 samples per latent frame) and a DiT window of round(0.5 s * 16000 /
# 64) = 125 latent frames (0.5 s).
_TINY_RATE, _TINY_HOP, _TINY_WINDOW = 16_000, 64, 125


@pytest.fixture(scope="module")
def stable_audio(built):
  gen = generation.AudioGenerator(built["stable_audio"], device="cpu")
  assert gen.sampling_rate == _TINY_RATE and gen.pipe.vae.hop_length == _TINY_HOP
  assert gen.pipe.transformer.config.sample_size == _TINY_WINDOW
  return gen


def _denoiser_inputs(gen, prompts, seeds, params):
  """The waveforms, and the latents the transformer was called on at each step."""
  seen = []
  hook = gen.pipe.transformer.register_forward_pre_hook(
      lambda module, args: seen.append(args[0].detach().clone()))
  try:
    waves = gen(prompts, seeds, params)
  finally:
    hook.remove()
  return waves, seen


def test_clip_window_denoises_the_clips_latent_length(stable_audio):
  seeds = [_seed("bell", 0), _seed("rain", 0)]
  prompts = ["bell sound", "rain sound"]
  # 0.25 s: 4000 samples, 4000 / 64 = 62.5 -> 63 frames; 0.2 s: 3200 / 64 = 50 exactly.
  for seconds, frames in ((0.25, 63), (0.2, 50)):
    samples = int(seconds * _TINY_RATE)
    full, full_in = _denoiser_inputs(stable_audio, prompts, seeds,
                                     generation.GenerationParams(steps=3, seconds=seconds))
    clip, clip_in = _denoiser_inputs(
        stable_audio, prompts, seeds,
        generation.GenerationParams(steps=3, seconds=seconds, window="clip"))
    # Classifier-free guidance doubles the batch; 4 latent channels.
    assert [tuple(x.shape) for x in full_in] == [(4, 4, _TINY_WINDOW)] * 3
    assert [tuple(x.shape) for x in clip_in] == [(4, 4, frames)] * 3
    assert [w.shape for w in full] == [(2, samples)] * 2
    assert [w.shape for w in clip] == [(2, samples)] * 2
    # The first step's input is the initial noise (scaled alike): the clip window's is the
    # first frames of the one the pipeline draws itself for the full window.
    np.testing.assert_array_equal(clip_in[0].numpy(), full_in[0][:, :, :frames].numpy())
    # Past the first step the DiT sees a shorter sequence: another clip.
    assert float(np.abs(clip[0] - full[0]).max()) > 1e-3 * float(np.abs(full[0]).max())


def test_clip_window_of_the_whole_window_is_the_full_window(stable_audio):
  seeds = [_seed("bell", 0), _seed("rain", 0), _seed("bell", 1)]
  prompts = ["bell sound", "rain sound", "bell sound"]
  seconds = _TINY_WINDOW * _TINY_HOP / _TINY_RATE  # 0.5 s, the model's whole window
  full = stable_audio(prompts, seeds, generation.GenerationParams(steps=3, seconds=seconds))
  clip = stable_audio(prompts, seeds, generation.GenerationParams(steps=3, seconds=seconds,
                                                                  window="clip"))
  for f, c in zip(full, clip):
    assert f.shape == (2, 8000)
    np.testing.assert_array_equal(c, f)


def test_clip_window_candidate_is_the_same_alone_or_in_a_batch(stable_audio):
  params = generation.GenerationParams(steps=3, seconds=0.25, window="clip")
  seeds = [_seed("bell", 0), _seed("rain", 0), _seed("bell", 1)]
  batch = stable_audio(["bell sound", "rain sound", "bell sound"], seeds, params)
  scale = float(np.abs(batch[2]).max())
  for i in (0, 2):
    alone = stable_audio([["bell sound", "rain sound", "bell sound"][i]], seeds[i:i + 1],
                         params)[0]
    assert alone.shape == (2, 4000)
    assert scale > 0 and float(np.abs(alone - batch[i]).max()) <= 1e-4 * scale
  assert float(np.abs(batch[0] - batch[2]).max()) > 0.1 * scale  # another seed, another clip


def test_window_keys_clips_only_when_not_full(built, tmp_path):
  seed = _seed("owl", 1)
  default = generation.clip_key("crafted", "owl sound", generation.GenerationParams(), seed)
  # The key the default clip had before the window option existed: the digest of the five
  # clip parameters (and the value that code gave, pinned).
  before = {"pipeline_class": "StableAudioPipeline", "steps": 50, "seconds": 5.0,
            "guidance_scale": 7.0, "negative_prompt": "Low quality"}
  from axk import hub  # pylint: disable=g-import-not-at-top
  assert default == hub.digest({"model": "crafted", "prompt": "owl sound", "params": before,
                                "seed": seed}, n=32)
  assert default == "f28104c26aab5e9ef4b6e274ab8cf8f3"
  assert generation.clip_key("crafted", "owl sound", generation.GenerationParams(window="full"),
                             seed) == default
  clip = generation.clip_key("crafted", "owl sound", generation.GenerationParams(window="clip"),
                             seed)
  assert clip != default
  assert clip == hub.digest({"model": "crafted", "prompt": "owl sound",
                             "params": {**before, "window": "clip"}, "seed": seed}, n=32)
  # The features run key: the default's parameters are the ones it had before the option.
  run_params = {}
  for window in ("full", "clip"):
    c = _features_config("smoke")
    c.source, c.models.tiny = "generation", False
    c.models.clap, c.models.ast, c.models.generator = (built["clap"], built["ast"],
                                                       built["stable_audio"])
    c.generation.window = window
    source = sources.GenerationSource(c, str(tmp_path), {k: c.models[k] for k in
                                                         ("clap", "ast", "generator")})
    run_params[window] = (source.setup.params["generation"], source.setup.run_key)
  assert sorted(run_params["full"][0]) == sorted(
      ["pipeline_class", "steps", "seconds", "guidance_scale", "negative_prompt",
       "prompt_template", "score_template", "n", "tau", "base_seed", "rule", "fallback"])
  assert run_params["clip"][0]["window"] == "clip"
  assert run_params["clip"][1] != run_params["full"][1]


def test_clip_window_is_refused_for_other_pipelines():
  for cls in (generation.AUDIOLDM2, generation.MUSICGEN):
    with pytest.raises(ValueError, match=r"^generation\.window='clip' .*StableAudioPipeline "
                                         r"only") as err:
      generation.GenerationParams(pipeline_class=cls, window="clip")
    assert "\n" not in str(err.value) and repr(cls) in str(err.value)
    generation.GenerationParams(pipeline_class=cls, window="full")  # the default is fine
  c = _features_config("generation,audioldm2")
  assert c.generation.window == "full"
  c.generation.window = "clip"
  with pytest.raises(ValueError, match="generation.window"):
    sources.generation_params(c)
  with pytest.raises(ValueError, match=r"^generation\.window='half': must be one of"):
    generation.GenerationParams(window="half")
