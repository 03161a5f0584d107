"""The main command end to end on the smoke chain, and AudioBERT on its retrieval features."""

import json
import os
import pathlib

import huggingface_hub
import numpy as np
import pytest

from axk.publish import card as card_lib
from axk.publish import push
from axk.pt.audiobert import AudioBertTorch
from axk.pt.ith import IthTorch
from axk.runs import masked_word
from configs import audiobert as audiobert_config


@pytest.mark.e2e
def test_ith_smoke_runs_every_stage_and_writes_results(ith_smoke):
  stages = ith_smoke / "stages"
  assert (stages / "span" / "results.json").exists()
  manifest = json.loads((stages / "features" / "features" / "manifest.json").read_text())
  assert manifest["spans"]["source"] == "predictions"  # detected spans for evaluation
  # ... and for training, as ITH's published code: the detector predicted train as well.
  assert manifest["spans"]["gold_splits"] == [] and "pitch/train" in manifest["spans"]["files"]
  results = json.loads((ith_smoke / "results.json").read_text())
  assert set(results) == {"animal", "pitch", "selection", "revisions"}
  assert set(results.pop("selection")) == {"animal", "pitch"}
  assert results.pop("revisions")["data"]["source"] == "sample"
  for task in results:
    assert {"dev", "test", "wiki"} <= set(results[task])
    dev = results[task]["dev"]
    for metric in ("accuracy", "accuracy_candidates", "majority", "accuracy_unseen"):
      assert 0 <= dev[metric] <= 100
    assert 0 < dev["examples_unseen"] <= dev["examples"]
    assert (ith_smoke / task / "export" / "fusion.safetensors").exists()
    IthTorch.from_export(str(ith_smoke / task / "export"))  # loads in PyTorch
  assert results["pitch"]["dev"]["with_audio"] > 0  # some detected spans got audio
  md = (ith_smoke / "results.md").read_text()
  # One document: one title and one table with every task's rows.
  assert md.count("\n# ") == 0 and md.startswith("# ") and "leaks" in md
  assert "| animal | dev |" in md and "| pitch | test |" in md, md


@pytest.mark.e2e
def test_audiobert_smoke_on_retrieval_features(audiobert_smoke):
  config, tmp_path = audiobert_smoke  # Run once for the session (conftest.py).
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["pitch"]["test"]["with_audio"] > 0
  assert not (tmp_path / "stages").exists()  # Given inputs: no stage ran.
  # One model per task, as the published code's separate scripts.
  assert set(results["selection"]) == {"animal", "pitch"}
  run = json.loads((tmp_path / "config.json").read_text())
  manifest = json.loads((pathlib.Path(run["resolved"]["features_dir"]) /
                         "manifest.json").read_text())
  # What axk.main does after a finished run: each export's model card.
  assert sorted(push.finish_run(config, str(tmp_path))) == [
      str(tmp_path / t / "export" / "README.md") for t in ("animal", "pitch")]
  saved = json.loads((tmp_path / "results.json").read_text())
  for task in ("animal", "pitch"):
    model = AudioBertTorch.from_export(str(tmp_path / task / "export"))
    # The trained audio adapter; a projection exactly when the AST width differs from the
    # model's (`audio_projection` "auto", as the paper and the published code).
    assert model.use_lora and model.audio_adapter is not None
    assert (model.audio_proj is not None) == (manifest["dims"]["ast"] !=
                                              run["model"]["tiny"]["hidden_size"])
    card = huggingface_hub.ModelCard.load(tmp_path / task / "export" / "README.md").data
    assert {(r.dataset_config, r.dataset_split, r.metric_type): r.metric_value
            for r in card.eval_results} == {
                (task, s, m): v for s, ms in saved[task].items()
                for m, v in ms.items() if m not in card_lib.NOT_MODEL_METRICS}
    assert card.pipeline_tag == "fill-mask" and "peft" in card.tags
  assert saved["revisions"]["models"]["features.clap"]["revision"]
  lines = (tmp_path / "pitch" / "predictions" / "pitch_dev.jsonl").read_text().splitlines()
  assert len(lines) == results["pitch"]["dev"]["examples"]
  assert {json.loads(l)["predicted"] for l in lines} <= {"higher", "lower"}


def test_several_seeds_report_mean_and_standard_deviation(tmp_path, monkeypatch):
  from axk.train import loop
  seen = []

  def fake_train(config, workdir, task, record=None, stamp=None):
    seen.append((config.seed, workdir))
    acc = {0: 40.0, 1: 50.0, 2: 60.0}[config.seed]
    return {"pitch": {"dev": {"accuracy": acc, "majority": 59.0, "examples": 16}}}

  monkeypatch.setattr(loop, "train_and_evaluate", fake_train)
  config = audiobert_config.get_config("smoke,no_audio")
  config.seeds = (0, 1, 2)
  merged = masked_word.run_seeds(config, str(tmp_path), lambda c, w: None)
  assert [s for s, _ in seen] == [0, 1, 2]
  assert [w for _, w in seen] == [str(tmp_path / f"seed_{s}") for s in (0, 1, 2)]
  dev = merged["pitch"]["dev"]
  assert dev["accuracy"] == 50.0
  assert abs(dev["accuracy_std"] - np.sqrt(200 / 3)) < 1e-9  # population std of 40, 50, 60
  assert dev["majority"] == 59.0 and "majority_std" not in dev
  saved = json.loads((tmp_path / "results.json").read_text())
  assert {k: v for k, v in saved.items() if k not in (loop.SELECTION_KEY, "revisions")} == merged
  assert saved["revisions"]["data"]["source"] == "sample"
  assert "mean over seeds [0, 1, 2]" in (tmp_path / "results.md").read_text()
