"""GLUE's sentence and sentence-pair tasks (ITH's Appendix D, Table 5) as benchmark specs.

    sst2  SST-2   one sentence     positive / negative          accuracy
    qnli  QNLI    question, sentence  entailment / not           accuracy
    qqp   QQP     question pair    duplicate / not              accuracy, F1
    mnli  MNLI    premise, hypothesis  entailment / neutral / contradiction  accuracy
                  (dev and test in two halves: matched and mismatched genres)
    mrpc  MRPC    sentence pair    paraphrase / not             accuracy, F1
    stsb  STS-B   sentence pair    similarity 0-5 (regression)  Pearson, Spearman

Each spec says where its splits lie in GLUE's own folder layout (the TSV files of GLUE's
download script) and in the Hugging Face dataset's (`nyu-mll/glue`, Parquet), which columns
hold the texts and the label, the label names in the order both use, the metrics, and the
file name of the GLUE leaderboard's submission. Reading is `axk/data/glue.py`.

These specs register when this module is imported (the sentence-task run imports it); they
are not among AuditoryBench's masked-word tasks, whose runs refuse their heads in one line.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from axk.tasks.base import Task
from axk.tasks.base import register

PUBLISHED_SOURCE = "ITH paper, Appendix D, Table 5 (REFERENCE.md)"
# GLUE's metric names, as results.json keys; every value is in percent.
METRICS = ("accuracy", "f1", "pearson", "spearman")


_SPLITS = {"train": ("train", "train"), "dev": ("dev", "validation"), "test": ("test", "test")}
_MNLI_SPLITS = {"train": ("train", "train"),
                "dev_matched": ("dev_matched", "validation_matched"),
                "dev_mismatched": ("dev_mismatched", "validation_mismatched"),
                "test_matched": ("test_matched", "test_matched"),
                "test_mismatched": ("test_mismatched", "test_mismatched")}

@dataclasses.dataclass(frozen=True)
class SentenceTask(Task):
  """A sentence or sentence-pair task: a label (`classification`) or a number
  (`regression`) from the pooled `[CLS]`.

  Attributes (beside `Task`'s; `folder` is the task's folder in GLUE's layout):
    splits: axk split -> (GLUE TSV file stem, Hugging Face split name). A split whose name
      starts with "test" has no labels.
    tsv_columns: GLUE's TSV header names: (first text, second text or "", label, index);
      the index column of a labelled file may be absent (rows are then numbered from 0).
    hf_columns: the Hugging Face dataset's columns: (first text, second text or "").
    labels: label names in the order of their ids (both layouts use this order); empty for
      a regression task.
    metrics: the scores of an evaluation split (`METRICS`).
    selection_metric: the metric that picks the best checkpoint.
    submission: the leaderboard's file stem per test split.
  Defaults that differ from `Task`'s: no AuditoryBench rows, a classification head scored by
  the paper protocol only, the dev column, GLUE's train/dev/test splits, Table 5's source.
  """

  rows: None = None
  head: str = "classification"
  protocols: tuple[str, ...] = ("paper",)
  columns: tuple[str, ...] = ("dev",)
  published_source: str = PUBLISHED_SOURCE
  splits: Mapping[str, tuple[str, str]] = dataclasses.field(
      default_factory=lambda: dict(_SPLITS), hash=False)
  tsv_columns: tuple[str, str, str, str] = ("", "", "", "")
  hf_columns: tuple[str, str] = ("", "")
  labels: tuple[str, ...] = ()
  metrics: tuple[str, ...] = ("accuracy",)
  selection_metric: str = "accuracy"
  submission: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)

  def __post_init__(self):
    super().__post_init__()
    where = f"benchmark task {self.name!r}"
    if self.head not in ("classification", "regression"):
      raise ValueError(f"{where}: a sentence task's head is classification or regression.")
    if (self.head == "classification") != bool(self.labels):
      raise ValueError(f"{where}: a classification head needs label names, and only it.")
    if set(self.metrics) - set(METRICS) or self.selection_metric not in self.metrics:
      raise ValueError(f"{where}: metrics {self.metrics} must be among {METRICS} and hold "
                       f"the selection metric {self.selection_metric!r}.")

  @property
  def pair(self) -> bool:
    return bool(self.hf_columns[1])

  @property
  def num_labels(self) -> int:
    """Outputs of the head: the labels, or 1 for regression."""
    return len(self.labels) or 1

  @property
  def eval_splits(self) -> tuple[str, ...]:
    return tuple(s for s in self.splits if s != "train" and not s.startswith("test"))

  @property
  def test_splits(self) -> tuple[str, ...]:
    return tuple(s for s in self.splits if s.startswith("test"))


# ITH's Table 5, BERT-base: the fine-tuned baseline ("glue_bert") and ITH ("glue_ith"), keyed
# by configs/paper.py's rows; the paper does not say which metric (axk shows each task's
# selection metric: accuracy, STS-B's Pearson).
_PUBLISHED = {"sst2": (89.3, 92.7), "qnli": (87.9, 90.4), "qqp": (None, 90.9),
              "mnli": (79.4, 83.7), "mrpc": (None, 85.7), "stsb": (84.4, 87.5)}


def _published(name: str) -> dict:
  bert, ith = _PUBLISHED[name]
  dev = "dev_matched" if name == "mnli" else "dev"
  return {**({"glue_bert": {dev: bert}} if bert is not None else {}), "glue_ith": {dev: ith}}


SST2 = register(SentenceTask(
    name="sst2", title="SST-2", folder="SST-2",
    tsv_columns=("sentence", "", "label", "index"), hf_columns=("sentence", ""),
    labels=("negative", "positive"), submission={"test": "SST-2"},
    published=_published("sst2"),
    example="The film's soundtrack was a joy to hear."))
QNLI = register(SentenceTask(
    name="qnli", title="QNLI", folder="QNLI",
    tsv_columns=("question", "sentence", "label", "index"), hf_columns=("question", "sentence"),
    labels=("entailment", "not_entailment"), submission={"test": "QNLI"},
    published=_published("qnli")))
QQP = register(SentenceTask(
    name="qqp", title="QQP", folder="QQP",
    tsv_columns=("question1", "question2", "is_duplicate", "id"),
    hf_columns=("question1", "question2"), labels=("not_duplicate", "duplicate"),
    metrics=("accuracy", "f1"), submission={"test": "QQP"},
    published=_published("qqp")))
MNLI = register(SentenceTask(
    name="mnli", title="MNLI", folder="MNLI",
    columns=("dev_matched", "dev_mismatched"), splits=_MNLI_SPLITS,
    tsv_columns=("sentence1", "sentence2", "gold_label", "index"),
    hf_columns=("premise", "hypothesis"), labels=("entailment", "neutral", "contradiction"),
    submission={"test_matched": "MNLI-m", "test_mismatched": "MNLI-mm"},
    published=_published("mnli")))
MRPC = register(SentenceTask(
    name="mrpc", title="MRPC", folder="MRPC",
    tsv_columns=("#1 String", "#2 String", "Quality", "index"),
    hf_columns=("sentence1", "sentence2"), labels=("not_equivalent", "equivalent"),
    metrics=("accuracy", "f1"), submission={"test": "MRPC"},
    published=_published("mrpc")))
STSB = register(SentenceTask(
    name="stsb", title="STS-B", folder="STS-B", head="regression",
    tsv_columns=("sentence1", "sentence2", "score", "index"),
    hf_columns=("sentence1", "sentence2"), metrics=("pearson", "spearman"),
    selection_metric="pearson", submission={"test": "STS-B"},
    published=_published("stsb")))
# In the order of ITH's Table 5.
NAMES = (SST2.name, QNLI.name, QQP.name, MNLI.name, MRPC.name, STSB.name)
