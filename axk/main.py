"""axk's one entry point.

    python -m axk.main --config=configs/ith.py[:variant] --workdir=DIR [--config.x=y ...]

Every config field can be overridden with --config.<field>=<value>; list the fields, their
values and comments with

    python -m axk.main --config=configs/ith.py:smoke --show_config

and see what a run would do (its stages, models, rows, train steps), without running it, with

    python -m axk.main --config=configs/ith.py:smoke --workdir=DIR --dry_run

(--helpfull lists every flag of the libraries as well.)

It parses flags, imports the modules `config.plugins` names (they register methods and
benchmark tasks), checks every input of the run's whole chain (`axk.runs.preflight`: models,
data, database, workdir, disk; every problem on its own line, before any stage starts),
starts JAX's distributed runtime when the job has several processes, takes the workdir's
lock (one run per workdir) and hands the config to the function the config names in
`config.entry` ("module:function"). A fault in the command, config, data or workdir ends the
run with lines starting "error:" and exit status 3 (`SETUP_EXIT`).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import logging
import os
import re
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from axk import plugins
from axk.data.auditorybench import DataError
from axk.hf import CheckpointError
from axk.publish import push
from axk.hub import ModelNotAvailable
from axk.features.shards import FeaturesMismatch
from axk.runs import common as run_common
from axk.runs.common import ConfigError
from axk.runs import config_source
from axk.runs import preflight
from axk.runs.inputs import FeaturesError
from axk.runs import stages
from axk.runs.stages import REPO, SETUP_EXIT, StageError, follow_parent
from axk.train.checkpoint import CheckpointDamaged
from axk.train.sharding import MeshError
from axk.utils import jax_cache
from axk.utils import workdir as workdir_lib

# Errors that name a bad config value, path or data file; anything else keeps its traceback.
SETUP_ERRORS = (ConfigError, CheckpointError, DataError, FeaturesError, FeaturesMismatch,
                StageError, FileNotFoundError, CheckpointDamaged, MeshError,
                workdir_lib.WorkdirError,
                ModelNotAvailable, push.PushError)

def _configs_dir() -> str:
  """The folder of axk's `configs` package (the repository's, or the installed copy)."""
  spec = importlib.util.find_spec("configs")
  return (os.path.dirname(spec.origin) if spec and spec.origin
          else os.path.join(REPO, "configs"))


CONFIGS_DIR = _configs_dir()
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, `path.py[:variant]` (the files of configs/: see above); "
    "override fields with --config.<field>=<value>.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results.")
_SHOW_CONFIG = flags.DEFINE_bool(
    "show_config", False, "Print the resolved config (every field, its value and comment) "
    "and exit.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Check every input of the run's chain and print its plan (stages, "
    "models, rows, train steps, clips), then exit: 0, or 3 when an input is missing.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Start jax.distributed with the detected cluster (TPU pod slices).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator", None, "host:port of process 0, for clusters JAX cannot detect.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --coordinator.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --coordinator.")
flags.mark_flags_as_required(["config"])


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(SETUP_EXIT)


_config_spec: str | None = None  # `--config`'s value as parsed (path[:variant]).
HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")


def config_files() -> list[str]:
  """The config files of configs/ (those that define `get_config`), by name."""
  out = []
  for name in sorted(os.listdir(CONFIGS_DIR)):
    if name.endswith(".py"):
      with open(os.path.join(CONFIGS_DIR, name), encoding="utf-8") as f:
        if "\ndef get_config(" in f.read():
          out.append(name)
  return out


def _config_summary(name: str) -> list[str]:
  """`name`: the first line of its docstring, then its variants and modifiers."""
  path = os.path.join(CONFIGS_DIR, name)
  with open(path, encoding="utf-8") as f:
    doc = ast.get_docstring(ast.parse(f.read())) or ""
  lines = [f"  configs/{name}: {doc.strip().splitlines()[0] if doc.strip() else ''}"]
  try:
    spec = importlib.util.spec_from_file_location(f"axk_help_{name[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    return lines + [f"      (does not load: {e})"]
  for field in ("VARIANTS", "MODIFIERS"):
    values = tuple(getattr(module, field, ()))
    if values:
      lines.append(f"      {field.lower()}: {', '.join(values)}")
  return lines


def usage() -> str:
  """`--help`: this module's docstring, the config files with their variants, the flags."""
  out = [__doc__.strip(), "", "Config files (`--config=configs/<file>[:variant,modifier...]`; "
         "each file's docstring says more):"]
  for name in config_files():
    out += _config_summary(name)
  own = (flags.FLAGS.main_module_help() or "").strip().splitlines()
  out += ["", "Flags:", *(own[1:] if own and own[0].endswith(":") else own)]
  return "\n".join(out)


def _config_arg(argv: list[str]) -> str | None:
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith(("--config=", "-config=")):
      return arg.split("=", 1)[1]
    if arg in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _find_configs(argv: list[str]) -> list[str]:
  """`--config=configs/x.py` from any folder: a config path that is not there, relative to
  the working folder, is read from axk's own `configs` package (an installed axk run
  elsewhere than its repository)."""
  out = []
  for arg in argv:
    if arg.startswith("--config=") and arg.removeprefix("--config=").startswith("configs/"):
      path, colon, variant = arg.removeprefix("--config=").partition(":")
      own = os.path.join(CONFIGS_DIR, path.removeprefix("configs/"))
      if not os.path.exists(path) and os.path.isfile(own):
        arg = f"--config={own}{colon}{variant}"
    out.append(arg)
  return out


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parse, with faults in the command line as one line instead of a traceback."""
  argv = _find_configs(argv)
  if any(a in HELP_FLAGS for a in argv[1:]):
    print(usage())
    sys.exit(0)
  global _config_spec
  spec = _config_spec = _config_arg(argv)
  if spec is not None and not os.path.isfile(os.path.expanduser(spec.partition(":")[0])):
    _fail(f"--config={spec}: no such config file (configs: {', '.join(config_files())}).")
  try:
    return flags.FLAGS(argv)
  except SystemExit as e:  # A config file's own one-line refusal (an unknown variant).
    if isinstance(e.code, str):
      _fail(e.code.removeprefix("error: "))
    raise
  except (AttributeError, KeyError) as e:  # ml_collections: an override of no field.
    _fail(_unknown_field(argv, str(e)))
  except flags.Error as e:
    # A config file that raised comes wrapped with its traceback; its last line says why.
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    if len(lines) > 1 and "Error whilst parsing config file" in lines[0]:
      flag = lines[0].split(": Error whilst", 1)[0].removeprefix("flag ")
      _fail(f"{flag}: {re.sub(r'^[A-Za-z]*(Error|Exception): ', '', lines[-1])}")
    _fail(f"{lines[0] if lines else e}")
  return []


def _unknown_field(argv: list[str], message: str) -> str:
  """One line naming the override that names no field, with ml_collections' suggestion."""
  names = re.findall(r"'([^'\\]+)'", message.replace("\\'", "'"))
  field = names[0] if names else ""
  arg = next((a for a in argv if a.startswith("--config.")
              and re.search(rf"[.]{re.escape(field)}(=|$|[.])", a.split("=", 1)[0] + "=")),
             field)
  close = re.search(r'Did you mean "([^"]+)"', message)
  hint = f" (did you mean {close.group(1)!r}?)" if close else ""
  return (f"{arg}: the config has no field {field!r}{hint}; list its fields with "
          f"--config=... --show_config.")


def show_config(config, config_spec: str) -> str:
  """Every leaf field of `config` as `name = value  # comment`, in the config's order; the
  comment is the one on the line of the config's source that sets that field
  (`axk.runs.config_source`)."""
  return config_source.show(config, config_source.field_comments(config_spec))


def _preflight(config, config_name: str) -> None:
  """Every input of the run's chain, before any stage: all problems at once, one a line."""
  try:
    preflight.check(config, _WORKDIR.value, config_name)
  except preflight.PreflightError as e:
    _fail(str(e))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if _SHOW_CONFIG.value:
    print(show_config(config, _config_spec or flags.FLAGS["config"].config_filename))
    return
  try:
    plugins.load(config.get("plugins", ()))
  except plugins.PluginError as e:
    _fail(str(e))
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every file it writes.
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  config_name = _config_spec or flags.FLAGS["config"].config_filename
  if _DRY_RUN.value:
    plan = preflight.plan(config, _WORKDIR.value, config_name)
    print(preflight.describe(plan))
    if plan.problems:
      _fail("\nerror: ".join(plan.problems))
    return
  distributed = bool(_DISTRIBUTED.value or _COORDINATOR.value)
  if not distributed:  # One process: before the workdir is made.
    _preflight(config, config_name)
  try:
    workdir = workdir_lib.prepare(_WORKDIR.value)
  except workdir_lib.WorkdirError as e:
    _fail(str(e))
  jax_cache.enable(config.get("jax_cache_dir", ""))  # Before anything compiles.
  import jax
  if distributed:
    # Without arguments JAX detects the cluster (Cloud TPU pod slices, SLURM, ...).
    kwargs = {}
    if _COORDINATOR.value:
      kwargs = dict(coordinator_address=_COORDINATOR.value,
                    num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
    jax.distributed.initialize(**kwargs)
    if jax.process_index() == 0:  # The inputs are shared: process 0 looks at them.
      _preflight(config, config_name)
  module_name, _, fn_name = config.entry.partition(":")
  entry = getattr(importlib.import_module(module_name), fn_name or "run")
  # The processes of one job share the workdir: process 0 holds the lock for all of them.
  lock = workdir_lib.WorkdirLock(workdir) if jax.process_index() == 0 else None
  try:
    if config.get("export", {}).get("push_to_hub"):
      push.check_repo_id(config.export.push_to_hub)  # Before the run, not after it.
    if lock:
      lock.acquire()
    finished = entry(config, workdir)
    if finished and "export" in config:
      # A finished run (not stopped early): model cards for its exports, then the upload.
      push.finish_run(config, workdir)
    if finished and jax.process_index() == 0:  # The results table and its files.
      summary = run_common.summary(workdir)
      if summary and stages.is_stage():  # The run that started it prints its own.
        logging.info("Results of %s:\n%s", workdir, summary)
      else:
        print(summary, end="", flush=True)
  except SETUP_ERRORS as e:  # Bad input found before any work: one line, no traceback.
    _fail(str(e))
  finally:
    if lock:
      lock.release()


if __name__ == "__main__":
  follow_parent()  # A stage child of another run dies with it.
  app.run(main, flags_parser=_parse_flags)
