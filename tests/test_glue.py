"""GLUE's sentence tasks: both file layouts read to the same rows, one-line errors naming the
file and line, and a text-only run whose scores, predictions, export and leaderboard files
are checked against scikit-learn, SciPy and transformers. Data: the invented GLUE-layout
sample shipped with axk, and rows written here."""

import json
import pathlib
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.stats
import sklearn.metrics
import torch
import transformers

from axk.data import encoded
from axk.data import glue
from axk.runs import preflight
from axk.runs import sentence
from configs import glue as glue_config

SAMPLE = pathlib.Path(glue.sample_dir())
HF_COLUMNS = {"sst2": ("sentence", None), "qnli": ("question", "sentence"),
              "qqp": ("question1", "question2"), "mnli": ("premise", "hypothesis"),
              "mrpc": ("sentence1", "sentence2"), "stsb": ("sentence1", "sentence2")}


def _write_tsv(path, header, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join("\t".join(map(str, r)) for r in [header, *rows]) + "\n")


def test_tsv_rows_labels_and_short_lines(tmp_path, caplog):
  """MNLI's label names, MRPC's index-less train file, and a short line skipped."""
  _write_tsv(tmp_path / "MNLI" / "dev_matched.tsv",
             ("index", "genre", "sentence1", "sentence2", "gold_label"),
             [(7, "x", "A bell rang.", "A sound was made.", "entailment"),
              (9, "x", "A bell rang.", "Nothing rang.", "contradiction"),
              (11, "x", "too short")])
  rows = glue.read_split(str(tmp_path), "mnli", "dev_matched")
  assert [(r.id, r.index, r.text_a, r.text_b, r.label) for r in rows] == [
      ("mnli/dev_matched/7", 7, "A bell rang.", "A sound was made.", 0),
      ("mnli/dev_matched/9", 9, "A bell rang.", "Nothing rang.", 2)]
  assert "skipped 1 line(s)" in caplog.text and "lines 4" in caplog.text
  _write_tsv(tmp_path / "MRPC" / "train.tsv", ("Quality", "#1 ID", "#2 ID", "#1 String",
                                               "#2 String"),
             [(1, 5, 6, "A dog barked.", "A dog made a bark."), (0, 7, 8, "Rain.", "Sun.")])
  rows = glue.read_split(str(tmp_path), "mrpc", "train")
  assert [(r.index, r.label) for r in rows] == [(0, 1), (1, 0)]


@pytest.mark.parametrize("task, column, value, expected", [
    ("mnli", "gold_label", "maybe", "gold_label 'maybe' is not a label of MNLI"),
    ("stsb", "score", "high", "score 'high' is not a number"),
    ("sst2", "label", "2", "label '2' is not a label of SST-2")])
def test_a_bad_label_is_one_line_naming_file_and_line(tmp_path, task, column, value, expected):
  spec = glue.spec_of(task)
  a, b, label, _ = spec.tsv_columns
  header = [c for c in (a, b, label) if c]
  good = {"mnli": "neutral", "stsb": "2.5", "sst2": "1"}[task]
  _write_tsv(tmp_path / spec.folder / "train.tsv", header,
             [[*(["x"] * (len(header) - 1)), good], [*(["y"] * (len(header) - 1)), value]])
  path = tmp_path / spec.folder / "train.tsv"
  with pytest.raises(glue.GlueDataError) as e:
    glue.read_split(str(tmp_path), task, "train")
  assert str(e.value).startswith(f"{path}, line 3: {expected}")
  assert "\n" not in str(e.value)


def test_a_missing_column_or_folder_is_one_line(tmp_path):
  _write_tsv(tmp_path / "QNLI" / "dev.tsv", ("index", "question", "label"), [(0, "q", "entailment")])
  with pytest.raises(glue.GlueDataError, match=r"dev.tsv, line 1: no column 'sentence'"):
    glue.read_split(str(tmp_path), "qnli", "dev")
  with pytest.raises(glue.GlueDataError, match=r"no QQP/ \(GLUE's TSV layout\) or qqp/"):
    glue.read_split(str(tmp_path), "qqp", "dev")


@pytest.mark.parametrize("task", ["sst2", "qnli", "qqp", "mnli", "mrpc", "stsb"])
def test_the_hugging_face_layout_reads_the_same_rows(tmp_path, task):
  """The sample's rows written as the Hugging Face dataset's files (its column names, label
  ids, test labels -1; Parquet for all but the last split, JSON Lines for it) read back to
  the same examples as GLUE's TSV files."""
  spec = glue.spec_of(task)
  a, b = HF_COLUMNS[task]
  splits = list(spec.splits)
  for n, split in enumerate(splits):
    rows = glue.read_split(str(SAMPLE), task, split)
    hf_split = spec.splits[split][1]
    records = [{a: r.text_a, **({b: r.text_b} if b else {}),
                "label": -1 if r.label is None else r.label, "idx": r.index} for r in rows]
    folder = tmp_path / task
    folder.mkdir(exist_ok=True)
    if n < len(splits) - 1:
      pq.write_table(pa.Table.from_pylist(records), folder / f"{hf_split}-00000-of-00001.parquet")
    else:
      (folder / f"{hf_split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  for split in splits:
    assert glue.read_split(str(tmp_path), task, split) == glue.read_split(str(SAMPLE), task,
                                                                          split)


def _run(tmp_path, task):
  config = glue_config.get_config("smoke")
  config.data.task = task
  config.jax_cache_dir = "none"
  workdir = tmp_path / task
  return sentence.run(config, str(workdir)), workdir


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("task", ["mrpc", "stsb"])
def test_run_scores_predictions_export_and_submission(tmp_path, task):
  """The run's dev scores are scikit-learn's / SciPy's on its own predictions; the export,
  loaded by transformers, predicts the same; the leaderboard file has a line per test row."""
  results, workdir = _run(tmp_path, task)
  spec = glue.spec_of(task)
  rows = [json.loads(line) for line in (workdir / "predictions" / f"{task}_dev.jsonl")
          .read_text().splitlines()]
  dev = glue.read_split(str(SAMPLE), task, "dev")
  assert [r["id"] for r in rows] == [e.id for e in dev]
  predicted = np.array([r["prediction"] for r in rows])
  if spec.head == "regression":
    gold = np.array([e.label for e in dev])
    assert results[task]["dev"]["pearson"] == pytest.approx(
        100 * scipy.stats.pearsonr(predicted, gold)[0], abs=1e-4)
    assert results[task]["dev"]["spearman"] == pytest.approx(
        100 * scipy.stats.spearmanr(predicted, gold)[0], abs=1e-4)
  else:
    gold = np.array([e.label for e in dev])
    ids = np.array([spec.labels.index(p) for p in predicted])
    assert results[task]["dev"]["accuracy"] == pytest.approx(
        100 * sklearn.metrics.accuracy_score(gold, ids))
    assert results[task]["dev"]["f1"] == pytest.approx(
        100 * sklearn.metrics.f1_score(gold, ids, zero_division=0.0))
  # The export: transformers' forward on the dev pairs gives the run's predictions.
  model = transformers.AutoModelForSequenceClassification.from_pretrained(
      workdir / "export", local_files_only=True).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(workdir / "export")
  enc = tokenizer([e.text_a for e in dev], [e.text_b for e in dev], padding=True,
                  return_tensors="pt")
  with torch.no_grad():
    logits = model(**enc).logits.numpy()
  # The rows' outputs differ by about 1e-4 (a tiny model after a few steps): a tolerance
  # well under that, over float32 rounding.
  if spec.head == "regression":
    np.testing.assert_allclose(logits[:, 0], predicted, rtol=0, atol=2e-6)
  else:
    np.testing.assert_allclose(logits, [r["logits"] for r in rows], rtol=0, atol=2e-6)
    assert [model.config.id2label[i] for i in logits.argmax(-1)] == list(predicted)
  lines = (workdir / "submission" / f"{spec.submission['test']}.tsv").read_text().splitlines()
  test = glue.read_split(str(SAMPLE), task, "test")
  assert lines[0] == "index\tprediction" and len(lines) == len(test) + 1
  assert [int(line.split("\t")[0]) for line in lines[1:]] == [e.index for e in test]
  # The same command on the finished run: its results, nothing trained or written again.
  stamp = (workdir / "results.json").stat().st_mtime_ns
  assert _run(tmp_path, task)[0] == {task: json.loads((workdir / "results.json").read_text())[task]}
  assert (workdir / "results.json").stat().st_mtime_ns == stamp


@pytest.mark.e2e
def test_mnli_writes_both_halves_with_label_names(tmp_path):
  results, workdir = _run(tmp_path, "mnli")
  assert set(results["mnli"]) == {"dev_matched", "dev_mismatched", "test_matched",
                                  "test_mismatched"}
  for name in ("MNLI-m", "MNLI-mm"):
    values = {line.split("\t")[1] for line in
              (workdir / "submission" / f"{name}.tsv").read_text().splitlines()[1:]}
    assert values <= {"entailment", "neutral", "contradiction"}
  selection = json.loads((workdir / "results.json").read_text())["selection"]
  assert selection["metric"] == "mnli/dev_matched/accuracy"


def test_preflight_names_a_bad_row_before_any_work(tmp_path):
  data = tmp_path / "glue"
  for split in ("train", "dev", "test"):
    src = SAMPLE / "SST-2" / f"{split}.tsv"
    (data / "SST-2").mkdir(parents=True, exist_ok=True)
    (data / "SST-2" / f"{split}.tsv").write_text(src.read_text())
  bad = data / "SST-2" / "dev.tsv"
  bad.write_text(bad.read_text().replace("\t1\n", "\tpositive!\n", 1))
  config = glue_config.get_config("smoke")
  config.data.dir = str(data)
  plan = preflight.plan(config, str(tmp_path / "w"))
  assert len(plan.problems) == 1 and plan.problems[0].startswith(f"{bad}, line ")
  assert "label 'positive!' is not a label of SST-2" in plan.problems[0]
  config.data.dir = str(SAMPLE)
  plan = preflight.plan(config, str(tmp_path / "w"))
  assert plan.problems == []
  counts = {s: len(glue.read_split(str(SAMPLE), "sst2", s)) for s in ("train", "dev", "test")}
  assert plan.data[str(SAMPLE / "SST-2")] == ", ".join(f"{s} {n}" for s, n in counts.items())
  hf = tmp_path / "hf"  # The Hugging Face layout: the plan names its own folder.
  (hf / "sst2").mkdir(parents=True)
  for split, name in (("train", "train"), ("dev", "validation"), ("test", "test")):
    rows = glue.read_split(str(SAMPLE), "sst2", split)
    (hf / "sst2" / f"{name}.jsonl").write_text("".join(
        json.dumps({"sentence": r.text_a, "label": -1 if r.label is None else r.label,
                    "idx": r.index}) + "\n" for r in rows))
  config.data.dir = str(hf)
  plan = preflight.plan(config, str(tmp_path / "w"))
  assert plan.problems == [] and list(plan.data) == [str(hf / "sst2")]


@pytest.mark.e2e
@pytest.mark.slow
def test_learning_rate_grid_picks_the_best_mean_dev_metric(tmp_path, monkeypatch):
  """Two rates x two seeds: each rate's results are the mean of its seeds' (by hand), and the
  top results are those of the rate with the higher mean dev accuracy."""
  config = glue_config.get_config("smoke")
  config.data.task = "sst2"
  config.jax_cache_dir = "none"
  config.train.epochs = 1
  config.seeds = (0, 1)
  config.train.learning_rates = (3e-3, 1e-5)
  built = []
  original = encoded.build
  monkeypatch.setattr(encoded, "build", lambda *a, **k: built.append(a[0]) or original(*a, **k))
  results = sentence.run(config, str(tmp_path))
  assert len(built) == 3  # Train, dev and test tokenised once for the 4 runs.
  means = {}
  for rate in ("0.003", "1e-05"):
    seeds = [json.loads((tmp_path / f"lr_{rate}" / f"seed_{s}" / "results.json").read_text())
             for s in (0, 1)]
    accuracy = [r["sst2"]["dev"]["accuracy"] for r in seeds]
    merged = json.loads((tmp_path / f"lr_{rate}" / "results.json").read_text())
    assert merged["sst2"]["dev"]["accuracy"] == pytest.approx(np.mean(accuracy))
    assert merged["sst2"]["dev"]["accuracy_std"] == pytest.approx(np.std(accuracy))
    means[rate] = float(np.mean(accuracy))
  top = json.loads((tmp_path / "results.json").read_text())
  chosen = max(means, key=lambda r: (means[r], r == "0.003"))  # Ties: the first rate.
  assert top["learning_rate"]["chosen"] == float(chosen)
  assert top["learning_rate"]["grid"] == pytest.approx(means)
  assert results["sst2"]["dev"]["accuracy"] == pytest.approx(means[chosen])


def test_span_words_by_hand():
  text = "The dog's bark, loud."
  assert text[4:14] == "dog's bark"
  assert glue.span_words(text, [(4, 14)]) == (5, 3)  # dog, s, bark of The..loud
  assert glue.span_words(text, []) == (5, 0)


@pytest.mark.parametrize("bias, share", [(5.0, 100.0), (-5.0, 0.0)])
def test_table6_counts_every_text_of_every_row(tmp_path, bias, share):
  """A detector that marks every token (or none): every text of every row (both of a pair,
  test splits too) is one span covering all its words (or has none); a rerun reads the span
  files instead of detecting again."""
  from axk import glue_spans
  from axk.features import tiny
  detector = tiny.build_detector(str(tmp_path / "det"), positive_bias=bias)
  out = tmp_path / "out"
  table = glue_spans.run(detector, "sample", str(out), tasks=("sst2", "mrpc"), device="cpu")
  for task, pair in (("sst2", False), ("mrpc", True)):
    for split in ("train", "dev", "test"):
      examples = glue.read_split(str(SAMPLE), task, split)
      words = sum(len(re.findall(r"\w+", t)) for e in examples
                  for t in ([e.text_a, e.text_b] if pair else [e.text_a]))
      row = table[task][split]
      assert row["rows"] == len(examples) and row["texts"] == len(examples) * (1 + pair)
      assert row["words"] == words and row["span_words_pct"] == share
      assert row["spans"] == (row["texts"] if share else 0)
      lines = (out / "spans" / f"{task}_{split}.jsonl").read_text().splitlines()
      first = json.loads(lines[0])
      assert first["id"] == examples[0].id
      assert [t["text"] for t in first["texts"]] == (
          [examples[0].text_a, examples[0].text_b] if pair else [examples[0].text_a])
  assert json.loads((out / "table6.json").read_text()) == table
  (tmp_path / "det" / "config.json").unlink()  # A rerun needs no detector: the files are read.
  assert glue_spans.run(str(tmp_path / "det"), "sample", str(out), tasks=("sst2", "mrpc"),
                        device="cpu") == table


@pytest.mark.parametrize("task", ["mnli", "sst2"])
def test_encoding_is_the_tokenizers_with_longest_first_cuts(task):
  """Chunked encoding (chunks of 5 rows) at a length that cuts about half the rows equals one
  call of the tokenizer with longest-first truncation, padded to the longest row; the cut
  count is the rows longer than the limit uncut."""
  from axk.data import encode as enc
  from configs import common
  tokenizer = enc.load_tokenizer(common.minilm_dir())
  examples = glue.read_split(str(SAMPLE), task, "train")
  a = [e.text_a for e in examples]
  b = [e.text_b for e in examples] if examples[0].text_b else None
  lengths = [len(ids) for ids in tokenizer(a, b)["input_ids"]]
  limit = int(np.median(lengths))  # Some rows are cut, some are not.
  arrays, cut = sentence.encode(tokenizer, examples, limit, np.int32, chunk=5)
  ref = tokenizer(a, b, truncation=True, max_length=limit, padding="longest",
                  return_tensors="np", return_token_type_ids=True)
  for key in ("input_ids", "attention_mask", "token_type_ids"):
    np.testing.assert_array_equal(arrays[key], ref[key])
  assert cut == sum(n > limit for n in lengths) and 0 < cut < len(examples)
  np.testing.assert_array_equal(arrays["labels"], [e.label for e in examples])


def test_batches_grouped_by_length_cover_each_epoch_once_with_less_padding():
  from axk.train import data as data_lib
  rng = np.random.default_rng(0)
  n, width, batch = 1000, 64, 8
  lengths = rng.integers(4, width + 1, n)
  mask = (np.arange(width)[None] < lengths[:, None]).astype(np.int32)
  arrays = {"input_ids": mask * 7, "attention_mask": mask, "labels": np.arange(n)}

  def padding(batches):
    tokens = [batches[s]["attention_mask"] for s in range(len(batches))]
    return 1 - sum(t.sum() for t in tokens) / sum(t.size for t in tokens)

  grouped = data_lib.TrainBatches(arrays, batch_size=batch, epochs=2, seed=3, bucket=1,
                                  group_by_length=10)
  plain = data_lib.TrainBatches(arrays, batch_size=batch, epochs=2, seed=3, bucket=1)
  assert len(grouped) == 2 * (n // batch)
  for epoch in range(2):
    rows = np.concatenate([grouped[s]["labels"] for s in range(epoch * 125, (epoch + 1) * 125)])
    assert sorted(rows) == list(range(n))  # Every row once per epoch (1000 = 125 x 8).
  assert padding(grouped) < padding(plain) / 3
  # Random access: a step read out of order (a resumed run) is the same batch.
  again = data_lib.TrainBatches(arrays, batch_size=batch, epochs=2, seed=3, bucket=1,
                                group_by_length=10)
  for step in (200, 3, 130):
    np.testing.assert_array_equal(again[step]["labels"], grouped[step]["labels"])
