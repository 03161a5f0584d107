"""The measured-benchmarks table of docs/results.md, written from the benchmarks' JSON files.

    python -m axk.bench.tables            # rewrites the table from docs/bench/*.json
    python -m axk.bench.tables --check    # exit 1 when the table differs from the files

The JSON files under `docs/bench/` are what the benchmarks wrote (`--out`), kept with the
commit they measured (`machine.commit` in each); the table between the markers in
docs/results.md is generated from them and never typed. A row measured on a busy machine is
shown with its ratio struck out and "busy".
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

from axk import provenance
from axk.utils import files

BENCH_DIR = os.path.join(provenance.REPO, "docs", "bench")
RESULTS = os.path.join(provenance.REPO, "docs", "results.md")
BEGIN = "<!-- bench-table:begin (python -m axk.bench.tables writes this) -->"
END = "<!-- bench-table:end -->"
HEADER = ("| benchmark (file) | configuration | axk | other side | ratio (rounds' range) | "
          "machine |\n| --- | --- | --- | --- | --- | --- |")


def _ratio(row: dict, key: str) -> str:
  value = row.get(key)
  if value is None:
    return ""
  text = f"**{value:.2f}**"
  span = row.get(f"{key}_rounds")
  if span:
    text += f" ({span[0]:.2f}-{span[1]:.2f})"
  return f"~~{text}~~ busy" if row.get("busy") else text


def _machine(payload: dict, row: dict) -> str:
  m = payload.get("machine", {})
  cpu = m.get("cpu", {})
  parts = [f"{cpu.get('model', '?')}, {m.get('cpus', '?')} cores"]
  if cpu.get("vector"):
    parts[0] += f", {cpu['vector']}"
  if row.get("device") and not str(row["device"]).lower().startswith("cpu"):
    parts[0] = f"{row['device']} ({parts[0]})"
  if row.get("other_cores") is not None:
    parts.append(f"others {row['other_cores']:.2f} cores")
  if row.get("load_before"):
    parts.append(f"load {row['load_before'][0]:.2f}")
  if m.get("commit"):
    parts.append(f"`{m['commit'][:10]}`")
  return "; ".join(parts)


def _spread(row: dict, side: str) -> str:
  s = row.get(f"{side}_spread")
  return f" ±{s / 2:.0%}" if s is not None else ""


def _mfu(row: dict, side: str) -> str:
  m = row.get(f"{side}_mfu")
  return f", MFU {m:.1%}" if m is not None else ""


def rows_of(name: str, payload: dict) -> list[str]:
  """Table lines for one benchmark file."""
  kind, out = payload.get("benchmark"), []
  for row in payload.get("rows", [payload] if kind == "profile" else []):
    mach = _machine(payload, row)
    if kind == "train_step":
      config = (f"{row['model']}, {row['size']}, {row['batch']} x {row['length']}, "
                f"{row['dtype']}, {row['rounds']} rounds of {row['steps']} steps")
      if row.get("attention", "auto") != "auto":
        config += f", {row['attention']} attention"
      ours = f"{row['axk_steps_per_s']:.3f} steps/s{_spread(row, 'axk')}{_mfu(row, 'axk')}"
      if row.get("axk_compile_train_s") is not None:
        ours += (f"; compiles: train step {row['axk_compile_train_s']:.1f} s, eval step "
                 f"{row['axk_compile_eval_s']:.1f} s")
      for side, label in (("torch_eager", "PyTorch eager"),
                          ("torch_compiled", "torch.compile")):
        if f"{side}_steps_per_s" in row:
          theirs = (f"{label} {row[f'{side}_steps_per_s']:.3f} steps/s{_spread(row, side)}"
                    f"{_mfu(row, side)}")
          out.append(f"| train step (`{name}`) | {config} | {ours} | {theirs} | "
                     f"{_ratio(row, f'ratio_vs_{side}')} | {mach} |")
    elif kind == "decoder":
      config = (f"{row['model']}, {row['batch']} x {row['length']} tokens, {row['dtype']}, "
                f"{row['rounds']} rounds of {row['steps']} calls")
      ours = (f"{row['axk_tokens_per_s']:.0f} tokens/s{_spread(row, 'axk')}{_mfu(row, 'axk')}; "
              f"compile {row['axk_compile_s']:.1f} s")
      for side, label in (("torch_eager", "transformers eager"),
                          ("torch_compiled", "torch.compile")):
        if f"{side}_tokens_per_s" in row:
          theirs = (f"{label} ({row.get('torch_attention', '?')} attention) "
                    f"{row[f'{side}_tokens_per_s']:.0f} tokens/s{_spread(row, side)}"
                    f"{_mfu(row, side)}")
          out.append(f"| decoder scoring (`{name}`) | {config} | {ours} | {theirs} | "
                     f"{_ratio(row, f'ratio_vs_{side}')} | {mach} |")
    elif kind == "loop":
      config = f"{row['model']}, {row['size']}, {row['batch']} x {row['length']}"
      out.append(f"| loop efficiency (`{name}`) | {config} | loop "
                 f"{row['loop_steps_per_s']:.3f} steps/s{_spread(row, 'loop')} | bare step "
                 f"{row['bare_steps_per_s']:.3f} steps/s{_spread(row, 'bare')} | "
                 f"{_ratio(dict(row, efficiency_rounds=None), 'efficiency')} | {mach} |")
    elif kind == "compiles":
      command = " ".join(payload.get("command", [])[1:])
      out.append(f"| compilations (`{name}`) | {row['run']} cache: `{command}` | "
                 f"{row['programs']} programs, {row['compiled']} compiled "
                 f"({row['compile_s']:.1f} s), {row['cache_hits']} from the cache "
                 f"({row['cache_load_s']:.1f} s) | wall {row['wall_s']:.0f} s | | {mach} |")
    elif kind == "ray_features" and row["side"] != "local":
      local = next(r for r in payload["rows"] if r["side"] == "local")
      kind_of = {"stream": "Ray Data pipeline, {w} generator actor{s}",
                 "shards": "{w} shard actor{s}", "ray": "{w} Ray worker{s}"}
      how = kind_of[row["side"].split("_")[0]].format(w=row["workers"],
                                                     s="s" if row["workers"] > 1 else "")
      out.append(f"| feature stage on Ray (`{name}`) | generation of {row['spans']} spans, tiny "
                 f"models, {how} | {row['spans_per_s']:.1f} spans/s "
                 f"(±{row['spread'] / 2:.0%}) | in-process {local['spans_per_s']:.1f} spans/s "
                 f"(±{local['spread'] / 2:.0%}) | {_ratio(row, 'ratio_vs_local')} | {mach} |")
    elif kind == "glue_scale" and row["side"] != "memory":
      memory = next(r for r in payload["rows"] if r["side"] == "memory")
      config = (f"{memory['pairs']} invented pairs, max length {row.get('max_length', 128)}, "
                f"batch {memory['batch']}")
      if row["side"] == "disk":
        out.append(
            f"| GLUE at scale (`{name}`) | {config}: the split tokenised to disk, read a batch at "
            f"a time | prepared in {row['prepare_s']:.1f} s, a batch read in "
            f"{row['read_grouped_us']:.0f} us, peak RSS {row['peak_rss_mb']:.0f} MB; padding "
            f"{row['padding_grouped']:.1%} grouped by length ({row['group_by_length']} batches), "
            f"{row['padding_plain']:.1%} shuffled | in memory: prepared in "
            f"{memory['prepare_s']:.1f} s, a batch read in {memory['read_grouped_us']:.0f} us, "
            f"peak RSS {memory['peak_rss_mb']:.0f} MB | RSS "
            f"{memory['peak_rss_mb'] / row['peak_rss_mb']:.2f}x lower | {mach} |")
      elif row["side"] == "reopened":
        out.append(f"| GLUE at scale (`{name}`) | {config}: a second start opens the split on "
                   f"disk | opened in {row['prepare_s']:.2f} s | read and tokenised in "
                   f"{memory['prepare_s']:.1f} s | | {mach} |")
      else:
        out.append(f"| GLUE at scale (`{name}`) | {config}: one epoch of configs/glue.py:smoke "
                   f"(`axk.main`) | {row['train_s']:.0f} s, peak RSS {row['peak_rss_mb']:.0f} "
                   f"MB | | | {mach} |")
    elif kind == "generation_window" and row["window"] == "clip":
      full = next(r for r in payload["rows"] if r["window"] == "full")
      ratio = {"ratio": payload["wall_ratio_full_over_clip"],
               "ratio_rounds": payload.get("wall_ratio_rounds"), "busy": row.get("busy")}
      out.append(f"| generator window (`{name}`) | Stable Audio Open sizes, random weights, "
                 f"{payload['seconds']:g} s clip, {payload['steps']} steps, "
                 f"{payload['dtype']}: `clip` ({row['latent_frames']} latent frames) against "
                 f"`full` ({full['latent_frames']}) | {row['call_s']:.1f} s a call, "
                 f"{row['denoiser_gflops_per_step']:.0f} GFLOP a DiT step | "
                 f"{full['call_s']:.1f} s a call, {full['denoiser_gflops_per_step']:.0f} "
                 f"GFLOP a DiT step | {_ratio(ratio, 'ratio')} | {mach} |")
    elif kind == "profile":
      kinds = ", ".join(f"{k['name']} {k['share']:.0%}" for k in row["by_kind"][:4])
      out.append(f"| profile (`{name}`) | {row['model']}, {row['size']}, {row['batch']} x "
                 f"{row['length']}, {row['dtype']} | {row['step_wall_ms']:.0f} ms a step; "
                 f"{kinds} | | | {mach} |")
  return out


def table(bench_dir: str = BENCH_DIR) -> str:
  lines = [HEADER]
  for path in sorted(glob.glob(os.path.join(bench_dir, "*.json"))):
    with open(path) as f:
      payload = json.load(f)
    lines += rows_of(os.path.basename(path), payload)
  return "\n".join(lines)


def replace(text: str, generated: str, where: str = RESULTS) -> str:
  if BEGIN not in text or END not in text:
    raise SystemExit(f"error: {where}: the markers {BEGIN!r} and {END!r} are missing")
  head, rest = text.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  return f"{head}{BEGIN}\n{generated}\n{END}{tail}"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true",
                      help="exit 1 when docs/results.md's table differs from the JSON files")
  parser.add_argument("--bench-dir", default=BENCH_DIR)
  parser.add_argument("--results", default=RESULTS)
  args = parser.parse_args(argv)
  with open(args.results) as f:
    text = f.read()
  new = replace(text, table(args.bench_dir), args.results)
  if args.check:
    if new != text:
      sys.exit(f"error: {args.results}: the benchmark table differs from {args.bench_dir}; run "
               "python -m axk.bench.tables")
    return
  files.write_text(args.results, new)
  print(f"wrote the benchmark table of {args.results} from {args.bench_dir}")


if __name__ == "__main__":
  main()
