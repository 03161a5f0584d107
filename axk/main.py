"""axk's one entry point.

    python -m axk.main --config=configs/ith.py[:variant] --workdir=DIR [--config.x=y ...]

It parses flags, starts JAX's distributed runtime when the job has several processes, and
hands the config to the function the config names in `config.entry` ("module:function").
"""

from __future__ import annotations

import importlib
import logging
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from axk.data.auditorybench import DataError
from axk.hf import CheckpointError
from axk.features.shards import FeaturesMismatch
from axk.runs.common import ConfigError
from axk.runs.inputs import FeaturesError
from axk.runs.stages import StageError

# Errors that name a bad config value, path or data file; anything else keeps its traceback.
SETUP_ERRORS = (ConfigError, CheckpointError, DataError, FeaturesError, FeaturesMismatch,
                StageError, FileNotFoundError)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, `path.py[:variant]`.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Start jax.distributed with the detected cluster (TPU pod slices).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator", None, "host:port of process 0, for clusters JAX cannot detect.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --coordinator.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --coordinator.")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every file it writes.
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  if _DISTRIBUTED.value or _COORDINATOR.value:
    import jax
    # Without arguments JAX detects the cluster (Cloud TPU pod slices, SLURM, ...).
    kwargs = {}
    if _COORDINATOR.value:
      kwargs = dict(coordinator_address=_COORDINATOR.value,
                    num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
    jax.distributed.initialize(**kwargs)
  module_name, _, fn_name = config.entry.partition(":")
  entry = getattr(importlib.import_module(module_name), fn_name or "run")
  try:
    entry(config, _WORKDIR.value)
  except SETUP_ERRORS as e:  # Bad input found before any work: one line, no traceback.
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
