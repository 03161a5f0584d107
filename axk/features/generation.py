"""ITH's audio source: text-to-audio generation with CLAP rejection sampling.

A clip's score is the cosine between its CLAP audio embedding and the CLAP text embedding of
`score_template.format(span=...)` (published: the span alone); the generator's prompt is
`prompt_template.format(span=...)` (published: `"{span} sound"`). Each span has `n`
candidates in a fixed order, candidate j drawn from its own seed
`candidate_seed(base_seed, span, j)`, so candidate j of a span is the same clip in every run,
every batch and every task. Acceptance (`rule`):

- `"first"` (default; the published code's rule): the first candidate in order with a score
  `>= tau` (the published code compares with `>=`; the paper writes `>`). Candidates are
  drawn lazily: a generator call takes the next candidate of many spans at once and a span
  leaves as soon as one passes, which selects exactly the clip that drawing all `n` in one
  batch (as the published code does) and taking the first passing one would.
- `"best"`: the best-scoring of the `n` candidates, when it scores `>= tau` (CLAP
  reranking; neither paper nor published code does this).

A span with no accepted candidate gets no audio (`fallback="none"`, the paper's rule: ITH drops
it from fusion), or the published code's generic clip (`fallback="sound"`: candidate 0 of the
prompt `"sound"`, the published `sound_0.wav`), scored against the span's text.

Each call may give every span its own `tau` and `n` (ITH's per-task thresholds); requests of
the same span share their candidates, so a clip is drawn at most once whatever asks for it.

Cache (`axk.features.clips`): every candidate drawn gets a JSON sidecar at
`<cache_dir>/<key[:2]>/<key>.json`, keyed by `clip_key` (a hash of the model, the prompt,
the generation parameters and the seed), holding its prompt, seed, index, CLAP score and the
text it was scored against, and (with `keep_rejected`, the default) the clip itself as
16-bit FLAC beside it, so that any later setting (another tau, a larger or smaller n,
another rule) is decided from the cache and calls the generator only for candidates never
drawn. Scores are always computed on the clip as stored (after the FLAC round trip), so a
cached clip and a fresh one score the same. Files are written by a background thread while
the next generator call runs.

Window (`generation.window`, Stable Audio only): diffusers' `StableAudioPipeline` denoises its
whole latent window (`transformer.config.sample_size` frames, 47.55 s for Stable Audio Open)
and trims the decoded waveform to the clip; `"full"` (default) does that, as published.
`"clip"` denoises and decodes only the latent frames the clip needs (`clip_latent_frames`),
then trims as before: other samples than the full window's (the DiT attends over a shorter
sequence, the VAE decodes fewer frames and the noise is shorter), for less compute. A
`"clip"` clip has its own cache key; the key of a `"full"` one is unchanged.

Supported generators (`generation.pipeline_class`): `StableAudioPipeline` (default),
`AudioLDM2Pipeline` (one waveform per prompt, so its own CLAP reranking never runs) and other
diffusers text-to-audio pipelines that take `audio_length_in_s`, and
`MusicgenForConditionalGeneration` through transformers (sampling seeded once per call).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent import futures
import dataclasses
import hashlib
import io
import json
import logging
import os
import types
import warnings

import numpy as np
import torch

from axk import hub
from axk.features import audio as audio_lib
from axk.features.clap import pick_device
from axk.features.clips import ClipCache

logger = logging.getLogger(__name__)

STABLE_AUDIO = "StableAudioPipeline"
AUDIOLDM2 = "AudioLDM2Pipeline"
MUSICGEN = "MusicgenForConditionalGeneration"
RULES = ("first", "best")
FALLBACKS = ("none", "sound")
WINDOWS = ("full", "clip")
# Latent frames the "clip" window is a multiple of. 1: `StableAudioDiTModel` has no patching
# (its only convolutions, before and after the blocks, have kernel size 1, and the pipeline
# builds the rotary embedding for the latents' own length, `latents.shape[2]`), and
# `AutoencoderOobleck`'s decoder turns L frames into exactly L * hop_length samples (each
# upsampling is a transposed convolution of stride s, kernel 2s and padding ceil(s / 2), with
# every s even; its other convolutions keep the length).
LATENT_MULTIPLE = 1
# The published code's clip for spans without an accepted one: `sound_0.wav`, candidate 0 of
# the prompt "sound" (what it generates for a sentence without a detected span).
FALLBACK_PROMPT = "sound"
FALLBACK_SPAN = ""


def resolve_dtype(torch_dtype: str, device: torch.device) -> torch.dtype:
  """`auto` -> float16 on CUDA (as Stable Audio Open is published and ITH ran it), else
  float32 (CPUs have no fast half-precision path); any other name as given."""
  if torch_dtype == "auto":
    return torch.float16 if device.type == "cuda" else torch.float32
  return getattr(torch, torch_dtype)


def auto_spans_per_call(device: torch.device) -> int:
  """Spans (of `candidates` clips each) per generator call when `spans_per_call` is 0.

  On CUDA one span per 8 GiB of device memory (Stable Audio Open in float16 at 5 s, with
  classifier-free guidance doubling the batch, stays well inside that; 17 on an H200);
  on a CPU one, as more only adds latency.
  """
  if device.type == "cuda":
    total = torch.cuda.get_device_properties(device).total_memory
    return max(1, int(total // (8 << 30)))
  return 1


@dataclasses.dataclass(frozen=True)
class GenerationParams:
  """Everything that decides which clips are drawn and which are accepted.

  `tau` and `n` are the defaults of a sampler call; a call may give each span its own.
  """

  pipeline_class: str = STABLE_AUDIO
  steps: int = 50
  seconds: float = 5.0
  guidance_scale: float = 7.0
  negative_prompt: str = "Low quality"
  prompt_template: str = "{span} sound"
  score_template: str = "{span}"
  n: int = 5
  tau: float = 0.0
  base_seed: int = 0
  rule: str = "first"
  fallback: str = "none"
  window: str = "full"

  def __post_init__(self):
    if self.rule not in RULES:
      raise ValueError(f"generation.rule={self.rule!r}: must be one of {RULES}")
    if self.fallback not in FALLBACKS:
      raise ValueError(f"generation.fallback={self.fallback!r}: must be one of {FALLBACKS}")
    if self.n < 1:
      raise ValueError(f"generation.n={self.n}: must be >= 1")
    if self.window not in WINDOWS:
      raise ValueError(f"generation.window={self.window!r}: must be one of {WINDOWS}")
    check_window(self.window, self.pipeline_class)

  def clip_params(self) -> dict:
    """The parameters that change a clip (not the ones that only change acceptance); the
    window only when it is not "full", so that the keys of full-window clips stay as they
    were before the option existed."""
    params = {"pipeline_class": self.pipeline_class, "steps": self.steps,
              "seconds": self.seconds, "guidance_scale": self.guidance_scale,
              "negative_prompt": self.negative_prompt}
    if self.window != "full":
      params["window"] = self.window
    return params


def check_window(window: str, pipeline_class: str) -> None:
  """Raises ValueError (one line) for a window the pipeline class cannot take."""
  if window != "full" and pipeline_class != STABLE_AUDIO:
    raise ValueError(f"generation.window={window!r} applies to {STABLE_AUDIO} only, not to "
                     f"generation.pipeline_class={pipeline_class!r}; use window='full'")


def clip_latent_frames(seconds: float, sampling_rate: int, hop_length: int) -> int:
  """Latent frames Stable Audio denoises for a clip of `seconds` with `window="clip"`.

  The pipeline keeps the first `int(seconds * sampling_rate)` samples of the decoded waveform
  (its `waveform_end`) and the VAE decodes each latent frame into `hop_length` samples, so
  ceil(int(seconds * sampling_rate) / hop_length) frames, rounded up to `LATENT_MULTIPLE`
  (integer arithmetic, so that a clip of a whole number of frames gets no extra frame from
  floating-point error).
  """
  samples = int(seconds * sampling_rate)
  frames = max(1, -(-samples // hop_length))
  return -(-frames // LATENT_MULTIPLE) * LATENT_MULTIPLE


def candidate_seed(base_seed: int, span: str, index: int) -> int:
  """The seed of candidate `index` of a span: a 63-bit hash of the base seed, span, index."""
  text = f"{base_seed}\0{span}\0{index}"
  return int(hashlib.sha256(text.encode()).hexdigest()[:16], 16) & ((1 << 63) - 1)


def clip_key(model_fingerprint: str, prompt: str, params: GenerationParams, seed: int) -> str:
  """Cache key of one generated clip."""
  return hub.digest({"model": model_fingerprint, "prompt": prompt,
                     "params": params.clip_params(), "seed": seed}, n=32)


def _generation_shim(pipe) -> None:
  """AudioLDM 2 drives its GPT-2 with `_update_model_kwargs_for_generation`, which
  transformers 5 keeps only on models with a generation head (the published checkpoint's
  `language_model` is a bare `GPT2Model`); binds the mixin's method onto it."""
  import transformers  # pylint: disable=g-import-not-at-top
  # pylint: disable=protected-access
  lm = getattr(pipe, "language_model", None)
  if lm is not None and not hasattr(lm, "_update_model_kwargs_for_generation"):
    lm._update_model_kwargs_for_generation = types.MethodType(
        transformers.GenerationMixin._update_model_kwargs_for_generation, lm)


class AudioGenerator:
  """A frozen text-to-audio model: prompts and seeds in, waveforms `[C, T]` out.

  Attributes:
    info: manifest entry (`hub.describe`).
    sampling_rate: rate of the generated audio.
    calls: number of batched generation calls.
    clips: number of clips generated.
  """

  def __init__(self, name_or_path: str, pipeline_class: str = STABLE_AUDIO, *,
               device: str = "auto", torch_dtype: str = "float32",
               what: str = "generation.model"):
    self.path = hub.resolve(name_or_path, what, ignore_patterns=hub.NOT_PYTORCH)
    self.info = {**hub.describe(name_or_path, self.path), "pipeline_class": pipeline_class}
    self.pipeline_class = pipeline_class
    self.device = pick_device(device)
    dtype = resolve_dtype(torch_dtype, self.device)
    self.dtype = dtype
    self.calls = 0
    self.clips = 0
    if pipeline_class == MUSICGEN:
      import transformers  # pylint: disable=g-import-not-at-top
      self.processor = transformers.AutoProcessor.from_pretrained(self.path)
      self.model = transformers.MusicgenForConditionalGeneration.from_pretrained(
          self.path, dtype=dtype).to(self.device).eval()
      self.sampling_rate = int(self.model.config.audio_encoder.sampling_rate)
      return
    import diffusers  # pylint: disable=g-import-not-at-top
    cls = getattr(diffusers, pipeline_class, None)
    if cls is None:
      raise ValueError(f"generation.pipeline_class={pipeline_class!r} is not a diffusers "
                       "class")
    with warnings.catch_warnings():  # diffusers' VAE still builds on torch's old weight_norm.
      warnings.filterwarnings("ignore", message=r".*weight_norm.* is deprecated",
                              category=FutureWarning)
      self.pipe = cls.from_pretrained(self.path, dtype=dtype).to(self.device)
    # Prompts are padded to the text encoder's length: the pipeline takes the padding it cuts
    # for a truncated prompt and warns about "<pad>" tokens on every call.
    logging.getLogger(cls.__module__).setLevel(logging.ERROR)
    self.pipe.set_progress_bar_config(disable=True)
    _generation_shim(self.pipe)
    if pipeline_class == STABLE_AUDIO:
      self.sampling_rate = int(self.pipe.vae.config.sampling_rate)
    elif hasattr(self.pipe, "vocoder"):
      self.sampling_rate = int(self.pipe.vocoder.config.sampling_rate)
    else:
      raise ValueError(f"cannot tell the sampling rate of {pipeline_class}")

  @classmethod
  def from_pipeline(cls, pipe, pipeline_class: str = STABLE_AUDIO, *,
                    device: str = "auto") -> "AudioGenerator":
    """A generator around an in-memory diffusers pipeline (benchmarks); `info` has no
    fingerprint beyond the class."""
    self = cls.__new__(cls)
    self.path, self.pipeline_class = "", pipeline_class
    self.info = {"name": "<in memory>", "fingerprint": f"in-memory {pipeline_class}",
                 "pipeline_class": pipeline_class}
    self.device = pick_device(device)
    self.pipe = pipe.to(self.device)
    self.dtype = next(pipe.transformer.parameters()).dtype
    self.pipe.set_progress_bar_config(disable=True)
    self.sampling_rate = int(self.pipe.vae.config.sampling_rate)
    self.calls = self.clips = 0
    return self

  @torch.no_grad()
  def __call__(self, prompts: Sequence[str], seeds: Sequence[int],
               params: GenerationParams) -> list[np.ndarray]:
    """One batched call: clip i from `prompts[i]` and `seeds[i]`; returns `[C, T]` arrays."""
    check_window(params.window, self.pipeline_class)
    self.calls += 1
    self.clips += len(prompts)
    if self.pipeline_class == MUSICGEN:
      return self._musicgen(prompts, seeds, params)
    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    kwargs = dict(prompt=list(prompts), num_inference_steps=params.steps,
                  guidance_scale=params.guidance_scale, num_waveforms_per_prompt=1,
                  generator=generators, output_type="np")
    if params.negative_prompt:
      kwargs["negative_prompt"] = [params.negative_prompt] * len(prompts)
    if self.pipeline_class == STABLE_AUDIO:
      kwargs["audio_end_in_s"] = params.seconds
      if params.window == "clip":
        kwargs["latents"] = self._clip_noise(generators, params.seconds)
    else:
      kwargs["audio_length_in_s"] = params.seconds
    with warnings.catch_warnings():
      # torchsde warns about floating-point jitter at the ends of its Brownian interval.
      warnings.simplefilter("ignore", UserWarning)
      audios = np.asarray(self.pipe(**kwargs).audios, dtype=np.float32)
    return [a if a.ndim == 2 else a[None] for a in audios]

  def _clip_noise(self, generators: Sequence[torch.Generator], seconds: float) -> torch.Tensor:
    """The initial noise of the "clip" window, `[B, C, clip_latent_frames]`.

    Each candidate's noise is drawn from its own generator exactly as the pipeline draws it
    for the full window (diffusers' `randn_tensor` over `[B, C, sample_size]`, one
    `[1, C, sample_size]` draw per generator, in the dtype of the pipeline's conditioning) and
    cut to its first frames: the clip window's initial noise is the first frames of the full
    window's, for every candidate, whatever its batch. The pipeline scales it by the
    scheduler's `init_noise_sigma` as it scales its own. The scheduler's SDE noise (a Brownian
    tree per candidate, seeded with the candidate's seed) takes the shape of the shorter
    latents, so it is not a cut of the full window's.
    """
    from diffusers.utils.torch_utils import randn_tensor  # pylint: disable=g-import-not-at-top
    pipe = self.pipe
    full = int(pipe.transformer.config.sample_size)
    frames = min(full, clip_latent_frames(seconds, self.sampling_rate, pipe.vae.hop_length))
    device = pipe._execution_device  # pylint: disable=protected-access
    noise = randn_tensor((len(generators), pipe.transformer.config.in_channels, full),
                         generator=list(generators), device=device,
                         dtype=pipe.projection_model.dtype)
    return noise[:, :, :frames]

  def _musicgen(self, prompts, seeds, params) -> list[np.ndarray]:
    # MusicGen samples with the global RNG: seeded once per call from the first seed.
    torch.manual_seed(int(seeds[0]))
    inputs = self.processor(text=list(prompts), padding=True, return_tensors="pt")
    frame_rate = self.model.config.audio_encoder.frame_rate
    out = self.model.generate(**inputs.to(self.device), do_sample=True,
                              guidance_scale=params.guidance_scale,
                              max_new_tokens=int(params.seconds * frame_rate))
    return [a for a in out.float().cpu().numpy()]


@dataclasses.dataclass
class Acquired:
  """The outcome of rejection sampling for one span (one request).

  Attributes:
    has_audio: a clip was accepted (or, with `fallback="sound"`, the fallback clip is used).
    score: the used clip's CLAP score; without one, the best score seen (-inf when none).
    key: the used clip's cache key, "" when none.
    wave: the used clip, mono float32 at `rate`, or None.
    rate: its sampling rate.
    clap_audio: its CLAP audio embedding `[D]` (zeros when none).
    clap_text: the CLAP text embedding the clips were scored against `[D]`.
    accepted: the accepted candidate's index, -1 when none passed.
    scores: the scores of the candidates decided, in order (`tried` of them).
    fallback: the clip is the fallback clip.
  """

  has_audio: bool
  score: float
  key: str
  wave: np.ndarray | None
  rate: int
  clap_audio: np.ndarray
  clap_text: np.ndarray
  accepted: int = -1
  scores: list[float] = dataclasses.field(default_factory=list)
  fallback: bool = False

  @property
  def tried(self) -> int:
    """Candidates decided: the accepted one's index + 1, or all `n` when none passed."""
    return len(self.scores)


def flac_round_trip(wave: np.ndarray, rate: int) -> tuple[bytes, np.ndarray]:
  """Encodes `[C, T]` to 16-bit FLAC bytes and decodes them back (what the cache holds)."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  sf.write(buf, np.clip(wave, -1.0, 1.0).T, rate, format="FLAC", subtype="PCM_16")
  data = buf.getvalue()
  decoded, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
  return data, decoded.T


@dataclasses.dataclass(frozen=True)
class Candidate:
  """A candidate to draw for a request: `cand` (key, prompt, seed), the span, its index,
  the text it is scored against and that text's CLAP embedding, and the score from which its
  clip is kept (the lowest threshold of the span's requests)."""

  cand: tuple[str, str, int]
  span: str
  index: int
  score_text: str
  text: np.ndarray
  keep_at: float


def clip_sidecar(cand: tuple[str, str, int], span: str, index: int, score: float,
                 score_text: str, rate: int, *, model: dict, params: GenerationParams,
                 clap_fingerprint: str) -> dict:
  """The clip cache's sidecar of a drawn candidate (`ClipCache.put`)."""
  key, prompt, seed = cand
  return {"key": key, "span": span, "prompt": prompt, "seed": seed, "candidate": index,
          "model": model, "params": params.clip_params(), "clap": clap_fingerprint,
          "score_text": score_text, "clap_score": float(score), "rate": rate}


class RejectionSampler:
  """CLAP rejection sampling over a generator, with the clip cache.

  A generator call holds up to `spans_per_call * n` clips (`spans_per_call=0`: sized to the
  device, `auto_spans_per_call`): with the "first" rule the next undecided candidate of that
  many spans, with "best" every undecided candidate of `spans_per_call` spans. A call never
  holds a candidate that no request needs, so a run draws exactly the candidates its setting
  decides and no more.
  """

  def __init__(self, generator: AudioGenerator, clap, cache: ClipCache,
               params: GenerationParams, *, spans_per_call: int = 1,
               keep_rejected: bool = True):
    self.generator = generator
    self.clap = clap
    self.cache = cache
    self.params = params
    self.spans_per_call = (spans_per_call if spans_per_call > 0 else
                           auto_spans_per_call(getattr(generator, "device",
                                                       torch.device("cpu"))))
    self.keep_rejected = keep_rejected
    self.model_fp = generator.info["fingerprint"]
    self._writes: dict[str, futures.Future] = {}
    self._writer: futures.ThreadPoolExecutor | None = None

  @property
  def clips_per_call(self) -> int:
    return self.spans_per_call * self.params.n

  def candidate(self, span: str, index: int) -> tuple[str, str, int]:
    """(key, prompt, seed) of candidate `index` of a span."""
    prompt = (FALLBACK_PROMPT if span == FALLBACK_SPAN else
              self.params.prompt_template.format(span=span))
    seed = candidate_seed(self.params.base_seed, span, index)
    return clip_key(self.model_fp, prompt, self.params, seed), prompt, seed

  def _known(self, key: str, score_text: str) -> dict | None:
    """The candidate's sidecar when it was scored by this CLAP model against this text."""
    sidecar = self.cache.sidecar(key)
    if (sidecar is None or sidecar.get("clap") != self.clap.info["fingerprint"]
        or sidecar.get("score_text", score_text) != score_text):
      return None
    return sidecar

  def _mono(self, wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    return audio_lib.from_array(wave, rate, target, channels_last=False)

  def _draw(self, cands: Sequence[tuple[str, str, int]]):
    """One generator call: the clips as stored (FLAC bytes, decoded) and their CLAP
    embeddings, scored in one batched CLAP pass."""
    waves = self.generator([c[1] for c in cands], [c[2] for c in cands], self.params)
    rate = self.generator.sampling_rate
    stored = [flac_round_trip(w, rate) for w in waves]
    embs = self.clap.audio([self._mono(w, rate, self.clap.sampling_rate) for _, w in stored])
    return stored, embs, rate

  def _put(self, cand, span: str, index: int, score: float, score_text: str, rate: int,
           flac: bytes | None) -> None:
    """Writes a candidate's sidecar (and clip) in the background."""
    sidecar = clip_sidecar(cand, span, index, score, score_text, rate,
                           model=self.generator.info, params=self.params,
                           clap_fingerprint=self.clap.info["fingerprint"])
    self._writes[cand[0]] = self._writer.submit(self.cache.put, cand[0], sidecar, flac)

  def draw_and_store(self, items: Sequence[Candidate]) -> list[tuple[float, bool, np.ndarray]]:
    """Draws and scores the candidates `items` (one generator call here) and stores each:
    its sidecar, and its clip when kept (`keep_rejected`, or a score >= the item's
    `keep_at`). Returns (score, kept, CLAP audio embedding) per item."""
    stored, embs, rate = self._draw([it.cand for it in items])
    out = []
    for n, it in enumerate(items):
      score = float(embs[n] @ it.text)
      keep = self.keep_rejected or score >= it.keep_at
      self._put(it.cand, it.span, it.index, score, it.score_text, rate,
                stored[n][0] if keep else None)
      out.append((score, keep, embs[n]))
    return out

  def _cached_clip(self, key: str):
    """(mono wave at its rate, rate, mono wave at CLAP's rate) of a stored clip, or None."""
    if key in self._writes:
      self._writes[key].result()  # Written in the background: wait for it.
    loaded = self.cache.audio(key)
    if loaded is None:
      return None
    wave, rate = loaded
    return self._mono(wave, rate, rate), rate, self._mono(wave, rate, self.clap.sampling_rate)

  def __call__(self, spans: Sequence[str], taus: Sequence[float] | None = None,
               ns: Sequence[int] | None = None) -> list[Acquired]:
    """Rejection sampling for each (normalised) span, at its own `tau` and `n` (default:
    the params')."""
    p = self.params
    taus = [float(p.tau)] * len(spans) if taus is None else [float(t) for t in taus]
    ns = [int(p.n)] * len(spans) if ns is None else [int(n) for n in ns]
    if len(taus) != len(spans) or len(ns) != len(spans) or min(ns, default=1) < 1:
      raise ValueError("one tau and one n >= 1 per span")
    score_texts = [p.score_template.format(span=s) for s in spans]
    distinct = sorted(set(score_texts))
    embedded = dict(zip(distinct, self.clap.text(distinct))) if distinct else {}
    texts = np.stack([embedded[t] for t in score_texts]) if spans else np.zeros((0, 0))
    self._writes = {}
    with futures.ThreadPoolExecutor(1, thread_name_prefix="clip-cache") as self._writer:
      results = self._sample(spans, taus, ns, score_texts, texts)
      if p.fallback == "sound" and any(not r.has_audio for r in results):
        self._use_fallback(results, texts)
    self._writer = None
    for w in self._writes.values():
      w.result()  # Raises a failed write here.
    return results

  def _sample(self, spans, taus, ns, score_texts, texts) -> list[Acquired]:
    """Decides every request from known scores, drawing only the candidates needed."""
    rule_first = self.params.rule == "first"
    scores: dict[str, float] = {}  # candidate key -> score, for every candidate decided
    has_clip: dict[str, bool] = {}  # candidate key -> its clip is stored
    absent: set[str] = set()  # candidate keys without a usable sidecar
    drawn: dict[str, np.ndarray] = {}  # candidate key -> CLAP audio embedding, drawn here
    results: list[Acquired | None] = [None] * len(spans)
    accept: dict[int, tuple[int, str]] = {}  # request -> (index, key) whose clip to load

    def score_of(i: int, q: int) -> float | None:
      key = self.candidate(spans[i], q)[0]
      if key in absent:
        return None
      if key not in scores:
        sidecar = self._known(key, score_texts[i])
        if sidecar is None:
          absent.add(key)
          return None
        scores[key] = float(sidecar["clap_score"])
        has_clip[key] = bool(sidecar.get("audio"))
      return scores[key]

    def needs(i: int) -> list[int]:
      """Candidates request i still needs drawn ([] once it is decided)."""
      known = []
      for q in range(ns[i]):
        sc = score_of(i, q)
        if sc is None:
          if rule_first:
            return [q]
          known.append(None)
          continue
        known.append(sc)
        if rule_first and sc >= taus[i]:
          break
      missing = [q for q, sc in enumerate(known) if sc is None]
      if missing:
        return missing
      passing = [q for q, sc in enumerate(known) if sc >= taus[i]]
      if not passing:
        results[i] = Acquired(False, max(known), "", None, 0,
                              np.zeros(self.clap.dim, np.float32), texts[i], -1, known)
        return []
      q = passing[0] if rule_first else max(passing, key=lambda j: known[j])
      key = self.candidate(spans[i], q)[0]
      if not has_clip[key]:
        del scores[key]  # Passes, but its clip was not kept: draw it again (same seed).
        absent.add(key)
        return [q]
      accept[i] = (q, key)
      results[i] = Acquired(True, known[q], key, None, 0, np.zeros(self.clap.dim, np.float32),
                            texts[i], q, known[:q + 1] if rule_first else known)
      return []

    min_tau = {}
    for span, tau in zip(spans, taus):
      min_tau[span] = min(tau, min_tau.get(span, tau))
    pending = [i for i in range(len(spans)) if needs(i)]
    while pending:
      # The next requests in turn, each with what it needs now (another request may have
      # drawn it meanwhile), until the call is full.
      batch: dict[str, tuple[tuple[str, str, int], int, int]] = {}
      served, rest = [], []
      for n_seen, i in enumerate(pending):
        qs = needs(i)
        if not qs:
          continue
        cands = [self.candidate(spans[i], q) + (q,) for q in qs]
        new = [c for c in cands if c[0] not in batch]
        if served and len(batch) + len(new) > self.clips_per_call:
          rest = pending[n_seen:]
          break
        served.append(i)
        for c in new:
          batch[c[0]] = (c[:3], i, c[3])
      # Kept when some request could accept it (always, with keep_rejected).
      items = [Candidate(cand, spans[i], q, score_texts[i], texts[i], min_tau[spans[i]])
               for cand, i, q in batch.values()]
      for key, (score, keep, emb) in zip(batch, self.draw_and_store(items)):
        scores[key], has_clip[key], drawn[key] = score, keep, emb
        absent.discard(key)
      pending = rest + [i for i in served if needs(i)]
    self._load_accepted(results, accept, drawn)
    return results

  def _load_accepted(self, results: list[Acquired], accept: dict[int, tuple[int, str]],
                     drawn: dict[str, np.ndarray]) -> None:
    """Gives each accepted request its clip (read back from the cache) and the clip's CLAP
    audio embedding (computed here for clips not drawn in this call)."""
    loaded = {}
    for i, (q, key) in accept.items():
      if key not in loaded:
        loaded[key] = self._cached_clip(key)
        if loaded[key] is None:
          raise RuntimeError(f"{self.cache.folder}: the clip of {key} is listed as kept but "
                             "cannot be read")
    from_disk = [k for k in loaded if k not in drawn]
    if from_disk:
      drawn.update(zip(from_disk, self.clap.audio([loaded[k][2] for k in from_disk])))
    if loaded:
      for i, (q, key) in accept.items():
        r = results[i]
        r.wave, r.rate, r.clap_audio = loaded[key][0], loaded[key][1], drawn[key]

  def _use_fallback(self, results: list[Acquired], texts: np.ndarray) -> None:
    """Gives every span without an accepted clip the fallback clip (drawn once, cached)."""
    cand = self.candidate(FALLBACK_SPAN, 0)
    clip = self._cached_clip(cand[0]) if self.cache.sidecar(cand[0]) else None
    if clip is None:
      self.draw_and_store([Candidate(cand, FALLBACK_SPAN, 0, FALLBACK_PROMPT,
                                     self.clap.text([FALLBACK_PROMPT])[0], -np.inf)])
      clip = self._cached_clip(cand[0])
    emb = self.clap.audio([clip[2]])[0]
    for i, r in enumerate(results):
      if not r.has_audio:
        r.has_audio, r.fallback, r.key = True, True, cand[0]
        r.wave, r.rate, r.clap_audio = clip[0], clip[1], emb
        r.score = float(emb @ texts[i])
