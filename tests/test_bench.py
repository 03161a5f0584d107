"""The benchmarks: they import without the `configs` package (an installed axk does not ship
it), time sides in their own processes, see a busy machine, count compilations, profile a
step, and write the docs table from their JSON."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

_CHILD = """
import sys
sys.modules["configs"] = None  # Any `import configs...` now fails.
import axk.bench.bert, axk.bench.epoch, axk.bench.features, axk.bench.generation
import axk.bench.loop, axk.bench.train_step, axk.bench.audio_tokens
import axk.bench.compiles, axk.bench.profile, axk.bench.tables, axk.bench.decoder
import axk.bench.suite, axk.bench.glue_scale, axk.bench.ray_features
import axk.bench.generation_window
print("ok")
"""


def test_benchmarks_import_without_configs():
  out = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_audio_token_benchmark_times_the_production_step(tmp_path):
  """A tiny run end to end, in this process: every layout's train step runs (and its storage
  is counted)."""
  import json
  from axk.bench import audio_tokens
  out = tmp_path / "audio_tokens.json"
  audio_tokens.main(["--size=tiny", "--layouts=time:16,grid:12x8", "--batch=2", "--length=16",
                     "--records=4", "--steps=2", "--rounds=1", f"--out={out}"])
  rows = json.loads(out.read_text())["rows"]
  assert [r["layout"] for r in rows] == ["time:16", "grid:12x8"]
  assert all(r["step_s"] > 0 and r["flops_per_step"] > 0 for r in rows)
  assert [r["tokens"] for r in rows] == [16, 98]  # 2 specials + 12 x 8 cells


# --- Trustworthy measurements: sides in their own processes, a quiet machine -------------

import json
import os
import subprocess
import time

import pytest

from axk.bench import common


def _fixed_side(seconds, fail=False):
  """A benchmark side for `common.compare`: reports its process id, then `seconds`."""
  if fail:
    raise ValueError("this side cannot be built")
  return (lambda: seconds), {"pid": os.getpid()}


def test_ratio_and_spread_by_hand():
  timing = {"a": common.summary([1.0, 2.0, 4.0]), "b": common.summary([3.0, 3.0, 6.0])}
  assert timing["a"]["median_s"] == 2.0 and timing["a"]["spread"] == pytest.approx(1.5)
  r = common.ratio(timing, "a", "b")
  assert r["ratio"] == pytest.approx(3.0 / 2.0)
  # Per-round ratios b / a: 3, 1.5, 1.5.
  assert (r["round_median"], r["round_min"], r["round_max"]) == pytest.approx((1.5, 1.5, 3.0))


def test_compare_times_each_side_in_its_own_process():
  timing, infos = common.compare({"fast": (_fixed_side, (0.25,)),
                                  "slow": (_fixed_side, (0.5,))}, rounds=3, log=lambda m: None)
  pids = {infos["fast"]["pid"], infos["slow"]["pid"], os.getpid()}
  assert len(pids) == 3
  assert timing["slow"]["values_s"] == [0.5] * 3
  assert common.ratio(timing, "fast", "slow")["ratio"] == pytest.approx(2.0)
  with pytest.raises(common.SideError, match="(?s)'broken'.*cannot be built"):
    common.compare({"ok": (_fixed_side, (0.1,)), "broken": (_fixed_side, (0.1, True))},
                   rounds=1, log=lambda m: None)


@pytest.fixture
def stranger(tmp_path):
  """A busy loop that is not this process's descendant (its parent exits at once), as another
  user's job would be; stopped at the end."""
  started = tmp_path / "pid"
  code = (f"import os, time; open({str(started)!r}, 'w').write(str(os.getpid()))\n"
          "t = time.time()\nwhile time.time() - t < 60: pass")
  subprocess.run(["sh", "-c", f'"{sys.executable}" -c "{code}" >/dev/null 2>&1 &'], check=True)
  for _ in range(200):
    if started.exists() and started.read_text():
      break
    time.sleep(0.05)
  pid = int(started.read_text())
  yield pid
  os.kill(pid, 9)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc")
def test_watch_counts_other_processes_and_not_our_own(stranger):
  # Our own descendants' CPU is ours: a child spinning for a second is not "other".
  os.kill(stranger, 19)  # SIGSTOP: the stranger pauses while our own work is measured.
  try:
    watch = common.Watch()
    subprocess.run([sys.executable, "-c", "import time\nt = time.time()\n"
                    "while time.time() - t < 1: pass"], check=True)
    own = watch.stop()
  finally:
    os.kill(stranger, 18)  # SIGCONT
  assert own["other_cores"] < 0.5 and not own["busy"]
  # A stranger spinning one core is seen, and a benchmark refuses to start.
  busy = common.probe(1.0)
  assert busy["other_cores"] > 0.5 and busy["busy"]
  args = type("Args", (), {"allow_busy": False, "max_other_cores": 0.3})()
  with pytest.raises(SystemExit, match=r"^error: the machine is busy: other processes used"):
    common.require_quiet(args, seconds=0.5)
  args.allow_busy = True
  assert common.require_quiet(args, seconds=0.5)["busy"]


def test_compile_counts_from_a_jax_log():
  """Two threads interleaved: a cache hit marks only the next program of its own thread."""
  from axk.bench import compiles
  log = "\n".join([
      "W1204 12:00:00.000001 111 compiler.py:125] Persistent compilation cache hit for "
      "'jit_f' with key 'k'",
      "W1204 12:00:00.000002 222 dispatch.py:204] Finished XLA compilation of jit(g) in 2.5 sec",
      "W1204 12:00:00.000003 111 dispatch.py:204] Finished XLA compilation of jit(f) in 0.5 sec",
      "W1204 12:00:00.000004 111 dispatch.py:204] Finished XLA compilation of jit(g) in 1.5 sec",
      "I1204 12:00:00.000005 111 other.py:1] unrelated"])
  c = compiles.count(log)
  assert (c["programs"], c["compiled"], c["cache_hits"]) == (3, 2, 1)
  assert (c["compile_s"], c["cache_load_s"]) == (4.0, 0.5)
  assert c["most_obtained"][0] == ("jit(g)", 2)


def test_compiles_benchmark_cold_then_warm(tmp_path):
  from axk.bench import compiles
  out = tmp_path / "compiles.json"
  program = ("import jax, jax.numpy as jnp\nx = jnp.arange(3.0)\n"
             "jax.jit(lambda v: v + 1)(x).block_until_ready()\n"
             "jax.jit(lambda v: v * 2)(x).block_until_ready()")
  compiles.main([f"--out={out}", "--allow-busy", "--", sys.executable, "-c", program])
  cold, warm = json.loads(out.read_text())["rows"]
  assert cold["compiled"] >= 2 and cold["programs"] == warm["programs"]
  assert warm["compiled"] == 0 and warm["cache_hits"] == warm["programs"]


def test_profile_reads_kind_and_part_from_hlo():
  from axk.bench import profile
  hlo = """HloModule m

%fused_dot (p0: f32[4,8], p1: f32[8,2]) -> f32[4,2] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %p1 = f32[8,2]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,2]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_add (p0: f32[4,2]) -> f32[4,2] {
  %p0 = f32[4,2]{1,0} parameter(0)
  ROOT %add.2 = f32[4,2]{1,0} add(%p0, %p0)
}

ENTRY %main (a: f32[4,8], b: f32[8,2]) -> f32[4,2] {
  %a = f32[4,8]{1,0} parameter(0)
  %b = f32[8,2]{1,0} parameter(1)
  %ynn_fusion.7 = f32[4,2]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_dot, metadata={op_name="jit(_train_step)/transpose(jvp(Model))/bert.encode/encoder/layer_3/intermediate/dot_general"}
  ROOT %add_fusion = f32[4,2]{1,0} fusion(%ynn_fusion.7), kind=kLoop, calls=%fused_add, metadata={op_name="jit(_train_step)/add"}
}
"""
  bodies, lines = profile.computations(hlo)
  assert profile.kind(lines["ynn_fusion.7"], bodies) == "matmul"
  assert profile.kind(lines["add_fusion"], bodies) == "element-wise"
  assert profile.part(lines["ynn_fusion.7"]) == "backward layer/intermediate"
  assert profile.part(lines["add_fusion"]) == "update (optimizer, clipping)"
  assert profile.part('x, metadata={op_name="jit(s)/jvp(Model)/fusion/ffn_in/dot_general"}'
                      ) == "forward fusion"


def test_profile_of_a_gpu_trace_counts_device_kernels_by_instruction():
  """A GPU trace as the profiler writes it: host events (not counted), kernels on the
  device named by their HLO instruction (`hlo_op`), a cuBLAS call (matmul) and cuDNN's fused
  attention (attention); 2 steps traced, so each instruction's time is halved."""
  from axk.bench import profile
  hlo = """HloModule m

ENTRY %main (a: bf16[4,8], b: bf16[8,2]) -> bf16[4,2] {
  %a = bf16[4,8]{1,0} parameter(0)
  %b = bf16[8,2]{1,0} parameter(1)
  %custom-call.3 = (bf16[4,2]{1,0}, s8[0]{0}) custom-call(%a, %b), custom_call_target="__cublas$lt$matmul", metadata={op_name="jit(s)/jvp(Model)/bert.encode/encoder/layer_0/intermediate/dot_general"}
  %fmha.1 = (bf16[4,2]{1,0}, u8[0]{0}) custom-call(%a, %b), custom_call_target="__cudnn$fmhaScaleBiasSoftmaxBackward", metadata={op_name="jit(s)/transpose(jvp(Model))/fusion/attention/dot_product_attention"}
  ROOT %input_scatter_fusion = bf16[2,768]{1,0} scatter(%a, %b, %b), metadata={op_name="jit(s)/transpose(jvp(Model))/bert/embeddings/token_type_embeddings/scatter-add"}
}
"""
  trace = {"traceEvents": [
      {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
      {"ph": "M", "name": "process_name", "pid": 7, "args": {"name": "/host:CPU"}},
      {"ph": "X", "pid": 7, "name": "custom-call.3", "dur": 5000.0},  # host side: left out
      {"ph": "X", "pid": 1, "name": "sm90_xmma_gemm_bf16", "dur": 300.0,
       "args": {"hlo_op": "custom-call.3"}},
      {"ph": "X", "pid": 1, "name": "sm90_xmma_gemm_bf16", "dur": 100.0,
       "args": {"hlo_op": "custom-call.3"}},
      {"ph": "X", "pid": 1, "name": "cudnn_sdpa_bprop", "dur": 200.0,
       "args": {"hlo_op": "fmha.1"}},
      {"ph": "X", "pid": 1, "name": "input_scatter_fusion", "dur": 1600.0,
       "args": {"hlo_op": "input_scatter_fusion"}}]}
  out = profile.summarize(trace, hlo, steps=2)
  kinds = {r["name"]: r["ms"] for r in out["by_kind"]}
  assert kinds == pytest.approx({"scatter": 0.8, "matmul": 0.2, "attention": 0.1})
  parts = {r["name"]: r["ms"] for r in out["by_part"]}
  assert parts == pytest.approx({"backward embeddings": 0.8, "forward layer/intermediate": 0.2,
                                 "backward fusion": 0.1})
  assert out["ops_ms"] == pytest.approx(1.1)
  assert [r["op"] for r in out["top"]] == ["input_scatter_fusion", "custom-call.3", "fmha.1"]


def test_train_step_benchmark_end_to_end(tmp_path):
  """A tiny ITH step against PyTorch eager, each in its own process: the row has both sides,
  the ratio of their medians, axk's compile times and the machine's state."""
  from axk.bench import train_step
  out = tmp_path / "ith.json"
  train_step.main(["--model=ith", "--size=tiny", "--configs=paper", "--steps=1", "--rounds=2",
                   "--no-compile", "--allow-busy", f"--out={out}"])
  payload = json.loads(out.read_text())
  row, = payload["rows"]
  assert row["ratio_vs_torch_eager"] == pytest.approx(
      row["axk_steps_per_s"] / row["torch_eager_steps_per_s"])
  assert row["axk_compile_train_s"] > 0 and row["axk_compile_eval_s"] > 0
  assert len(row["axk_timing"]["values_s"]) == 2 and "busy" in row and "other_cores" in row
  assert payload["machine"]["cpu"]["model"]


def test_results_table_is_generated_from_the_json_files():
  from axk.bench import tables
  tables.main(["--check"])  # docs/results.md's table is what the committed JSON gives.


def test_results_table_cells(tmp_path):
  from axk.bench import tables
  payload = {"benchmark": "train_step",
             "machine": {"cpus": 2, "commit": "0123456789abcdef",
                         "cpu": {"model": "Some CPU", "vector": "avx2"}},
             "rows": [{"model": "ith", "size": "minilm", "batch": 32, "length": 64,
                       "dtype": "float32", "rounds": 3, "steps": 3,
                       "axk_steps_per_s": 1.5, "axk_spread": 0.1,
                       "torch_eager_steps_per_s": 1.0, "torch_eager_spread": 0.04,
                       "ratio_vs_torch_eager": 1.5, "ratio_vs_torch_eager_rounds": [1.4, 1.6],
                       "busy": False, "other_cores": 0.01, "load_before": [0.1, 0, 0]}]}
  line, = tables.rows_of("x.json", payload)
  cells = [c.strip() for c in line.split("|")[1:-1]]
  assert cells[2] == "1.500 steps/s ±5%" and cells[3] == "PyTorch eager 1.000 steps/s ±2%"
  assert cells[4] == "**1.50** (1.40-1.60)"
  assert cells[5] == "Some CPU, 2 cores, avx2; others 0.01 cores; load 0.10; `0123456789`"
  payload["rows"][0]["busy"] = True
  assert "~~**1.50** (1.40-1.60)~~ busy" in tables.rows_of("x.json", payload)[0]
  gpu = {"benchmark": "decoder", "machine": {"cpus": 16, "cpu": {"model": "Xeon"}},
         "rows": [{"model": "llama3-8b", "batch": 32, "length": 128, "dtype": "bfloat16",
                   "rounds": 3, "steps": 5, "device": "NVIDIA H200", "axk_compile_s": 8.34,
                   "axk_tokens_per_s": 38540.4, "axk_spread": 0.02, "axk_mfu": 0.5876,
                   "torch_attention": "sdpa", "torch_eager_tokens_per_s": 32949.0,
                   "torch_eager_spread": 0.0, "torch_eager_mfu": 0.502,
                   "ratio_vs_torch_eager": 1.1697, "ratio_vs_torch_eager_rounds": [1.13, 1.18],
                   "busy": False}]}
  line, = tables.rows_of("g.json", gpu)
  cells = [c.strip() for c in line.split("|")[1:-1]]
  assert cells[1] == "llama3-8b, 32 x 128 tokens, bfloat16, 3 rounds of 5 calls"
  assert cells[2] == "38540 tokens/s ±1%, MFU 58.8%; compile 8.3 s"
  assert cells[3] == "transformers eager (sdpa attention) 32949 tokens/s ±0%, MFU 50.2%"
  assert cells[4] == "**1.17** (1.13-1.18)" and cells[5] == "NVIDIA H200 (Xeon, 16 cores)"


def test_mark_counts_the_waiting_sides_cpu():
  """A turn during which the waiting sides used more CPU than allowed marks the row busy,
  even on an otherwise quiet machine."""
  quiet = {"busy": False, "other_cores": 0.0, "max_other_cores": 0.2,
           "load_before": [0.1, 0.1, 0.1], "load_after": [0.2, 0.1, 0.1]}
  calm = {"a": {"waiting_sides_cores": 0.01}, "b": {"waiting_sides_cores": 0.05}}
  rows = [{}]
  common.mark(rows, quiet, calm)
  assert rows[0]["busy"] is False and rows[0]["waiting_sides_cores"] == 0.05
  common.mark(rows, quiet, {**calm, "b": {"waiting_sides_cores": 0.5}})
  assert rows[0]["busy"] is True and rows[0]["waiting_sides_cores"] == 0.5


def test_flop_count_of_a_matrix_product_by_hand():
  """`common.flops` reads XLA's count from the lowered function: 2 m k n for [m, k] @ [k, n],
  and the same from the compiled one on a CPU."""
  import jax
  import jax.numpy as jnp
  f = jax.jit(lambda a, b: a @ b)
  lowered = f.lower(jnp.ones((8, 32)), jnp.ones((32, 16)))
  assert common.flops(lowered) == 2 * 8 * 32 * 16
  assert common.flops(lowered.compile()) == 2 * 8 * 32 * 16


def _decoder_matmul_flops(hf: dict, batch: int, length: int) -> int:
  """Forward FLOPs of a Llama's matrix products, by hand: per token and layer the q, k, v, o
  projections and the gated MLP, q k^T and p v over all `length` keys; the LM head."""
  h, i, layers = hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"]
  q, kv = hf["num_attention_heads"] * hf["head_dim"], hf["num_key_value_heads"] * hf["head_dim"]
  per_layer = 2 * (h * q + 2 * h * kv + q * h + 3 * h * i) + 2 * 2 * length * q
  return batch * length * (layers * per_layer + 2 * h * hf["vocab_size"])


def test_suite_runs_every_entry_and_reports_a_failed_one(tmp_path, monkeypatch, capsys):
  """One entry fails (an unknown model), the next still runs: a decoder scoring benchmark
  end to end, its sides in their own processes; the exit code counts the failure. The row's
  tokens/s is batch x length over the median, its ratio the ratio of the medians, and its
  FLOP count is within 25% above the matrix products counted by hand."""
  from axk.bench import decoder, suite
  monkeypatch.setitem(suite.ENTRIES, "test", {
      "bad": ("decoder", ["--models=nope"], 120),
      "good": ("decoder", ["--models=tiny", "--batch=2", "--length=8", "--steps=1",
                           "--rounds=2", "--no-compile"], 300)})
  with pytest.raises(SystemExit) as exit_:
    suite.main(["--preset=test", f"--out-dir={tmp_path}", "--allow-busy"])
  assert exit_.value.code == 1
  summary = capsys.readouterr().out.splitlines()[-2:]
  assert summary[0].split()[:2] == ["bad", "FAILED"] and summary[1].split()[:2] == ["good", "ok"]
  assert "no model nope" in (tmp_path / "bad.log").read_text()
  row, = json.loads((tmp_path / "good.json").read_text())["rows"]
  for side in ("axk", "torch_eager"):
    assert row[f"{side}_tokens_per_s"] == pytest.approx(2 * 8 / row[f"{side}_timing"]["median_s"])
  assert row["ratio_vs_torch_eager"] == pytest.approx(
      row["axk_tokens_per_s"] / row["torch_eager_tokens_per_s"])
  by_hand = _decoder_matmul_flops(decoder.MODELS["tiny"], 2, 8)
  assert by_hand <= row["flops_per_call"] <= 1.25 * by_hand


def test_suite_stops_a_silent_entry_at_its_limit(tmp_path):
  """An entry that prints nothing and never ends (it waits on an event nobody sets) is
  stopped at its limit, with the process group it started, and reported as failed."""
  import time
  from axk.bench import suite
  hang = [sys.executable, "-c", "import threading; threading.Event().wait()"]
  t0 = time.perf_counter()
  result = suite.run_entry("hang", hang, 2.0, str(tmp_path))
  assert time.perf_counter() - t0 < 20
  assert not result["ok"] and result["rc"] == "stopped at 2 s"


def test_glue_scale_writes_a_readable_task_and_counts_padding_by_hand(tmp_path):
  import numpy as np  # pylint: disable=g-import-not-at-top

  from axk.bench import glue_scale
  from axk.data import glue
  glue_scale.write_pairs(str(tmp_path), 50)
  rows = glue.read_split(str(tmp_path), "mnli", "train")
  assert len(rows) == 50 and all(r.text_a and r.text_b and r.label in (0, 1, 2) for r in rows)
  assert glue.read_split(str(tmp_path), "mnli", "test_matched")[0].label is None
  # Two batches of 2 x 4 tokens: 3 + 1 real, then 4 + 4 real: 4 padding tokens of 16.
  batches = [{"attention_mask": np.array([[1, 1, 1, 0], [1, 0, 0, 0]])},
             {"attention_mask": np.ones((2, 4), int)}]
  assert glue_scale.padding(batches) == pytest.approx(4 / 16)


def test_generation_window_benchmark_tiny(tmp_path):
  """The tiny Stable Audio pipeline, full window against the clip's: the DiT's FLOPs as the
  counter gives them equal the count by hand, the clip's latent length is the hand-computed
  one, and both windows give the clip's samples."""
  from axk.bench import generation_window
  out = tmp_path / "generation_window.json"
  generation_window.main(["--scale=tiny", "--seconds=0.25", "--steps=2", "--rounds=1",
                          "--allow-busy", f"--out={out}"])
  payload = json.loads(out.read_text())
  full, clip = payload["rows"]
  # 0.25 s at 16 kHz with 64 samples per latent frame: ceil(4000 / 64) = 63 of 125 frames.
  assert (full["window"], full["latent_frames"]) == ("full", 125)
  assert (clip["window"], clip["latent_frames"]) == ("clip", 63)
  for row in (full, clip):
    assert row["samples"] == 4000 and row["dit_calls"] == 2 and row["dit_batch"] == 2
    assert row["denoiser_flops_per_step"] == row["denoiser_flops_per_step_by_hand"] > 0
    assert len(row["call_timing"]["values_s"]) == 1 and "busy" in row
  assert payload["denoiser_flops_ratio_full_over_clip"] > 1
  assert payload["wall_ratio_full_over_clip"] > 0 and payload["machine"]["cpu"]["model"]
