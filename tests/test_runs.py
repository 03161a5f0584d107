"""The masked-word run's plumbing: config checks before any stage, learning rates, config
left unchanged, `config.json`'s resolved values."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from axk import tasks
from axk.runs import common
from axk.runs import masked_word
from axk.train import loop
from configs import audiobert as audiobert_config
from configs import ith as ith_config

from conftest import ROOT


def _fake_runs(monkeypatch):
  seen = []

  def fake_train(config, workdir, experiment, record=None, stamp=None):
    seen.append({"tasks": tuple(config.data.tasks), "lr": config.train.learning_rate,
                 "batch": config.train.batch_size, "seed": config.seed, "workdir": workdir,
                 "record": record})
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "results.md"), "w") as f:
      f.write(f"# {config.data.tasks}\n")
    return {t: {"dev": {"accuracy": 50.0, "majority": 50.0, "examples": 1}}
            for t in config.data.tasks}

  monkeypatch.setattr(loop, "train_and_evaluate", fake_train)
  monkeypatch.setattr(masked_word, "MaskedWord", lambda *a: None)
  return seen


def _text_only(config):
  config.features.dir = ""
  config.spans.predictions = ""
  return config


@pytest.mark.parametrize("overrides, expected", [
    ({}, {"animal": 1e-3, "pitch": 1e-3}),  # smoke: the per-task table
    ({"train.learning_rate": 0.5}, {"animal": 0.5, "pitch": 0.5}),  # nonzero: every task
    ({"train.task_learning_rates.pitch": 0.25}, {"animal": 1e-3, "pitch": 0.25}),
])
def test_ith_learning_rate_rule(monkeypatch, tmp_path, overrides, expected):
  seen = _fake_runs(monkeypatch)
  config = _text_only(ith_config.get_config("smoke"))
  for key, value in overrides.items():
    section, *rest = key.split(".")
    target = config[section]
    for part in rest[:-1]:
      target = target[part]
    target[rest[-1]] = value
  before = config.to_dict()
  masked_word.run(config, str(tmp_path))
  assert config.to_dict() == before  # never changed by the run
  assert {s["tasks"][0]: s["lr"] for s in seen} == expected
  assert [s["workdir"] for s in seen] == [str(tmp_path / t) for t in ("animal", "pitch")]
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["resolved"]["learning_rates"] == expected
  assert saved["train"]["learning_rate"] == before["train"]["learning_rate"]


def test_a_task_without_learning_rate_or_one_model_at_two_rates_is_refused(monkeypatch,
                                                                           tmp_path):
  config = _text_only(ith_config.get_config("smoke"))
  del config.train.task_learning_rates["pitch"]
  # Without an entry, the task's own rate (its spec's).
  assert masked_word.learning_rates(config) == {"animal": 1e-3, "pitch": 4e-5}
  monkeypatch.setitem(tasks.base._REGISTRY, "pitch",  # pylint: disable=protected-access
                      dataclasses.replace(tasks.get("pitch"), learning_rate=0.0))
  with pytest.raises(common.ConfigError, match="task 'pitch' gets no learning rate"):
    masked_word.validate(config, str(tmp_path))
  config = _text_only(ith_config.get_config("smoke"))
  config.train.task_learning_rates.pitch = 0.5
  config.train.separate_tasks = False
  with pytest.raises(common.ConfigError, match="different learning rates"):
    masked_word.validate(config, str(tmp_path))


def test_audiobert_trains_one_model_per_task_at_its_published_script_settings(monkeypatch,
                                                                            tmp_path):
  """The published code's separate scripts: animal batch 8, lr 1e-4; pitch batch 32, lr 3e-4
  (HJ-Ok/AudioBERT, model/AudioBERT/{animal_sound,sound_pitch}/train.py); `joint`: one model
  at the paper's batch 32, lr 3e-4."""
  seen = _fake_runs(monkeypatch)
  config = _text_only(audiobert_config.get_config("minilm,one_seed"))
  config.data.dir = "sample"
  masked_word.run(config, str(tmp_path / "per_task"))
  assert [(s["tasks"], s["batch"], s["lr"], s["workdir"]) for s in seen] == [
      (("animal",), 8, 1e-4, str(tmp_path / "per_task" / "animal")),
      (("pitch",), 32, 3e-4, str(tmp_path / "per_task" / "pitch"))]
  saved = json.loads((tmp_path / "per_task" / "config.json").read_text())
  assert saved["resolved"]["batch_sizes"] == {"animal": 8, "pitch": 32}
  config = _text_only(audiobert_config.get_config("minilm,joint"))
  masked_word.validate(config, str(tmp_path))
  assert masked_word.task_groups(config) == [("animal", "pitch")]
  assert masked_word.batch_sizes(config) == {"animal": 32, "pitch": 32}
  assert masked_word.learning_rates(config) == {"animal": 3e-4, "pitch": 3e-4}
  # One model cannot train at two batch sizes; a task needs one.
  config = _text_only(audiobert_config.get_config("minilm"))
  config.train.separate_tasks = False
  config.train.learning_rate = 3e-4
  with pytest.raises(common.ConfigError, match=r"different batch sizes \{'animal': 8, "
                     r"'pitch': 32\}"):
    masked_word.validate(config, str(tmp_path))
  config = _text_only(audiobert_config.get_config("minilm"))
  del config.train.task_batch_sizes["pitch"]
  with pytest.raises(common.ConfigError, match="task 'pitch' gets no batch size"):
    masked_word.validate(config, str(tmp_path))


def test_a_model_field_the_method_does_not_have_is_refused(tmp_path):
  config = _text_only(audiobert_config.get_config("smoke"))
  # AudioBERT's config has audio_adapter, audio_projection, use_audio, ...; ITH has none of
  # them (the first in order is named).
  config.model.name = "ith"
  with pytest.raises(common.ConfigError, match=r"--config.model.audio_adapter: not a field "
                     r"of axk.models.ith.Model \(its fields: audio_activation, fusion_gate"):
    masked_word.validate(config, str(tmp_path))


def test_seeds_get_copies_and_the_selection_of_each(monkeypatch, tmp_path):
  seen = _fake_runs(monkeypatch)
  config = _text_only(audiobert_config.get_config("smoke,no_audio,joint"))  # one model
  config.seeds = (3, 4)
  masked_word.run(config, str(tmp_path))
  assert config.seed == 0 and [s["seed"] for s in seen] == [3, 4]
  assert all(s["record"]["resolved"]["learning_rates"] == {"animal": 1e-3, "pitch": 1e-3}
             for s in seen)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert set(saved["selection"]) == {"seed_3", "seed_4"}


@pytest.mark.e2e
@pytest.mark.parametrize("config, flag, says", [
    ("configs/ith.py:smoke", "--config.model.fusion_layer=99",
     "--config.model.fusion_layer=99: must be an integer in [0, 2]"),
    ("configs/audiobert.py:smoke", "--config.model.lora_gate=bogus",
     "--config.model.lora_gate='bogus': must be one of span_audio, span, always"),
    ("configs/audiobert.py:smoke", "--config.model.lora_targets=('query','mlp')",
     "LoRA targets ['mlp'] not in"),
    ("configs/ith.py:smoke", "--config.data.splits=('dev','test')",
     "training needs 'train'"),
])
def test_bad_method_fields_stop_the_main_command_before_any_stage(tmp_path, config, flag,
                                                                  says):
  workdir = tmp_path / "w"
  proc = subprocess.run([sys.executable, "-m", "axk.main", f"--config={config}",
                         f"--workdir={workdir}", flag], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and says in last, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not (workdir / "stages").exists()  # no stage ran
  # Nor any other work before the error: nothing is written.
  assert not workdir.exists() or not any(workdir.iterdir())


def test_train_spans_come_from_the_detector_unless_kept_gold(tmp_path):
  from axk.data import auditorybench as ab
  from axk.data import spans as spans_lib
  from axk.data.types import Span
  from axk.runs import inputs as inputs_lib
  train = ab.load_task(ab.sample_data_dir(), "pitch", ("train",))["train"].examples[:3]
  predicted = {e.id: (Span(0, 3, e.sentence[:3]),) for e in train}
  spans_lib.write_predictions(str(tmp_path / "pitch_train.jsonl"), train, predicted)
  detected = [[{"start": 0, "end": 3, "text": e.sentence[:3]}] for e in train]
  gold = [[{"start": s.start, "end": s.end, "text": s.text} for s in e.spans] for e in train]
  assert gold != detected
  assert inputs_lib.split_spans(train, predictions=str(tmp_path)) == detected
  assert inputs_lib.split_spans(train, predictions=str(tmp_path),
                                gold_splits=("train",)) == gold
  assert inputs_lib.split_spans(train) == gold  # no predictions: gold everywhere


def test_span_defaults_detector_spans_for_ith_gold_train_spans_for_audiobert(tmp_path):
  assert common.gold_splits(ith_config.get_config()) == ()
  assert common.gold_splits(audiobert_config.get_config()) == ("train",)
  from configs import features as features_config
  assert features_config.get_config("generation").spans.gold_splits == ""
  config = _text_only(ith_config.get_config("smoke"))
  config.spans.gold_splits = "train,tset"
  with pytest.raises(common.ConfigError, match=r"gold_splits='train,tset': 'tset' is not"):
    masked_word.validate(config, str(tmp_path))


def test_stages_pass_gold_splits_and_rebuild_features_built_with_others(tmp_path,
                                                                        monkeypatch):
  """The features stage gets the run's spans.gold_splits; features it built with other gold
  splits are rebuilt; a detector run without train predictions runs again (to predict)."""
  from axk.features import shards
  from axk.runs import stages
  span_dir = tmp_path / "stages" / "span"
  (span_dir / "predictions").mkdir(parents=True)
  (span_dir / "results.json").write_text("{}")
  features = tmp_path / "stages" / "features" / "features"
  features.mkdir(parents=True)
  (features / "manifest.json").write_text(json.dumps(
      {"spans": {"source": "predictions", "gold_splits": []}}))
  monkeypatch.setattr(shards, "verified", lambda path: True)
  ran = []
  monkeypatch.setattr(stages, "_run", lambda command, what, folder: ran.append((what, command)))

  def prepare(gold):
    ran.clear()
    config = ith_config.get_config("smoke")
    config.spans.gold_splits = gold
    stages.prepare(config, str(tmp_path))
    return ran

  assert [what for what, _ in prepare("")] == ["span detector"]  # no *_train.jsonl yet
  (span_dir / "predictions" / "pitch_train.jsonl").write_text("")
  assert prepare("") == []  # both stages done, as asked
  (what, command), = prepare("train")
  assert what == "features" and "--config.spans.gold_splits=train" in command
  assert "--config.spans.source=predictions" in command
