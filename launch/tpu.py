#!/usr/bin/env python3
"""Cloud TPU VMs and pod slices for axk: create, install, copy data, run on every worker.

    python launch/tpu.py --name=NAME --zone=ZONE [--project=P] COMMAND [options]

Commands (each prints what it runs; with --dry-run it only prints, and needs no gcloud):
  create   gcloud compute tpus tpu-vm create, runtime version picked from the accelerator
  setup    copy this checkout (or clone --git) to every worker, make a Python >= 3.11
           virtual environment there, pip install requirements.txt and jax[tpu]
  mount    mount a Cloud Storage bucket with gcsfuse at ~/gcs/BUCKET on every worker
  data     copy AuditoryBench (a local folder or a gs:// prefix) to every worker
  run      python -m axk.main --distributed on all workers at once (one process per worker)
  logs     the log of a background run on one worker
  stop     SIGTERM to a background run on every worker: axk saves a checkpoint and exits
  delete   gcloud compute tpus tpu-vm delete

The TPU name, zone, project and bucket come from flags or from AXK_TPU_NAME, AXK_ZONE,
AXK_PROJECT and AXK_BUCKET; without a project, gcloud's configured project is used. In
paths on the workers (--workdir, --config.data.dir=..., --dest) `~/` means the worker's home.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import launchlib  # noqa: E402  (next to this script, which is not in a package)

# Runtime versions for JAX on each TPU generation (cloud.google.com/tpu/docs/runtimes).
RUNTIMES = (("v6e", "v2-alpha-tpuv6e"), ("v5p", "v2-alpha-tpuv5"),
            ("v5litepod", "v2-alpha-tpuv5-lite"), ("v5e", "v2-alpha-tpuv5-lite"))
DEFAULT_RUNTIME = "tpu-ubuntu2204-base"  # v4 and older.
# The tarball of this checkout leaves out what is local to this machine.
EXCLUDES = (".git", ".venv", "venv", "workdirs", "__pycache__", ".pytest_cache", "*.egg-info",
            ".whl", ".gl")
LOG, PIDFILE = "~/axk-run.log", "~/axk-run.pid"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
GCSFUSE_INSTALL = (
    'echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] '
    'https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main" '
    "| sudo tee /etc/apt/sources.list.d/gcsfuse.list > /dev/null; "
    "curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg "
    "| sudo tee /usr/share/keyrings/cloud.google.asc > /dev/null; "
    "sudo apt-get update -q; sudo apt-get install -y -q gcsfuse")


def runtime_for(accelerator_type: str) -> str:
  for prefix, version in RUNTIMES:
    if accelerator_type.startswith(prefix):
      return version
  return DEFAULT_RUNTIME


class Tpu:
  """gcloud commands for one TPU VM (all its workers)."""

  def __init__(self, args: argparse.Namespace, run: launchlib.Runner):
    self.args, self.run = args, run

  def _scope(self) -> list[str]:
    out = [f"--zone={self.args.zone}"]
    if self.args.project:
      out.append(f"--project={self.args.project}")
    return out

  def gcloud(self, *words: str) -> list[str]:
    return [self.args.gcloud, "compute", "tpus", "tpu-vm", *words]

  def ssh(self, command: str, worker: str = "all") -> None:
    """Runs `command` (bash, with `set -euo pipefail`) on `worker` (all: every worker at once)."""
    self.run(self.gcloud("ssh", self.args.name, *self._scope(), f"--worker={worker}",
                         *self.args.ssh_flag, f"--command=set -euo pipefail; {command}"))

  def scp(self, local: str, remote: str, recurse: bool = False) -> None:
    # scp paths are relative to the remote home already; "~/" is left to no shell.
    remote = remote[2:] if remote.startswith("~/") else remote
    self.run(self.gcloud("scp", *(["--recurse"] if recurse else []), local,
                         f"{self.args.name}:{remote}", *self._scope(), "--worker=all",
                         *self.args.ssh_flag))

  # -- commands ----------------------------------------------------------------------------
  def create(self) -> None:
    a = self.args
    extra = ["--spot"] if a.spot else []
    self.run(self.gcloud("create", a.name, *self._scope(),
                         f"--accelerator-type={a.accelerator_type}",
                         f"--version={a.version or runtime_for(a.accelerator_type)}", *extra,
                         *a.create_flag))

  def setup(self) -> None:
    a = self.args
    checkout = launchlib.remote_path(a.remote_dir, "--remote_dir")
    venv = launchlib.remote_path(a.venv, "--venv")
    pins = launchlib.pins()
    jax_version = a.jax_version or pins["jax"]
    steps = []
    if a.git:
      # FETCH_HEAD: the latest of a branch, or a tag or commit, whichever `--ref` names.
      steps.append(f"[ -d {checkout}/.git ] || git clone -q {shlex.quote(a.git)} {checkout}; "
                   f"git -C {checkout} fetch -q origin {shlex.quote(a.ref)}; "
                   f"git -C {checkout} checkout -q --detach FETCH_HEAD")
    else:
      tarball = os.path.join(tempfile.gettempdir(), f"axk-src-{a.name}.tar.gz")
      self.run(["tar", "-czf", tarball, *[f"--exclude={e}" for e in EXCLUDES], "-C",
                a.source, "."])
      self.scp(tarball, "~/axk-src.tar.gz")
      # A fresh tree each time, so that files deleted here disappear there too; runs kept in
      # its workdirs/ folder move over.
      steps.append(f"rm -rf {checkout}.new; mkdir -p {checkout}.new; "
                   f"tar -xzf ~/axk-src.tar.gz -C {checkout}.new; "
                   f"if [ -d {checkout}/workdirs ]; then "
                   f"mv {checkout}/workdirs {checkout}.new/; fi; "
                   f"rm -rf {checkout}; mv {checkout}.new {checkout}")
    # TPU VM images ship Python 3.10; jax 0.10 needs >= 3.11: uv provides the interpreter.
    # (--break-system-packages only where the image's pip refuses --user installs.)
    steps.append("{ python3 -m pip install --user -q --upgrade uv || "
                 "python3 -m pip install --user -q --upgrade --break-system-packages uv; }")
    steps.append(f"[ -x {venv}/bin/python ] || ~/.local/bin/uv venv -q --seed "
                 f"--python {shlex.quote(a.python)} {venv}")
    pip = f"{venv}/bin/pip install -q"
    if "torch" in pins:  # No GPU on a TPU VM: the CPU build, not the CUDA one from PyPI.
      steps.append(f"{pip} torch=={pins['torch']} --index-url {CPU_TORCH_INDEX}")
    steps.append(f"{pip} -r {checkout}/requirements.txt")
    steps.append(f'{pip} -U "jax[tpu]=={jax_version}"')
    steps.append(f'cd {checkout} && {venv}/bin/python -c "import axk, jax; print(jax.__version__)"')
    self.ssh("; ".join(steps))
    if a.bucket:
      self.mount()

  def mount(self) -> None:
    a = self.args
    bucket = a.bucket.removeprefix("gs://").strip("/")
    if not re.match(r"^[a-z0-9][a-z0-9._-]*$", bucket):
      raise SystemExit(f"error: --bucket={a.bucket!r} is not a bucket name.")
    point = f"~/gcs/{bucket}"
    # Directory renames (orbax's finished checkpoints, the HF export) need --rename-dir-limit.
    self.ssh(f"command -v gcsfuse > /dev/null || {{ {GCSFUSE_INSTALL}; }}; mkdir -p {point}; "
             f"mountpoint -q {point} || gcsfuse --implicit-dirs --rename-dir-limit=200000 "
             f"{bucket} {point}")

  def data(self) -> None:
    a = self.args
    dest = launchlib.remote_path(a.dest, "--dest")
    if a.src.startswith("gs://"):
      self.ssh(f"mkdir -p {dest}; gcloud storage rsync --recursive {shlex.quote(a.src)} {dest}")
    else:
      if not os.path.isdir(a.src):
        raise SystemExit(f"error: --src={a.src}: no such directory.")
      # scp creates `dest` as the copy of `src` only where `dest` does not exist yet.
      self.ssh(f"rm -rf {dest}; mkdir -p $(dirname {dest})")
      self.scp(os.path.abspath(a.src), dest, recurse=True)

  def run_axk(self, extra: list[str]) -> None:
    a = self.args
    checkout = launchlib.remote_path(a.remote_dir, "--remote_dir")
    venv = launchlib.remote_path(a.venv, "--venv")
    argv = [f"--config={a.config}", f"--workdir={a.workdir}"]
    if a.distributed:
      argv.append("--distributed")  # JAX finds the slice's workers and their coordinator.
    argv += extra
    env = "env " + "".join(f"{shlex.quote(e)} " for e in a.env) if a.env else ""
    main = (f"{env}{venv}/bin/python -m axk.main "
            + " ".join(launchlib.remote_arg(x) for x in argv))
    if a.background:
      # Detached from the ssh session; `logs` reads the log, `stop` signals the pid.
      command = (f"cd {checkout}; setsid nohup {main} > {LOG} 2>&1 < /dev/null & "
                 f"echo $! > {PIDFILE}; echo started: $(hostname) pid $(cat {PIDFILE})")
    else:
      command = f"cd {checkout}; {main}"
    self.ssh(command, worker=a.worker)

  def logs(self) -> None:
    a = self.args
    self.ssh(f"tail -n {a.lines}{' -f' if a.follow else ''} {LOG}", worker=a.worker)

  def stop(self) -> None:
    self.ssh(f"if [ -f {PIDFILE} ]; then kill -TERM $(cat {PIDFILE}) 2> /dev/null || true; "
             f"rm -f {PIDFILE}; fi", worker=self.args.worker)

  def delete(self) -> None:
    self.run(self.gcloud("delete", self.args.name, *self._scope(), "--quiet"))


def add_common(p: argparse.ArgumentParser, top: bool) -> None:
  """Flags of every command, accepted before or after it (`tpu.py run --dry-run ...`); on the
  commands they have no defaults, so that they only override what was given before."""
  env = launchlib.env_default

  def flag(name, default=None, **kwargs):
    launchlib.add_flag(p, name, default=default if top else argparse.SUPPRESS, **kwargs)

  flag("name", env("AXK_TPU_NAME"), help="TPU VM name (env AXK_TPU_NAME).")
  flag("zone", env("AXK_ZONE"), help="e.g. us-central2-b (env AXK_ZONE).")
  flag("project", env("AXK_PROJECT"),
       help="Google Cloud project (env AXK_PROJECT; default: gcloud's).")
  flag("dry_run", False, action="store_true", help="Print the commands instead of running them.")
  flag("gcloud", "gcloud", help="The gcloud binary.")
  flag("ssh_flag", [], action="append",
       help="Extra flag for tpu-vm ssh/scp, e.g. --ssh_flag=--tunnel-through-iap (repeatable).")
  flag("remote_dir", "~/axk", help="The checkout on the workers.")
  flag("venv", "~/axk-venv", help="The virtual environment there.")


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="launch/tpu.py", description=__doc__.split("\n\n")[0],
                              epilog=__doc__.split("\n\n", 2)[2],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  env = launchlib.env_default
  add_common(p, top=True)
  sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

  c = sub.add_parser("create", help="Create the TPU VM or pod slice.")
  launchlib.add_flag(c, "accelerator_type", required=True,
                     help="v4-8, v4-32, v5litepod-8, v5p-8, v6e-8, ...")
  launchlib.add_flag(c, "version", help="Runtime version (default: by generation, "
                                        f"{DEFAULT_RUNTIME} for v4 and older).")
  launchlib.add_flag(c, "spot", action="store_true", help="Spot capacity.")
  launchlib.add_flag(c, "create_flag", action="append", default=[],
                     help="Extra flag for `tpu-vm create`, e.g. --create_flag=--network=N.")

  s = sub.add_parser("setup", help="Install axk and JAX for TPU on every worker.")
  launchlib.add_flag(s, "source", default=launchlib.ROOT,
                     help="Local checkout to copy (default: this one).")
  launchlib.add_flag(s, "git", help="Clone this repository URL instead of copying --source.")
  launchlib.add_flag(s, "ref", default="main", help="With --git: branch, tag or commit.")
  launchlib.add_flag(s, "python", default="3.11", help="Python version of the venv (>= 3.11).")
  launchlib.add_flag(s, "jax_version", help="Default: the jax pin of requirements.txt.")
  launchlib.add_flag(s, "bucket", default=env("AXK_BUCKET"),
                     help="Also mount this bucket at ~/gcs/BUCKET (env AXK_BUCKET).")

  m = sub.add_parser("mount", help="Mount a bucket with gcsfuse at ~/gcs/BUCKET everywhere.")
  launchlib.add_flag(m, "bucket", default=env("AXK_BUCKET"), help="Bucket (env AXK_BUCKET).")

  d = sub.add_parser("data", help="Copy AuditoryBench to every worker.")
  launchlib.add_flag(d, "src", required=True, help="Local folder or gs:// prefix.")
  launchlib.add_flag(d, "dest", default="~/auditorybench", help="Folder on the workers.")

  r = sub.add_parser("run", help="Run axk.main on the workers; --config.* overrides (e.g. "
                                 "--config.train.batch_size=64) and anything after `--` go "
                                 "to axk.main.")
  launchlib.add_flag(r, "config", required=True, help="e.g. configs/span.py, configs/span.py:smoke")
  launchlib.add_flag(r, "workdir", required=True,
                     help="Same folder for all workers: ~/gcs/BUCKET/... for a pod slice.")
  launchlib.add_flag(r, "env", action="append", default=[], help="KEY=VALUE (repeatable).")
  launchlib.add_flag(r, "worker", default="all", help="all (default) or a worker index.")
  launchlib.add_flag(r, "background", action="store_true",
                     help=f"Detach; output in {LOG} on each worker (see logs, stop).")
  r.add_argument("--no_distributed", "--no-distributed", dest="distributed",
                 action="store_false", help="Leave out --distributed.")

  lg = sub.add_parser("logs", help=f"Show {LOG} of one worker.")
  launchlib.add_flag(lg, "worker", default="0")
  launchlib.add_flag(lg, "lines", type=int, default=50)
  launchlib.add_flag(lg, "follow", action="store_true")

  st = sub.add_parser("stop", help="SIGTERM to the background run (checkpoint, then exit).")
  launchlib.add_flag(st, "worker", default="all")

  sub.add_parser("delete", help="Delete the TPU VM.")
  for command in sub.choices.values():
    add_common(command, top=False)
  return p


def main(argv: list[str] | None = None) -> int:
  p = parser()
  args, extra = launchlib.parse(p, argv)
  launchlib.require(args, p, name="AXK_TPU_NAME", zone="AXK_ZONE")
  if args.command in ("mount",) and not args.bucket:
    p.error("--bucket is required (or set AXK_BUCKET).")
  for e in getattr(args, "env", []):
    if "=" not in e:
      p.error(f"--env={e}: expected KEY=VALUE.")
  tpu = Tpu(args, launchlib.Runner(args.dry_run))
  if args.command == "run":
    tpu.run_axk(extra)
  else:
    getattr(tpu, args.command)()
  return 0


if __name__ == "__main__":
  sys.exit(launchlib.run_main(main))
