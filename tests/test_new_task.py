"""Benchmark tasks as registered specs (`axk/tasks/`), and a new task added as one module.

`tests/tasks/loudness.py` is a loudness comparison (louder/quieter at one `[MASK]`) written
outside axk; with a few invented rows it loads, trains, evaluates, predicts and shows in the
papers' tables through the ordinary code, named only in the config (`data.tasks`, `plugins`).
"""

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from axk import plugins
from axk import tasks
from axk.data import auditorybench as ab
from axk.data.benchmark import RowFormat
from axk.data.types import Example
from axk.data.types import Span
from axk.runs import common
from axk.runs import masked_word

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "docs" / "REFERENCE.md"
PLUGIN = "tests.tasks.loudness"
if str(ROOT) not in sys.path:  # `tests.tasks.loudness` is imported from the repository root.
  sys.path.insert(0, str(ROOT))


# -- the registry ---------------------------------------------------------------------------
def _spec(**overrides):
  fields = dict(name="probe", title="probe", folder="probe",
                rows=RowFormat(columns={"sentence": ("sentence",)}, read=lambda f: None),
                head="masked_word")
  return tasks.Task(**{**fields, **overrides})


def test_the_builtin_tasks_are_registered_in_order():
  assert tasks.names()[:2] == ("animal", "pitch") == tasks.auditorybench.NAMES
  pitch = tasks.get("pitch")
  assert (pitch.head, pitch.choices, pitch.closed) == ("choice", ("higher", "lower"), True)
  assert (tasks.get("animal").head, tasks.get("animal").choices) == ("masked_word", ())
  assert (tasks.get("animal").tau, pitch.tau) == (0.0, 0.6)
  assert tasks.get("pitch").folder == "sound_pitch_comparsion"
  assert tasks.choice_words(["animal", "pitch"]) == ("higher", "lower")


def test_registry_errors_are_one_line():
  with pytest.raises(ValueError, match=r"unknown benchmark task 'nope'; known: animal, pitch"):
    tasks.get("nope")
  with pytest.raises(TypeError, match="takes a Task"):
    tasks.register("pitch")
  with pytest.raises(ValueError, match="'pitch' is registered already"):
    tasks.register(_spec(name="pitch"))  # a spec of another module than the registered one
  with pytest.raises(ValueError, match="head 'sequence' is not one of masked_word, choice"):
    _spec(head="sequence")
  with pytest.raises(ValueError, match="a choice head needs choices"):
    _spec(head="choice")
  with pytest.raises(ValueError, match="a choice head needs choices"):
    _spec(choices=("yes", "no"))
  with pytest.raises(ValueError, match="lower-case letters and digits"):
    _spec(name="pitch_2")
  with pytest.raises(ValueError, match="must include 'paper'"):
    _spec(protocols=("candidates",))
  with pytest.raises(ValueError, match="infer\\(\\) needs at least one task"):
    tasks.infer("A [MASK].", among=())


def test_infer_picks_the_task_a_sentence_asks():
  both = ("animal", "pitch")
  assert tasks.infer("The buzzing of a mosquito has a [MASK] pitch than the roar of a lion.",
                     both) == "pitch"
  assert tasks.infer("Wind makes a [MASK] sound than a fowl.", both) == "pitch"
  assert tasks.infer("Hoot is the sound an [MASK] makes.", both) == "animal"
  assert tasks.infer("Hoot is the sound an [MASK] makes.", ("pitch",)) == "pitch"  # only one
  # A tie goes to the first task of `among` (a run's first task).
  assert tasks.infer("A [MASK].", ("pitch", "animal")) == "animal"  # 0.5 beats 0
  plugins.load([PLUGIN])
  assert tasks.infer("The roar of a jet engine is [MASK] in volume than a whisper.",
                     ("animal", "pitch", "loudness")) == "loudness"


def test_published_table_is_reference_md():
  if not REFERENCE.is_file():
    pytest.skip(f"{REFERENCE} is not here")
  rows = {"BERT-base, no training": "bert", "LLaMA3.1-8B, no training": "llama",
          "AudioBERT (BERT-base)": "audiobert", "ITH (BERT-base)": "ith"}
  block = REFERENCE.read_text().split("## Reported accuracy", 1)[1].split("\n## ", 1)[0]
  lines = [[c.strip() for c in l.strip().strip("|").split("|")] for l in block.splitlines()
           if l.startswith("| ") and "---" not in l]
  header, body = lines[0], lines[1:]
  assert [r[0] for r in body] == list(rows)
  for row in body:
    for title, value in zip(header[1:], row[1:]):
      task, split = title.split()
      assert tasks.get(task).published[rows[row[0]]][split] == float(value), (row[0], title)
  for t in ("animal", "pitch"):
    assert set(tasks.get(t).published) == set(rows.values())
    assert "Table 1" in tasks.get(t).published_source


def test_oracle_roles_come_from_the_spec():
  sentence = "The hum of a fridge has a [MASK] pitch than the hiss of a kettle."
  spans = tuple(Span(sentence.index(t), sentence.index(t) + len(t), t)
                for t in ("hum of a fridge", "hiss of a kettle"))
  row = Example("pitch/dev/1", "pitch", "dev", sentence, "higher", spans, ("higher", "lower"), 0)
  pitch = tasks.get("pitch")
  assert pitch.oracle_roles(row, "higher", spans) == ["high", "low"]
  assert pitch.oracle_roles(row, "lower", spans) == ["low", "high"]
  assert pitch.oracle_roles(row, "higher", spans[::-1]) == ["low", "high"]  # sentence order
  one = dataclasses.replace(row, spans=spans[:1])  # a gold span missing: no role can be told
  assert pitch.oracle_roles(one, "higher", spans) == [tasks.NO_ROLE] * 2
  animal = Example("animal/dev/1", "animal", "dev", "Hoot is the sound an [MASK] makes.", "owl",
                   (Span(0, 4, "Hoot"),), (), -1)
  assert tasks.get("animal").oracle_roles(animal, " Owl ", animal.spans) == ["animal=owl"]


def test_a_run_refuses_a_head_it_does_not_train(monkeypatch, tmp_path):
  from configs import ith as ith_config
  monkeypatch.setitem(tasks.base._REGISTRY, "sentiment",  # pylint: disable=protected-access
                      _spec(name="sentiment", head="classification"))
  config = ith_config.get_config("smoke")
  config.features.dir = config.spans.predictions = ""
  config.data.tasks = ("sentiment",)
  with pytest.raises(common.ConfigError, match="^task 'sentiment' has head 'classification'; "
                     "the masked-word run trains masked_word and choice heads only"):
    masked_word.validate(config, str(tmp_path))
  config.data.tasks = ("pitch", "nope")
  with pytest.raises(common.ConfigError, match=r"data.tasks=\('pitch', 'nope'\): \['nope'\]"):
    masked_word.validate(config, str(tmp_path))


def test_a_plugin_that_does_not_import_is_one_line(tmp_path):
  with pytest.raises(plugins.PluginError, match=r"^--config.plugins: module 'no_such.module' "
                     r"does not import \(ModuleNotFoundError"):
    plugins.load(["no_such.module"])
  proc = subprocess.run([sys.executable, "-m", "axk.main", "--config=configs/ith.py:smoke",
                         f"--workdir={tmp_path / 'w'}", "--config.plugins=('no_such.module',)"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 3, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: --config.plugins: module 'no_such.module' does not import")
  assert not (tmp_path / "w").exists()  # before any work


# -- a new task: one module and its data ----------------------------------------------------
LOUD = ("roar of a jet engine", "blast of a foghorn", "crash of thunder", "wail of a siren",
        "boom of a cannon", "clang of a church bell", "howl of a chainsaw", "bang of a firework",
        "shriek of a smoke alarm", "rumble of a freight train", "pounding of a jackhammer",
        "blare of a car horn")
QUIET = ("rustle of a leaf", "tick of a wristwatch", "hum of a fridge", "whisper of a reader",
         "purr of a kitten", "drip of a tap", "click of a pen", "sigh of a sleeper",
         "patter of light rain", "flutter of a moth", "creak of a floorboard",
         "scratch of a pencil")


def _rows(start: int, n: int) -> list[list[str]]:
  """Invented rows: a loud and a quiet sound, either first ("louder": the first is)."""
  out = []
  for i in range(start, start + n):
    loud, quiet = LOUD[i % 12], QUIET[(5 * i + i // 12) % 12]
    first, second, answer = (loud, quiet, "louder") if i % 2 == 0 else (quiet, loud, "quieter")
    out.append([f"The {first} is [MASK] in volume than the {second}.", answer, first, second])
  return out


def _write_data(root: pathlib.Path, folder: str) -> None:
  shutil.copytree(ab.sample_data_dir(), root)  # AuditoryBench's folders, beside the new one
  import csv  # pylint: disable=g-import-not-at-top
  for n, split in enumerate(("train", "dev", "test")):
    path = root / folder / f"{split}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
      writer = csv.writer(f)
      writer.writerow(["sentence", "answer", "span1", "span2"])
      writer.writerows(_rows(8 * n, 8))


@pytest.mark.e2e
@pytest.mark.slow
def test_a_new_task_loads_trains_predicts_and_tables(tmp_path):
  from axk import predict
  from axk.runs import paper
  from configs import ith as ith_config
  from configs import paper as paper_config

  config = ith_config.get_config("smoke")
  config.plugins = (PLUGIN,)
  plugins.load(config.plugins)  # As `axk.main` does at start.
  spec = tasks.get("loudness")
  data_dir = tmp_path / "data"
  _write_data(data_dir, spec.folder)
  config.data.dir = str(data_dir)
  config.data.tasks = ("loudness",)
  config.features.dir = ""  # Text only: no audio features.
  config.spans.predictions = ""  # Gold spans.
  config.train.epochs = 1
  workdir = tmp_path / "run"
  results = masked_word.run(config, str(workdir))

  # Evaluated on its dev and test splits, with the majority baseline.
  saved = json.loads((workdir / "results.json").read_text())
  assert set(saved["loudness"]) == {"dev", "test"}
  for split in ("dev", "test"):
    m = saved["loudness"][split]
    assert 0 <= m["accuracy"] <= 100 and m["majority"] == 50.0 and m["examples"] == 8
    assert m["accuracy"] == results["loudness"][split]["accuracy"]
  answers = [json.loads(l) for l in (workdir / "predictions" / "loudness_dev.jsonl")
             .read_text().splitlines()]
  assert {a["predicted"] for a in answers} <= set(spec.choices)
  assert (workdir / "report.html").is_file()

  # Predicted in process; the task inferred from the sentence by the spec.
  predictor = predict.Predictor(str(workdir))
  record = predictor([predict.Query("The blast of a foghorn is [MASK] in volume than the "
                                    "click of a pen.")])[0]
  assert record["task"] == "loudness" and record["task_inferred"]
  assert set(record["answer"]["probabilities"]) == set(spec.choices)
  assert record["answer"]["predicted"] in spec.choices

  # The papers' tables, with this run as Table 1's text-only row: the task's columns.
  c = paper_config.get_config("smoke,table1")
  c.tasks = ("loudness",)
  rows = [paper.Row(name, c.rows[name], workdir=str(workdir if name == "text_only" else
                                                    tmp_path / "paper" / name))
          for name in c.layouts.table1]
  lines, data = paper.tables(c, rows, "accuracy")
  text = "\n".join(lines)
  assert "| model | loudness dev | loudness test |" in text
  dev, test = (f"{saved['loudness'][s]['accuracy']:.2f}" for s in ("dev", "test"))
  assert f"| BERT-base, text-only fine-tuned | {dev} | {test} |" in text
  assert "| BERT-base, no training (not run) | — | — |" in text  # no published numbers
  # The LLM row has no published number for this task: not run, nothing in brackets.
  assert "| LLaMA3.1-8B, no training (not run) | — | — |" in text
  assert "published only" not in text
  assert data["table1"]["text_only"] == {"loudness/dev": float(dev),
                                         "loudness/test": float(test)}
