"""The benchmarks import from an installed axk, which does not ship the `configs` package."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

_CHILD = """
import sys
sys.modules["configs"] = None  # Any `import configs...` now fails.
import axk.bench.bert, axk.bench.epoch, axk.bench.features, axk.bench.generation
import axk.bench.loop, axk.bench.train_step, axk.bench.audio_tokens
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
