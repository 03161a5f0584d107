"""ITH's source: text-to-audio generation with CLAP rejection sampling.

The generator and its sampler (`axk.features.generation`) import torch, so they are
imported when the sampler is first built; the clip cache is read without them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import os

import numpy as np

from axk.data.rows import normalise
from axk.data.types import Example
from axk.data.types import MASK
from axk.data.types import Span
from axk import tasks as tasks_lib
from axk.features import audio as audio_lib
from axk.features.clips import ClipCache
from axk.features.clips import cached_clip_path
from axk.features.sources.base import FeatureSource
from axk.features.sources.base import Setup
from axk.features.sources.base import register


@register
class GenerationSource(FeatureSource):
  """ITH: text-to-audio generation with CLAP rejection sampling, AST features of the clip.

  Acquisition keys are `"<task>|<span>"`: each benchmark task decides its spans at its own
  threshold (`generation.tau.<task>`), so a span of both tasks may get a different clip in
  each; the candidates themselves depend only on the span text and are drawn once (the
  clip cache), so the second task costs only AST features. `[MASK]` is dropped from the
  span text (a span never holds it; a whole-sentence span, `spans.unit="sentence"`, does).
  """

  name = "generation"

  def __init__(self, config, workdir: str, model_paths: Mapping[str, str]):
    self._sampler = None
    self.taus = task_taus(config)
    super().__init__(config, workdir, model_paths)

  @classmethod
  def model_roles(cls) -> tuple[str, ...]:
    return ("clap", "ast", "generator")

  def describe(self) -> Setup:
    setup = super().describe()
    models = dict(setup.models)
    models["generator"] = {**models["generator"],
                           "pipeline_class": self.section.pipeline_class}
    return Setup(setup.source, models, setup.paths, setup.params, setup.features_dir)

  def params(self) -> dict:
    params = dataclasses.asdict(generation_params(self.config))
    if params["window"] == "full":
      del params["window"]  # The run key of the default stays what it was before the option.
    params["tau"] = dict(self.taus)  # per task; the sampler's default tau is unused
    return {"generation": params}

  def keys(self, example: Example, spans: Sequence[Span]) -> list[str]:
    if example.task not in self.taus:
      raise ValueError(f"generation.tau has no threshold for task {example.task!r} (example "
                       f"{example.id}); set --config.generation.tau.{example.task}=...")
    return [f"{example.task}|{normalise(s.text.replace(MASK, ' '))}" for s in spans]

  def manifest(self) -> dict:
    g = self.section
    return {"rejection": {task: {"tau": tau, "n": int(g.n), "rule": g.rule,
                                 "fallback": g.fallback} for task, tau in self.taus.items()}}

  def record(self, row: Mapping[str, np.ndarray]) -> dict:
    task, _, span = str(row["text"]).partition("|")
    tried = int(row["tried"])
    return {"task": task, "span": span, "tau": self.taus[task], "n": int(self.section.n),
            "accepted": int(row["accepted"]) if row["accepted"] >= 0 else None,
            "fallback": bool(row["fallback"]),
            "scores": [round(float(v), 6) for v in row["scores"][:tried]]}

  @property
  def cache_dir(self) -> str:
    return self.section.cache_dir or os.path.join(self.workdir, "cache", "clips")

  def clip_file(self, source: str) -> str | None:
    """The accepted clip's FLAC in the clip cache (`source` is its cache key)."""
    path = cached_clip_path(self.cache_dir, source) if source else ""
    return path if path and os.path.isfile(path) else None

  def generator(self):
    """The text-to-audio generator (loaded here, on `config.device`)."""
    from axk.features import generation  # pylint: disable=g-import-not-at-top
    g = self.section
    generator = generation.AudioGenerator(self.setup.paths["generator"], g.pipeline_class,
                                          device=self.config.device, torch_dtype=g.torch_dtype)
    generator.info = dict(self.setup.models["generator"])
    return generator

  @property
  def sampler(self):
    """The rejection sampler around the generator, built on first use."""
    if self._sampler is None:
      from axk.features import generation  # pylint: disable=g-import-not-at-top
      g = self.section
      self._sampler = generation.RejectionSampler(
          self.generator(), self.clap, ClipCache(self.cache_dir), generation_params(self.config),
          spans_per_call=g.spans_per_call, keep_rejected=g.keep_rejected)
    return self._sampler

  def requests(self, batch: Sequence[str]) -> tuple[list[str], list[float], list[int]]:
    """The sampler's requests of acquisition keys: (spans, taus, ns)."""
    tasks, spans = zip(*(k.partition("|")[::2] for k in batch)) if batch else ((), ())
    return list(spans), [self.taus[t] for t in tasks], [int(self.section.n)] * len(batch)

  def outcome(self, results: Sequence) -> dict[str, np.ndarray]:
    """Every per-key array of the sampler's `results` but the AST features (a clip's CLAP
    audio embedding is zeros where the result has none yet)."""
    n, d = int(self.section.n), self.clap.dim
    out = {"has_audio": np.array([r.has_audio for r in results], bool),
           "clap_score": np.array([r.score if np.isfinite(r.score) else 0.0 for r in results],
                                  np.float32),
           "source": np.array([r.key for r in results], dtype=object),
           "clap_text": np.stack([r.clap_text for r in results]).astype(np.float32),
           "clap_audio": np.stack([np.zeros(d, np.float32) if r.clap_audio is None
                                   else r.clap_audio for r in results]).astype(np.float32),
           "accepted": np.array([r.accepted for r in results], np.int32),
           "tried": np.array([r.tried for r in results], np.int32),
           "fallback": np.array([r.fallback for r in results], bool),
           "scores": np.full((len(results), n), np.nan, np.float32)}
    for b, r in enumerate(results):
      out["scores"][b, :r.tried] = r.scores
    return out

  def acquire(self, batch: Sequence[str]) -> dict[str, np.ndarray]:
    results = self.sampler(*self.requests(batch))
    out = {**self.empty(len(batch)), **self.outcome(results)}
    with_audio = [b for b, r in enumerate(results) if r.has_audio]
    if with_audio:
      waves = [audio_lib.resample(results[b].wave, results[b].rate, self.ast.sampling_rate)
               for b in with_audio]
      pooled, tokens = self.ast(waves)
      for m, b in enumerate(with_audio):
        out["ast_pooled"][b], out["ast_tokens"][b] = pooled[m], tokens[m]
    return out


def task_taus(config) -> dict[str, float]:
  """`config.generation.tau` as task -> threshold (a single number applies to every task);
  a task the config gives no threshold gets its spec's (`axk.tasks`, `Task.tau`)."""
  tau = config.generation.tau
  names = tuple(dict.fromkeys((*tasks_lib.auditorybench.NAMES, *config.data.tasks)))
  if isinstance(tau, (int, float)):
    return {task: float(tau) for task in names}
  out = {task: float(v) for task, v in tau.items()}
  out.update({t: tasks_lib.get(t).tau for t in config.data.tasks if t not in out})
  return out


def generation_params(config):
  """`config.generation` as the sampler's `GenerationParams` (its `tau`, the default of a
  call, is unused by the source, which passes each task's)."""
  from axk.features import generation  # pylint: disable=g-import-not-at-top
  g = config.generation
  return generation.GenerationParams(
      pipeline_class=g.pipeline_class, steps=int(g.steps), seconds=float(g.seconds),
      guidance_scale=float(g.guidance_scale), negative_prompt=g.negative_prompt,
      prompt_template=g.prompt_template, score_template=g.score_template, n=int(g.n),
      base_seed=int(g.base_seed), rule=g.rule, fallback=g.fallback, window=g.window)
