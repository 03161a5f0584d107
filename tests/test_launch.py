"""The launch scripts parse their flags and print (dry run) or run the right commands.

No gcloud and no GPU: dry runs only print; the end-to-end checks put a stand-in `gcloud` or
`ssh` on the command line that runs the remote command locally with bash, and a stand-in
Python that reports the arguments axk.main would have received.
"""

import json
import os
import pathlib
import shlex
import stat
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU, GPU = str(ROOT / "launch" / "tpu.py"), str(ROOT / "launch" / "gpu.py")
MESH = '--config.mesh.shape=(("data",4),("model",2))'  # Quotes and parentheses survive.


def launch(script, *args, env=None, check=True):
  """Runs a launch script with a clean AXK_* environment; returns the completed process."""
  base = {k: v for k, v in os.environ.items() if not k.startswith("AXK_")}
  proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                        env={**base, **(env or {})}, cwd=ROOT, timeout=60)
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc


def lines(proc):
  return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def remote_commands(proc):
  """The `--command=` of every `gcloud ... ssh` line of a dry run."""
  return [a[len("--command="):] for argv in lines(proc) if "ssh" in argv
          for a in argv if a.startswith("--command=")]


TPU_ENV = {"AXK_TPU_NAME": "axk-test", "AXK_ZONE": "us-central2-b"}


@pytest.mark.parametrize("script, args", [
    (TPU, []), (TPU, ["create"]), (TPU, ["setup"]), (TPU, ["mount"]), (TPU, ["data"]),
    (TPU, ["run"]), (TPU, ["logs"]), (TPU, ["stop"]), (TPU, ["delete"]),
    (GPU, []), (GPU, ["install"]), (GPU, ["run"]),
])
def test_help(script, args):
  proc = launch(script, *args, "--help")
  assert proc.stdout.startswith("usage:")


def test_tpu_needs_a_name_and_zone_from_flags_or_environment():
  proc = launch(TPU, "--dry-run", "delete", check=False)
  assert proc.returncode == 2 and "--name is required (or set AXK_TPU_NAME)" in proc.stderr
  proc = launch(TPU, "--dry-run", "--name=t", "delete", check=False)
  assert proc.returncode == 2 and "--zone is required (or set AXK_ZONE)" in proc.stderr
  flags = lines(launch(TPU, "--dry-run", "--name=t", "--zone=z", "--project=p", "delete"))
  assert flags == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "t", "--zone=z",
                    "--project=p", "--quiet"]]
  from_env = lines(launch(TPU, "--dry-run", "delete", env=TPU_ENV))
  assert from_env == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "axk-test",
                       "--zone=us-central2-b", "--quiet"]]  # No project: gcloud's own.


@pytest.mark.parametrize("accelerator, version", [
    ("v4-8", "tpu-ubuntu2204-base"), ("v4-32", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v5p-8", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"),
])
def test_tpu_create_picks_the_runtime(accelerator, version):
  (argv,) = lines(launch(TPU, "--dry-run", "create", f"--accelerator-type={accelerator}",
                         "--spot", env=TPU_ENV))
  assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "axk-test"]
  assert f"--accelerator-type={accelerator}" in argv and f"--version={version}" in argv
  assert "--spot" in argv


def test_tpu_setup_copies_the_checkout_and_installs_jax_for_tpu():
  proc = launch(TPU, "--dry-run", "--project=proj", "setup", "--bucket=gs://my-bucket",
                env=TPU_ENV)
  tar, scp, install, mount = lines(proc)
  assert tar[:2] == ["tar", "-czf"] and tar[-3:] == ["-C", str(ROOT), "."]
  assert "--exclude=.git" in tar and "--exclude=workdirs" in tar
  assert scp[4] == "scp" and scp[5] == tar[2] and "--worker=all" in scp
  assert "--project=proj" in scp
  command = remote_commands(proc)[0]
  assert command.startswith("set -euo pipefail;")
  assert "pip install -q -r ~/axk/requirements.txt" in command
  assert '"jax[tpu]==0.10.2"' in command  # After the requirements, the pinned version.
  assert command.index("requirements.txt") < command.index("jax[tpu]")
  assert "--python 3.11" in command
  assert "gcsfuse --implicit-dirs" in remote_commands(proc)[1]
  assert "my-bucket ~/gcs/my-bucket" in remote_commands(proc)[1]


def test_tpu_data_from_a_bucket_and_from_a_folder():
  (command,) = remote_commands(launch(TPU, "--dry-run", "data", "--src=gs://b/auditorybench",
                                      env=TPU_ENV))
  assert "gcloud storage rsync --recursive gs://b/auditorybench ~/auditorybench" in command
  proc = launch(TPU, "--dry-run", "data", "--src=axk/data/sample", "--dest=~/ab", env=TPU_ENV)
  ssh, scp = lines(proc)
  assert scp[4:8] == ["scp", "--recurse", str(ROOT / "axk/data/sample"), "axk-test:ab"]


def test_tpu_run_on_all_workers_with_distributed():
  proc = launch(TPU, "--dry-run", "run", "--config=configs/span.py",
                "--workdir=~/gcs/b/runs/span", MESH, "--background", env=TPU_ENV)
  ((command,),) = [remote_commands(proc)]
  assert "--worker=all" in lines(proc)[0]
  assert ("~/axk-venv/bin/python -m axk.main --config=configs/span.py "
          '--workdir="$HOME"/gcs/b/runs/span --distributed') in command
  assert "> ~/axk-run.log" in command and "~/axk-run.pid" in command


def test_tpu_remote_commands_are_valid_bash():
  runs = [["create", "--accelerator-type=v4-8"], ["setup"], ["setup", "--git=https://x/y.git"],
          ["mount", "--bucket=b"], ["data", "--src=gs://b/d"], ["data", "--src=axk/data/sample"],
          ["run", "--config=c.py", "--workdir=~/w", MESH, "--background", "--env=A=b c"],
          ["run", "--config=c.py", "--workdir=/w", "--no-distributed"],
          ["logs", "--follow"], ["stop"], ["delete"]]
  for args in runs:
    for command in remote_commands(launch(TPU, "--dry-run", *args, env=TPU_ENV)):
      check = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
      assert check.returncode == 0, (args, command, check.stderr)


def _stand_in(path: pathlib.Path, body: str) -> str:
  path.write_text(f"#!{sys.executable}\n{body}")
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return str(path)


# Prints the arguments it was started with, as axk.main would receive them: one line in one
# write, so that the lines of stand-ins running at once do not interleave.
_FAKE_PYTHON = """import json, os, sys
line = "ARGS " + json.dumps({"cwd": os.getcwd(), "argv": sys.argv[1:],
                             "env": os.environ.get("AXK_TEST_VALUE")})
os.write(1, (line + "\\n").encode())
"""


def _args_of(stdout):
  return [json.loads(l[5:]) for l in stdout.splitlines() if l.startswith("ARGS ")]


def test_tpu_run_end_to_end_with_a_stand_in_gcloud(tmp_path):
  gcloud = _stand_in(tmp_path / "gcloud", """import subprocess, sys
command = [a[len("--command="):] for a in sys.argv if a.startswith("--command=")]
sys.exit(subprocess.call(["bash", "-c", command[0]]))
""")
  checkout, venv = tmp_path / "axk", tmp_path / "venv"
  checkout.mkdir()
  (venv / "bin").mkdir(parents=True)
  _stand_in(venv / "bin" / "python", _FAKE_PYTHON)
  proc = launch(TPU, f"--gcloud={gcloud}", f"--remote-dir={checkout}", f"--venv={venv}", "run",
                "--config=configs/span.py:smoke", "--workdir=~/runs/a b", MESH,
                "--env=AXK_TEST_VALUE=x y", env={**TPU_ENV, "HOME": str(tmp_path)})
  (got,) = _args_of(proc.stdout)
  assert got["cwd"] == str(checkout) and got["env"] == "x y"
  assert got["argv"] == ["-m", "axk.main", "--config=configs/span.py:smoke",
                         f"--workdir={tmp_path}/runs/a b", "--distributed", MESH]


def test_gpu_install_uses_the_cuda_extra_after_the_requirements():
  cmds = lines(launch(GPU, "--dry-run", "install"))
  assert cmds[0][1:3] == ["-m", "venv"]
  assert cmds[1][-2:] == ["-r", str(ROOT / "requirements.txt")]
  assert cmds[2][-2:] == ["-U", "jax[cuda13]==0.10.2"]
  cmds = lines(launch(GPU, "--dry-run", "install", "--cuda=12", "--local-cuda"))
  assert cmds[2][-1] == "jax[cuda12-local]==0.10.2"


def test_gpu_run_one_host_and_one_node_of_several():
  (argv,) = lines(launch(GPU, "--dry-run", "run", "--config=configs/span.py", "--workdir=/w",
                         "--gpus=0,1", MESH))
  assert argv[:3] == ["cd", str(ROOT), "&&"]
  assert argv[3] == "CUDA_VISIBLE_DEVICES=0,1"
  assert argv[5:] == ["-m", "axk.main", "--config=configs/span.py", "--workdir=/w", MESH]
  (argv,) = lines(launch(GPU, "--dry-run", "run", "--config=c", "--workdir=/w",
                         "--coordinator=h0:1234", "--num_processes=2", "--process_id=1"))
  assert argv[-3:] == ["--coordinator=h0:1234", "--num_processes=2", "--process_id=1"]
  (argv,) = lines(launch(GPU, "--dry-run", "run", "--config=c", "--workdir=/w", "--distributed"))
  assert argv[-1] == "--distributed"


@pytest.mark.parametrize("args, message", [
    (["--coordinator=h:1"], "--coordinator needs --num_processes and --process_id"),
    (["--process_id=0"], "need --coordinator"),
    (["--hosts=a,b", "--process_id=0"], "--hosts sets the process ids itself"),
])
def test_gpu_run_rejects_inconsistent_flags(args, message):
  proc = launch(GPU, "--dry-run", "run", "--config=c", "--workdir=/w", *args, check=False)
  assert proc.returncode == 2 and message in proc.stderr


def test_gpu_hosts_end_to_end_with_a_stand_in_ssh(tmp_path):
  # Like ssh: drops the host, hands the rest to the (here local) login shell as one line.
  ssh = _stand_in(tmp_path / "ssh", """import subprocess, sys
sys.exit(subprocess.call(["sh", "-c", " ".join(sys.argv[2:])]))
""")
  python = _stand_in(tmp_path / "python", _FAKE_PYTHON)
  proc = launch(GPU, "run", "--config=configs/span.py", "--workdir=~/shared/run 1",
                "--hosts=gpu0,gpu1", "--port=9999", f"--ssh={ssh}", f"--remote-dir={tmp_path}",
                f"--remote-python={python}", MESH, env={"HOME": str(tmp_path)})
  got = sorted(_args_of(proc.stdout), key=lambda g: g["argv"][-1])
  assert [g["argv"][-1] for g in got] == ["--process_id=0", "--process_id=1"]
  for g in got:
    assert g["cwd"] == str(tmp_path)
    assert g["argv"][:6] == ["-m", "axk.main", "--config=configs/span.py",
                             f"--workdir={tmp_path}/shared/run 1", MESH,
                             "--coordinator=gpu0:9999"]
    assert g["argv"][6] == "--num_processes=2"


def test_a_failing_command_ends_the_script_with_one_line():
  proc = launch(TPU, "--gcloud=false", "delete", env=TPU_ENV, check=False)
  assert proc.returncode == 1
  assert proc.stderr.splitlines()[-1].startswith("error: exit status 1: false compute tpus")
  assert "Traceback" not in proc.stderr


def test_common_flags_after_the_command_and_overrides_only_as_config_flags():
  (argv,) = lines(launch(TPU, "delete", "--dry-run", "--name=late", env=TPU_ENV))
  assert argv[5] == "late"
  proc = launch(TPU, "run", "--dry-run", "--config=c.py", "--workdir=/w", "--config.seed=3",
                "--", "--verbosity=1", env=TPU_ENV)
  assert remote_commands(proc)[0].endswith("--distributed --config.seed=3 --verbosity=1")
  # A mistyped flag is an error, not an argument of a real run.
  for script, env in ((TPU, TPU_ENV), (GPU, {})):
    proc = launch(script, "run", "--dry-rn", "--config=c.py", "--workdir=/w", env=env,
                  check=False)
    assert proc.returncode == 2 and "unrecognized arguments: --dry-rn" in proc.stderr
    assert not proc.stdout
