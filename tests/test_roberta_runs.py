"""The span detector, AudioBERT and ITH on a RoBERTa backbone: its `<mask>`, its byte-level
answers, its exports run in PyTorch.

The references are transformers' own: the tokenizer on the sentence with the answer written
in (where the masked word's tokens are), `RobertaForMaskedLM` / `RobertaForTokenClassification`
with PEFT (the exports run through `axk.pt`).
"""

import dataclasses
import json

import flax.linen as nn
import jax
import numpy as np
import peft
import pytest
import torch
import transformers

from axk import methods
from axk.data import auditorybench as ab
from axk.data import encode as enc
from axk.data import spans as spans_lib
from axk.data.types import MASK
from axk.features import tiny
from axk.models import audiobert as audiobert_lib
from axk.models import bert as bert_lib
from axk.models import ith as ith_lib
from axk.pt.audiobert import AudioBertTorch
from axk.pt.ith import IthTorch
from axk.runs import common
from configs import common as common_config

ROBERTA = bert_lib.BertConfig(model_type="roberta", vocab_size=120, hidden_size=32,
                              num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                              max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
                              layer_norm_eps=1e-5)


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
  return tiny.build_roberta(str(tmp_path_factory.mktemp("roberta") / "model"))


def sample(task, split):
  return ab.load_task(ab.resolve_data_dir("sample"), task, (split,))[split].examples


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_answers_are_the_tokens_the_sentence_has_with_the_answer_written_in(family,
                                                                            roberta_dir):
  tokenizer = enc.load_tokenizer(roberta_dir if family == "roberta"
                                 else common_config.minilm_dir())
  examples = sample("pitch", "test") + sample("animal", "test")
  rows = enc.encode(examples, tokenizer, max_length=128)
  for i, e in enumerate(examples):
    written = e.sentence.replace(MASK, e.answer)
    ref = tokenizer(written, return_offsets_mapping=True, return_special_tokens_mask=True)
    at = e.sentence.index(MASK)
    # The reference: the tokens of the answer's characters in the written sentence, with the
    # space before it where the tokenizer writes that into a token (`Ġ`).
    answer = [t for t, (a, b), special in zip(ref["input_ids"], ref["offset_mapping"],
                                              ref["special_tokens_mask"])
              if not special and at - 1 <= a and at <= b <= at + len(e.answer)]
    n = int(rows["mask_count"][i])
    got = rows["mlm_labels"][i][rows["mask_positions"][i][:n]].tolist()
    assert got == answer, (e.id, tokenizer.convert_ids_to_tokens(got),
                           tokenizer.convert_ids_to_tokens(answer))
    # The mask token stands at `[MASK]`'s characters; the words around it keep theirs.
    ids = rows["input_ids"][i].tolist()
    assert ids[rows["mask_positions"][i][0]] == tokenizer.mask_token_id
    offsets = rows["offsets"][i]
    assert tuple(offsets[rows["mask_positions"][i][0]]) == (at, at + len(MASK))
    for span in e.spans:
      inside = (rows["span_ids"][i] > 0) & (offsets[:, 1] > offsets[:, 0])
      covered = "".join(e.sentence[a:b] for a, b in offsets[inside]).replace(" ", "")
      assert span.text.replace(" ", "") in covered or not span.text.strip()
  if family == "roberta":
    assert tokenizer.convert_ids_to_tokens(enc.answer_pieces(tokenizer, "higher")) == ["Ġhigher"]


def random_params(module, inputs, seed):
  params = nn.meta.unbox(module.init(jax.random.key(0), *inputs)["params"])
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [0.2 * jax.random.normal(k, x.shape, x.dtype)
                                   for k, x in zip(keys, leaves)])


def padded_batch(b=4, length=12, spans=2, dim=24, tokens=5, seed=0):
  """Rows padded with RoBERTa's padding id, so that its position ids skip them."""
  r = np.random.RandomState(seed)
  ids = r.randint(5, ROBERTA.vocab_size, (b, length)).astype(np.int32)
  mask = np.ones((b, length), np.int32)
  mask[2, 8:], mask[3, 6:] = 0, 0
  ids[mask == 0] = ROBERTA.pad_token_id
  span_ids = np.zeros((b, length), np.int32)
  span_ids[0, 2:4], span_ids[1, 1:3], span_ids[1, 5:7], span_ids[3, 3:5] = 1, 1, 2, 1
  has = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], np.int32)
  return dict(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids),
              span_ids=span_ids, span_has_audio=has,
              span_audio=r.randn(b, spans, dim).astype(np.float32),
              span_audio_tokens=r.randn(b, spans, tokens, dim).astype(np.float32),
              lora_gate=has.any(1).astype(np.float32))


def test_audiobert_on_roberta_exports_to_roberta_with_a_peft_adapter(tmp_path):
  module = audiobert_lib.Model(ROBERTA, audio_dim=24, lora_rank=4, lora_alpha=8.0)
  b = padded_batch()
  inputs = ({k: b[k] for k in methods.get("audiobert").inputs},)
  params = random_params(module, inputs, 1)
  methods.get("audiobert").export(jax.device_get(params), module, str(tmp_path))
  with open(tmp_path / "base" / "config.json") as f:
    assert json.load(f)["architectures"] == ["RobertaForMaskedLM"]
  ours = np.asarray(module.apply({"params": params}, *inputs)["logits"])
  pt = AudioBertTorch.from_export(str(tmp_path))
  theirs = pt(**{k: torch.tensor(v) for k, v in b.items() if k != "span_audio_tokens"}).numpy()
  valid = b["attention_mask"].astype(bool)
  assert np.abs(ours - theirs)[valid].max() <= 1e-4
  # The adapter alone loads onto the base with PEFT, and switches the rows with a span.
  base = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "base")
  lora = peft.PeftModel.from_pretrained(base, tmp_path / "adapter")
  names = {n for n, _ in lora.named_parameters() if "lora_A" in n}
  assert names and all(".roberta.encoder.layer." in n for n in names)
  loaded = methods.get("audiobert").load(str(tmp_path))
  again = np.asarray(loaded(**{k: b[k] for k in methods.get("audiobert").inputs}))
  assert np.abs(again - ours)[valid].max() <= 1e-5


@pytest.mark.parametrize("fusion_layer", [0, 1])
def test_ith_on_roberta_exports_to_roberta_and_fuses_as_in_pytorch(fusion_layer, tmp_path):
  module = ith_lib.Model(ROBERTA, audio_dim=24, fusion_layer=fusion_layer)
  b = padded_batch(seed=1)
  inputs = ({k: b[k] for k in methods.get("ith").inputs},)
  params = random_params(module, inputs, 2)
  methods.get("ith").export(jax.device_get(params), module, str(tmp_path))
  ours = np.asarray(module.apply({"params": params}, *inputs)["logits"])
  pt = IthTorch.from_export(str(tmp_path))
  t = {k: torch.tensor(v) for k, v in b.items()}
  theirs = pt(t["input_ids"], t["attention_mask"], t["token_type_ids"], t["span_ids"],
              t["span_audio_tokens"], t["span_has_audio"]).numpy()
  valid = b["attention_mask"].astype(bool)
  assert np.abs(ours - theirs)[valid].max() <= 1e-4


def test_a_random_model_with_a_roberta_tokenizer_is_a_roberta(roberta_dir):
  fields = common.tiny_fields(roberta_dir, dict(common_config.TINY_BERT))
  hf_config = transformers.AutoConfig.from_pretrained(roberta_dir)
  cfg = bert_lib.BertConfig(vocab_size=hf_config.vocab_size, **fields)
  assert (cfg.model_type, cfg.pad_token_id, cfg.type_vocab_size) == ("roberta", 1, 1)
  # transformers' RoBERTa reads positions pad_token_id + 1 .. : the table holds the tiny
  # config's max_length of them.
  assert cfg.max_tokens == common_config.TINY_BERT["max_position_embeddings"]
  config = common_config.masked_word_config()
  config.model.init = roberta_dir
  config.data.max_length = 129
  with pytest.raises(common.ConfigError, match="max_length=129"):
    common.bert_config(config, roberta_dir)


@pytest.mark.e2e
def test_span_detector_on_roberta_runs_the_same_in_pytorch(roberta_dir, tmp_path):
  from axk.features.detector import Detector
  from axk.runs import span
  from configs import span as span_config
  config = span_config.get_config("smoke")
  config.model.init = roberta_dir
  span.run(config, str(tmp_path))
  with open(tmp_path / "export" / "config.json") as f:
    assert json.load(f)["architectures"] == ["RobertaForTokenClassification"]
  detector = Detector(str(tmp_path / "export"), device="cpu")
  found = 0
  for task in ("animal", "pitch"):
    examples = sample(task, "test")
    ours = spans_lib.read_predictions(str(tmp_path / "predictions" / f"{task}_test.jsonl"),
                                      examples)
    theirs = detector.detect(examples)
    assert theirs == ours
    found += sum(bool(s) for s in ours.values())
  assert found


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["audiobert", "ith"])
def test_smoke_run_on_roberta_trains_exports_and_runs_in_pytorch(method, ith_smoke, roberta_dir,
                                                                  tmp_path):
  import importlib
  from axk.runs import masked_word
  config = importlib.import_module(f"configs.{method}").get_config("smoke")
  source = "features_retrieval" if method == "audiobert" else "features"
  config.features.dir = str(ith_smoke / "stages" / "features" / source)
  config.spans.predictions = str(ith_smoke / "stages" / "span" / "predictions")
  config.model.init = roberta_dir
  config.data.tasks = ("pitch",)
  masked_word.run(config, str(tmp_path))
  results = json.loads((tmp_path / "results.json").read_text())
  assert "pitch" in json.dumps(results)
  export = tmp_path / "export"  # One task: its model is the run's.
  with open(export / "base" / "config.json") as f:
    assert json.load(f)["architectures"] == ["RobertaForMaskedLM"]
  # The export on sentences as the run encodes them (padding included), against PyTorch.
  tokenizer = enc.load_tokenizer(str(export / "base"))
  examples = sample("pitch", "test")[:6]
  rows = enc.encode(examples, tokenizer, max_length=64)
  loaded = methods.get(method).load(str(export))
  meta = json.loads((export / f"{method}.json").read_text())
  s = int(rows["span_ids"].max())
  r = np.random.RandomState(0)
  b = dict(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"],
           token_type_ids=rows["token_type_ids"], span_ids=rows["span_ids"],
           span_has_audio=np.ones((len(examples), s), np.int32),
           span_audio=r.randn(len(examples), s, meta["audio_dim"]).astype(np.float32),
           span_audio_tokens=r.randn(len(examples), s, 3, meta["audio_dim"]).astype(np.float32),
           lora_gate=np.ones(len(examples), np.float32))
  assert (b["input_ids"][b["attention_mask"] == 0] == tokenizer.pad_token_id).all()
  ours = np.asarray(loaded(**{k: b[k] for k in methods.get(method).inputs}))
  t = {k: torch.tensor(v) for k, v in b.items()}
  if method == "audiobert":
    theirs = AudioBertTorch.from_export(str(export))(
        **{k: v for k, v in t.items() if k != "span_audio_tokens"}).numpy()
  else:
    theirs = IthTorch.from_export(str(export))(
        t["input_ids"], t["attention_mask"], t["token_type_ids"], t["span_ids"],
        t["span_audio_tokens"], t["span_has_audio"]).numpy()
  valid = b["attention_mask"].astype(bool)
  assert np.abs(ours - theirs)[valid].max() <= 1e-4


def test_glue_pairs_encode_as_robertas_tokenizer_pads_them(roberta_dir):
  from axk.data import glue as glue_data
  from axk.runs import sentence
  tokenizer = enc.load_tokenizer(roberta_dir)
  examples = glue_data.read_split(glue_data.resolve_dir("sample"), "mrpc", "dev")
  arrays, cut = sentence.encode(tokenizer, examples, 128, np.int32)
  ref = tokenizer([e.text_a for e in examples], [e.text_b for e in examples],
                  padding="longest", return_tensors="np")
  assert cut == 0
  np.testing.assert_array_equal(arrays["input_ids"], ref["input_ids"])
  np.testing.assert_array_equal(arrays["attention_mask"], ref["attention_mask"])
  assert (arrays["input_ids"][arrays["attention_mask"] == 0] == 1).any()


def test_the_sample_roberta_folder_is_what_tiny_writes(tmp_path):
  fresh = tiny.write_roberta_tokenizer(str(tmp_path / "fresh"))
  shipped = common_config.tiny_roberta_dir()
  for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
    a, b = (json.loads(open(f"{d}/{name}").read()) for d in (fresh, shipped))
    a.pop("transformers_version", None), b.pop("transformers_version", None)
    assert a == b, name
