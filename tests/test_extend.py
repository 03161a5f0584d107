"""Adding a method: one model file (`tests/models/fusion_without_gate.py`) plus a config."""

import json
import os
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from axk.runs import masked_word
from axk.utils.tree import flatten
from configs import ith as ith_config

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "models"))

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # A run on the smoke chain (`ith_smoke`).


def test_a_new_fusion_variant_trains_two_steps_through_the_normal_loop(ith_smoke, tmp_path):
  config = ith_config.get_config("smoke")
  config.model.name = "fusion_without_gate"  # tests/models/fusion_without_gate.py
  for field in masked_word.method_fields(config):
    del config.model[field]  # ITH's own fields; the variant has none of them.
  config.features.dir = str(ith_smoke / "stages" / "features" / "features")
  config.spans.predictions = str(ith_smoke / "stages" / "span" / "predictions")
  config.data.tasks = ("pitch",)
  config.mesh.shape = (("data", 4), ("model", 2))
  config.train.epochs = 1
  experiment = masked_word.MaskedWord(config, str(tmp_path / "probe"), masked_word.Inputs(
      config.spans.predictions, config.features.dir))
  rows = len(experiment.train_ids)
  config.train.batch_size = rows // 8 * 4  # divides by the data axis; exactly two steps
  workdir = tmp_path / "run"
  results = masked_word.run(config, str(workdir))

  saved = json.loads((workdir / "results.json").read_text())
  assert saved["selection"]["total_steps"] == 2
  assert results["pitch"]["test"]["with_audio"] > 0
  train_steps = [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text()
                 .splitlines() if "train/loss" in l]
  assert train_steps == [2]  # log_every=2: one line for the two steps
  # The variant's fusion received gradients: its weights moved from their initial values.
  init = flatten(jax.device_get(jax.jit(experiment.init_params)(jax.random.key(config.seed))))
  manager = ocp.CheckpointManager(str(workdir / "checkpoints"),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  final = flatten(jax.device_get(manager.restore(2, args=ocp.args.StandardRestore())["params"]))
  assert any(not np.allclose(final[k], init[k]) for k in init if k.startswith("fusion/"))
  assert not any(k.startswith("fusion/gate") for k in final)  # really the ungated variant
