"""Span labels from any labeller (`axk.data.spans.read_labels`), the mask-free encoding of
their sentences, and a span detector trained on them (`configs/span.py`,
`--config.train.labels`). The sentences are invented here."""

import json

import numpy as np
import pytest

from axk.data import encode as enc
from axk.data import spans as spans_lib
from configs import common as common_config

SENTENCES = [
    ("The kettle whistled on the stove.", "kettle whistled"),
    ("A dog barked twice at the gate.", "dog barked"),
    ("Rain drummed on the tin roof all night.", "Rain drummed"),
    ("She smiled and read her book.", None),
    ("Thunder rolled over the hills.", "Thunder rolled"),
    ("The bell rang at noon.", "bell rang"),
    ("He painted the fence blue.", None),
    ("A cat hissed at the stranger.", "cat hissed"),
]


def rows(n_train=24, n_dev=8):
  out = []
  for i in range(n_train + n_dev):
    sentence, span = SENTENCES[i % len(SENTENCES)]
    spans = [] if span is None else [[sentence.index(span), sentence.index(span) + len(span)]]
    out.append({"id": f"invented/{i}", "sentence": sentence, "spans": spans,
                "split": "train" if i < n_train else "dev"})
  return out


def write(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def test_labels_read_offsets_as_the_truth(tmp_path):
  records = rows(2, 1)
  records[0]["spans"] = [{"start": 4, "end": 10}]
  del records[1]["split"]
  got = spans_lib.read_labels(write(tmp_path / "l.jsonl", records))
  assert [(e.id, e.split) for e in got] == [("invented/0", "train"), ("invented/1", "train"),
                                            ("invented/2", "dev")]
  assert got[0].spans[0].text == "kettle" and got[0].task == spans_lib.LABELS_TASK


@pytest.mark.parametrize("line, says", [
    ("not json", ":1: not a JSON object"),
    ('{"id": "a", "spans": []}', ":1: field `sentence` must be a str"),
    ('{"id": "a", "sentence": "Bells ring.", "spans": [[0, 40]]}', "field `spans[0]`"),
    ('{"id": "a", "sentence": "Bells ring.", "spans": [{"begin": 0}]}', "field `spans[0]`"),
    ('{"id": "a", "sentence": "Bells ring.", "spans": [], "split": "wiki"}', "field `split`"),
])
def test_a_bad_labels_line_is_one_line_naming_file_line_and_field(tmp_path, line, says):
  path = tmp_path / "bad.jsonl"
  path.write_text(line + "\n")
  with pytest.raises(ValueError) as e:
    spans_lib.read_labels(str(path))
  assert says in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_repeated_id_is_refused(tmp_path):
  records = rows(2, 0)
  records[1]["id"] = records[0]["id"]
  with pytest.raises(ValueError, match=":2: id 'invented/0' appears twice"):
    spans_lib.read_labels(write(tmp_path / "l.jsonl", records))


def test_sentences_without_mask_are_labelled_by_the_tokenizers_offsets(tmp_path):
  tokenizer = enc.load_tokenizer(common_config.minilm_dir())
  examples = spans_lib.read_labels(write(tmp_path / "l.jsonl", rows(8, 0)))
  arrays = enc.encode_spans(examples, tokenizer, max_length=64)
  assert arrays["mask_positions"].shape == (8, 0)
  for i, e in enumerate(examples):
    # The reference: transformers' offsets; a token is in a span when its characters are.
    ref = tokenizer(e.sentence, return_offsets_mapping=True, return_special_tokens_mask=True)
    want = [-100 if special else int(any(s.start < b and a < s.end for s in e.spans))
            for (a, b), special in zip(ref["offset_mapping"], ref["special_tokens_mask"])]
    n = len(want)
    assert arrays["input_ids"][i, :n].tolist() == ref["input_ids"]
    assert arrays["span_labels"][i, :n].tolist() == want
    assert (arrays["span_labels"][i, n:] == -100).all()
  # A long sentence keeps its first tokens.
  long = spans_lib.read_labels(write(tmp_path / "long.jsonl", [
      {"id": "x", "sentence": "bells ring " * 40, "spans": [[0, 5]]}]))
  cut = enc.encode_spans(long, tokenizer, max_length=16, warn=None)
  ref = tokenizer(long[0].sentence)["input_ids"]
  assert cut["input_ids"][0].tolist() == ref[:15] + [ref[-1]]


@pytest.mark.e2e
def test_the_detector_learns_from_a_labels_file_and_is_selected_on_its_dev(tmp_path):
  from axk.runs import common
  from axk.runs import span
  from configs import span as span_config
  config = span_config.get_config("smoke")
  config.train.labels = write(tmp_path / "labels.jsonl", rows(24, 8))
  span.run(config, str(tmp_path / "run"))
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert "token_f1" in results["labels"]["dev"] and "animal" in results
  predicted = [json.loads(l) for l in
               (tmp_path / "run" / "predictions" / "labels_dev.jsonl").read_text().splitlines()]
  assert [p["id"] for p in predicted] == [f"invented/{i}" for i in range(24, 32)]
  # 24 train rows, batch 8, 3 epochs: 9 steps (AuditoryBench's sample would give more).
  steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert steps[-1] == 3 * int(np.ceil(24 / config.train.batch_size))
  config.train.labels = write(tmp_path / "dev_only.jsonl", rows(0, 4))
  with pytest.raises(common.ConfigError, match="no row of split 'train'"):
    span.run(config, str(tmp_path / "run2"))
