"""ITH's AST token layouts against a NumPy computation of the same pooling.

A tiny `ASTModel` (a 3 x 6 patch grid with overlapping patches, as the MIT checkpoint's
stride 10 < patch 16) gives `last_hidden_state`; each layout is computed from it with plain
NumPy (reshape to the F x T grid by the config's strides, windows averaged by hand) and
compared with `AstEncoder`. Frequency and time differ in size, so swapping them fails, and
`full` must keep the two special tokens.
"""

import math

import numpy as np
import pytest
import torch
import transformers

from axk.features import ast as ast_lib

F, T, D = 3, 6, 16


@pytest.fixture(scope="module")
def tiny():
  torch.manual_seed(0)
  config = transformers.ASTConfig(hidden_size=D, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, num_mel_bins=36, max_length=66,
                                  patch_size=16, frequency_stride=10, time_stride=10)
  model = transformers.ASTModel(config).eval()
  extractor = transformers.ASTFeatureExtractor(num_mel_bins=36, max_length=66)
  rng = np.random.default_rng(0)
  waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (6000, 11000)]
  inputs = extractor(waves, sampling_rate=16_000, return_tensors="pt")
  with torch.no_grad():
    hidden = model(**inputs).last_hidden_state.numpy().astype(np.float64)
  return model, extractor, waves, hidden


def windows(n_in: int, n_out: int) -> list[tuple[int, int]]:
  """Adaptive average pooling's windows, by hand: [floor(i*n/m), ceil((i+1)*n/m))."""
  return [(math.floor(i * n_in / n_out), math.ceil((i + 1) * n_in / n_out))
          for i in range(n_out)]


def numpy_layout(hidden: np.ndarray, layout: str, *, num_tokens=0, grid=()) -> np.ndarray:
  specials, patches = hidden[:, :2], hidden[:, 2:]
  assert patches.shape[1] == F * T
  cube = patches.reshape(len(hidden), F, T, D)  # frequency-major: patch (f, t) at f*T + t
  if layout == "full":
    return hidden
  if layout == "grid":
    cells = [cube[:, f0:f1, t0:t1].mean(axis=(1, 2))
             for f0, f1 in windows(F, grid[0]) for t0, t1 in windows(T, grid[1])]
    return np.concatenate([specials, np.stack(cells, axis=1)], axis=1)
  sequence = cube.mean(axis=1) if layout == "time" else hidden
  return np.stack([sequence[:, a:b].mean(axis=1)
                   for a, b in windows(sequence.shape[1], num_tokens)], axis=1)


@pytest.mark.parametrize("layout,kwargs,n", [
    ("full", {}, 2 + F * T),
    ("grid", {"grid": (2, 4)}, 2 + 8),
    ("grid", {"grid": (3, 1)}, 2 + 3),
    ("grid", {"grid": (F, T)}, 2 + F * T),
    ("time", {"num_tokens": 4}, 4),
    ("flat", {"num_tokens": 5}, 5),
])
def test_layout_matches_numpy(tiny, layout, kwargs, n):
  model, extractor, waves, hidden = tiny
  enc = ast_lib.AstEncoder.from_model(model, extractor, token_layout=layout, device="cpu",
                                      **kwargs)
  assert enc.grid == (F, T) and enc.num_tokens == n
  pooled, tokens = enc(waves)
  assert tokens.shape == (2, n, D)
  np.testing.assert_allclose(tokens, numpy_layout(hidden, layout, **kwargs), atol=1e-5)
  np.testing.assert_allclose(pooled, hidden.mean(axis=1), atol=1e-5)


def test_reference_tells_the_axes_apart(tiny):
  """The NumPy reference itself separates frequency from time and keeps the specials."""
  hidden = tiny[3]
  grid = numpy_layout(hidden, "grid", grid=(3, 1))  # one cell per frequency band
  swapped = hidden[:, 2:].reshape(2, T, F, D).mean(axis=1)  # a time-major reading
  assert not np.allclose(grid[:, 2:], swapped, atol=1e-3)
  np.testing.assert_allclose(numpy_layout(hidden, "full")[:, :2], hidden[:, :2])


def test_full_equals_the_grid_at_the_native_size(tiny):
  model, extractor, waves, _ = tiny
  full = ast_lib.AstEncoder.from_model(model, extractor, token_layout="full", device="cpu")
  grid = ast_lib.AstEncoder.from_model(model, extractor, token_layout="grid", grid=(F, T),
                                       device="cpu")
  np.testing.assert_allclose(full(waves)[1], grid(waves)[1], atol=1e-6)


@pytest.mark.parametrize("layout,kwargs,message", [
    ("freq", {}, "ast.token_layout='freq'"),
    ("grid", {"grid": (4, 2)}, "more cells than the model's patch grid (3, 6)"),
    ("grid", {"grid": (0, 2)}, "ast.grid=(0, 2)"),
    ("time", {"num_tokens": 0}, "ast.num_audio_tokens must be >= 1"),
])
def test_bad_layout_is_one_line(tiny, layout, kwargs, message):
  model, extractor, _, _ = tiny
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    ast_lib.AstEncoder.from_model(model, extractor, token_layout=layout, device="cpu",
                                  **kwargs)


def test_layout_token_counts_at_the_mit_checkpoint_size():
  native = ast_lib.patch_grid(transformers.ASTConfig())  # the MIT checkpoint's defaults
  assert native == (12, 101)
  assert ast_lib.num_layout_tokens("full", native) == 1214
  assert ast_lib.num_layout_tokens("grid", native, grid=(12, 8)) == 98
  assert ast_lib.num_layout_tokens("time", native, num_tokens=32) == 32


def test_storage_benchmark_counts_bytes_per_clip(tmp_path):
  """`axk.bench.audio_tokens` without steps: tokens and float16 bytes per clip by hand, and
  the shard's bytes per span near them (random tokens barely compress)."""
  import json
  from axk.bench import audio_tokens
  out = tmp_path / "bench.json"
  audio_tokens.main(["--no-steps", "--layouts=time:16,grid:12x8,full", "--records=2",
                     f"--out={out}"])
  rows = {r["layout"]: r for r in json.loads(out.read_text())["rows"]}
  for layout, tokens in (("time:16", 16), ("grid:12x8", 2 + 12 * 8), ("full", 1214)):
    row = rows[layout]
    assert row["tokens"] == tokens and row["bytes_per_clip"] == tokens * 768 * 2
    # The record also holds the pooled AST and two CLAP vectors (1536 + 2 x 1024 bytes), and
    # the file its framing, here shared by only 4 spans.
    assert 0.8 * tokens * 1536 < row["record_bytes_per_span"] < 1.05 * tokens * 1536 + 32768
  assert rows["full"]["bytes_per_clip"] == 1_864_704
