"""GLUE read from a TFDS data_dir (`layout="tfds"`): a tiny `glue/<config>` dataset prepared
here by TFDS itself as array_record files (invented rows, TFDS's GLUE feature names and label
names), read back without TensorFlow to the rows written, through "tfds" and "auto", and to
the same rows as those rows written in the Hugging Face layout; a missing config, split or
feature is one line naming the folder and the `tfds build` command."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from axk.data import glue

# Invented rows per config and split: (text_a, text_b or None, label, idx); test labels -1.
ROWS = {
    "sst2": {
        "train": [("A kettle sang on the stove all morning.", None, 1, 0),
                  ("The drummer lost the beat twice.", None, 0, 1),
                  ("Crickets filled the garden with a soft hum.", None, 1, 2)],
        "validation": [("The siren drowned out the café's music.", None, 0, 0),
                       ("A choir rehearsed in the empty hall.", None, 1, 1)],
        "test": [("Rain tapped against the tin roof.", None, -1, 0),
                 ("The violin was slightly out of tune.", None, -1, 1)],
    },
    "mrpc": {
        "train": [("The bell rang at noon.", "At noon the bell rang.", 1, 0),
                  ("A dog barked at the mail van.", "The cat slept through the storm.", 0, 1)],
        "validation": [("Thunder rolled over the hills.", "The hills echoed with thunder.", 1, 0)],
    },
    "mnli": {
        "train": [("A flute played in the park.", "Music was heard outside.", 0, 0),
                  ("The engine roared to life.", "The engine stayed silent.", 2, 1)],
        "validation_matched": [("Waves crashed on the rocks.", "The sea was loud.", 0, 0),
                               ("A whistle blew twice.", "Someone was training a dog.", 1, 1)],
        "validation_mismatched": [("The clock ticked in the hall.", "The hall was quiet.", 1, 0)],
        "test_matched": [("Glass shattered in the kitchen.", "Something broke.", -1, 0)],
        "test_mismatched": [("Leaves rustled in the wind.", "There was no wind.", -1, 0)],
    },
    # Prepared without the second text, to check that a missing feature is named.
    "stsb": {
        "train": [("Two birds sang at dawn.", None, 4.25, 0)],
    },
}
FEATURES = {"sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
            "mnli": ("premise", "hypothesis"), "stsb": ("sentence1", None)}
TASK_SPLIT = {"train": "train", "validation": "dev", "test": "test",
              "validation_matched": "dev_matched", "validation_mismatched": "dev_mismatched",
              "test_matched": "test_matched", "test_mismatched": "test_mismatched"}


class Glue(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Prepares to `<data_dir>/glue/<config>/2.0.0/`, as TFDS's own GLUE builder does."""

  VERSION = tfds.core.Version("2.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in ROWS]

  def _info(self):
    a, b = FEATURES[self.builder_config.name]
    features = {a: tfds.features.Text()}
    if b:
      features[b] = tfds.features.Text()
    labels = glue.spec_of(self.builder_config.name).labels
    features["label"] = tfds.features.ClassLabel(names=labels) if labels else np.float32
    features["idx"] = np.int32
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in ROWS[self.builder_config.name]}

  def _generate_examples(self, split):
    a, b = FEATURES[self.builder_config.name]
    for text_a, text_b, label, idx in ROWS[self.builder_config.name][split]:
      yield idx, {a: text_a, **({b: text_b} if b else {}), "label": label, "idx": idx}


class OldGlue(Glue, skip_registration=True):
  """An older version of the same dataset, whose rows a reader must not take."""

  name = "glue"
  VERSION = tfds.core.Version("1.0.0")

  def _generate_examples(self, split):
    a, _ = FEATURES[self.builder_config.name]
    yield 0, {a: "An older version's row.", "label": 0, "idx": 0}


def _expected(config, split):
  task_split = TASK_SPLIT[split]
  labelled = not task_split.startswith("test")
  return [glue.SentenceExample(f"{config}/{task_split}/{idx}", idx, a, b or "",
                               label if labelled else None)
          for a, b, label, idx in ROWS[config][split]]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  OldGlue(config="sst2", data_dir=str(root)).download_and_prepare(file_format="array_record")
  for config in ROWS:
    Glue(config=config, data_dir=str(root)).download_and_prepare(file_format="array_record")
  return root


def test_the_prepared_folders_are_tfds_glue_layout(data_dir):
  assert sorted(p.name for p in (data_dir / "glue" / "sst2").iterdir()
                if not p.name.startswith(".")) == ["1.0.0", "2.0.0"]
  for config in ROWS:
    assert (data_dir / "glue" / config / "2.0.0" / "dataset_info.json").is_file()


@pytest.mark.parametrize("config, split", [(c, s) for c in ("sst2", "mrpc", "mnli")
                                           for s in ROWS[c]])
def test_tfds_and_auto_read_the_rows_written(data_dir, config, split):
  expected = _expected(config, split)
  task_split = TASK_SPLIT[split]
  assert glue.layout_of(str(data_dir), config) == "tfds"
  assert glue.read_split(str(data_dir), config, task_split, layout="tfds") == expected
  assert glue.read_split(str(data_dir), config, task_split) == expected
  files = glue.split_files(str(data_dir), config, task_split, layout="tfds")
  assert files and all(f.startswith(str(data_dir / "glue" / config / "2.0.0") + "/")
                       and ".array_record-" in f for f in files)


def test_a_missing_config_split_or_feature_is_one_line(data_dir):
  root = str(data_dir)
  messages = []

  def error(read, *args, **kwargs):
    with pytest.raises(glue.GlueDataError) as e:
      read(root, *args, **kwargs)
    messages.append(str(e.value))
    return str(e.value)

  message = error(glue.read_split, "qqp", "dev", layout="tfds")
  assert message.startswith(f"{data_dir / 'glue' / 'qqp'}: no prepared TFDS dataset")
  assert f"tfds build glue/qqp --file_format=array_record --data_dir={root}" in message
  assert "nor glue/qqp/ (a TFDS data_dir)" in error(glue.read_split, "qqp", "dev")
  for read in (glue.read_split, glue.split_files):
    message = error(read, "mrpc", "test", layout="tfds")
    assert message.startswith(f"{data_dir / 'glue' / 'mrpc' / '2.0.0'} (task mrpc, split "
                              "test): no split 'test' (it holds train, validation)")
    assert "tfds build glue/mrpc --file_format=array_record" in message
  message = error(glue.split_files, "stsb", "train", layout="tfds")
  assert message.startswith(f"{data_dir / 'glue' / 'stsb' / '2.0.0'} (task stsb, split "
                            "train): no feature 'sentence2'")
  assert all("\n" not in m for m in messages)


def test_the_hf_layout_of_the_same_rows_reads_to_the_same_examples(data_dir, tmp_path):
  for config in ("sst2", "mrpc", "mnli"):
    a, b = FEATURES[config]
    for split, rows in ROWS[config].items():
      path = tmp_path / config / f"{split}.jsonl"
      path.parent.mkdir(exist_ok=True)
      path.write_text("".join(
          json.dumps({a: ta, **({b: tb} if b else {}), "label": label, "idx": idx}) + "\n"
          for ta, tb, label, idx in rows), encoding="utf-8")
      task_split = TASK_SPLIT[split]
      hf = glue.read_split(str(tmp_path), config, task_split, layout="hf")
      assert hf == glue.read_split(str(tmp_path), config, task_split)
      assert hf == glue.read_split(str(data_dir), config, task_split, layout="tfds")
      assert hf == _expected(config, split)
