"""ITH on GLUE: the spans of both texts of a row located on the pair's tokens, ITH's fusion
under a sequence head, and the chain from a detector's GLUE span files through the feature
stage to a trained, exported model. Data: the invented GLUE-layout sample shipped with axk."""

import json
import re

import flax.linen as nn
import jax
import numpy as np
import pytest
import transformers

from axk.data import encode as enc
from axk.data import glue
from axk.models import bert as bert_lib
from axk.models import ith as ith_lib
from axk.runs import common
from axk.runs import sentence
from configs import common as common_config
from configs import glue as glue_config

SAMPLE = glue.sample_dir()


def word_spans(text, every=2):
  """Every `every`-th word of `text` as a span dict (character offsets)."""
  return [{"start": m.start(), "end": m.end()}
          for i, m in enumerate(re.finditer(r"\w+", text)) if i % every == 1]


def test_span_ids_mark_each_texts_spans_on_its_own_tokens():
  tokenizer = enc.load_tokenizer(common_config.minilm_dir())
  rows = glue.read_split(SAMPLE, "mrpc", "dev")
  arrays, _ = sentence.encode(tokenizer, rows, 128, np.int32)
  spans = [[word_spans(e.text_a), word_spans(e.text_b, 3)] for e in rows]
  got = sentence.span_ids(tokenizer, rows, spans, arrays, 128)
  for r, e in enumerate(rows):
    # The reference: each text tokenised alone; [CLS] a [SEP] b [SEP] puts them side by side.
    marks, first = [0], 0
    for k, text in enumerate((e.text_a, e.text_b)):
      tok = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
      for a, b in tok["offset_mapping"]:
        j = [i for i, s in enumerate(spans[r][k]) if a < s["end"] and s["start"] < b]
        marks.append(first + j[0] + 1 if j else 0)
      marks.append(0)
      first += len(spans[r][k])
    n = len(marks)
    assert got[r, :n].tolist() == marks and not got[r, n:].any()
    assert set(got[r].tolist()) - {0} == set(range(1, first + 1))


def test_ith_with_a_sequence_head_is_the_text_model_where_no_span_has_audio():
  cfg = bert_lib.BertConfig(vocab_size=90, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=48,
                            max_position_embeddings=32, num_labels=3)
  model = ith_lib.Model(cfg, audio_dim=24, head="sequence_classification")
  r = np.random.RandomState(0)
  b = dict(input_ids=r.randint(5, 90, (3, 10)).astype(np.int32),
           attention_mask=np.ones((3, 10), np.int32), token_type_ids=np.zeros((3, 10), np.int32),
           span_ids=np.zeros((3, 10), np.int32), span_has_audio=np.array([[1], [0], [1]]),
           span_audio_tokens=r.randn(3, 1, 4, 24).astype(np.float32))
  b["span_ids"][0, 2:4] = b["span_ids"][1, 2:4] = 1  # Row 1: a span without audio.
  params = nn.meta.unbox(model.init(jax.random.key(0), b)["params"])
  leaves, tree = jax.tree.flatten(params)  # Random everywhere: init leaves the head near 0.
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [0.2 * jax.random.normal(k, x.shape, x.dtype)
                                     for k, x in zip(keys, leaves)])
  logits = np.asarray(model.apply({"params": params}, b)["logits"])
  text = np.asarray(bert_lib.Bert(cfg, head="sequence_classification").apply(
      {"params": params["bert"]}, b["input_ids"], b["attention_mask"],
      b["token_type_ids"])["logits"])
  assert logits.shape == (3, 3)
  np.testing.assert_array_equal(logits[1:3], text[1:3])  # No audio, or no span: text only.
  assert np.abs(logits[0] - text[0]).max() > 1e-4  # The fused span moves the answer.


def test_an_ith_run_without_its_features_or_stages_is_one_line(tmp_path):
  config = glue_config.get_config("smoke,ith")
  config.features.dir = str(tmp_path)  # No manifest.json there.
  with pytest.raises(common.ConfigError) as e:
    sentence.validate(config)
  assert f"--config.features.dir='{tmp_path}'" in str(e.value) and "\n" not in str(e.value)
  config.features.dir = "auto"
  config.spans.detector = str(tmp_path / "missing")
  with pytest.raises(common.ConfigError, match="--config.spans.detector=.*no such folder"):
    sentence.validate(config)


@pytest.mark.e2e
@pytest.mark.slow  # Three stage processes, then the run.
def test_ith_on_glue_runs_its_stages_and_exports(tmp_path):
  """`configs/glue.py:smoke,ith` with `features.dir=auto` and a given detector that marks
  every token: its stages find each text as one span (axk.glue_spans), generate their audio
  (configs/features.py:smoke,glue), and the run fuses the clips the tiny CLAP accepts."""
  from axk.features import tiny
  config = glue_config.get_config("smoke,ith")
  config.data.task = "mrpc"
  config.spans.detector = tiny.build_detector(str(tmp_path / "det"), positive_bias=5.0)
  sentence.run(config, str(tmp_path / "run"))
  stages = tmp_path / "run" / "stages"
  assert not (stages / "span").exists()  # The given detector: none trained.
  table6 = json.loads((stages / "glue_spans" / "table6.json").read_text())
  assert table6["mrpc"]["dev"]["span_words_pct"] == 100.0
  manifest = json.loads((stages / "features_mrpc" / "features" / "manifest.json").read_text())
  texts = sum(2 * len(glue.read_split(SAMPLE, "mrpc", s)) for s in ("train", "dev", "test"))
  assert sum(manifest["counts"]["by_split"][f"mrpc/{s}"]["examples"]
             for s in ("train", "dev", "test")) == texts
  assert 0 < manifest["counts"]["distinct_with_audio"] < manifest["counts"]["distinct_spans"]
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert set(results["mrpc"]["dev"]) >= {"accuracy", "f1"}
  # The run's rows carry each text's clip: one span a text (the whole text), with audio where
  # the features have it, counted here from the shards themselves.
  from axk.features import shards
  features = stages / "features_mrpc" / "features"
  config.features.dir = str(features)
  task = sentence.SentenceTask(config, str(tmp_path / "run"))
  for split in ("train", "dev"):
    rows = glue.read_split(SAMPLE, "mrpc", split)
    stored = shards.load_features(str(features), "mrpc", split)
    want = [[int(s["has_audio"]) for k in (0, 1) for s in stored[glue.text_id(e.id, k)]["spans"]]
            for e in rows]
    arrays = task.train_arrays if split == "train" else task.eval_arrays["mrpc/dev"]["paper"]
    assert arrays["span_has_audio"].tolist() == want
    assert sum(map(sum, want)) > 0
    tokens = np.asarray(arrays["span_audio_tokens"][np.arange(len(rows))])
    assert (np.abs(tokens).sum((-1, -2)) > 0).astype(int).tolist() == want
  export = tmp_path / "run" / "export"
  meta = json.loads((export / "ith.json").read_text())
  assert meta["head"] == "sequence_classification" and meta["method"] == "ith"
  model = transformers.AutoModelForSequenceClassification.from_pretrained(export)
  assert type(model).__name__ == "BertForSequenceClassification"
  from safetensors.numpy import load_file
  assert {"fusion.query.weight", "audio_mlp.fc1.weight"} <= set(load_file(
      str(export / "fusion.safetensors")))


def test_the_plan_lists_iths_stages_and_which_are_reused(tmp_path):
  from axk.runs import preflight
  config = glue_config.get_config("smoke,ith")
  config.data.task = "mrpc"
  names = lambda plan: [(s.name, s.runs) for s in plan.stages]
  assert names(preflight.plan(config, str(tmp_path))) == [
      ("span detector", True), ("GLUE spans", True), ("features", True)]
  export = tmp_path / "stages" / "span" / "export"
  export.mkdir(parents=True)
  (export / "config.json").write_text("{}")
  config.spans.detector = ""
  assert names(preflight.plan(config, str(tmp_path)))[0] == ("span detector", False)
  config.spans.detector = str(export)  # A given detector: no detector stage.
  assert [n for n, _ in names(preflight.plan(config, str(tmp_path)))] == ["GLUE spans",
                                                                        "features"]


@pytest.mark.parametrize("line, says", [
    ("{not json", ":2: not a JSON object"),
    ('{"id": "r1", "texts": [{"text": "Bells ring."}]}', ":2: expected"),
    ('{"id": "r1", "texts": [{"text": "Bells ring.", "spans": [[0, 40]]}]}',
     ":2: texts[0] span [0, 40] lies outside its 11-character text"),
])
def test_a_bad_span_file_line_is_one_line_naming_file_and_line(tmp_path, line, says):
  path = tmp_path / "sst2_dev.jsonl"
  path.write_text('{"id": "r0", "texts": [{"text": "A bell.", "spans": [[2, 6]]}]}\n'
                  + line + "\n")
  with pytest.raises(glue.GlueDataError) as e:
    glue.read_span_file(str(path), "sst2", "dev")
  assert str(path) + says in str(e.value) and "\n" not in str(e.value)
