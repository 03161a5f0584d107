"""A masked-word model's inputs, built by plain functions: spans -> encoding -> audio -> gate.

Training, evaluation and single-sentence prediction all go through `build`:

    spans = split_spans(examples, features=..., predictions=...)   # per example: span dicts
    arrays = build(examples, spans, tokenizer, method=..., model=..., protocol="paper", ...)

Span sources, in order: feature shards (`FeatureSpans`: the spans the features were built
for, each with its audio), a span detector's predictions (every split not kept gold), the
gold spans.
A span dict has `start`, `end`, `text` and, from features, `has_audio`, `ast_pooled` (one
vector) and `ast_tokens` (a token sequence, or a `shards.TokenRef` to it in the shards).
ITH's tokens reach the batches as an `axk.train.data.SpanTokens`, read per batch.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from axk.data import encode as enc
from axk.data import spans as spans_lib
from axk.data import types
from axk.features.shards import TokenStore
from axk.features.shards import load_features
from axk.features.shards import read_tokens
from axk.train import data as data_lib


class FeaturesError(ValueError):
  """Feature shards or span predictions that do not fit the data (missing example, other
  sentence)."""


class FeatureSpans:
  """The spans (with audio) of feature shards, read once per split (torch-free reader).

  Span metadata and pooled vectors are held in memory; `ast_tokens` stay in the shards
  (`shards.TokenRef`, read through one `TokenStore`) until a batch takes their row.
  """

  def __init__(self, features_dir: str):
    self.features_dir = features_dir
    self.tokens = TokenStore(features_dir)
    self._splits: dict[tuple[str, str], dict] = {}

  def __call__(self, example: types.Example) -> list[dict]:
    key = (example.task, example.split)
    if key not in self._splits:
      self._splits[key] = load_features(self.features_dir, *key, lazy_tokens=True,
                                        store=self.tokens)
    row = self._splits[key].get(example.id)
    if row is None:
      raise FeaturesError(f"{self.features_dir}: no features for {example.id}; the features "
                          "were built from other data.")
    if row.get("sentence", example.sentence) != example.sentence:
      raise FeaturesError(f"{self.features_dir}: {example.id} has another sentence in the "
                          "features than in the data.")
    return sorted(row["spans"], key=lambda s: s["start"])


def _plain(spans) -> list[dict]:
  return [{"start": s.start, "end": s.end, "text": s.text} for s in spans]


def split_spans(examples: Sequence[types.Example], *, features: FeatureSpans | None = None,
                predictions: str = "", gold_splits: Sequence[str] = ()) -> list[list[dict]]:
  """Per example (in order), its span dicts.

  Args:
    examples: the examples of one task and split.
    features: the feature shards' spans, if the model reads audio features (they were built
      from the spans their manifest names).
    predictions: without features, the span detector's `predictions/` folder (or a
      `{task}`/`{split}` pattern); "" for gold spans.
    gold_splits: splits that keep their gold spans even with `predictions`
      (`config.spans.gold_splits`, e.g. ("train",)).
  """
  if not examples:
    return []
  if features is not None:
    return [features(e) for e in examples]
  task, split = examples[0].task, examples[0].split
  if split in gold_splits or not predictions:
    return [_plain(e.spans) for e in examples]
  path = spans_lib.predictions_path(predictions, task, split)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no span predictions (--config.spans.predictions "
                            "names the span detector's predictions/ folder).")
  try:
    predicted = spans_lib.read_predictions(path, examples, strict=True)
  except ValueError as e:
    raise FeaturesError(str(e)) from None
  return [_plain(predicted[e.id]) for e in examples]


def audio_arrays(spans: Sequence[Sequence[Mapping]], *, max_spans: int, audio_dim: int,
                 audio: str, audio_tokens: int = 0) -> dict[str, np.ndarray]:
  """Per row, the audio of its first `max_spans` spans.

  Returns `span_has_audio` [rows, S] (int32) and, by `audio`: "pooled" -> `span_audio`
  [rows, S, audio_dim] (float16), "tokens" -> `span_audio_tokens` [rows, S, audio_tokens,
  audio_dim], a lazy `axk.train.data.SpanTokens` (float16; a batch reads only its rows'
  tokens), "none" -> nothing else; zeros where a span has no audio. S is the most spans of
  a row, at least 1 and at most `max_spans`.
  """
  n = len(spans)
  s = max(1, min(max_spans, max((len(x) for x in spans), default=0)))
  out = {"span_has_audio": np.zeros((n, s), np.int32)}
  if audio == "pooled":
    out["span_audio"] = np.zeros((n, s, audio_dim), np.float16)
  cells, index = [], np.full((n, s), -1, np.int64)
  for i, row in enumerate(spans):
    for j, span in enumerate(row[:s]):
      if span.get("has_audio"):
        out["span_has_audio"][i, j] = 1
        if audio == "pooled":
          out["span_audio"][i, j] = span["ast_pooled"]
        elif audio == "tokens":
          tokens = span["ast_tokens"]
          if tuple(tokens.shape) != (audio_tokens, audio_dim):
            raise FeaturesError(f"span {span.get('text')!r}: ast_tokens of shape "
                                f"{tuple(tokens.shape)}, {(audio_tokens, audio_dim)} expected")
          index[i, j] = len(cells)
          cells.append(tokens)
  if audio == "tokens":
    out["span_audio_tokens"] = data_lib.SpanTokens(cells, index, (audio_tokens, audio_dim),
                                                   read=read_tokens)
  return out


def build(examples: Sequence[types.Example], spans: Sequence[Sequence[Mapping]], tokenizer, *,
          method, model, protocol: str, max_length: int, max_spans: int,
          audio_dim: int, audio_tokens: int = 0, warn=enc.logger.warning
          ) -> dict[str, np.ndarray]:
  """The arrays a masked-word model reads, one row per example ("paper") or per (example,
  option) ("candidates").

  Args:
    examples: the examples; `spans` their span dicts (`split_spans`).
    tokenizer: from `axk.data.encode.load_tokenizer`.
    method: the `axk.methods.Method`: its `audio` says which audio to attach and its
      `lora_gate` computes the per-row gate.
    model: its `Model` instance.
    protocol: "paper" (`axk.data.encode.encode`) or "candidates" (`encode_candidates`).
    max_length: a longer sentence is cut around its `[MASK]` (`axk.data.encode.mask_window`);
      a span none of whose tokens is kept has no audio in the row (nor a LoRA gate).
    warn: called with a line per cut sentence (`axk.data.encode.encode`).
  """
  as_spans = [[types.Span(int(s["start"]), int(s["end"]), str(s["text"])) for s in row]
              for row in spans]
  if protocol == "candidates":
    arrays = enc.encode_candidates(examples, tokenizer, max_length=max_length, spans=as_spans,
                                   warn=warn)
  else:
    arrays = enc.encode(examples, tokenizer, max_length=max_length, protocol=protocol,
                        spans=as_spans, warn=warn)
  rows = arrays["example_index"]
  audio = audio_arrays([spans[i] for i in rows], max_spans=max_spans, audio_dim=audio_dim,
                       audio=method.audio, audio_tokens=audio_tokens)
  arrays.update(audio)
  # Span ids beyond max_spans are dropped, so no token points at a missing span.
  s = audio["span_has_audio"].shape[1]
  arrays["span_ids"] = np.where(arrays["span_ids"] > s, 0, arrays["span_ids"])
  # A span left without tokens (outside the window of a cut sentence) brings no audio.
  in_row = (arrays["span_ids"][:, None, :] == np.arange(1, s + 1)[None, :, None]).any(-1)
  audio["span_has_audio"] *= in_row.astype(np.int32)
  arrays["lora_gate"] = method.lora_gate(arrays, model)
  return arrays
