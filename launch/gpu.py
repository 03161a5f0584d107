#!/usr/bin/env python3
"""GPU machines for axk: install JAX for CUDA, run on one host or several.

    python launch/gpu.py [--dry-run] install [--cuda=13]
    python launch/gpu.py [--dry-run] run --config=configs/span.py --workdir=DIR [overrides]

One host: one process sees all its GPUs (or those of --gpus) and the mesh spans them; no
distributed runtime is involved. Several hosts, one process each:
  - on every host, the same command with --coordinator=HOST0:PORT --num_processes=N and its
    own --process_id=i (0 on HOST0);
  - or from one machine, --hosts=HOST0,HOST1,... starts them all over ssh (the checkout and
    its virtual environment at the same path on every host, or --remote_dir/--remote_python);
  - or under SLURM, `srun python launch/gpu.py run --distributed ...` (JAX reads SLURM's
    variables).
The workdir must be the same folder for all hosts (a shared filesystem): every process
writes its part of each checkpoint and process 0 writes the other files. Unknown flags of
`run` of the form --config.* (e.g. --config.train.batch_size=64), and anything after `--`,
go to axk.main. --hosts may also come from AXK_GPU_HOSTS.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import launchlib  # noqa: E402  (next to this script, which is not in a package)

DEFAULT_PORT = 8476


def install(args, run: launchlib.Runner) -> None:
  jax_version = args.jax_version or launchlib.pins()["jax"]
  extra = f"cuda{args.cuda}" + ("-local" if args.local_cuda else "")
  pip = [os.path.join(args.venv, "bin", "pip"), "install"]
  run([args.python, "-m", "venv", args.venv])
  run([*pip, "-r", os.path.join(launchlib.ROOT, "requirements.txt")])
  # After the requirements, which pin CPU jax: the CUDA plugin of the same version.
  run([*pip, "-U", f"jax[{extra}]=={jax_version}"])
  run([os.path.join(args.venv, "bin", "python"), "-c", "import jax; print(jax.devices())"])


def axk_argv(args, extra: list[str]) -> list[str]:
  return ["-m", "axk.main", f"--config={args.config}", f"--workdir={args.workdir}", *extra]


def run_axk(args, extra: list[str], run: launchlib.Runner) -> None:
  env = {"CUDA_VISIBLE_DEVICES": args.gpus} if args.gpus else {}
  if not args.hosts:
    dist = []
    if args.distributed:
      dist = ["--distributed"]
    elif args.coordinator:
      dist = [f"--coordinator={args.coordinator}", f"--num_processes={args.num_processes}",
              f"--process_id={args.process_id}"]
    run([args.python, *axk_argv(args, extra), *dist], env=env, cwd=launchlib.ROOT)
    return
  hosts = [h for h in args.hosts.split(",") if h]
  coordinator = args.coordinator or f"{hosts[0]}:{args.port}"
  remote_dir = launchlib.remote_path(args.remote_dir or launchlib.ROOT, "--remote_dir")
  python = launchlib.remote_path(args.remote_python or os.path.join(remote_dir, ".venv", "bin",
                                                                    "python"), "--remote_python")
  prefix = "env " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + " " if env else ""
  commands = []
  for i, host in enumerate(hosts):
    argv = [*axk_argv(args, extra), f"--coordinator={coordinator}",
            f"--num_processes={len(hosts)}", f"--process_id={i}"]
    script = (f"set -euo pipefail; cd {remote_dir}; {prefix}{python} "
              + " ".join(launchlib.remote_arg(a) for a in argv))
    # bash whatever the login shell is; ssh hands its arguments to that shell as one line.
    commands.append([args.ssh, *args.ssh_flag, host, f"bash -c {shlex.quote(script)}"])
  run.parallel(commands)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="launch/gpu.py", description=__doc__.split("\n\n")[0],
                              epilog=__doc__.split("\n\n", 2)[2],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  launchlib.add_flag(p, "dry_run", action="store_true",
                     help="Print the commands instead of running them.")
  sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
  # Also after the command (`gpu.py run --dry-run ...`), without overriding an earlier one.
  dry_run = dict(action="store_true", default=argparse.SUPPRESS,
                 help="Print the commands instead of running them.")

  i = sub.add_parser("install", help="A virtual environment with requirements.txt and "
                                     "JAX for CUDA.")
  launchlib.add_flag(i, "cuda", choices=("12", "13"), default="13",
                     help="CUDA major version of the jax extra (default 13).")
  launchlib.add_flag(i, "local_cuda", action="store_true",
                     help="Use the machine's CUDA instead of pip's (jax[cudaN-local]).")
  launchlib.add_flag(i, "venv", default=os.path.join(launchlib.ROOT, ".venv"))
  launchlib.add_flag(i, "python", default="python3", help="Interpreter for the venv (>= 3.11).")
  launchlib.add_flag(i, "jax_version", help="Default: the jax pin of requirements.txt.")
  launchlib.add_flag(i, "dry_run", **dry_run)

  r = sub.add_parser("run", help="python -m axk.main on this host or on --hosts.")
  launchlib.add_flag(r, "dry_run", **dry_run)
  launchlib.add_flag(r, "config", required=True, help="e.g. configs/span.py")
  launchlib.add_flag(r, "workdir", required=True)
  launchlib.add_flag(r, "gpus", help="CUDA_VISIBLE_DEVICES, e.g. 0,1 (default: all).")
  launchlib.add_flag(r, "python", default=sys.executable, help="Interpreter (this one).")
  launchlib.add_flag(r, "distributed", action="store_true",
                     help="Let JAX detect the cluster (SLURM, ...).")
  launchlib.add_flag(r, "coordinator", help="HOST:PORT of process 0.")
  launchlib.add_flag(r, "num_processes", type=int, help="With --coordinator.")
  launchlib.add_flag(r, "process_id", type=int, help="With --coordinator.")
  launchlib.add_flag(r, "hosts", default=launchlib.env_default("AXK_GPU_HOSTS"),
                     help="HOST0,HOST1,...: start one process on each over ssh "
                          "(env AXK_GPU_HOSTS).")
  launchlib.add_flag(r, "port", type=int, default=DEFAULT_PORT,
                     help=f"With --hosts: coordinator port on HOST0 (default {DEFAULT_PORT}).")
  launchlib.add_flag(r, "remote_dir", help="With --hosts: the checkout there (default: this "
                                           "checkout's path).")
  launchlib.add_flag(r, "remote_python", help="With --hosts: default REMOTE_DIR/.venv/bin/python.")
  launchlib.add_flag(r, "ssh", default="ssh", help="With --hosts: the ssh binary.")
  launchlib.add_flag(r, "ssh_flag", action="append", default=[],
                     help="With --hosts: extra ssh flag (repeatable).")
  return p


def main(argv: list[str] | None = None) -> int:
  p = parser()
  args, extra = launchlib.parse(p, argv)
  run = launchlib.Runner(args.dry_run)
  if args.command == "install":
    install(args, run)
    return 0
  if args.hosts:
    if args.distributed or args.process_id is not None or args.num_processes is not None:
      p.error("--hosts sets the process ids itself; leave out --distributed, --num_processes "
              "and --process_id.")
  elif args.coordinator and (args.num_processes is None or args.process_id is None):
    p.error("--coordinator needs --num_processes and --process_id.")
  elif args.coordinator and args.distributed:
    p.error("--distributed and --coordinator exclude each other.")
  elif (args.num_processes is not None or args.process_id is not None) and not args.coordinator:
    p.error("--num_processes and --process_id need --coordinator.")
  run_axk(args, extra, run)
  return 0


if __name__ == "__main__":
  sys.exit(launchlib.run_main(main))
