"""A run is the method as published only if its inputs are: detected spans where the method
detects them, each span's own features, the pitch words' own token ids, ITH's defaults.

The features here come from the ordinary feature pipeline on the shipped sample data, with the
generation source's acquisition replaced by one that gives each acquisition key a vector only
that key gets (`tag`), so that a span's features name the span they were built for; what each
span should hold is cut from the sentence at the span's own offsets, here.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from axk.data import auditorybench as ab
from axk.data import spans as spans_lib
from axk.data.rows import normalise
from axk.features import pipeline
from axk.features import shards
from axk.features import sources
from axk.features.sources import base as sources_base
from axk.features.sources.generation import GenerationSource
from axk.runs import common
from axk.runs import inputs as inputs_lib
from axk.runs import masked_word
from axk.runs import stages
from axk.train import loop
from configs import features as features_config
from configs import ith as ith_config

D, T = 8, 2  # the tagged features' width and tokens per span
SPLITS = ("train", "dev")


def tag(key: str) -> np.ndarray:
  """A vector only `key` gets (seeded by its sha256), as the shards store it (float16)."""
  seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")
  return np.random.RandomState(seed).randn(D).astype(np.float16)


class TaggedGeneration(GenerationSource):
  """The generation source (its keys `<task>|<span>`, the pipeline around it) whose
  acquisition gives key k the pooled vector `tag(k)` and the tokens `tag(k)`, `-tag(k)`;
  no model."""

  def model_roles(self):
    return ()

  def describe(self):
    return sources_base.Setup(self.name, {}, {}, self.params(), self.section.features_dir)

  def manifest(self):
    return {}

  def record(self, row):
    return {}

  def acquire(self, batch):
    out = sources_base.empty_arrays(len(batch), 4, D, T)
    for i, key in enumerate(batch):
      out["has_audio"][i] = True
      out["ast_pooled"][i] = tag(key)
      out["ast_tokens"][i] = np.stack([tag(key), -tag(key)])
      out["source"][i] = key
    return out


def _examples(split: str):
  return ab.load_task(ab.sample_data_dir(), "pitch", (split,),
                      keep_missing_spans=True)[split].examples


def _predictions(folder) -> str:
  """A detector's predictions/ folder for the sample's pitch train and dev: one span per
  sentence, its first word (not the gold spans, so that features built from it differ)."""
  os.makedirs(folder, exist_ok=True)
  for split in SPLITS:
    examples = _examples(split)
    first = {e.id: (spans_lib.Span(0, e.sentence.index(" "), e.sentence[:e.sentence.index(" ")]),)
             for e in examples}
    spans_lib.write_predictions(os.path.join(folder, f"pitch_{split}.jsonl"), examples, first)
  return str(folder)


def _build(workdir, variant: str, **spans) -> str:
  config = features_config.get_config(variant)
  config.data.dir = "sample"
  config.data.tasks = ("pitch",)
  config.data.splits = SPLITS
  config.spans.update(spans)
  with pytest.MonkeyPatch.context() as m:
    m.setitem(sources.SOURCES, "generation", TaggedGeneration)
    return pipeline.run(config, str(workdir))["generation"]


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> dict[str, str]:
  """Tagged features at gold spans (`generation,gold`) and at a detector's spans."""
  root = tmp_path_factory.mktemp("tagged")
  predictions = _predictions(root / "predictions")
  return {"gold": _build(root / "gold", "generation,gold"),
          "detected": _build(root / "detected", "generation", predictions=predictions),
          "predictions": predictions}


# -- each span's features are the ones built for it --------------------------------------------
@pytest.mark.parametrize("split", SPLITS)
def test_each_span_gets_the_features_built_for_its_own_text(features, split):
  reader = inputs_lib.FeatureSpans(features["gold"])  # what a masked-word run reads
  tokens = shards.load_features(features["gold"], "pitch", split)
  told_apart = 0
  for e in _examples(split):
    spans = reader(e)
    assert [(s["start"], s["end"]) for s in spans] == sorted((s.start, s.end) for s in e.spans)
    for s, stored in zip(spans, sorted(tokens[e.id]["spans"], key=lambda x: x["start"])):
      want = tag("pitch|" + normalise(e.sentence[s["start"]:s["end"]]))
      np.testing.assert_array_equal(np.asarray(s["ast_pooled"], np.float16), want)
      np.testing.assert_array_equal(np.asarray(stored["ast_tokens"], np.float16),
                                    np.stack([want, -want]))
    told_apart += len({normalise(e.sentence[s["start"]:s["end"]]) for s in spans}) > 1
  assert told_apart >= 2  # rows with two spans of different text: a swap shows


def test_gold_and_detected_features_say_their_spans_in_the_manifest(features):
  assert shards.read_manifest(features["gold"])["spans"]["source"] == "gold"
  detected = shards.read_manifest(features["detected"])["spans"]
  assert detected["source"] == "predictions" and detected["gold_splits"] == []


# -- the features config follows the methods: detected spans ------------------------------------
def test_features_default_to_detected_spans_and_say_what_is_missing_in_one_line(tmp_path):
  for variant in ("retrieval", "generation", "generation,no_rejection"):
    assert features_config.get_config(variant).spans.source == "predictions"
  for variant in ("generation,gold", "retrieval,gold", "oracle", "smoke"):
    assert features_config.get_config(variant).spans.source == "gold"
  config = features_config.get_config("generation")
  config.data.dir = "sample"
  with pytest.raises(FileNotFoundError) as e:
    pipeline.run(config, str(tmp_path / "w"))
  line = str(e.value)
  assert "\n" not in line and "--config.spans.predictions=" in line and "gold" in line
  assert not os.path.exists(tmp_path / "w" / "spans")  # before any stage


# -- a masked-word run refuses gold-span features where it detects spans ------------------------
def _run_config(features_dir: str, predictions: str):
  config = ith_config.get_config("smoke")
  config.data.tasks = ("pitch",)
  config.data.splits = SPLITS
  config.features.dir = features_dir
  config.spans.predictions = predictions
  return config


def _steps(monkeypatch):
  """Records every training the run starts (none is run)."""
  started = []
  monkeypatch.setattr(loop, "train_and_evaluate",
                      lambda config, workdir, *a, **k: started.append(workdir) or {})
  return started


def test_a_run_given_gold_span_features_for_detected_splits_stops_before_any_step(
    features, tmp_path, monkeypatch):
  started = _steps(monkeypatch)
  workdir = tmp_path / "w"
  config = _run_config(features["gold"], features["predictions"])
  with pytest.raises(common.ConfigError) as e:
    masked_word.run(config, str(workdir))
  line = str(e.value)
  assert "\n" not in line and line.startswith(f"--config.features.dir={features['gold']}: ")
  assert "built at gold spans" in line and "for train, dev" in line
  assert "--config.spans.accept_gold_features=True" in line
  assert not started and not workdir.exists()
  # gold_splits naming every split detected here: only the others are refused.
  config.spans.gold_splits = "train"
  with pytest.raises(common.ConfigError, match="for dev, where"):
    masked_word.run(config, str(workdir))
  assert not started


@pytest.mark.parametrize("case", ["accepted", "detected_features", "gold_asked"])
def test_gold_span_features_are_used_when_asked_or_accepted(features, tmp_path, monkeypatch,
                                                            case):
  started = _steps(monkeypatch)
  monkeypatch.setattr(masked_word, "MaskedWord", lambda *a: None)
  config = _run_config(features["detected" if case == "detected_features" else "gold"],
                       features["predictions"])
  if case == "accepted":
    config.spans.accept_gold_features = True
  if case == "gold_asked":
    config.spans.gold_splits = "train,dev"
  masked_word.run(config, str(tmp_path / "w"))
  assert len(started) == 1
  labels = masked_word.run_labels(config, config.features.dir)
  if case == "detected_features":
    assert labels == {}
  else:
    assert labels["gold_spans"]["splits"] == ["dev"]
    assert "GOLD SPANS" in labels["gold_spans"]["note"]


# -- published_spans: gold spans everywhere, said in every results file -------------------------
def test_published_spans_needs_no_detector_and_builds_features_at_gold_spans(tmp_path,
                                                                           monkeypatch):
  ran = []
  monkeypatch.setattr(stages, "_run", lambda command, what, folder: ran.append((what, command)))
  monkeypatch.setattr(stages, "_finished", lambda *a: None)
  config = ith_config.get_config("smoke,published_spans")
  assert common.gold_splits(config) == ("train", "dev", "test", "wiki")
  out = stages.prepare(config, str(tmp_path))
  (what, command), = ran
  assert what == "features" and "--config.spans.source=gold" in command
  assert out["spans_predictions"] == ""
  assert not masked_word.gold_features_refused(
      config, {"spans": {"source": "gold"}, "inputs": {"pitch/test": {}}})


@pytest.mark.e2e  # A training chain (one epoch of the smoke model) and its results files.
def test_published_spans_results_say_gold_spans_in_every_results_file(features, tmp_path):
  config = ith_config.get_config("smoke,published_spans")
  config.data.tasks = ("pitch",)
  config.data.splits = SPLITS
  config.features.dir = features["gold"]
  config.train.epochs = 1
  workdir = tmp_path / "run"
  masked_word.run(config, str(workdir))
  saved = json.loads((workdir / "results.json").read_text())
  assert saved["gold_spans"]["splits"] == ["dev"]
  assert "not comparable to results at detected spans" in saved["gold_spans"]["note"]
  md = (workdir / "results.md").read_text()
  assert "at GOLD spans on dev (not comparable to detected spans)" in md.splitlines()[0]
  assert "**GOLD SPANS: dev evaluated at the CSV's gold auditory spans" in md


# -- ITH's defaults -----------------------------------------------------------------------------
def test_ith_defaults_two_candidates_and_the_published_pitch_warm_up():
  assert features_config.get_config("generation").generation.n == 2  # Figure 2's peak
  config = ith_config.get_config()
  # The published `0.1 * 20 / epochs` of the steps: 0.25 at 8 epochs; animal 10%.
  assert masked_word.warmup_ratios(config) == {"animal": 0.1, "pitch": 0.25}
  config.train.epochs = 20
  assert masked_word.warmup_ratios(config)["pitch"] == pytest.approx(0.1)
  config.train.epochs = 8
  config.train.task_warmup_epochs.pitch = 0.0  # the option: 10%
  assert masked_word.warmup_ratios(config)["pitch"] == 0.1
  config.train.task_warmup_epochs.pitch = 8.0
  with pytest.raises(common.ConfigError, match=r"task_warmup_epochs.pitch=8.0: must be in"):
    masked_word.warmup_ratios(config)


def test_each_task_trains_at_its_own_warm_up(monkeypatch, tmp_path):
  seen = []

  def train(config, workdir, *args, **kwargs):
    seen.append((config.data.tasks, config.train.warmup_ratio))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
      f.write("#\n")
    return {t: {"dev": {"accuracy": 50.0}} for t in config.data.tasks}

  monkeypatch.setattr(loop, "train_and_evaluate", train)
  monkeypatch.setattr(masked_word, "MaskedWord", lambda *a: None)
  config = ith_config.get_config("smoke")
  config.features.dir = config.spans.predictions = ""
  config.train.task_warmup_epochs.pitch = 1.0  # of the smoke's 2 epochs
  masked_word.run(config, str(tmp_path))
  assert seen == [(("animal",), 0.1), (("pitch",), 0.5)]


# -- the pitch words' token ids, as the run builds them ----------------------------------------
def test_the_run_reads_the_higher_and_lower_logits_at_their_own_token_ids(tmp_path):
  """A run's own `MaskedWord` (its tokenizer, its choice ids, its scoring) on logits that
  favour one word's id, the ids looked up here in the tokenizer's vocabulary file: every
  pitch prediction is that word."""
  config = ith_config.get_config("smoke")
  config.features.dir = config.spans.predictions = ""
  config.data.tasks = ("pitch",)
  config.data.splits = SPLITS
  run = masked_word.MaskedWord(config, str(tmp_path), masked_word.Inputs())
  with open(os.path.join(run.path, "vocab.txt"), encoding="utf-8") as f:
    vocab = {w.rstrip("\n"): i for i, w in enumerate(f)}
  ids = {"higher": vocab["higher"], "lower": vocab["lower"]}
  views = {"paper": run.eval_arrays["pitch/dev"]["paper"]}
  rows, masks = views["paper"]["mask_positions"].shape
  for louder, other in (("higher", "lower"), ("lower", "higher")):
    logits = np.zeros((rows, masks, len(vocab)), np.float32)
    logits[:, :, ids[louder]], logits[:, :, ids[other]] = 2.0, 1.0
    run.apply = lambda params, batch, *, deterministic, rngs=None, x=logits: x
    outputs = {"paper": {k: np.asarray(v)
                         for k, v in run.predict(None, views["paper"]).items()}}
    answers = run.answers("pitch/dev", views, outputs)
    assert {a["predicted"] for a in answers} == {louder}
    assert [a["correct"] for a in answers] == [e.answer == louder
                                               for e in run.examples["pitch/dev"]]
