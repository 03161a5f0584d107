"""Feature-pipeline benchmark: encoder throughput, rejection cost, deduplication saving.

    python -m axk.bench.features --out /tmp/feat_bench.json

Measures, on this machine's CPU (or `--device`):

  1. AST (`ASTConfig()`: 768 wide, 12 layers, 1214 tokens) and CLAP audio
     (`ClapConfig()` sizes, fused HTSAT as in `laion/clap-htsat-fused`) throughput in clips
     per second, random weights, through the pipeline's encoders (feature extraction
     included), batched (`--batch-size`) versus one clip at a time. Clips are
     `--seconds` of noise (5 s: what ITH generates; both models pad to ~10 s anyway).
  2. Clips drawn per accepted span under CLAP rejection sampling (the "first" rule, up to
     n candidates per span), measured on the tiny random Stable Audio pipeline
     (`axk.features.tiny`), for the
     paper's thresholds and for thresholds at quantiles of the tiny model's own scores
     (random weights put all scores near 0, so only the latter say anything about the
     mechanics), next to the value expected from the single-clip pass rate.
  3. The saving from deduplicating spans on AuditoryBench (`--data-dir`): total gold spans
     versus distinct normalised ones; each distinct span costs one acquisition.

The default run keeps to a few clips so that it finishes in about five minutes on two
cores. Timings on a shared machine vary; the load average is recorded with them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import json
import logging
import os
import platform
import tempfile
import time

import numpy as np

logger = logging.getLogger(__name__)

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_DATA_DIR = os.path.join(_ROOT, "..", "shared", "auditorybench")


def _throughput(encode, waves: Sequence[np.ndarray], batch_size: int) -> dict:
  """Clips per second of `encode` over `waves`, batched and one at a time."""
  encode(waves[:1])  # warm-up: first-call allocations and kernel selection
  out = {}
  for name, size in (("batched", batch_size), ("one_at_a_time", 1)):
    start = time.perf_counter()
    for i in range(0, len(waves), size):
      encode(list(waves[i:i + size]))
    seconds = time.perf_counter() - start
    out[name] = {"batch_size": size, "clips": len(waves), "seconds": round(seconds, 3),
                 "clips_per_s": round(len(waves) / seconds, 3)}
  out["speedup"] = round(out["batched"]["clips_per_s"] / out["one_at_a_time"]["clips_per_s"],
                         3)
  return out


def bench_encoders(num_clips: int, batch_size: int, seconds: float, device: str) -> dict:
  """AST and CLAP audio throughput at real model size, random weights."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  from axk.features import ast as ast_lib  # pylint: disable=g-import-not-at-top
  from axk.features import clap as clap_lib  # pylint: disable=g-import-not-at-top
  from axk.features import tiny  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  results = {}

  ast_model = transformers.ASTModel(transformers.ASTConfig())
  ast = ast_lib.AstEncoder.from_model(ast_model, transformers.ASTFeatureExtractor(),
                                      num_tokens=32, device=device, batch_size=batch_size)
  waves = [(rng.standard_normal(int(seconds * ast.sampling_rate)) * 0.1).astype(np.float32)
           for _ in range(num_clips)]
  results["ast"] = {"params_m": round(sum(p.numel() for p in ast_model.parameters()) / 1e6, 1),
                    "tokens": 2 + ast.grid[0] * ast.grid[1], "sampling_rate": ast.sampling_rate,
                    **_throughput(ast, waves, batch_size)}
  del ast, ast_model

  config = transformers.ClapConfig(audio_config={"enable_fusion": True,
                                                 "fusion_type": "aff_2d"})
  clap_model = transformers.ClapModel(config)
  processor = transformers.ClapProcessor(feature_extractor=transformers.ClapFeatureExtractor(),
                                         tokenizer=tiny.clap_tokenizer())
  clap = clap_lib.ClapEncoder.from_model(clap_model, processor, device=device,
                                         batch_size=batch_size)
  waves = [(rng.standard_normal(int(seconds * clap.sampling_rate)) * 0.1).astype(np.float32)
           for _ in range(num_clips)]
  audio_params = sum(p.numel() for n, p in clap_model.named_parameters()
                     if n.startswith(("audio_model", "audio_projection")))
  results["clap_audio"] = {"params_m": round(audio_params / 1e6, 1),
                           "sampling_rate": clap.sampling_rate,
                           **_throughput(clap.audio, waves, batch_size)}
  # The extractor's own (frame loop) log-mel against the encoder's vectorised one.
  start = time.perf_counter()
  for w in waves:
    clap.extractor([w], sampling_rate=clap.sampling_rate, return_tensors="np")
  reference_s = (time.perf_counter() - start) / len(waves)
  start = time.perf_counter()
  for w in waves:
    clap._features(w)  # pylint: disable=protected-access
  fast_s = (time.perf_counter() - start) / len(waves)
  results["clap_audio"]["log_mel_ms_per_clip"] = {"transformers_extractor": round(
      1e3 * reference_s, 2), "axk_vectorised": round(1e3 * fast_s, 2)}
  return results


def _expected_clips(p: float, n: int) -> tuple[float, float]:
  """(expected clips per span, expected accepted fraction) of the "first" rule with up to n
  candidates, for pass rate p per clip."""
  return sum((1.0 - p) ** i for i in range(n)), 1.0 - (1.0 - p) ** n


def bench_rejection(spans: Sequence[str], n: int, paper_taus: Sequence[float]) -> dict:
  """Clips drawn per accepted span on the tiny Stable Audio pipeline."""
  import torch  # pylint: disable=g-import-not-at-top

  from axk.features import clap as clap_lib  # pylint: disable=g-import-not-at-top
  from axk.features import generation  # pylint: disable=g-import-not-at-top
  from axk.features import tiny  # pylint: disable=g-import-not-at-top

  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # tiny models: per-op overhead only
  try:
    with tempfile.TemporaryDirectory() as tmp:
      clap = clap_lib.ClapEncoder(tiny.build_clap(os.path.join(tmp, "clap")), device="cpu")
      gen = generation.AudioGenerator(tiny.build_stable_audio(os.path.join(tmp, "sa")),
                                      device="cpu")
      base = dict(steps=4, seconds=0.5, n=n, rule="first")
      # Calibration: every candidate scored (tau above any cosine).
      calib = generation.RejectionSampler(
          gen, clap, generation.ClipCache(os.path.join(tmp, "calib")),
          generation.GenerationParams(**{**base, "tau": 1.01}))
      calib(spans)
      scores = []
      for root, _, files in os.walk(os.path.join(tmp, "calib")):
        for name in files:
          if name.endswith(".json"):
            with open(os.path.join(root, name), encoding="utf-8") as f:
              scores.append(json.load(f)["clap_score"])
      scores = np.asarray(scores)
      taus = {f"paper {t:g}": float(t) for t in paper_taus}
      for q in (50, 90, 97):
        taus[f"score p{q}"] = float(np.percentile(scores, q))
      rows = []
      for name, tau in taus.items():
        before = gen.clips
        sampler = generation.RejectionSampler(
            gen, clap, generation.ClipCache(os.path.join(tmp, f"run{len(rows)}")),
            generation.GenerationParams(**base, tau=tau))
        results = sampler(spans)
        clips = gen.clips - before
        accepted = sum(r.has_audio for r in results)
        p = float((scores >= tau).mean())
        exp_clips, exp_accept = _expected_clips(p, n)
        rows.append({
            "tau": name, "tau_value": round(tau, 4), "spans": len(spans), "clips": clips,
            "accepted": accepted, "clips_per_span": round(clips / len(spans), 3),
            "clips_per_accepted_span": round(clips / accepted, 3) if accepted else None,
            "clip_pass_rate": round(p, 3),
            "expected_clips_per_accepted_span": round(exp_clips / exp_accept, 3)
                                                if exp_accept else None,
        })
      return {"n": n, "spans_per_call": 1,
              "score_range": [round(float(scores.min()), 4), round(float(scores.max()), 4)],
              "rows": rows}
  finally:
    torch.set_num_threads(threads)


def bench_dedup(data_dir: str) -> dict:
  """Total versus distinct gold spans of AuditoryBench."""
  from axk.data import auditorybench  # pylint: disable=g-import-not-at-top
  from axk import tasks  # pylint: disable=g-import-not-at-top
  from axk.data import spans as spans_lib  # pylint: disable=g-import-not-at-top

  per_task, everything = {}, {}
  for task in tasks.auditorybench.NAMES:
    loaded = auditorybench.load_task(data_dir, task, keep_missing_spans=True)
    found = {e.id: e.spans for d in loaded.values() for e in d.examples}
    everything.update(found)
    total = sum(len(s) for s in found.values())
    distinct = len(spans_lib.distinct(found))
    per_task[task] = {"splits": sorted(loaded), "spans": total, "distinct": distinct}
  total = sum(len(s) for s in everything.values())
  distinct = len(spans_lib.distinct(everything))
  return {"data_dir": os.path.abspath(data_dir), "per_task": per_task, "spans": total,
          "distinct": distinct, "acquisitions_saved": total - distinct,
          "saving": round(1 - distinct / total, 4) if total else None}


def _table(results: dict) -> str:
  lines = []
  enc = results.get("encoders")
  if enc:
    lines += ["encoder throughput (random weights, real size)",
              f"  {'model':<11} {'params':>8} {'batched clip/s':>15} {'1-by-1 clip/s':>14}"
              f" {'speedup':>8}"]
    for name in ("ast", "clap_audio"):
      r = enc[name]
      lines.append(f"  {name:<11} {r['params_m']:>7.1f}M {r['batched']['clips_per_s']:>15.3f}"
                   f" {r['one_at_a_time']['clips_per_s']:>14.3f} {r['speedup']:>8.2f}")
    mel = enc["clap_audio"]["log_mel_ms_per_clip"]
    lines.append(f"  CLAP log-mel per clip: transformers {mel['transformers_extractor']} ms, "
                 f"axk {mel['axk_vectorised']} ms")
  rej = results.get("rejection")
  if rej:
    lines += ["", f"rejection sampling, tiny Stable Audio (first rule, n={rej['n']}; "
              f"scores in {rej['score_range']})",
              f"  {'tau':<12} {'value':>8} {'pass':>6} {'clips':>6} {'accepted':>9}"
              f" {'clips/acc':>11} {'expected':>9}"]
    for r in rej["rows"]:
      fmt = lambda v: "-" if v is None else f"{v:.2f}"
      lines.append(f"  {r['tau']:<12} {r['tau_value']:>8.4f} {r['clip_pass_rate']:>6.2f}"
                   f" {r['clips']:>6} {r['accepted']:>4}/{r['spans']:<4}"
                   f" {fmt(r['clips_per_accepted_span']):>11}"
                   f" {fmt(r['expected_clips_per_accepted_span']):>9}")
  dedup = results.get("dedup")
  if dedup:
    lines += ["", f"deduplication ({dedup['data_dir']})"]
    for task, r in dedup["per_task"].items():
      lines.append(f"  {task:<7} {r['spans']:>6} spans  {r['distinct']:>6} distinct  "
                   f"splits {','.join(r['splits'])}")
    lines.append(f"  all     {dedup['spans']:>6} spans  {dedup['distinct']:>6} distinct  "
                 f"saving {100 * dedup['saving']:.1f}% ({dedup['acquisitions_saved']} "
                 "acquisitions)")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="JSON file for the results")
  parser.add_argument("--clips", type=int, default=4, help="clips per encoder and mode")
  parser.add_argument("--batch-size", type=int, default=4, help="batched mode batch size")
  parser.add_argument("--seconds", type=float, default=5.0, help="clip length")
  parser.add_argument("--device", default="cpu", help="torch device for the encoders")
  parser.add_argument("--spans", type=int, default=24, help="spans for rejection sampling")
  parser.add_argument("--n", type=int, default=5, help="candidates per span")
  parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="AuditoryBench folder")
  parser.add_argument("--skip", default="", help="comma-separated: encoders,rejection,dedup")
  args = parser.parse_args(argv)
  skip = {s for s in args.skip.split(",") if s}

  import torch  # pylint: disable=g-import-not-at-top
  from axk.features import pipeline  # pylint: disable=g-import-not-at-top
  pipeline._quiet_libraries()  # pylint: disable=protected-access

  results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                         "torch_threads": torch.get_num_threads(),
                         "load_average_before": list(os.getloadavg()),
                         "device": args.device}}
  start = time.time()
  if "dedup" not in skip:
    results["dedup"] = bench_dedup(args.data_dir)
  if "rejection" not in skip:
    spans = None
    if "dedup" in results:
      from axk.data import auditorybench  # pylint: disable=g-import-not-at-top
      from axk.data import spans as spans_lib  # pylint: disable=g-import-not-at-top
      loaded = auditorybench.load_task(args.data_dir, "pitch", ("dev",))
      spans = spans_lib.distinct({e.id: e.spans for e in loaded["dev"].examples})
      spans = spans[::max(1, len(spans) // args.spans)][:args.spans]
    spans = spans or [f"sound {i}" for i in range(args.spans)]
    results["rejection"] = bench_rejection(spans, args.n, paper_taus=(0.0, 0.6))
  if "encoders" not in skip:
    results["encoders"] = bench_encoders(args.clips, args.batch_size, args.seconds,
                                         args.device)
  results["machine"]["load_average_after"] = list(os.getloadavg())
  results["wall_s"] = round(time.time() - start, 1)
  print(_table(results))
  print(f"\nwall time {results['wall_s']} s; load average before/after "
        f"{results['machine']['load_average_before'][0]:.2f}/"
        f"{results['machine']['load_average_after'][0]:.2f}")
  from axk.bench import common  # pylint: disable=g-import-not-at-top
  common.write(args.out, results)
  return results


if __name__ == "__main__":
  main()
