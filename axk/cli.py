"""`axk`, the installed command: one subcommand per entry point of the package.

    axk train --config=configs/ith.py:smoke --workdir=/tmp/ith_smoke   # python -m axk.main
    axk predict --model=/tmp/ith_smoke --text="A [MASK] barks."         # python -m axk.predict
    axk demo --model=/tmp/ith_smoke                                    # python -m axk.demo
    axk report /tmp/ith_smoke                                          # python -m axk.report
    axk push --workdir=/tmp/ith_smoke --repo_id=org/name               # python -m axk.push

`pip install -e .` installs it. A subcommand is exactly its module run as `python -m`: the
same flags, `axk <subcommand> --help` for them. Config paths such as `configs/ith.py` are
found from any folder (`axk.main` looks beside the package when the path is not there).
"""

from __future__ import annotations

import runpy
import sys

# subcommand -> (module, what it does)
COMMANDS = {
    "train": ("axk.main", "run a config: span detector, features, AudioBERT, ITH, paper tables"),
    "predict": ("axk.predict", "answer sentences with a finished run or an export"),
    "demo": ("axk.demo", "the web demo of a finished run, on 127.0.0.1"),
    "report": ("axk.report", "rebuild a run's report.html"),
    "push": ("axk.push", "upload a run's exports and model cards to the Hugging Face Hub"),
}


def usage() -> str:
  width = max(map(len, COMMANDS))
  lines = ["usage: axk <command> [flags]   (axk <command> --help lists its flags)", "",
           "commands:"]
  lines += [f"  {name:<{width}}  {what}  (python -m {module})"
            for name, (module, what) in COMMANDS.items()]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(usage())
    return 0
  name, rest = argv[0], argv[1:]
  if name not in COMMANDS:
    print(f"error: axk {name}: no such command; commands: {', '.join(COMMANDS)} "
          "(axk --help).", file=sys.stderr)
    return 2
  module = COMMANDS[name][0]
  sys.argv = [f"axk {name}", *rest]
  runpy.run_module(module, run_name="__main__", alter_sys=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
