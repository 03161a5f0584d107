"""GLUE splits tokenised to disk (axk/data/encoded.py, axk.runs.sentence.encode_split) and
read back a batch at a time, against transformers' tokenizer called on the whole split."""

import pathlib

import numpy as np
import pytest

from axk.bench import glue_scale
from axk.data import encode as enc
from axk.data import encoded
from axk.data import glue
from axk.runs import sentence
from axk.train import data as data_lib
from configs import common

ROWS = 300


@pytest.fixture(scope="module")
def tokenizer():
  return enc.load_tokenizer(common.minilm_dir())


def _reference(tokenizer, examples, limit):
  """The tokenizer's own arrays: the whole split in one call, cut longest-first, padded to
  its longest row."""
  a = [e.text_a for e in examples]
  b = [e.text_b for e in examples] if examples[0].text_b else None
  ref = tokenizer(a, b, truncation=True, max_length=limit, padding="longest",
                  return_tensors="np", return_token_type_ids=True)
  return {k: ref[k].astype(np.int32) for k in ("input_ids", "attention_mask",
                                               "token_type_ids")}


@pytest.mark.parametrize("task, root, limit", [("mnli", None, 24), ("sst2", "sample", 12)])
def test_a_split_on_disk_reads_as_the_tokenizers_arrays(tmp_path, tokenizer, task, root, limit):
  """Rows read in any order (and the loop's batches, shuffled or grouped by length) equal
  the tokenizer's padded arrays; ids, source indices and labels are the file's."""
  if root is None:
    root = str(tmp_path / "glue")
    glue_scale.write_pairs(root, ROWS, seed=1)
  root = glue.resolve_dir(root)
  spec = glue.spec_of(task)
  examples = glue.read_split(root, task, "train")
  split = sentence.encode_split(str(tmp_path / "enc"), root, spec, "train", "auto", tokenizer,
                                limit, chunk=7)
  ref = _reference(tokenizer, examples, limit)
  assert split["input_ids"].shape == ref["input_ids"].shape
  rows = np.random.default_rng(0).permutation(len(examples))
  for key in ref:
    np.testing.assert_array_equal(split[key][rows], ref[key][rows])
    np.testing.assert_array_equal(split[key][2:5], ref[key][2:5])
    np.testing.assert_array_equal(split[key][3], ref[key][3])
  if task == "mnli":  # Some rows were cut, some not: both kinds are covered.
    lengths = [len(ids) for ids in tokenizer([e.text_a for e in examples],
                                             [e.text_b for e in examples])["input_ids"]]
    assert 0 < sum(n > limit for n in lengths) < len(examples)
  assert list(split.ids) == [e.id for e in examples]
  assert [split.ids[i] for i in (0, len(examples) - 1)] == [examples[0].id, examples[-1].id]
  assert split.index.tolist() == [e.index for e in examples]
  np.testing.assert_array_equal(split["labels"], [e.label for e in examples])
  ref["labels"] = np.asarray([e.label for e in examples], np.int32)
  for group in (0, 3):
    ours = data_lib.TrainBatches(split, batch_size=4, epochs=2, seed=5, bucket=8,
                                 group_by_length=group)
    theirs = data_lib.TrainBatches(ref, batch_size=4, epochs=2, seed=5, bucket=8,
                                   group_by_length=group)
    assert len(ours) == len(theirs) > 0
    for step in range(len(ours)):
      a, b = ours[step], theirs[step]
      assert a.keys() == b.keys()
      for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_reopened_unless_its_files_tokenizer_or_length_change(tmp_path, tokenizer, monkeypatch):
  root = str(tmp_path / "glue")
  glue_scale.write_pairs(root, 40)
  spec = glue.spec_of("mnli")
  built = []
  original = encoded.build
  monkeypatch.setattr(encoded, "build", lambda *a, **k: built.append(1) or original(*a, **k))
  folder = str(tmp_path / "enc")

  def encode(limit=32):
    return sentence.encode_split(folder, root, spec, "train", "tsv", tokenizer, limit)

  first = encode()
  assert first.rows == 40 and len(built) == 1
  assert encode().folder == first.folder and len(built) == 1  # Opened, not built.
  want = first["input_ids"][np.arange(40)]
  # Damaged since: a token file cut short, an index file emptied: built again, read right.
  for name in ("input_ids.bin", "offsets.npy"):
    path = pathlib.Path(first.folder) / name
    path.write_bytes(path.read_bytes()[:-3] if name.endswith(".bin") else b"")
    rebuilt = encode()
    assert rebuilt.folder == first.folder
    np.testing.assert_array_equal(rebuilt["input_ids"][np.arange(40)], want)
  assert len(built) == 3
  longer = encode(48)  # Another length: its own folder; the first one stays.
  assert longer["input_ids"].shape[1] > 32 and len(built) == 4
  assert longer.folder != first.folder and encoded.open_split(first.folder, first.meta["key"])
  path = tmp_path / "glue" / "MNLI" / "train.tsv"
  lines = path.read_text().splitlines()
  path.write_text("\n".join(lines[:-1]) + "\n")  # One row fewer.
  assert encode(48).rows == 39 and len(built) == 5
  other = enc.load_tokenizer(common.minilm_dir())
  other.add_tokens(["kettlewhistle"])  # Another vocabulary: another tokenizer.
  sentence.encode_split(folder, root, spec, "train", "tsv", other, 48)
  assert len(built) == 6
  assert len(list((tmp_path / "enc" / "mnli").iterdir())) == 4


def test_an_interrupted_build_leaves_no_split_and_names_the_line(tmp_path, tokenizer):
  """A bad label on the last line, after several chunks were written: one line naming it,
  no split folder and no temporary left; once mended, the split builds."""
  root = str(tmp_path / "glue")
  glue_scale.write_pairs(root, 50)
  path = tmp_path / "glue" / "MNLI" / "train.tsv"
  text = path.read_text()
  path.write_text(text.rsplit("\t", 1)[0] + "\tmaybe\n")
  where = tmp_path / "enc"
  with pytest.raises(glue.GlueDataError, match=r"train.tsv, line 51: gold_label 'maybe'"):
    sentence.encode_split(str(where), root, glue.spec_of("mnli"), "train", "tsv", tokenizer,
                          32, chunk=8)
  assert not list((where / "mnli").iterdir())  # Neither the split nor its temporary.
  path.write_text(text)
  assert sentence.encode_split(str(where), root, glue.spec_of("mnli"), "train", "tsv",
                               tokenizer, 32, chunk=8).rows == 50


def test_the_split_is_read_a_chunk_at_a_time(tmp_path, tokenizer, monkeypatch):
  """Each chunk is tokenised before the next rows are read: the texts of the split are never
  all in memory."""
  root = str(tmp_path / "glue")
  glue_scale.write_pairs(root, 60)
  read = [0]
  seen = []
  original_iter, original_rows = glue.iter_split, sentence.encode_rows

  def counting_iter(*args, **kwargs):
    for example in original_iter(*args, **kwargs):
      read[0] += 1
      yield example

  def recording_rows(tok, part, limit):
    seen.append((len(part), read[0]))
    return original_rows(tok, part, limit)

  monkeypatch.setattr(glue, "iter_split", counting_iter)
  monkeypatch.setattr(sentence, "encode_rows", recording_rows)
  sentence.encode_split(str(tmp_path / "enc"), root, glue.spec_of("mnli"), "train", "tsv",
                        tokenizer, 32, chunk=16)
  assert seen == [(16, 16), (16, 32), (16, 48), (12, 60)]
