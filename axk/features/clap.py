"""CLAP text and audio embeddings through transformers' `ClapModel` + `ClapProcessor`.

Embeddings are L2-normalised (the model normalises its projections), so a dot product is
the cosine similarity that retrieval ranks by and rejection sampling thresholds.

`ClapFeatureExtractor` in fused mode draws random crops for clips longer than its window
and, when no clip of a batch is longer, marks a random one as longer anyway. Both make an
embedding depend on the batch it was computed in and on the global NumPy seed. This
module features each clip on its own with a fixed seed and sets `is_longer` from the
clip's real length, so that a clip has the same embedding in any batch and on any rerun.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import transformers
from transformers import audio_utils

from axk import hub

logger = logging.getLogger(__name__)

# Seed for the fused extractor's crops of long clips (see the module docstring).
_CROP_SEED = 0


def pick_device(device: str) -> torch.device:
  """`auto` -> CUDA when available, else CPU; anything else as given."""
  if device == "auto":
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
  return torch.device(device)


class ClapEncoder:
  """A frozen CLAP model with its processor.

  Attributes:
    path: the resolved local directory.
    info: manifest entry (`hub.describe`).
    sampling_rate: the rate audio must be given at (48 kHz for the LAION checkpoints).
    dim: embedding width.
    text_calls, audio_calls: number of forward passes, for tests and benchmarks.
  """

  def __init__(self, name_or_path: str, *, device: str = "auto", batch_size: int = 16,
               what: str = "models.clap"):
    path = hub.resolve(name_or_path, what, ignore_patterns=hub.NOT_PYTORCH)
    self._setup(transformers.ClapModel.from_pretrained(path),
                transformers.ClapProcessor.from_pretrained(path),
                hub.describe(name_or_path, path), device, batch_size)
    self.path = path

  @classmethod
  def from_model(cls, model, processor, *, device: str = "auto",
                 batch_size: int = 16) -> "ClapEncoder":
    """An encoder around an in-memory model (benchmarks); `info` has no fingerprint."""
    self = cls.__new__(cls)
    self._setup(model, processor, {"name": "<in memory>", "fingerprint": ""}, device,
                batch_size)
    self.path = ""
    return self

  def _setup(self, model, processor, info, device, batch_size) -> None:
    self.info = info
    self.device = pick_device(device)
    self.batch_size = batch_size
    self.model = model.to(self.device).eval()
    self.tokenizer = processor.tokenizer
    self.extractor = processor.feature_extractor
    self.sampling_rate = int(self.extractor.sampling_rate)
    self.dim = int(self.model.config.projection_dim)
    self._window = audio_utils.window_function(int(self.extractor.fft_window_size), "hann")
    self.text_calls = 0
    self.audio_calls = 0

  @torch.no_grad()
  def text(self, texts: list[str]) -> np.ndarray:
    """Normalised text embeddings `[N, D]` float32."""
    out = []
    for i in range(0, len(texts), self.batch_size):
      batch = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True,
                             truncation=True, return_tensors="pt").to(self.device)
      self.text_calls += 1
      emb = self.model.get_text_features(input_ids=batch["input_ids"],
                                         attention_mask=batch["attention_mask"]).pooler_output
      out.append(emb.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

  def _log_mel(self, wave: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """`[frames, mels]` log-mel, as the extractor's `_np_extract_fbank_features`.

    The extractor's STFT loops over frames in Python; this is the same computation
    (reflect padding, periodic Hann window, power spectrum in float64, mel floor 1e-10,
    dB) with all frames in one FFT call.
    """
    n, hop = int(self.extractor.fft_window_size), int(self.extractor.hop_length)
    x = np.pad(np.asarray(wave, np.float64), (n // 2, n // 2), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[::hop]
    spec = np.fft.rfft(frames * self._window, axis=-1).astype(np.complex64)
    power = np.abs(spec, dtype=np.float64) ** 2
    mel = np.maximum(1e-10, power @ filters)
    return (10.0 * np.log10(np.maximum(mel, 1e-10))).astype(np.float32)

  def _features(self, wave: np.ndarray) -> tuple[np.ndarray, bool]:
    """Mel input of one clip (at `sampling_rate`) and whether it is longer than the window."""
    fe = self.extractor
    max_samples = int(fe.nb_max_samples)
    if len(wave) <= max_samples and fe.padding in ("repeatpad", "repeat", "pad"):
      # Short clips (the common case): pad as the extractor does, then the fast log-mel.
      wave = np.asarray(wave, np.float64)
      if len(wave) < max_samples:
        if fe.padding == "repeat":
          wave = np.tile(wave, int(max_samples / len(wave)) + 1)[:max_samples]
        elif fe.padding == "repeatpad":
          wave = np.tile(wave, int(max_samples / len(wave)))
        wave = np.pad(wave, (0, max_samples - len(wave)))
      if fe.truncation == "fusion":
        mel = self._log_mel(wave, fe.mel_filters)
        return np.stack([mel] * 4), False
      return self._log_mel(wave, fe.mel_filters_slaney)[None], False
    state = np.random.get_state()
    np.random.seed(_CROP_SEED)
    try:
      feats = self.extractor([wave], sampling_rate=self.sampling_rate, return_tensors="np")
    finally:
      np.random.set_state(state)
    max_samples = int(self.extractor.nb_max_samples)
    hop = int(self.extractor.hop_length)
    # The extractor's own rule (it stacks four copies when the extra samples add no frame).
    longer = len(wave) > max_samples and len(wave) // hop > max_samples // hop
    if self.extractor.truncation != "fusion":
      longer = len(wave) > max_samples
    return feats["input_features"][0], longer

  @torch.no_grad()
  def audio(self, waves: list[np.ndarray]) -> np.ndarray:
    """Normalised audio embeddings `[N, D]` float32 of mono clips at `sampling_rate`."""
    out = []
    for i in range(0, len(waves), self.batch_size):
      mels, longer = zip(*(self._features(w) for w in waves[i:i + self.batch_size]))
      features = torch.from_numpy(np.stack(mels).astype(np.float32)).to(self.device)
      is_longer = torch.tensor([[x] for x in longer], device=self.device)
      self.audio_calls += 1
      emb = self.model.get_audio_features(input_features=features,
                                          is_longer=is_longer).pooler_output
      out.append(emb.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
