"""Where a train step's time goes: the production step traced with `jax.profiler`, each
executed XLA operation matched to its HLO instruction, and the time summed by kind of work
(matrix products, gathers, scatters, reductions, element-wise...) and by part of the model
(forward and backward of each layer, the fusion, the heads, the optimizer).

    python -m axk.bench.profile --model=ith --size=minilm --out profile_ith.json

On CPU, XLA reports each operation to the profiler only with
`--xla_cpu_enable_xprof_traceme=true` in `XLA_FLAGS` before JAX starts; on a GPU a step runs
as one command buffer (one event) unless `--xla_gpu_enable_command_buffer=` turns them off.
This module adds both when it is the program (`python -m`); the step's wall time while
traced is then longer than untraced. Times are the operations' own durations summed per step
(operations may overlap on several threads, so the sum can exceed the step's wall time,
which is reported beside it). On a GPU only the device's kernels count, each named by its
HLO instruction; `--keep-trace=D` keeps the raw trace and the compiled program, and
`--from-trace=D` summarises them again elsewhere.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
  for _flag in ("--xla_cpu_enable_xprof_traceme=true", "--xla_gpu_enable_command_buffer="):
    if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import argparse
import collections
import glob
import gzip
import json
import re
import shutil
import tempfile
import time

import jax

from axk.bench import common
from axk.bench import synthetic
from axk.bench import train_step as train_step_lib

# Kinds of work, looked for in this order in the computation an operation runs.
KINDS = ("dot", "convolution", "scatter", "gather", "sort", "reduce-window", "reduce",
         "dynamic-update-slice", "dynamic-slice", "transpose", "copy", "concatenate")
_WRAPPERS = ("ThunkExecutor", "$", "SlinkyThreadPool", "TraceMe", "PjitFunction")


def computations(hlo: str) -> tuple[dict[str, str], dict[str, str]]:
  """(computation name -> body, instruction name -> its line) of an HLO module's text."""
  bodies, lines = {}, {}
  for m in re.finditer(r"\n(?:ENTRY )?(%[\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S):
    bodies[m.group(1)] = m.group(2)
    for line in m.group(2).split("\n"):
      i = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = ", line)
      if i:
        lines[i.group(1)] = line.strip()
  return bodies, lines


def kind(line: str, bodies: dict[str, str]) -> str:
  """The kind of work of an instruction: a library call's (cuBLAS: matmul, cuDNN's fused
  attention: attention), its own opcode, or for a fusion the first of `KINDS` in the
  computation it calls (else its root's opcode)."""
  called = re.search(r"calls=(%[\w.\-]+)", line)
  text = bodies.get(called.group(1), "") if called else line
  target = re.search(r'custom_call_target="([^"]*)"', text)
  if target and re.search(r"matmul|gemm", target.group(1), re.I):
    return "matmul"
  if target and re.search(r"fmha|attention", target.group(1), re.I):
    return "attention"
  ops = re.findall(r"= [^=]*? ([a-z][\w\-]*)\(", text)
  for k in KINDS:
    if k in ops:
      return "matmul" if k in ("dot", "convolution") else k
  return "element-wise" if ops else "other"


def part(line: str) -> str:
  """The part of the model an instruction belongs to, from the source path JAX records
  (`metadata={op_name="jit(f)/transpose(jvp(Model))/fusion/ffn_in/dot_general"}`): "forward
  <module>", "backward <module>", or "update" for what lies outside the model (the
  optimizer, clipping)."""
  m = re.search(r'op_name="([^"]*)"', line)
  if not m:
    return "other"
  comps = m.group(1).split("/")
  inside = comps[1] if len(comps) > 1 else ""
  if not inside.startswith(("jvp(", "transpose(")):
    return "update (optimizer, clipping)"
  direction = "backward" if inside.startswith("transpose(") else "forward"
  modules = [re.sub(r"layer_\d+", "layer", c) for c in comps[2:-1]
             if c not in ("bert", "encoder") and not c.startswith(
                 ("vmap", "jvp", "pjit", "transpose", "checkpoint", "bert."))]
  if not modules:
    return f"{direction} (outside modules)"
  return f"{direction} {'/'.join(modules[:2]) if modules[0] == 'layer' else modules[0]}"


def device_events(trace: dict) -> list[dict]:
  """The complete ("X") events an accelerator ran, named by their HLO instruction (on a GPU a
  kernel event carries it as `hlo_op`; a cuBLAS or cuDNN kernel has its own name); on a CPU,
  where XLA's operations are host events, every complete event."""
  events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
  devices = {e["pid"] for e in trace["traceEvents"]
             if e.get("ph") == "M" and e.get("name") == "process_name"
             and "/device:" in str(e.get("args", {}).get("name", ""))}
  if not devices:
    return events
  return [{**e, "name": e.get("args", {}).get("hlo_op") or e["name"]} for e in events
          if e["pid"] in devices]


def profile(model: str, size: str, batch: int, length: int, steps: int, dtype: str,
            trace_dir: str, attention: str = "auto", keep: str = "") -> dict:
  args = argparse.Namespace(dtype=dtype, steps=steps, audio_tokens=16, attention=attention)
  rows = synthetic.rows(batch, length, vocab=synthetic.SIZES[size]["vocab_size"],
                        audio_tokens=16)
  run, info, compiled = train_step_lib.axk_side(model, size, rows, args, keep_compiled=True)
  run()
  t0 = time.perf_counter()
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    run()
  wall = (time.perf_counter() - t0) / steps
  found = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  hlo = compiled.as_text()
  if keep:  # The raw trace and the compiled program, to read again (`--from-trace`).
    os.makedirs(keep, exist_ok=True)
    shutil.copy(found[0], os.path.join(keep, f"{model}_{size}.trace.json.gz"))
    with gzip.open(os.path.join(keep, f"{model}_{size}.hlo.txt.gz"), "wt") as f:
      f.write(hlo)
  return {"model": model, "size": size, "batch": batch, "length": length, "dtype": dtype,
          "step_wall_ms": wall * 1e3, "flops_per_step": info["flops"],
          **summarize(json.load(gzip.open(found[0])), hlo, steps)}


def summarize(trace: dict, hlo: str, steps: int) -> dict:
  """Time per step of a trace's operations, summed by kind of work and part of the model,
  with the costliest operations."""
  events = device_events(trace)
  ops = collections.Counter()
  for e in events:
    if not e["name"].startswith(_WRAPPERS):
      ops[e["name"]] += e["dur"] / 1e3 / steps  # microseconds -> ms per step
  if not ops:
    raise SystemExit("error: the trace holds no XLA operations; on CPU start JAX with "
                     "XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true (python -m "
                     "axk.bench.profile sets it); on a GPU with "
                     "--xla_gpu_enable_command_buffer= (a command buffer is one event)")
  bodies, lines = computations(hlo)
  by_kind, by_part, top = collections.Counter(), collections.Counter(), []
  for name, ms in ops.items():
    line = lines.get(name, "")
    k, p = kind(line, bodies) if line else "other", part(line) if line else "other"
    by_kind[k] += ms
    by_part[p] += ms
    shape = line.split(" = ", 1)[1].split(" ", 1)[0] if line else ""
    top.append({"op": name, "ms": ms, "kind": k, "part": p, "shape": shape})
  total = sum(ops.values())
  top.sort(key=lambda r: -r["ms"])
  share = lambda c: [{"name": n, "ms": ms, "share": ms / total} for n, ms in c.most_common()]
  return {"ops_ms": total, "by_kind": share(by_kind), "by_part": share(by_part),
          "top": top[:25]}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="ith", choices=synthetic.MODELS)
  parser.add_argument("--size", default="minilm", choices=tuple(synthetic.SIZES))
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument("--steps", type=int, default=2, help="steps traced")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--attention", default="auto", help="as train_step's --attention")
  parser.add_argument("--keep-trace", default="",
                      help="folder to copy the raw trace and the compiled program's text into")
  parser.add_argument("--from-trace", default="",
                      help="summarise a kept trace (`--keep-trace`'s folder, whose "
                           "<model>_<size> files are read; --steps as when it was taken) "
                           "instead of tracing")
  parser.add_argument("--top", type=int, default=12, help="operations listed")
  parser.add_argument("--out", help="JSON output file")
  common.quiet_args(parser)
  args = parser.parse_args(argv)
  if args.from_trace:
    stem = os.path.join(args.from_trace, f"{args.model}_{args.size}")
    for suffix in (".trace.json.gz", ".hlo.txt.gz"):
      if not os.path.exists(stem + suffix):
        parser.error(f"--from-trace: no {stem + suffix}")
    result = {"model": args.model, "size": args.size, "batch": args.batch,
              "length": args.length, "dtype": args.dtype, "from_trace": stem,
              **summarize(json.load(gzip.open(stem + ".trace.json.gz")),
                          gzip.open(stem + ".hlo.txt.gz", "rt").read(), args.steps)}
  else:
    common.require_quiet(args)
    watch = common.Watch()
    with tempfile.TemporaryDirectory() as tmp:
      result = profile(args.model, args.size, args.batch, args.length, args.steps, args.dtype,
                       tmp, attention=args.attention, keep=args.keep_trace)
    common.mark([result], watch.stop(args.max_other_cores))
  wall = f"{result['step_wall_ms']:.0f} ms a step (wall), " if "step_wall_ms" in result else ""
  print(f"{args.model} train step, {args.size}, {args.batch} x {args.length}, {args.dtype}: "
        f"{wall}operations {result['ops_ms']:.0f} ms")
  for key in ("by_kind", "by_part"):
    print(common.table([{key[3:]: r["name"], "ms_per_step": r["ms"], "share": r["share"]}
                        for r in result[key]], [key[3:], "ms_per_step", "share"]))
  print(common.table(result["top"][:args.top], ["op", "ms", "kind", "part", "shape"]))
  if not args.from_trace:
    print(common.busy_note([result]))
  common.write(args.out, {"benchmark": "profile",
                          **({} if args.from_trace else {"machine": common.machine()}),
                          **result})


if __name__ == "__main__":
  main()
