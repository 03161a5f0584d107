"""axk's one entry point.

    python -m axk.main --config=configs/ith.py[:variant] --workdir=DIR [--config.x=y ...]

Configs: configs/span.py (span detector), configs/audiobert.py, configs/ith.py,
configs/features.py (offline audio features); each file's docstring lists its variants.
Every config field can be overridden with --config.<field>=<value>; list the fields, their
values and comments with

    python -m axk.main --config=configs/ith.py:smoke --show_config

(--helpfull lists every flag of the libraries as well.)

It parses flags, imports the modules `config.plugins` names (they register methods and
benchmark tasks), starts JAX's distributed runtime when the job has several processes, takes
the workdir's lock (one run per workdir) and hands the config to the function the config
names in `config.entry` ("module:function"). A fault in the command, config, data or workdir
ends the run with one line starting "error:" and exit status 3 (`SETUP_EXIT`).
"""

from __future__ import annotations

import importlib
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
from axk.runs.inputs import FeaturesError
from axk.runs import stages
from axk.runs.stages import SETUP_EXIT, StageError, follow_parent
from axk.train.checkpoint import CheckpointDamaged
from axk.train.sharding import MeshError
from axk.utils import jax_cache
from axk.utils import workdir as workdir_lib

# Errors that name a bad config value, path or data file; anything else keeps its traceback.
SETUP_ERRORS = (ConfigError, CheckpointError, DataError, FeaturesError, FeaturesMismatch,
                StageError, FileNotFoundError, CheckpointDamaged, MeshError,
                workdir_lib.WorkdirError,
                ModelNotAvailable, push.PushError)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, `path.py[:variant]` (configs/span.py, configs/audiobert.py, "
    "configs/ith.py, configs/features.py); override fields with --config.<field>=<value>.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results.")
_SHOW_CONFIG = flags.DEFINE_bool(
    "show_config", False, "Print the resolved config (every field, its value and comment) "
    "and exit.")
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


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parse, with faults in the command line as one line instead of a traceback."""
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


def _field_comments(config_path: str) -> dict[str, str]:
  """`field path -> comment` from the `x.a.b = ...  # comment` lines of the config files
  (the config's own file and its siblings, e.g. configs/common.py)."""
  folder = os.path.dirname(os.path.abspath(config_path.partition(":")[0]))
  comments: dict[str, str] = {}
  assign = re.compile(r"^\s*\w+((?:\.\w+)+)\s*=[^=].*?#\s*(.+)$")
  for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
    if name.endswith(".py"):
      with open(os.path.join(folder, name)) as f:
        for line in f:
          m = assign.match(line)
          if m:
            comments.setdefault(m.group(1)[1:], m.group(2).strip())
  return comments


def show_config(config, config_path: str) -> str:
  """Every leaf field of `config` as `name = value  # comment`, in the config's order."""
  comments = _field_comments(config_path)
  out = []

  def walk(node, prefix):
    for key, value in node.items():
      path = f"{prefix}{key}"
      if hasattr(value, "items"):
        if not value:
          out.append(f"{path} = {{}}")
        walk(value, path + ".")
        continue
      parts = path.split(".")
      note = next((comments[".".join(parts[i:])] for i in range(len(parts))
                   if ".".join(parts[i:]) in comments), "")
      out.append(f"{path} = {value!r}" + (f"  # {note}" if note else ""))

  walk(config, "")
  return "\n".join(out)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if _SHOW_CONFIG.value:
    print(show_config(config, flags.FLAGS["config"].config_filename))
    return
  try:
    plugins.load(config.get("plugins", ()))
  except plugins.PluginError as e:
    _fail(str(e))
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every file it writes.
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  try:
    workdir = workdir_lib.prepare(_WORKDIR.value)
  except workdir_lib.WorkdirError as e:
    _fail(str(e))
  jax_cache.enable(config.get("jax_cache_dir", ""))  # Before anything compiles.
  import jax
  if _DISTRIBUTED.value or _COORDINATOR.value:
    # Without arguments JAX detects the cluster (Cloud TPU pod slices, SLURM, ...).
    kwargs = {}
    if _COORDINATOR.value:
      kwargs = dict(coordinator_address=_COORDINATOR.value,
                    num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
    jax.distributed.initialize(**kwargs)
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
