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
