"""Generation benchmark: ITH's feature pipeline (Stable Audio + CLAP rejection + AST) speed.

    python -m axk.bench.generation --out bench_generation.json              # full size
    python -m axk.bench.generation --scale tiny --out bench_generation.json  # tiny models

Models have random weights built from configs, nothing is downloaded. `--scale full`: Stable
Audio Open's published sizes (diffusers' defaults of `StableAudioDiTModel` and
`AutoencoderOobleck`, T5-base as its text encoder), CLAP at `ClapConfig()` sizes (fused
HTSAT) and AST at `ASTConfig()`; `--scale tiny`: the test models of `axk.features.tiny`.
Generator weights in `--dtype` (default: float16 on CUDA, float32 on CPU).

Measured, in one process, interleaved (spans_per_call 1, sized, 1, sized, ...):
  1. clips per second and accepted spans per hour of the pipeline (generation, FLAC, CLAP
     scoring, AST features of the accepted clips) with `spans_per_call` 1 (n clips per
     generator call) and with the sizing
     (`generation.auto_spans_per_call` on this device, at least `--min-spans-per-call`);
  2. clips drawn per span and per accepted span: lazy "first" rule vs drawing all n and
     taking the first passing one (the published code), with a check that both select the
     same clips;
  3. the projected wall time of ITH's whole generation (`--projected-spans`, 20,000 distinct
     spans) at n candidates per span (default 5, the published batch), from the measured
     clips per second and the
     clips per span the lazy rule needs at several clip pass rates (random-weight CLAP
     scores say nothing about the real pass rate at tau = 0 or 0.6).
Random-weight CLAP scores cluster near 0, so tau is set at a quantile of the scores
(`--pass-rate`), not at the paper's values.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from axk.bench import common


def build_models(scale: str, tmp: str, device: str, dtype: str):
  import diffusers
  import torch
  import transformers

  from axk.features import ast as ast_lib
  from axk.features import clap as clap_lib
  from axk.features import generation
  from axk.features import tiny

  if scale == "tiny":
    gen = generation.AudioGenerator(tiny.build_stable_audio(os.path.join(tmp, "sa")),
                                    device=device, torch_dtype=dtype)
    clap = clap_lib.ClapEncoder(tiny.build_clap(os.path.join(tmp, "clap")), device=device)
    ast = ast_lib.AstEncoder(tiny.build_ast(os.path.join(tmp, "ast")), num_tokens=32,
                             device=device)
    return gen, clap, ast
  torch.manual_seed(0)
  t5 = transformers.T5Config.from_dict(dict(  # T5-base's encoder sizes.
      vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
      relative_attention_num_buckets=32, decoder_start_token_id=0))
  pipe = diffusers.StableAudioPipeline(
      vae=diffusers.AutoencoderOobleck(), text_encoder=transformers.T5EncoderModel(t5),
      projection_model=diffusers.pipelines.stable_audio.StableAudioProjectionModel(
          text_encoder_dim=768, conditioning_dim=768, min_value=0, max_value=512),
      tokenizer=tiny.t5_tokenizer(), transformer=diffusers.StableAudioDiTModel(),
      scheduler=diffusers.CosineDPMSolverMultistepScheduler(
          solver_order=2, prediction_type="v_prediction", sigma_data=1.0,
          sigma_schedule="exponential"))
  torch_dtype = generation.resolve_dtype(dtype, clap_lib.pick_device(device))
  gen = generation.AudioGenerator.from_pipeline(pipe.to(torch_dtype), device=device)
  config = transformers.ClapConfig(audio_config={"enable_fusion": True,
                                                 "fusion_type": "aff_2d"})
  processor = transformers.ClapProcessor(feature_extractor=transformers.ClapFeatureExtractor(),
                                         tokenizer=tiny.clap_tokenizer())
  clap = clap_lib.ClapEncoder.from_model(transformers.ClapModel(config), processor,
                                         device=device)
  ast = ast_lib.AstEncoder.from_model(transformers.ASTModel(transformers.ASTConfig()),
                                      transformers.ASTFeatureExtractor(), num_tokens=32,
                                      device=device)
  return gen, clap, ast


def _sampler(gen, clap, folder, params, spans_per_call):
  from axk.features import generation
  return generation.RejectionSampler(gen, clap, generation.ClipCache(folder), params,
                                     spans_per_call=spans_per_call)


def _pipeline_pass(gen, clap, ast, folder, params, spans, spans_per_call):
  """Rejection sampling and AST features of the accepted clips, from an empty cache."""
  from axk.features import audio as audio_lib
  clips = gen.clips
  t0 = time.perf_counter()
  results = _sampler(gen, clap, folder, params, spans_per_call)(spans)
  accepted = [r for r in results if r.has_audio]
  if accepted:
    ast([audio_lib.resample(r.wave, r.rate, ast.sampling_rate) for r in accepted])
  seconds = time.perf_counter() - t0
  return {"seconds": seconds, "clips": gen.clips - clips, "accepted": len(accepted),
          "keys": [r.key for r in results]}


def expected_clips_per_span(p: float, total: int) -> float:
  """Clips the lazy "first" rule draws per span when each clip passes with probability p,
  out of `total` candidates: sum over i < total of (1 - p)^i."""
  return float(sum((1 - p) ** i for i in range(total)))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", help="JSON output file")
  parser.add_argument("--scale", default="full", choices=("full", "tiny"))
  parser.add_argument("--device", default="auto")
  parser.add_argument("--dtype", default="auto", help="generator dtype")
  parser.add_argument("--spans", type=int, default=8, help="distinct spans per pass")
  parser.add_argument("--steps", type=int, default=50, help="diffusion steps")
  parser.add_argument("--seconds", type=float, default=5.0, help="clip length")
  parser.add_argument("--n", type=int, default=5, help="candidates per span")
  parser.add_argument("--pass-rate", type=float, default=0.3,
                      help="tau at this quantile of pass rate of the calibration scores")
  parser.add_argument("--min-spans-per-call", type=int, default=4,
                      help="lower bound of the sized spans_per_call (CPUs size to 1)")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--projected-spans", type=int, default=20_000)
  parser.add_argument("--torch-threads", type=int, default=0)
  args = parser.parse_args(argv)

  import dataclasses
  import torch

  from axk.features import generation
  from axk.features import pipeline
  pipeline._quiet_libraries()  # pylint: disable=protected-access
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  spans = [f"{w} sound" for w in ("dog bark", "church bell", "rain on a roof", "violin",
                                  "siren", "owl hoot", "thunder", "engine idle", "whistle",
                                  "cat meow", "crowd cheering", "bird song")]
  spans = (spans * (1 + args.spans // len(spans)))[:args.spans]
  spans = [f"{s} {i}" if i >= 12 else s for i, s in enumerate(spans)]
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    gen, clap, ast = build_models(args.scale, tmp, args.device, args.dtype)
    build_s = time.perf_counter() - t0
    sized = max(generation.auto_spans_per_call(gen.device), args.min_spans_per_call)
    params = generation.GenerationParams(steps=args.steps, seconds=args.seconds, n=args.n,
                                         tau=1.01, rule="first")
    total = args.n
    # Calibration: every candidate of every span drawn (nothing passes tau = 1.01), in
    # calls of the sized width; this is also "drawing all n" for the comparison below.
    calib_dir = os.path.join(tmp, "calib")
    t0 = time.perf_counter()
    clips0 = gen.clips
    calib = _sampler(gen, clap, calib_dir, params, sized)
    calib(spans)
    all_k = {"seconds": time.perf_counter() - t0, "clips": gen.clips - clips0}
    cache = generation.ClipCache(calib_dir)
    scores = {s: [cache.sidecar(calib.candidate(s, q)[0])["clap_score"] for q in range(total)]
              for s in spans}
    flat = np.sort(np.concatenate([np.asarray(v) for v in scores.values()]))
    tau = float(np.quantile(flat, 1 - args.pass_rate))
    params = dataclasses.replace(params, tau=tau)
    first_of_all = {}
    for s in spans:
      q = next((q for q, v in enumerate(scores[s]) if v >= tau), None)
      first_of_all[s] = "" if q is None else calib.candidate(s, q)[0]

    runs = {1: [], sized: []}
    for r in range(args.rounds):
      for width in runs:
        runs[width].append(_pipeline_pass(gen, clap, ast, os.path.join(tmp, f"w{width}_{r}"),
                                          params, spans, width))
  rows = []
  for width, passes in runs.items():
    median = lambda k: float(np.median([p[k] for p in passes]))
    seconds = median("seconds")
    rows.append({"spans_per_call": width, "clips_per_call": width * args.n,
                 "seconds": seconds, "clips": median("clips"), "accepted": median("accepted"),
                 "clips_per_s": median("clips") / seconds,
                 "accepted_spans_per_hour": 3600 * median("accepted") / seconds,
                 "same_clips_as_all_then_first": all(
                     p["keys"] == [first_of_all[s] for s in spans] for p in passes),
                 "seconds_all": [p["seconds"] for p in passes]})
  speedup = rows[1]["clips_per_s"] / rows[0]["clips_per_s"]
  lazy = rows[1]
  accepted = max(lazy["accepted"], 1)
  rate = lazy["clips_per_s"]
  projection = []
  for p in (0.9, 0.5, 0.2):
    per_span = expected_clips_per_span(p, total)
    projection.append({"clip_pass_rate": p, "lazy_clips_per_span": per_span,
                       "all_clips_per_span": float(total),
                       "lazy_hours": args.projected_spans * per_span / rate / 3600,
                       "all_hours": args.projected_spans * total / rate / 3600})
  result = {
      "benchmark": "generation", "machine": common.machine(), "scale": args.scale,
      "device": str(gen.device), "dtype": str(gen.dtype), "build_s": build_s,
      "steps": args.steps, "seconds": args.seconds, "n": args.n, "tau": tau,
      "calibration_pass_rate": args.pass_rate,
      "spans": len(spans), "rows": rows, "batching_speedup": speedup,
      "clips_per_span": {"lazy": lazy["clips"] / len(spans), "all": float(total),
                         "lazy_per_accepted_span": lazy["clips"] / accepted,
                         "all_per_accepted_span": total * len(spans) / accepted},
      "all_then_first_pass": all_k, "projection": projection,
      "projected_spans": args.projected_spans}
  print(f"{args.scale} models on {gen.device} ({gen.dtype}), {args.steps} steps, "
        f"{args.seconds} s clips, n={args.n}, tau={tau:.4f}")
  print(common.table(rows, ["spans_per_call", "clips_per_call", "seconds", "clips",
                            "accepted", "clips_per_s", "accepted_spans_per_hour",
                            "same_clips_as_all_then_first"]))
  c = result["clips_per_span"]
  print(f"batching speed-up (clips/s, spans_per_call {rows[1]['spans_per_call']} vs 1): "
        f"{speedup:.2f}x")
  print(f"clips per span: lazy {c['lazy']:.2f}, all n {c['all']:.0f}; per accepted span: "
        f"lazy {c['lazy_per_accepted_span']:.2f}, all {c['all_per_accepted_span']:.2f}")
  print(f"projected hours for {args.projected_spans} spans at {rate:.3f} clips/s:")
  print(common.table(projection, ["clip_pass_rate", "lazy_clips_per_span",
                                  "all_clips_per_span", "lazy_hours", "all_hours"]))
  common.write(args.out, result)


if __name__ == "__main__":
  main()
