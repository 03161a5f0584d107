"""Eight fake CPU devices for sharding tests; must run before JAX is imported.

Tiers (markers registered in pyproject.toml): `e2e` for tests that run a whole chain or a
complete training run (train, evaluate, export, results), or start `axk.main`, `axk.predict`
or `axk.demo` as a process; `browser` for tests that drive Chromium (skipped with the reason
when Chromium, chromedriver or selenium is missing); `slow` for tests over about 20 s on 2
cores. `pytest -m "not e2e and not browser"` is the quick tier.
"""

import os

# The programs are tiny: compiling them is most of a test's time, and XLA compiles a third
# faster without LLVM's optimisation passes (processes the tests start inherit the flags).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0"
                           " --xla_llvm_disable_expensive_passes=true").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import functools
import importlib.util
import pathlib
import shutil
import tempfile

# JAX's persistent compilation cache, for this session and the processes its tests start:
# the runs compile the same tiny programs again and again (a run on a warm cache takes a
# quarter of the time). Set JAX_COMPILATION_CACHE_DIR to keep one between sessions.
_SESSION_JAX_CACHE = ""
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _SESSION_JAX_CACHE = tempfile.mkdtemp(prefix="axk-tests-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_JAX_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@functools.cache
def chromium() -> tuple[str, str]:
  """(Chromium binary, chromedriver) from the OS packages; ("", why) when one is missing."""
  binary = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             "/usr/bin/chromium") if p and os.path.isfile(p)), "")
  driver = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver")
                 if p and os.path.isfile(p)), "")
  if not binary:
    return "", "no Chromium (install Debian's chromium and chromium-driver)"
  if not driver:
    return "", f"no chromedriver beside {binary} (install Debian's chromium-driver)"
  if importlib.util.find_spec("selenium") is None:
    return "", "selenium is not installed"
  return binary, driver


def pytest_unconfigure(config):
  if _SESSION_JAX_CACHE:
    shutil.rmtree(_SESSION_JAX_CACHE, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
  """Browser tests skip, before their fixtures are built, where there is no browser."""
  if item.get_closest_marker("browser") is not None:
    binary, why = chromium()
    if not binary:
      pytest.skip(f"browser test: {why}")


@pytest.fixture(scope="session", autouse=True)
def orbax_writes_each_array_once():
  """Orbax splits the writing of a replicated array among its replicas: on the eight fake
  devices, eight slices, each a small program compiled for its shape, which is most of a tiny
  checkpoint's time. In this process one replica writes each array instead (the same values
  in the files; restoring is unchanged); the runs the tests start as processes keep orbax's
  default."""
  import logging
  import jax
  import orbax.checkpoint as ocp
  absl = logging.getLogger("absl")
  level = absl.level
  absl.setLevel(logging.ERROR)  # Orbax logs the replaced handler as a warning.
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
  finally:
    absl.setLevel(level)


@pytest.fixture(scope="session")
def ith_smoke(tmp_path_factory):
  """The main command's offline chain, run once in this process as `python -m axk.main
  --config=configs/ith.py:smoke` runs it: the config's entry (span detector and features as
  stage processes, then ITH per task), then the exports' model cards. Returns its workdir;
  other tests reuse its stages (`stages/span`, `stages/features`)."""
  import importlib
  from axk.publish import push
  from axk.utils import workdir as workdir_lib
  from configs import ith as ith_config
  config = ith_config.get_config("smoke")
  # data.cache_dir reaches both stages (their configs share the data fields).
  config.data.cache_dir = str(tmp_path_factory.mktemp("data_cache"))
  workdir = workdir_lib.prepare(str(tmp_path_factory.mktemp("ith_smoke") / "run"))
  module, _, function = config.entry.partition(":")
  assert getattr(importlib.import_module(module), function or "run")(config, workdir)
  push.finish_run(config, workdir)
  return pathlib.Path(workdir)


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


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, str]:
  """Paths of tiny random CLAP, AST and Stable Audio models, saved once for the session with
  `save_pretrained`; the feature tests load them through the pipeline's own code."""
  from axk.features import tiny
  root = tmp_path_factory.mktemp("tiny_models")
  return {
      "clap": tiny.build_clap(str(root / "clap")),
      "ast": tiny.build_ast(str(root / "ast")),
      "generator": tiny.build_stable_audio(str(root / "stable_audio")),
  }


@pytest.fixture
def waits(monkeypatch):
  """What the code under test waits on, recorded and refused: `time.sleep` on the test's
  thread (seconds) and network connections and name lookups (addresses). "Fails fast" is
  checked as "waited on nothing", which a busy machine cannot turn into a failure."""
  import socket
  import threading
  import time
  seen = []
  test_thread, real_sleep = threading.get_ident(), time.sleep

  def sleep(seconds):
    if threading.get_ident() != test_thread:
      return real_sleep(seconds)
    seen.append(("sleep", seconds))

  def refused(what):
    def record(*args, **kwargs):
      seen.append((what, args[1] if what == "connect" else args[0]))
      raise OSError(f"{what}: no network in this test")
    return record

  monkeypatch.setattr(time, "sleep", sleep)
  monkeypatch.setattr(socket.socket, "connect", refused("connect"))
  monkeypatch.setattr(socket.socket, "connect_ex", refused("connect"))
  monkeypatch.setattr(socket, "getaddrinfo", refused("getaddrinfo"))
  return seen


@pytest.fixture(scope="module")
def torch_one_thread():
  """Tiny PyTorch models are all per-op overhead; a second thread only waits on the first."""
  import torch
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def assert_same_features(a: dict, b: dict) -> None:
  """Two `shards.load_features` results hold the same examples and span fields."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from axk.features import shards  # pylint: disable=g-import-not-at-top
  assert a.keys() == b.keys()
  for example_id in a:
    for x, y in zip(a[example_id]["spans"], b[example_id]["spans"], strict=True):
      for key in shards.SPAN_FIELDS:
        if isinstance(x[key], np.ndarray):
          np.testing.assert_array_equal(x[key], y[key])
        else:
          assert x[key] == y[key], key
