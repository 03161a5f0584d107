"""The feature stage's generation on Ray against the in-process run: spans/s and accepted
spans/h for 1, 2, ... workers, as the streaming Ray Data pipeline and as shard actors.

    python -m axk.bench.ray_features --out bench_ray_features.json
    python -m axk.bench.ray_features --workers 1,2,4 --rounds 3

Tiny random models (`axk.features.tiny`), generation with CLAP rejection and AST over every
task and split of the shipped sample, each run from an empty workdir and clip cache. Sides:
`local` (`--config.engine=local`, this process), `stream_<w>` (`--config.engine=ray`: the
streaming pipeline, w generator actors, one CLAP and one AST actor, each asking for a quarter
of a CPU so that every pool fits a small machine) and `shards_<w>` (`ray.pipeline=shards`: w
shard actors), on a local Ray instance of `--cpus` CPUs, started once before the timing (its
start-up is reported apart). A side's time is the whole `pipeline.run` (spans, acquire,
assemble); the actors' model loading is in it. Rounds alternate the sides; medians are
compared (`ratio_vs_local` > 1: faster than in-process). The machine is probed for other
processes' CPU before and after the runs, not during them (Ray's workers are reaped without
their CPU time reaching this process tree, so theirs and others' cannot be told apart).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from axk.bench import common


def _config(models: dict, engine: str, workers: int, batch_size: int, pipeline: str = "auto"):
  from configs import features as features_config  # pylint: disable=g-import-not-at-top
  c = features_config.get_config("smoke")
  c.models.tiny = False
  c.models.clap, c.models.ast, c.models.generator = (
      models["clap"], models["ast"], models["stable_audio"])
  c.source = "generation"
  c.batch_size = batch_size
  c.generation.tau.pitch = c.generation.tau.animal = -0.2  # Some clips of the tiny CLAP pass.
  c.engine = engine
  c.ray.pipeline = pipeline
  c.ray.workers = max(workers, 1)
  c.ray.score.workers = c.ray.embed.workers = 1
  for stage in ("generate", "score", "embed", "decode"):
    c.ray[stage].cpus = 0.25
  c.torch_threads = 1
  return c


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", help="JSON output file")
  parser.add_argument("--workers", default="1,2", help="Ray worker counts")
  parser.add_argument("--cpus", type=int, default=0, help="CPUs of the local Ray (0: all)")
  parser.add_argument("--batch-size", type=int, default=4, help="spans per part file")
  parser.add_argument("--rounds", type=int, default=1)
  common.quiet_args(parser)
  args = parser.parse_args(argv)
  before = common.require_quiet(args)
  import ray  # pylint: disable=g-import-not-at-top

  from axk.features import pipeline  # pylint: disable=g-import-not-at-top
  from axk.features import ray_engine  # pylint: disable=g-import-not-at-top
  from axk.features import shards  # pylint: disable=g-import-not-at-top
  from axk.features import tiny  # pylint: disable=g-import-not-at-top
  counts = [int(w) for w in args.workers.split(",") if w]
  with tempfile.TemporaryDirectory() as tmp:
    models = tiny.build_all(os.path.join(tmp, "models"))
    t0 = time.perf_counter()
    first = _config(models, "ray", 1, args.batch_size)
    first.ray.num_cpus = args.cpus
    ray_engine.init(first)
    ray_start = time.perf_counter() - t0
    sides = {"local": ("local", 0, "auto"),
             **{f"stream_{w}": ("ray", w, "auto") for w in counts},
             **{f"shards_{w}": ("ray", w, "shards") for w in counts}}
    times = {name: [] for name in sides}
    spans = accepted = 0
    for r in range(args.rounds):
      for name, (engine, workers, kind) in sides.items():
        workdir = os.path.join(tmp, f"{name}_{r}")
        t = time.perf_counter()
        out = pipeline.run(_config(models, engine, workers, args.batch_size, kind), workdir)
        times[name].append(time.perf_counter() - t)
        counts_ = shards.read_manifest(out["generation"])["counts"]
        spans, accepted = counts_["distinct_spans"], counts_["distinct_with_audio"]
        print(f"  round {r + 1}: {name} {times[name][-1]:.1f} s", flush=True)
    ray.shutdown()
  # Ray's worker processes are reaped without adding their CPU time to a parent's, so the
  # CPU other processes used cannot be told apart from theirs during the runs: the machine is
  # probed before (`require_quiet`) and after them instead.
  after = common.probe(2.0, args.max_other_cores)
  watched = {**after, "busy": before["busy"] or after["busy"],
             "other_cores": max(before["other_cores"] or 0.0, after["other_cores"] or 0.0),
             "load_before": before["load_before"]}
  rows = []
  local = common.summary(times["local"])["median_s"]
  for name, values in times.items():
    s = common.summary(values)
    rows.append({"side": name, "workers": sides[name][1] or 1, "spans": spans,
                 "accepted": accepted, "seconds": s["median_s"], "spread": s["spread"],
                 "spans_per_s": spans / s["median_s"],
                 "accepted_per_h": accepted / s["median_s"] * 3600,
                 "ratio_vs_local": local / s["median_s"]})
  common.mark(rows, watched)
  print(common.table(rows, ["side", "workers", "spans", "accepted", "seconds", "spread",
                            "spans_per_s", "accepted_per_h", "ratio_vs_local", "busy"]))
  print(f"Ray start-up (once, not in the rows): {ray_start:.1f} s")
  print(common.busy_note(rows))
  common.write(args.out, {"benchmark": "ray_features", "machine": common.machine(),
                          "ray_start_s": ray_start, "rows": rows})


if __name__ == "__main__":
  main()
