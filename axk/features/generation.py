"""ITH's audio source: text-to-audio generation with CLAP rejection sampling.

A clip's score is the cosine between its CLAP audio embedding and the CLAP text embedding of
`score_template.format(span=...)`. Each span has up to `max_rounds * candidates` candidates,
in order (round 0's candidates 0..k-1, then round 1's, ...), each with its own seed. Two
acceptance rules (`rule`):

- `"first"` (default, the published code's): the first candidate in order with a score
  `>= tau`. Candidates are drawn lazily: a generator call takes the next candidate of many
  spans at once, and a span leaves as soon as one passes, so a span costs about
  1 / (acceptance rate) clips instead of all of them. Because every candidate has its own
  seed, this selects exactly the clip that drawing all of a span's candidates and taking the
  first passing one would.
- `"best"`: round by round, the best of the round's `candidates` clips when it scores
  `> tau`; a round is one batched call covering up to `spans_per_call` spans.

When no candidate passes, the span has no audio (ITH drops it from fusion).

Determinism: candidate j of round r of a span is generated from its own seed,
`candidate_seed(base_seed, span, r, j)` (a hash), through a per-candidate
`torch.Generator`, so a clip does not depend on the batch it was drawn in and a rerun
draws the same clip.

Cache: every candidate gets a JSON sidecar at `<cache_dir>/<key[:2]>/<key>.json`, keyed
by `clip_key` (a hash of the model, the prompt, the generation parameters and the seed),
holding its prompt, seed, parameters and CLAP score; accepted clips (and, with
`keep_rejected`, all of them) are stored beside it as 16-bit FLAC. A later run (after an
interruption, or with other feature settings) decides a candidate from its sidecar when it
is known under the same CLAP model, and calls the generator only when a clip it needs is
missing. Scores are always computed on the clip as stored (after the FLAC round trip), so a
cached clip and a fresh one score the same. Files are written by a background thread while
the next generator call runs.

Supported generators (`generation.pipeline_class`): `StableAudioPipeline` (default,
tested), other diffusers text-to-audio pipelines that take `audio_length_in_s`
(`AudioLDMPipeline`, `AudioLDM2Pipeline`; wired, not tested offline), and
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
import warnings

import numpy as np
import torch

from axk import hub
from axk.features import audio as audio_lib
from axk.features.clap import pick_device
from axk.utils import files

logger = logging.getLogger(__name__)

STABLE_AUDIO = "StableAudioPipeline"
MUSICGEN = "MusicgenForConditionalGeneration"
RULES = ("first", "best")


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
  """Everything that decides which clips are drawn and which are accepted."""

  pipeline_class: str = STABLE_AUDIO
  steps: int = 50
  seconds: float = 5.0
  guidance_scale: float = 7.0
  negative_prompt: str = "Low quality"
  prompt_template: str = "{span}"
  score_template: str = "{span}"
  candidates: int = 5
  max_rounds: int = 2
  tau: float = 0.0
  base_seed: int = 0
  rule: str = "first"

  def __post_init__(self):
    if self.rule not in RULES:
      raise ValueError(f"generation.rule={self.rule!r}: must be one of {RULES}")

  def clip_params(self) -> dict:
    """The parameters that change a clip (not the ones that only change acceptance)."""
    return {"pipeline_class": self.pipeline_class, "steps": self.steps,
            "seconds": self.seconds, "guidance_scale": self.guidance_scale,
            "negative_prompt": self.negative_prompt}


def candidate_seed(base_seed: int, span: str, round_index: int, candidate: int) -> int:
  """The seed of one candidate: a 63-bit hash of the base seed, span, round and index."""
  text = f"{base_seed}\0{span}\0{round_index}\0{candidate}"
  return int(hashlib.sha256(text.encode()).hexdigest()[:16], 16) & ((1 << 63) - 1)


def clip_key(model_fingerprint: str, prompt: str, params: GenerationParams, seed: int) -> str:
  """Cache key of one generated clip."""
  return hub.digest({"model": model_fingerprint, "prompt": prompt,
                     "params": params.clip_params(), "seed": seed}, n=32)


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
    self.pipe = cls.from_pretrained(self.path, dtype=dtype).to(self.device)
    self.pipe.set_progress_bar_config(disable=True)
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
    else:
      kwargs["audio_length_in_s"] = params.seconds
    with warnings.catch_warnings():
      # torchsde warns about floating-point jitter at the ends of its Brownian interval.
      warnings.simplefilter("ignore", UserWarning)
      audios = np.asarray(self.pipe(**kwargs).audios, dtype=np.float32)
    return [a if a.ndim == 2 else a[None] for a in audios]

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
  """The outcome of rejection sampling for one span.

  Attributes:
    has_audio: a clip passed `tau`.
    score: the accepted clip's CLAP score, else the best score seen.
    key: the accepted clip's cache key, "" when none.
    wave: the accepted clip, mono float32 at `rate`, or None.
    rate: its sampling rate.
    clap_audio: its CLAP audio embedding `[D]` (zeros when none).
    clap_text: the CLAP text embedding the clips were scored against `[D]`.
    rounds: rounds drawn (or decided from the cache).
    candidates: candidates scored, drawn or read from the cache (with the "first" rule, the
      accepted one's position + 1 when one passed).
  """

  has_audio: bool
  score: float
  key: str
  wave: np.ndarray | None
  rate: int
  clap_audio: np.ndarray
  clap_text: np.ndarray
  rounds: int
  candidates: int = 0


class ClipCache:
  """Generated clips as FLAC plus JSON sidecars, keyed by `clip_key`."""

  def __init__(self, folder: str):
    self.folder = folder
    os.makedirs(folder, exist_ok=True)

  def _path(self, key: str, ext: str) -> str:
    from axk.features.sources import cached_clip_path  # pylint: disable=g-import-not-at-top
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


def _flac_round_trip(wave: np.ndarray, rate: int) -> tuple[bytes, np.ndarray]:
  """Encodes `[C, T]` to 16-bit FLAC bytes and decodes them back (what the cache holds)."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  sf.write(buf, np.clip(wave, -1.0, 1.0).T, rate, format="FLAC", subtype="PCM_16")
  data = buf.getvalue()
  decoded, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
  return data, decoded.T


class RejectionSampler:
  """CLAP rejection sampling over a generator, with the clip cache.

  A generator call holds `spans_per_call * candidates` clips (`spans_per_call=0`: sized to
  the device, `auto_spans_per_call`). With the "first" rule those are the next candidates
  of as many spans, and when fewer spans are left than clips fit, each remaining span gets
  several consecutive candidates, so the device stays full to the end.
  """

  def __init__(self, generator: AudioGenerator, clap, cache: ClipCache,
               params: GenerationParams, *, spans_per_call: int = 1,
               keep_rejected: bool = False):
    if params.candidates < 1 or params.max_rounds < 1:
      raise ValueError("generation.candidates and generation.max_rounds must be >= 1")
    self.generator = generator
    self.clap = clap
    self.cache = cache
    self.params = params
    self.spans_per_call = (spans_per_call if spans_per_call > 0 else
                           auto_spans_per_call(getattr(generator, "device",
                                                       torch.device("cpu"))))
    self.keep_rejected = keep_rejected
    self.model_fp = generator.info["fingerprint"]
    self._writes: list[futures.Future] = []
    self._writer: futures.ThreadPoolExecutor | None = None

  @property
  def clips_per_call(self) -> int:
    return self.spans_per_call * self.params.candidates

  def _candidate(self, span: str, round_index: int, j: int) -> tuple[str, str, int]:
    """(key, prompt, seed) of candidate j of round `round_index`."""
    prompt = self.params.prompt_template.format(span=span)
    seed = candidate_seed(self.params.base_seed, span, round_index, j)
    return clip_key(self.model_fp, prompt, self.params, seed), prompt, seed

  def _candidates(self, span: str, round_index: int) -> list[tuple[str, str, int]]:
    """(key, prompt, seed) of each candidate of one round."""
    return [self._candidate(span, round_index, j) for j in range(self.params.candidates)]

  def _known(self, key: str) -> dict | None:
    """The candidate's sidecar when it was scored by this CLAP model."""
    sidecar = self.cache.sidecar(key)
    if sidecar is None or sidecar.get("clap") != self.clap.info["fingerprint"]:
      return None
    return sidecar

  def _from_cache(self, cands) -> tuple[list[float], int | None] | None:
    """Scores of a round and its accepted candidate ("best" rule), when the cache can
    decide it."""
    sidecars = [self._known(key) for key, _, _ in cands]
    if any(s is None for s in sidecars):
      return None
    scores = [float(s["clap_score"]) for s in sidecars]
    best = int(np.argmax(scores))
    if scores[best] <= self.params.tau:
      return scores, None
    if not sidecars[best].get("audio"):
      return None  # the clip that would now be accepted was not kept
    return scores, best

  def _mono(self, wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    return audio_lib.from_array(wave, rate, target, channels_last=False)

  def _draw(self, cands: Sequence[tuple[str, str, int]]):
    """One generator call: the clips as stored (FLAC bytes, decoded) and their CLAP
    embeddings, scored in one batched CLAP pass."""
    waves = self.generator([c[1] for c in cands], [c[2] for c in cands], self.params)
    rate = self.generator.sampling_rate
    stored = [_flac_round_trip(w, rate) for w in waves]
    embs = self.clap.audio([self._mono(w, rate, self.clap.sampling_rate) for _, w in stored])
    return stored, embs, rate

  def _put(self, cand, span: str, round_index: int, j: int, score: float, rate: int,
           flac: bytes | None) -> None:
    """Writes a candidate's sidecar (and clip) in the background."""
    key, prompt, seed = cand
    sidecar = {"key": key, "span": span, "prompt": prompt, "seed": seed,
               "round": round_index, "candidate": j, "model": self.generator.info,
               "params": self.params.clip_params(), "clap": self.clap.info["fingerprint"],
               "clap_score": float(score), "rate": rate}
    self._writes.append(self._writer.submit(self.cache.put, key, sidecar, flac))

  def _cached_clip(self, key: str):
    loaded = self.cache.audio(key)
    if loaded is None:
      return None
    wave, rate = loaded
    return self._mono(wave, rate, rate), rate, self._mono(wave, rate, self.clap.sampling_rate)

  def __call__(self, spans: Sequence[str]) -> list[Acquired]:
    """Rejection sampling for each (normalised) span."""
    p = self.params
    texts = self.clap.text([p.score_template.format(span=s) for s in spans])
    self._writes = []
    with futures.ThreadPoolExecutor(1, thread_name_prefix="clip-cache") as self._writer:
      results = (self._first(spans, texts) if p.rule == "first" else
                 self._best(spans, texts))
    self._writer = None
    for w in self._writes:
      w.result()  # Raises a failed write here.
    return results

  def _finish_cached(self, results, cached, texts) -> None:
    """CLAP embeddings of clips accepted from the cache, in one batched pass."""
    if not cached:
      return
    embs = self.clap.audio([clip[2] for _, _, clip, _, _, _ in cached])
    for (i, key, clip, score, rounds, n), emb in zip(cached, embs):
      results[i] = Acquired(True, score, key, clip[0], clip[1], emb, texts[i], rounds, n)

  def _rejected(self, texts, i, best, rounds, n) -> Acquired:
    return Acquired(False, float(best), "", None, 0, np.zeros(self.clap.dim, np.float32),
                    texts[i], rounds, n)

  def _first(self, spans: Sequence[str], texts: np.ndarray) -> list[Acquired]:
    """The "first" rule, drawn lazily (see the module docstring)."""
    p = self.params
    total = p.max_rounds * p.candidates
    pos = [0] * len(spans)  # next candidate to decide, in order
    best = [-np.inf] * len(spans)
    results: list[Acquired | None] = [None] * len(spans)
    cached = []
    done = [False] * len(spans)

    def settle(i: int) -> bool:
      """Decides span i's candidates from the cache; True when its next one must be drawn."""
      while pos[i] < total:
        r, j = divmod(pos[i], p.candidates)
        key = self._candidate(spans[i], r, j)[0]
        sidecar = self._known(key)
        if sidecar is None:
          return True
        score = float(sidecar["clap_score"])
        if score >= p.tau:
          clip = self._cached_clip(key) if sidecar.get("audio") else None
          if clip is None:
            return True  # Passes, but its clip was not kept: draw it again (same seed).
          cached.append((i, key, clip, score, r + 1, pos[i] + 1))
          done[i] = True
          return False
        best[i] = max(best[i], score)
        pos[i] += 1
      done[i] = True
      results[i] = self._rejected(texts, i, best[i], p.max_rounds, total)
      return False

    queue = [i for i in range(len(spans)) if settle(i)]
    while queue:
      active = queue[:self.clips_per_call]
      per = max(1, self.clips_per_call // len(active))
      batch = [(i, q) for i in active for q in range(pos[i], min(total, pos[i] + per))]
      cands = [self._candidate(spans[i], *divmod(q, p.candidates)) for i, q in batch]
      stored, embs, rate = self._draw(cands)
      for n, ((i, q), cand) in enumerate(zip(batch, cands)):
        r, j = divmod(q, p.candidates)
        score = float(embs[n] @ texts[i])
        accept = not done[i] and score >= p.tau
        self._put(cand, spans[i], r, j, score, rate,
                  stored[n][0] if accept or self.keep_rejected else None)
        if done[i]:
          continue  # Drawn after this span's accepted candidate in the same call.
        if accept:
          done[i] = True
          rate_wave = self._mono(stored[n][1], rate, rate)
          results[i] = Acquired(True, score, cand[0], rate_wave, rate, embs[n], texts[i],
                                r + 1, q + 1)
        else:
          best[i] = max(best[i], score)
          pos[i] = q + 1
      queue = [i for i in active if not done[i] and settle(i)] + queue[len(active):]
    self._finish_cached(results, cached, texts)
    return results

  def _best(self, spans: Sequence[str], texts: np.ndarray) -> list[Acquired]:
    """The "best" rule: round by round, the best candidate of a round when it passes."""
    p = self.params
    best_score = [-np.inf] * len(spans)
    results: list[Acquired | None] = [None] * len(spans)
    cached = []
    pending = list(range(len(spans)))
    for r in range(p.max_rounds):
      to_generate = []
      for i in pending:
        cands = self._candidates(spans[i], r)
        decided = self._from_cache(cands)
        clip = None
        if decided is not None and decided[1] is not None:
          clip = self._cached_clip(cands[decided[1]][0])
          if clip is None:
            decided = None  # The sidecar says kept, the clip is gone: draw again.
        if decided is None:
          to_generate.append(i)
          continue
        scores, accepted = decided
        best_score[i] = max(best_score[i], max(scores))
        if accepted is not None:
          cached.append((i, cands[accepted][0], clip, scores[accepted], r + 1,
                         (r + 1) * p.candidates))
      for lo in range(0, len(to_generate), self.spans_per_call):
        group = to_generate[lo:lo + self.spans_per_call]
        cands = {i: self._candidates(spans[i], r) for i in group}
        stored, embs, rate = self._draw([c for i in group for c in cands[i]])
        for n, i in enumerate(group):
          sl = slice(n * p.candidates, (n + 1) * p.candidates)
          scores = embs[sl] @ texts[i]
          best = int(np.argmax(scores))
          accepted = best if scores[best] > p.tau else None
          best_score[i] = max(best_score[i], float(scores[best]))
          for j, cand in enumerate(cands[i]):
            keep = j == accepted or self.keep_rejected
            self._put(cand, spans[i], r, j, float(scores[j]), rate,
                      stored[sl][j][0] if keep else None)
          if accepted is not None:
            wave = stored[sl][accepted][1]
            results[i] = Acquired(True, float(scores[accepted]), cands[i][accepted][0],
                                  self._mono(wave, rate, rate), rate, embs[sl][accepted],
                                  texts[i], r + 1, (r + 1) * p.candidates)
      decided_now = {c[0] for c in cached}
      pending = [i for i in pending if results[i] is None and i not in decided_now]
      if not pending:
        break
    for i in pending:
      results[i] = self._rejected(texts, i, best_score[i], p.max_rounds,
                                  p.max_rounds * p.candidates)
    self._finish_cached(results, cached, texts)
    return results
