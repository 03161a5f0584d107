"""The main command end to end on the smoke chain, and AudioBERT on its retrieval features."""

import json
import os

import numpy as np

from axk.pt.audiobert import AudioBertTorch
from axk.pt.ith import IthTorch
from axk.tasks import audiobert as audiobert_task
from configs import audiobert as audiobert_config


def test_ith_smoke_runs_every_stage_and_writes_results(ith_smoke):
  stages = ith_smoke / "stages"
  assert (stages / "span" / "results.json").exists()
  manifest = json.loads((stages / "features" / "features" / "manifest.json").read_text())
  assert manifest["spans"]["source"] == "predictions"  # detected spans for evaluation
  results = json.loads((ith_smoke / "results.json").read_text())
  assert set(results) == {"animal", "pitch"}
  for task in results:
    assert {"dev", "test", "wiki"} <= set(results[task])
    dev = results[task]["dev"]
    for metric in ("accuracy", "accuracy_candidates", "majority"):
      assert 0 <= dev[metric] <= 100
    assert (ith_smoke / task / "export" / "fusion.safetensors").exists()
    IthTorch.from_export(str(ith_smoke / task / "export"))  # loads in PyTorch
  assert results["pitch"]["dev"]["with_audio"] > 0  # some detected spans got audio
  md = (ith_smoke / "results.md").read_text()
  assert "## animal" in md and "## pitch" in md and "leaks" in md


def test_audiobert_smoke_on_retrieval_features(ith_smoke, tmp_path):
  config = audiobert_config.get_config("smoke")
  config.features.dir = str(ith_smoke / "stages" / "features" / "features_retrieval")
  config.spans.predictions = str(ith_smoke / "stages" / "span" / "predictions")
  results = audiobert_task.run(config, str(tmp_path))
  assert results["pitch"]["test"]["with_audio"] > 0
  assert not (tmp_path / "stages").exists()  # Given inputs: no stage ran.
  model = AudioBertTorch.from_export(str(tmp_path / "export"))
  assert model.use_lora and model.audio_proj is not None
  lines = (tmp_path / "predictions" / "pitch_dev.jsonl").read_text().splitlines()
  assert len(lines) == results["pitch"]["dev"]["examples"]
  assert {json.loads(l)["predicted"] for l in lines} <= {"higher", "lower"}
