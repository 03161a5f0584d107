"""A third method in one new file (`tests/methods/concat_fusion.py`: its Flax module, its
registration and its PyTorch inference): it trains two steps through the normal run,
predicts a sentence, exports and loads back in JAX and PyTorch, and shows in `report.html`
and in a paper table, with no change to axk."""

import json
import os
import sys

import numpy as np
import pytest
import torch

from axk import methods
from axk import predict
from axk.runs import masked_word
from axk.runs import paper
from configs import ith as ith_config
from configs import paper as paper_config

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "methods"))

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # A run on the smoke chain (`ith_smoke`).

SENTENCE = "The buzzing of a mosquito has a [MASK] pitch than the roar of a lion."


def _batch(rng, audio_dim, rows=2, length=7, spans=2, tokens=3):
  ids = rng.randint(5, 100, size=(rows, length)).astype(np.int32)
  mask = np.ones((rows, length), np.int32)
  mask[1, -2:] = 0
  return {"input_ids": ids, "attention_mask": mask,
          "token_type_ids": np.zeros_like(ids),
          "span_audio_tokens": rng.randn(rows, spans, tokens, audio_dim).astype(np.float32),
          "span_has_audio": np.array([[1, 0], [1, 1]], np.int32)}


def test_a_third_method_trains_predicts_exports_and_shows(ith_smoke, tmp_path):
  config = ith_config.get_config("smoke")
  config.name = ""  # Titles come from the method.
  config.model.name = "concat_fusion"  # tests/methods/concat_fusion.py
  for field in masked_word.method_fields(config):
    del config.model[field]  # ITH's own fields; this method has none.
  config.features.dir = str(ith_smoke / "stages" / "features" / "features")
  config.spans.predictions = str(ith_smoke / "stages" / "span" / "predictions")
  config.data.tasks = ("pitch",)
  config.mesh.shape = (("data", 4), ("model", 2))
  config.train.epochs = 1
  probe = masked_word.MaskedWord(config, str(tmp_path / "probe"), masked_word.Inputs(
      config.spans.predictions, config.features.dir))
  assert probe.method.title == "Concatenated audio tokens"
  config.train.batch_size = len(probe.train_ids) // 8 * 4  # exactly two steps
  workdir = tmp_path / "run"
  results = masked_word.run(config, str(workdir))

  saved = json.loads((workdir / "results.json").read_text())
  assert saved["selection"]["total_steps"] == 2
  assert results["pitch"]["test"]["with_audio"] > 0

  # Predict: the run's own detector and feature source, this method's export.
  record = predict.Predictor(str(workdir))([predict.Query(SENTENCE)])[0]
  assert record["method"] == "concat_fusion" and record["task"] == "pitch"
  assert sum(record["answer"]["probabilities"].values()) == \
      pytest.approx(1.0, abs=1e-5)
  assert record["lora_gate"] is None  # No LoRA gate in this method.

  # The export loads back in JAX and in PyTorch, both equal to the trained module.
  loaded = methods.load_export(str(workdir / "export"))
  assert loaded.method.name == "concat_fusion"
  b = _batch(np.random.RandomState(0), loaded.module.audio_dim)
  ours = np.asarray(loaded.module.apply({"params": loaded.params}, b)["logits"])
  torch_model = loaded.method.load_torch(str(workdir / "export"))
  theirs = torch_model(**{k: torch.tensor(v) for k, v in b.items()}).numpy()
  valid = b["attention_mask"].astype(bool)
  np.testing.assert_allclose(ours[valid], theirs[valid], atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(loaded(**b))[valid], ours[valid], atol=1e-5, rtol=0)

  # report.html names the method and shows its numbers.
  page = (workdir / "report.html").read_text()
  assert "concat_fusion" in page and f"{results['pitch']['test']['accuracy']:.2f}" in page

  # A paper table shows it as a row, its cells from its results.json.
  c = paper_config.get_config("smoke,table1")
  c.rows.concat = dict(c.rows.ith)
  c.rows.concat.label = "Concatenated audio tokens"
  c.layouts.table1 = ("concat",)
  lines, data = paper.tables(c, [paper.Row("concat", c.rows.concat, workdir=str(workdir))],
                             "accuracy")
  row = next(l for l in lines if l.startswith("| Concatenated audio tokens |"))
  assert f"{results['pitch']['test']['accuracy']:.2f}" in row
  assert data["table1"]["concat"]["pitch/test"] == results["pitch"]["test"]["accuracy"]
