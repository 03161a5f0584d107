"""Eight fake CPU devices for sharding tests; must run before JAX is imported."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ith_smoke(tmp_path_factory):
  """The main command's offline chain, run once: `configs/ith.py:smoke` from the raw sample
  CSVs (span detector, features by generation and retrieval, ITH per task). Returns its
  workdir; other tests reuse its stages (`stages/span`, `stages/features`)."""
  workdir = tmp_path_factory.mktemp("ith_smoke") / "run"
  # data.cache_dir reaches both stages (their configs share the data fields).
  cache = tmp_path_factory.mktemp("data_cache")
  proc = subprocess.run([sys.executable, "-m", "axk.main", "--config=configs/ith.py:smoke",
                         f"--workdir={workdir}", f"--config.data.cache_dir={cache}"], cwd=ROOT,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return workdir


@pytest.fixture(scope="session")
def audiobert_smoke(ith_smoke, tmp_path_factory):
  """`configs/audiobert.py:smoke` trained once, in this process, on the ITH chain's span
  predictions and retrieval features. Returns (config, workdir)."""
  from axk.runs import masked_word
  from configs import audiobert as audiobert_config
  config = audiobert_config.get_config("smoke")
  config.features.dir = str(ith_smoke / "stages" / "features" / "features_retrieval")
  config.spans.predictions = str(ith_smoke / "stages" / "span" / "predictions")
  workdir = tmp_path_factory.mktemp("audiobert_smoke") / "run"
  masked_word.run(config, str(workdir))
  return config, workdir


@pytest.fixture(scope="module")
def torch_one_thread():
  """Tiny PyTorch models are all per-op overhead; a second thread only waits on the first."""
  import torch
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)
