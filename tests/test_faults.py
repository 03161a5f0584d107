"""Faults a user meets, injected one by one, on the span detector's `:smoke` config.

Each fault ends either in one line starting "error:" (no traceback, before any work), or in a
recovery whose final parameters and results.json equal those of an uninterrupted run
(`reference`). Damage is real: files removed, truncated or overwritten on disk, and a run
killed with SIGKILL while orbax writes a checkpoint.
"""

import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from axk.data import auditorybench as ab
from axk.data import encode as enc
from axk.runs import span as span_lib
from axk.runs import stages
from axk.train import checkpoint as ckpt_lib
from axk.utils import workdir as workdir_lib
from configs import span as span_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Evaluations at 4, 8, 12, 16 and checkpoints every 2 of the 19 steps; all of them kept, so a
# resumed run has several older steps to fall back on.
TRAIN = dict(eval_every=4, checkpoint_every=2, keep=10)
OVERRIDES = [f"--config.train.{k}={v}" for k, v in TRAIN.items()]


def smoke_config(**train):
  c = span_config.get_config("smoke")
  c.train.update({**TRAIN, **train})
  return c


def _main(workdir, *args, timeout=180):
  return subprocess.run([sys.executable, "-m", "axk.main", "--config=configs/span.py:smoke",
                         f"--workdir={workdir}", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)


def _params(workdir):
  return load_file(os.path.join(workdir, "export", "model.safetensors"))


def _results(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def _started_from(workdir):
  """Where the last invocation started, from results.md's note."""
  with open(os.path.join(workdir, "results.md")) as f:
    return f.read().split("started from ", 1)[1].split(".\n", 1)[0]


def assert_same_run(workdir, reference):
  assert _results(workdir) == _results(reference)
  ours, theirs = _params(workdir), _params(reference)
  assert set(ours) == set(theirs)
  for k in theirs:
    np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)


def assert_one_line_error(proc, message):
  assert proc.returncode == stages.SETUP_EXIT, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and message in lines[0], proc.stderr[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  span_lib.run(smoke_config(), workdir)
  return workdir


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
  """The same run stopped after step 12 (checkpoints 2, 4, ..., 12)."""
  workdir = str(tmp_path_factory.mktemp("partial"))
  assert span_lib.run(smoke_config(stop_at_step=12), workdir) == {}
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps == [2, 4, 6, 8, 10, 12]
  return workdir


def _biggest_file(folder):
  paths = [os.path.join(r, f) for r, _, names in os.walk(folder) for f in names]
  return max(paths, key=os.path.getsize)


def _flip_bytes(path, at=200, n=16):
  with open(path, "r+b") as f:
    f.seek(at)
    data = f.read(n)
    f.seek(at)
    f.write(bytes(b ^ 0xFF for b in data))


def _damage_all_kinds(checkpoints):
  """Step 12 empty, 10 without orbax's _METADATA, 8 truncated with its checksum file gone
  (so orbax itself must refuse it), 6 with flipped bytes in a data chunk (which orbax alone
  restores without an error)."""
  shutil.rmtree(os.path.join(checkpoints, "12"))
  os.mkdir(os.path.join(checkpoints, "12"))
  os.remove(os.path.join(checkpoints, "10", "default", "_METADATA"))
  step8 = os.path.join(checkpoints, "8")
  os.remove(os.path.join(step8, ckpt_lib.CHECKSUMS))
  big = _biggest_file(step8)
  os.truncate(big, os.path.getsize(big) // 2)
  _flip_bytes(_biggest_file(os.path.join(checkpoints, "6")))


@pytest.mark.e2e  # Complete runs: the reference, one stopped at step 12, the resumed copy.
@pytest.mark.slow
def test_damaged_latest_checkpoints_are_moved_aside_and_the_run_resumes(
    reference, partial, tmp_path, caplog):
  workdir = str(tmp_path / "run")
  shutil.copytree(partial, workdir)
  checkpoints = os.path.join(workdir, "checkpoints")
  _damage_all_kinds(checkpoints)
  with caplog.at_level(logging.WARNING):
    span_lib.run(smoke_config(), workdir)
  warnings = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
  assert len(warnings) == 4, warnings
  for step, reason, text in [(12, "empty", "empty"), (10, "missing", "_METADATA is missing"),
                             (8, "unreadable", "orbax cannot restore it"),
                             (6, "corrupted", "does not match its saved SHA-256")]:
    moved = os.path.join(workdir, ckpt_lib.DAMAGED, f"{step}-{reason}")
    assert os.path.isdir(moved), os.listdir(os.path.join(workdir, ckpt_lib.DAMAGED))
    assert any(f"step {step} " in w and text in w and moved in w for w in warnings), warnings
  # The run's own start, and the checkpoint this invocation resumed from.
  assert _started_from(workdir) == "random initialisation; resumed from checkpoint step 4"
  assert_same_run(workdir, reference)


@pytest.mark.e2e
def test_no_checkpoint_restores_one_line_naming_the_folder(partial, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(partial, workdir)
  for step in os.listdir(workdir / "checkpoints"):
    shutil.rmtree(workdir / "checkpoints" / step)
    os.mkdir(workdir / "checkpoints" / step)
  proc = _main(workdir, *OVERRIDES)
  assert_one_line_error(proc, f"No checkpoint in {workdir / 'checkpoints'} restores")
  assert "Remove that folder" in proc.stderr
  assert not os.path.exists(workdir / ckpt_lib.DAMAGED)  # Nothing moved: nothing to fall to.


@pytest.mark.e2e  # A run resumed from another, stopped one (`partial`).
def test_resume_from_another_run_skips_its_damaged_checkpoints(partial, tmp_path, caplog):
  other = tmp_path / "other"
  shutil.copytree(partial, other)
  _flip_bytes(_biggest_file(other / "checkpoints" / "12"))
  config = smoke_config()
  config.train.epochs = 0  # Evaluation of the resumed parameters only.
  config.resume = str(other)
  with caplog.at_level(logging.WARNING):
    span_lib.run(config, str(tmp_path / "run"))
  assert _started_from(tmp_path / "run") == f"--config.resume={other} (step 10)"
  assert any("step 12: " in r.getMessage() for r in caplog.records)
  assert os.path.isdir(other / "checkpoints" / "12")  # Another run's folder is left alone.


# The main command, killed by itself with SIGKILL while orbax saves step 6: the step's files
# are written into `6.orbax-checkpoint-tmp`, the rename that commits them is never made.
# (An event in the run, not a timer: the kill lands in the same place on a busy machine.)
_KILLED_SAVING_STEP_6 = """
import os, runpy, signal
import orbax.checkpoint as ocp
temporary = ocp.path.atomicity.AtomicRenameTemporaryPath
commit = temporary.finalize
async def finalize(self, *args, **kwargs):
  if self.get_final().name == "6":
    os.kill(os.getpid(), signal.SIGKILL)
  return await commit(self, *args, **kwargs)
temporary.finalize = finalize
runpy.run_module("axk.main", run_name="__main__", alter_sys=True)
"""


@pytest.mark.e2e
@pytest.mark.slow  # Two processes of the main command after the in-process reference.
def test_kill_during_checkpoint_save_then_rerun_ends_identical(reference, tmp_path):
  """SIGKILL while orbax writes step 6 (orbax writes a step into `<step>.orbax-checkpoint-tmp`
  and renames it when complete), then the same command again: it takes over the dead run's
  lock and ends with the uninterrupted run's results."""
  workdir = tmp_path / "run"
  args = ["--config=configs/span.py:smoke", f"--workdir={workdir}", *OVERRIDES]
  killed = subprocess.run([sys.executable, "-c", _KILLED_SAVING_STEP_6, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  saved = sorted(os.listdir(workdir / "checkpoints"))
  assert "6.orbax-checkpoint-tmp" in saved, saved  # Killed while saving step 6 ...
  assert "6" not in saved, saved  # ... before the step was complete.
  assert (workdir / workdir_lib.LOCK).exists()  # The dead run's lock stays behind.
  rerun = subprocess.run([sys.executable, "-m", "axk.main", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "Taking over the lock" in rerun.stderr
  assert "Starting at step 4 of 19 from checkpoint step 4" in rerun.stderr
  assert not (workdir / workdir_lib.LOCK).exists()  # Released at the end.
  assert_same_run(str(workdir), reference)


@pytest.mark.e2e
def test_second_run_on_a_workdir_is_refused_with_one_line(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  with workdir_lib.WorkdirLock(str(workdir)):  # Held by this process, alive.
    proc = _main(workdir)
  assert_one_line_error(proc, f"--workdir={workdir} is in use by pid {os.getpid()}")
  assert not (workdir / "checkpoints").exists()
  assert not (workdir / workdir_lib.LOCK).exists()  # The holder released it.


def test_stale_lock_is_taken_over_and_a_live_one_is_not(tmp_path, caplog):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  lock = tmp_path / workdir_lib.LOCK
  lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                              "start_time": "1", "started": "then", "command": "python x"}))
  with caplog.at_level(logging.WARNING):
    held = workdir_lib.WorkdirLock(str(tmp_path)).acquire()
  assert "Taking over the lock" in caplog.text
  assert json.loads(lock.read_text())["pid"] == os.getpid()
  # Another host's lock is never stale from here.
  held.release()
  lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then",
                              "command": "python x"}))
  with pytest.raises(workdir_lib.WorkdirError, match="in use by pid 1 on host elsewhere"):
    workdir_lib.WorkdirLock(str(tmp_path)).acquire()


def test_stage_child_dies_with_its_parent(tmp_path):
  """A parent running a stage is killed with SIGKILL; its child must not outlive it."""
  pid_file = tmp_path / "child.pid"
  # The child arms the death signal as `python -m axk.main` does, first thing.
  # It sleeps far longer than the wait for its death below, so only the signal ends it.
  child = ("import os, time; from axk.runs import stages; stages.follow_parent(); "
           f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(900)")
  parent = subprocess.Popen([sys.executable, "-c", (
      "import sys; from axk.runs import stages; "
      f"stages._run([sys.executable, '-c', {child!r}], 'test', '.')")], cwd=ROOT)
  deadline = time.monotonic() + 600  # Against a hang: two Python starts on a busy machine.
  while not pid_file.exists() or not pid_file.read_text():
    assert time.monotonic() < deadline and parent.poll() is None
    time.sleep(0.05)
  child_pid = int(pid_file.read_text())
  parent.kill()
  parent.wait()
  deadline = time.monotonic() + 120  # The signal is sent as the parent dies.
  while time.monotonic() < deadline:
    try:
      os.kill(child_pid, 0)
    except ProcessLookupError:
      return
    time.sleep(0.05)
  os.kill(child_pid, signal.SIGKILL)
  pytest.fail("the stage child outlived its killed parent")


@pytest.mark.e2e
def test_stage_messages_say_rerun_only_where_a_rerun_resumes(tmp_path):
  with pytest.raises(stages.StageError, match="rerun the same command to resume") as killed:
    stages._run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), 9)"], "x",
                str(tmp_path))
  assert "SIGKILL" in str(killed.value)
  with pytest.raises(stages.StageError, match="refused its input") as refused:
    stages._run([sys.executable, "-m", "axk.main", "--config=configs/span.py:nosuch",
                 f"--workdir={tmp_path}/w"], "x", str(tmp_path))
  assert "resume" not in str(refused.value)


@pytest.mark.e2e
@pytest.mark.parametrize("args, message", [
    (["--config.train.batchsize=8"],
     "--config.train.batchsize=8: the config has no field 'batchsize' (did you mean "
     "'batch_size'?)"),
    (["--config.train.batch_size=12"],
     "--config.train.batch_size=12: must divide by the 8 devices the batch is split over"),
    (["--config.mesh.shape=(('data',16),('model',1))"], "needs 16 devices, 8 are available"),
])
def test_setup_faults_are_one_line(args, message, tmp_path):
  proc = _main(tmp_path / "w", *args)
  assert_one_line_error(proc, message)
  assert not (tmp_path / "w" / "checkpoints").exists()


@pytest.mark.e2e
def test_unknown_features_variant_is_one_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "axk.main", "--config=configs/features.py:smok",
                         f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert_one_line_error(proc, "unknown features variant 'smok'")


@pytest.mark.e2e
def test_workdir_that_is_a_file_is_one_line(tmp_path):
  (tmp_path / "file").write_text("")
  assert_one_line_error(_main(tmp_path / "file"), "is a file, not a folder")


@pytest.mark.e2e
def test_read_only_workdir_is_one_line():
  # Root writes into read-only folders: as root the run goes as user nobody. The folder is
  # made in /tmp (pytest's tmp_path is private to its user).
  folder = tempfile.mkdtemp(prefix="axk-read-only-")
  os.chmod(folder, 0o555)
  command = [sys.executable, "-m", "axk.main", "--config=configs/span.py:smoke",
             f"--workdir={folder}"]
  if os.geteuid() == 0:
    if not shutil.which("setpriv"):
      pytest.skip("running as root without setpriv")
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
  try:
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, f"--workdir={folder}: cannot write there (Permission denied)")
  finally:
    os.chmod(folder, 0o755)
    shutil.rmtree(folder)


@pytest.mark.e2e
def test_show_config_lists_fields_with_comments():
  proc = subprocess.run([sys.executable, "-m", "axk.main", "--config=configs/span.py:smoke",
                         "--config.train.batch_size=4", "--show_config"], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert "train.batch_size = 4  # Global batch (all devices and processes together)." in lines
  assert any(l.startswith("data.dir = 'sample'  # AuditoryBench folder") for l in lines)
  helped = subprocess.run([sys.executable, "-m", "axk.main", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert "--show_config" in helped.stdout and "configs/ith.py" in helped.stdout


def test_animal_file_without_options_loads_for_the_paper_protocol(tmp_path):
  folder = tmp_path / "animal_sound_recognition"
  folder.mkdir()
  (folder / "wiki.csv").write_text(
      "animal,description,sentence\n"
      "cat,meow,\"A [MASK] says meow.\"\n"
      "dog,barking,\"The barking came from a [MASK].\"\n")
  split = ab.load_split(tmp_path, "animal", "wiki")
  assert [(e.answer, e.options, e.label, e.spans[0].text) for e in split.examples] == [
      ("cat", (), -1, "meow"), ("dog", (), -1, "barking")]
  tokenizer = enc.load_tokenizer(span_config.get_config("smoke").model.init)
  assert len(enc.encode_candidates(split.examples, tokenizer, max_length=32)["input_ids"]) == 0
  # One option column alone is a damaged file, not a file without options.
  (folder / "wiki.csv").write_text("animal,description,sentence,A\ncat,meow,A [MASK] meows.,cat\n")
  with pytest.raises(ab.DataError, match="missing column 'Answer'"):
    ab.load_split(tmp_path, "animal", "wiki")
