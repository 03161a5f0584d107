"""AST (Audio Spectrogram Transformer) features of clips, frozen, for AudioBERT and ITH.

For each clip (mono, 16 kHz) AST's last hidden states `[2 + F*T, D]` are two special tokens
(`[CLS]` and distillation), then the F x T grid of patches, frequency-major (patch
`(f, t)` at `2 + f*T + t`; F = 12, T = 101 at the MIT AudioSet checkpoint's 1024 x 128
input). They are reduced to:

  * `pooled`: the mean over all tokens, `[D]` (AudioBERT's audio vector);
  * `tokens`: ITH's audio tokens `[N, D]`, in one of `TOKEN_LAYOUTS`:
      - `"full"`: every output token, specials included: exactly the sequence the published
        ITH code feeds its audio MLP (N = 2 + F*T, 1214 at the MIT checkpoint).
      - `"grid"`: the two specials, then the patch grid average-pooled to `grid` = (F', T')
        cells, frequency kept as its own axis, in the same frequency-major order (cell
        `(f', t')` at `2 + f'*T' + t'`). Cell `(i, j)` averages the patches with
        `floor(i*F/F') <= f < ceil((i+1)*F/F')` and the same along time (adaptive average
        pooling). N = 2 + F'*T'.
      - `"time"`: the patches averaged over frequency, then adaptively average-pooled along
        time to `num_tokens` (N = num_tokens); frequency information is lost.
      - `"flat"`: the whole token axis (specials included) adaptively average-pooled to
        `num_tokens`, which mixes frequency bands and times.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import transformers

from axk import hub
from axk.features.clap import pick_device

TOKEN_LAYOUTS = ("grid", "full", "time", "flat")
NUM_SPECIAL = 2  # [CLS] and the distillation token, before the patches.


def patch_grid(config) -> tuple[int, int]:
  """(frequency patches, time patches) of an `ASTConfig`."""
  return ((config.num_mel_bins - config.patch_size) // config.frequency_stride + 1,
          (config.max_length - config.patch_size) // config.time_stride + 1)


def num_layout_tokens(layout: str, native: Sequence[int], *, num_tokens: int = 0,
                      grid: Sequence[int] = ()) -> int:
  """The number of tokens per clip of `layout` on a model whose patch grid is `native`."""
  if layout == "full":
    return NUM_SPECIAL + int(native[0]) * int(native[1])
  if layout == "grid":
    return NUM_SPECIAL + int(grid[0]) * int(grid[1])
  return int(num_tokens)


class AstEncoder:
  """A frozen `ASTModel` with its `ASTFeatureExtractor`.

  The arguments default to the `time` layout; `configs/features.py` (`ast.*`) picks the
  layout the pipeline stores.

  Attributes:
    path: the resolved local directory.
    info: manifest entry (`hub.describe`).
    sampling_rate: 16 kHz for the MIT checkpoints.
    dim: hidden width.
    grid: (frequency patches, time patches) of the model.
    token_layout, token_grid: the layout of `tokens` (see the module docstring).
    num_tokens: tokens per clip in that layout.
    calls: number of forward passes.
  """

  def __init__(self, name_or_path: str, *, num_tokens: int = 32, token_layout: str = "time",
               grid: Sequence[int] = (12, 8), device: str = "auto", batch_size: int = 8,
               what: str = "models.ast"):
    path = hub.resolve(name_or_path, what, ignore_patterns=hub.NOT_PYTORCH)
    self._setup(transformers.ASTModel.from_pretrained(path),
                transformers.ASTFeatureExtractor.from_pretrained(path),
                hub.describe(name_or_path, path), num_tokens, token_layout, grid, device,
                batch_size)
    self.path = path

  @classmethod
  def from_model(cls, model, extractor, *, num_tokens: int = 32, token_layout: str = "time",
                 grid: Sequence[int] = (12, 8), device: str = "auto",
                 batch_size: int = 8) -> "AstEncoder":
    """An encoder around an in-memory model (benchmarks); `info` has no fingerprint."""
    self = cls.__new__(cls)
    self._setup(model, extractor, {"name": "<in memory>", "fingerprint": ""}, num_tokens,
                token_layout, grid, device, batch_size)
    self.path = ""
    return self

  def _setup(self, model, extractor, info, num_tokens, token_layout, grid, device,
             batch_size) -> None:
    self.grid = patch_grid(model.config)
    check_layout(token_layout, num_tokens, grid, self.grid)
    self.info = info
    self.device = pick_device(device)
    self.batch_size = batch_size
    self.token_layout = token_layout
    self.token_grid = tuple(int(g) for g in grid)
    self.num_tokens = num_layout_tokens(token_layout, self.grid, num_tokens=num_tokens,
                                        grid=self.token_grid)
    self.model = model.to(self.device).eval()
    self.extractor = extractor
    self.sampling_rate = int(self.extractor.sampling_rate)
    self.dim = int(self.model.config.hidden_size)
    self.calls = 0

  def _pool_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
    """`[B, 2 + F*T, D]` -> `[B, num_tokens, D]` in `token_layout`."""
    if self.token_layout == "full":
      return hidden
    b, _, d = hidden.shape
    f, t = self.grid
    patches = hidden[:, -f * t:].reshape(b, f, t, d)
    if self.token_layout == "grid":
      cells = torch.nn.functional.adaptive_avg_pool2d(patches.permute(0, 3, 1, 2),
                                                      self.token_grid)  # [B, D, F', T']
      return torch.cat([hidden[:, :NUM_SPECIAL], cells.flatten(2).transpose(1, 2)], dim=1)
    sequence = patches.mean(dim=1) if self.token_layout == "time" else hidden
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


def check_layout(layout: str, num_tokens: int, grid: Sequence[int],
                 native: Sequence[int] | None = None) -> None:
  """ValueError naming the `ast.*` field that cannot work (before any model runs)."""
  if layout not in TOKEN_LAYOUTS:
    raise ValueError(f"ast.token_layout={layout!r}; expected one of {TOKEN_LAYOUTS}")
  if layout in ("time", "flat") and num_tokens < 1:
    raise ValueError(f"ast.num_audio_tokens must be >= 1, got {num_tokens}")
  if layout == "grid":
    if len(grid) != 2 or min(int(g) for g in grid) < 1:
      raise ValueError(f"ast.grid={tuple(grid)}: expected (frequency cells, time cells), "
                       "each >= 1")
    if native is not None and (grid[0] > native[0] or grid[1] > native[1]):
      raise ValueError(f"ast.grid={tuple(grid)}: more cells than the model's patch grid "
                       f"{tuple(native)} (frequency, time)")
