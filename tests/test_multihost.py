"""Two JAX processes on this machine train like one process with the same devices.

The children run `python -m axk.main` exactly as on a cluster: JAX's distributed runtime on a
localhost coordinator, two fake CPU devices per process, gloo for cross-process collectives.
The two-process run gets SIGTERM on process 0 alone during training (process 0 sends it to
itself as it fetches the batch of step 2: an event in the run, not a timer): both processes
must stop after the same step and write one checkpoint together. A second invocation restores it
on both and finishes; the result is compared with one process on four devices that trains
straight through: the same global batches, so the same parameters.

The model is ITH's `:smoke` (pitch only), on the span predictions and generated features of
the session's smoke chain (`ith_smoke` in conftest.py); the test reads the workdir's exports,
`results.json`, `metrics.jsonl` and checkpoint step folders.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/ith.py:smoke"
# Two epochs of the pitch smoke data: 6 steps of the global batch of 8.
OVERRIDES = ["--config.train.epochs=2", "--config.data.tasks=('pitch',)"]
STEPS = 6
EXPORTS = ("export/base/model.safetensors", "export/fusion.safetensors")
# For all children together, against a hang; on expiry they are killed and the test fails.
TIMEOUT_S = 900

# `python -m axk.main ARGS` whose process sends itself SIGTERM as it fetches the batch of step 2,
# after the signal handler is in place and steps 0 and 1 have started.
_SIGTERM_AT_STEP_2 = """
import os, runpy, signal
from axk.train import data
fetch = data.TrainBatches.__getitem__
def getitem(self, step):
  if step == 2:
    os.kill(os.getpid(), signal.SIGTERM)
  return fetch(self, step)
data.TrainBatches.__getitem__ = getitem
runpy.run_module("axk.main", run_name="__main__", alter_sys=True)
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  """The child's environment: `devices` fake CPU devices, gloo collectives, offline, and the
  session's compilation cache (conftest.py; the resumed pair reuses the first pair's
  executables)."""
  env = dict(os.environ)
  # conftest.py gives this process 8 devices through XLA_FLAGS; a child sets its own count.
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  env.update(JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
  return env


class _Children:
  """Child processes, each in its own process group, killed if still running at the end."""

  def __init__(self, logdir: pathlib.Path, inputs=()):
    self.logdir, self.procs, self.deadline = logdir, [], time.monotonic() + TIMEOUT_S
    self.inputs = list(inputs)  # Flags naming prepared span predictions and features.

  def start(self, name: str, args, devices: int):
    """Starts `python ARGS` in the repository root with `devices` fake devices."""
    log = open(self.logdir / f"{name}.log", "w")
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=_env(devices), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    self.procs.append((name, proc, log))
    return proc

  def train(self, name: str, workdir: str, devices: int, extra=(), main=("-m", "axk.main")):
    """The main command (or `main`, a stand-in for `-m axk.main`) on the smoke config."""
    return self.start(name, [*main, f"--config={CONFIG}", f"--workdir={workdir}", *OVERRIDES,
                             *self.inputs, *extra], devices)

  def output(self, name: str) -> str:
    return (self.logdir / f"{name}.log").read_text()

  def wait(self, procs):
    """Waits for `procs`; fails with their logs when one fails or time runs out."""
    for proc in procs:
      try:
        proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        self.kill()
        pytest.fail(f"Timed out after {TIMEOUT_S} s.\n{self.logs()}")
      if proc.returncode:
        self.kill()
        pytest.fail(f"A child exited with {proc.returncode}.\n{self.logs()}")

  def kill(self):
    for _, proc, _ in self.procs:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

  def logs(self) -> str:
    out = []
    for name, _, log in self.procs:
      log.flush()
      text = (self.logdir / f"{name}.log").read_text()
      out.append(f"--- {name} (last 3000 characters) ---\n{text[-3000:]}")
    return "\n".join(out)

  def close(self):
    self.kill()
    for _, _, log in self.procs:
      log.close()


@pytest.fixture
def children(tmp_path, request):
  inputs = []
  if "ith_smoke" in request.fixturenames:
    stages = request.getfixturevalue("ith_smoke") / "stages"
    inputs = [f"--config.features.dir={stages / 'features' / 'features'}",
              f"--config.spans.predictions={stages / 'span' / 'predictions'}"]
  c = _Children(tmp_path, inputs)
  yield c
  c.close()


def _pair(children, workdir: str, name: str, main0=("-m", "axk.main")):
  """Processes 0 and 1 of one job; process 0 runs `main0`."""
  port = _free_port()
  return [children.train(f"{name}_{i}", workdir, 2,
                         [f"--coordinator=localhost:{port}", "--num_processes=2",
                          f"--process_id={i}"], main=main0 if i == 0 else ("-m", "axk.main"))
          for i in range(2)]


# Each process feeds its rows of a global batch (`data.process_rows` from the batch sharding)
# and the assembled global array must be that batch, whatever the mesh layout: the data axis
# across processes (the default), within them (batch replicated over processes), or both.
# And a flag set on one process only (a signal) is seen by both (`loop._any_process`).
_LAYOUT_CHILD = """
import json, sys
import jax
import numpy as np
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from jax.experimental import multihost_utils
from axk.train import data, loop, sharding
rows = np.arange(8) * 10
out = {}
for shape in ((("data", -1), ("model", 1)), (("model", 2), ("data", 2)),
              (("data", 2), ("model", 2))):
  mesh = sharding.make_mesh(shape)
  batch_sh = sharding.batch_sharding(mesh, (("batch", "data"),))
  local = rows[data.process_rows(len(rows), batch_sh)]
  batch = sharding.global_batch({"x": local}, batch_sh)["x"]
  out[repr(shape)] = multihost_utils.process_allgather(batch, tiled=True).tolist()
out["any"] = [loop._any_process(jax.process_index() == 1), loop._any_process(False)]
print("LAYOUTS " + json.dumps(out))
"""


def test_process_rows_make_the_global_batch_and_processes_agree_on_stops(children):
  port = _free_port()
  procs = [children.start(f"layout_{i}", ["-c", _LAYOUT_CHILD, f"localhost:{port}", str(i)], 2)
           for i in range(2)]
  children.wait(procs)
  for i in range(2):
    line = [l for l in children.output(f"layout_{i}").splitlines() if l.startswith("LAYOUTS ")]
    layouts = json.loads(line[-1][len("LAYOUTS "):])
    assert layouts.pop("any") == [True, False], i
    assert len(layouts) == 3
    for shape, batch in layouts.items():
      assert batch == list(range(0, 80, 10)), (i, shape)


@pytest.mark.e2e
@pytest.mark.slow  # Five processes: the reference, a stopped pair, the resumed pair.
def test_two_processes_train_like_one(tmp_path, ith_smoke, children):
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  # The reference (one process, four devices) runs beside the first half of the pair.
  reference = children.train("one", one, 4)
  pair = _pair(children, two, "stop", main0=("-c", _SIGTERM_AT_STEP_2))
  children.wait(pair)
  steps = sorted(int(d) for d in os.listdir(os.path.join(two, "checkpoints")) if d.isdigit())
  assert len(steps) == 1 and 1 <= steps[0] < STEPS, steps
  assert "(SIGTERM); rerun" in children.output("stop_0")
  assert "(a signal to another process); rerun" in children.output("stop_1")
  assert not os.path.exists(os.path.join(two, "results.json"))
  children.wait(_pair(children, two, "resume"))
  children.wait([reference])

  for i in range(2):  # Both processes restored the checkpoint.
    assert (f"Starting at step {steps[0]} of {STEPS} from checkpoint"
            in children.output(f"resume_{i}"))
  for export in EXPORTS:
    expected, got = (load_file(os.path.join(d, export)) for d in (one, two))
    assert set(got) == set(expected)
    for k in expected:
      np.testing.assert_allclose(got[k], expected[k], atol=1e-5, err_msg=k)
  # Evaluation outputs gathered from both processes: the same metrics (from the same
  # predictions of parameters equal to ~1e-7).
  results = [json.load(open(os.path.join(d, "results.json"))) for d in (one, two)]
  assert results[1] == results[0]
  # Written by process 0 alone: each logged step once (the same steps as one process).
  lines = [[json.loads(l)["step"] for l in open(os.path.join(d, "metrics.jsonl"))]
           for d in (one, two)]
  assert lines[1] == lines[0]
