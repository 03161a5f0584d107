"""AST (Audio Spectrogram Transformer) features of clips, frozen, for AudioBERT and ITH.

For each clip (mono, 16 kHz) the last hidden states `[2 + F*T, D]` (two special tokens,
then an F x T grid of patches, frequency-major) are reduced to:

  * `pooled`: the mean over all tokens, `[D]` (AudioBERT's audio vector);
  * `tokens`: `num_tokens` vectors `[N, D]` (ITH's audio tokens). With `token_pooling ==
    "time"` (default) the patch grid is averaged over frequency and then adaptively
    average-pooled along time, so that the tokens stay in time order; with `"flat"` the
    whole token axis (specials included) is adaptively average-pooled.
"""

from __future__ import annotations

import numpy as np
import torch
import transformers

from axk import hub
from axk.features.clap import pick_device

TOKEN_POOLINGS = ("time", "flat")


class AstEncoder:
  """A frozen `ASTModel` with its `ASTFeatureExtractor`.

  Attributes:
    path: the resolved local directory.
    info: manifest entry (`hub.describe`).
    sampling_rate: 16 kHz for the MIT checkpoints.
    dim: hidden width.
    grid: (frequency patches, time patches).
    calls: number of forward passes.
  """

  def __init__(self, name_or_path: str, *, num_tokens: int, token_pooling: str = "time",
               device: str = "auto", batch_size: int = 8, what: str = "models.ast"):
    path = hub.resolve(name_or_path, what, ignore_patterns=hub.NOT_PYTORCH)
    self._setup(transformers.ASTModel.from_pretrained(path),
                transformers.ASTFeatureExtractor.from_pretrained(path),
                hub.describe(name_or_path, path), num_tokens, token_pooling, device,
                batch_size)
    self.path = path

  @classmethod
  def from_model(cls, model, extractor, *, num_tokens: int, token_pooling: str = "time",
                 device: str = "auto", batch_size: int = 8) -> "AstEncoder":
    """An encoder around an in-memory model (benchmarks); `info` has no fingerprint."""
    self = cls.__new__(cls)
    self._setup(model, extractor, {"name": "<in memory>", "fingerprint": ""}, num_tokens,
                token_pooling, device, batch_size)
    self.path = ""
    return self

  def _setup(self, model, extractor, info, num_tokens, token_pooling, device,
             batch_size) -> None:
    if token_pooling not in TOKEN_POOLINGS:
      raise ValueError(f"ast.token_pooling={token_pooling!r}; expected one of {TOKEN_POOLINGS}")
    if num_tokens < 1:
      raise ValueError(f"ast.num_audio_tokens must be >= 1, got {num_tokens}")
    self.info = info
    self.device = pick_device(device)
    self.batch_size = batch_size
    self.num_tokens = num_tokens
    self.token_pooling = token_pooling
    self.model = model.to(self.device).eval()
    self.extractor = extractor
    self.sampling_rate = int(self.extractor.sampling_rate)
    config = self.model.config
    self.dim = int(config.hidden_size)
    self.grid = ((config.num_mel_bins - config.patch_size) // config.frequency_stride + 1,
                 (config.max_length - config.patch_size) // config.time_stride + 1)
    self.calls = 0

  def _pool_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
    """`[B, L, D]` -> `[B, num_tokens, D]`."""
    if self.token_pooling == "time":
      f, t = self.grid
      patches = hidden[:, -f * t:].reshape(hidden.shape[0], f, t, hidden.shape[-1])
      sequence = patches.mean(dim=1)  # [B, T, D]
    else:
      sequence = hidden
    # adaptive_avg_pool1d pools the last axis; with fewer steps than tokens it repeats.
    pooled = torch.nn.functional.adaptive_avg_pool1d(sequence.transpose(1, 2), self.num_tokens)
    return pooled.transpose(1, 2)

  @torch.no_grad()
  def __call__(self, waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Features of mono clips at `sampling_rate`.

    Returns:
      (pooled `[N, D]`, tokens `[N, num_tokens, D]`), float32.
    """
    pooled, tokens = [], []
    for i in range(0, len(waves), self.batch_size):
      batch = [np.asarray(w, dtype=np.float32) for w in waves[i:i + self.batch_size]]
      inputs = self.extractor(batch, sampling_rate=self.sampling_rate, return_tensors="pt")
      self.calls += 1
      hidden = self.model(input_values=inputs["input_values"].to(self.device)).last_hidden_state
      pooled.append(hidden.mean(dim=1).float().cpu().numpy())
      tokens.append(self._pool_tokens(hidden).float().cpu().numpy())
    if not pooled:
      return (np.zeros((0, self.dim), np.float32),
              np.zeros((0, self.num_tokens, self.dim), np.float32))
    return np.concatenate(pooled), np.concatenate(tokens)
