"""Shared by the launch scripts: running or printing commands, remote quoting, version pins.

The scripts build every command as an argument list. `Runner` either prints it (dry run, one
shell-quoted line per command, ready to paste) or prints and runs it, stopping at the first
failure. Nothing here needs gcloud, JAX or axk.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from typing import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Paths on remote machines that the scripts put into shell commands unquoted, so that `~`
# expands there; anything else is rejected rather than quoted.
_SAFE_PATH = re.compile(r"^[~A-Za-z0-9_./-]+$")


class Runner:
  """Runs commands, or only prints them with `dry_run`."""

  def __init__(self, dry_run: bool, out=sys.stdout):
    self.dry_run, self.out = dry_run, out

  def __call__(self, argv: Sequence[str], env: dict[str, str] | None = None,
               cwd: str | None = None) -> None:
    """Runs `argv` with `env` added to the environment, in `cwd`; printed as shell."""
    line = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()),
                     shlex.join(argv)])
    if cwd:
      line = f"cd {shlex.quote(cwd)} && {line}"
    if self.dry_run:
      print(line, file=self.out, flush=True)
      return
    print(f"+ {line}", file=sys.stderr, flush=True)
    subprocess.run(list(argv), check=True, env={**os.environ, **(env or {})}, cwd=cwd)

  def parallel(self, commands: Sequence[Sequence[str]]) -> None:
    """Starts all `commands` at once (one per host) and waits for all of them."""
    many = len(commands) > 1
    for argv in commands:
      line = shlex.join(argv) + (" &" if many else "")
      if self.dry_run:
        print(line, file=self.out, flush=True)
      else:
        print(f"+ {line}", file=sys.stderr, flush=True)
    if self.dry_run:
      if many:
        print("wait", file=self.out, flush=True)
      return
    procs = [subprocess.Popen(list(argv)) for argv in commands]
    codes = [p.wait() for p in procs]
    for code, argv in zip(codes, commands):
      if code:
        raise subprocess.CalledProcessError(code, list(argv))


def run_main(main, argv=None) -> int:
  """Runs a script's `main`; a failed command ends it with one line and that command's
  exit status instead of a traceback."""
  try:
    return main(argv)
  except subprocess.CalledProcessError as e:
    cmd = e.cmd if isinstance(e.cmd, str) else shlex.join(e.cmd)
    print(f"error: exit status {e.returncode}: {cmd}", file=sys.stderr)
    return e.returncode or 1


def remote_arg(arg: str) -> str:
  """Quotes one argument for a remote shell. A leading `~/`, alone or after `--flag=`,
  becomes `"$HOME"/` (bash expands `~` only at the start of a word), so that it means the
  remote home: `--workdir=~/runs/a` -> `--workdir="$HOME"/runs/a`."""
  match = re.match(r"^(--[^=]+=)?~/(.*)$", arg, re.S)
  if not match:
    return shlex.quote(arg)
  flag, rest = match.group(1) or "", match.group(2)
  return (shlex.quote(flag) if flag else "") + '"$HOME"/' + (shlex.quote(rest) if rest else "")


def remote_path(path: str, what: str) -> str:
  """A remote path that may go unquoted into a command (so `~` expands remotely)."""
  if not _SAFE_PATH.match(path):
    raise SystemExit(f"error: {what}={path!r}: use letters, digits and ~ _ . / - only.")
  return path


def pins(requirements: str = os.path.join(ROOT, "requirements.txt")) -> dict[str, str]:
  """Pinned versions (`name==version`) from requirements.txt, by lower-case name."""
  out = {}
  with open(requirements) as f:
    for line in f:
      match = re.match(r"^\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;#]+)", line)
      if match:
        out[match.group(1).lower()] = match.group(3)
  return out


def add_flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
  """`--name_with_underscores`, also accepted as `--name-with-hyphens`."""
  spellings = [f"--{name}"]
  if "_" in name:
    spellings.append("--" + name.replace("_", "-"))
  parser.add_argument(*spellings, dest=name, **kwargs)


def split_passthrough(argv: Sequence[str] | None) -> tuple[list[str], list[str]]:
  """Command-line arguments before and after a lone `--` (passed on to axk.main as-is)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--" in argv:
    i = argv.index("--")
    return argv[:i], argv[i + 1:]
  return argv, []


def parse(parser: argparse.ArgumentParser,
          argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
  """(parsed flags, arguments for axk.main): `--config.*` overrides and everything after a
  lone `--`, which only the `run` subcommand takes."""
  argv, passthrough = split_passthrough(argv)
  args, extra = parser.parse_known_args(argv)
  if args.command != "run" and (extra or passthrough):
    parser.error(f"unrecognized arguments: {' '.join(extra + passthrough)}")
  check_overrides(parser, extra)
  return args, extra + passthrough


def check_overrides(parser: argparse.ArgumentParser, extra: Sequence[str]) -> None:
  """Flags that the script does not know must be config overrides: a typo in one of the
  script's own flags (`--dry-rn`) must not reach axk.main and start a real run."""
  bad = [a for a in extra if not a.startswith("--config.")]
  if bad:
    parser.error(f"unrecognized arguments: {' '.join(bad)} (other axk.main flags than "
                 "--config.* go after `--`)")


def env_default(var: str, fallback: str | None = None) -> str | None:
  return os.environ.get(var) or fallback


def require(args: argparse.Namespace, parser: argparse.ArgumentParser,
            **flag_to_env: str) -> None:
  """Fails with the usage line when a flag is neither given nor set in its variable."""
  for flag, env in flag_to_env.items():
    if not getattr(args, flag):
      parser.error(f"--{flag} is required (or set {env}).")
