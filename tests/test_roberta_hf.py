"""Flax RoBERTa against transformers' RoBERTa in PyTorch, float32: on one device, on a
4 x 2 (`data` x `model`) mesh of the eight fake CPU devices, and through the HF export."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import linen as nn

from axk import hf
from axk.hf import convert
from axk.models import bert as bert_lib
from axk.train import sharding
from axk.utils.tree import flatten
from configs import common as common_config

TOL = 1e-4
PAD, BOS, EOS = 1, 0, 2  # RoBERTa's special ids.


def tiny_config(**kw):
  # Sizes that divide over a `model` axis of 2 (vocab, heads, mlp).
  kw = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=40, type_vocab_size=1,
            layer_norm_eps=1e-5, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS) | kw
  return transformers.RobertaConfig(**kw)


@pytest.fixture(scope="module")
def batch():
  """<s> words </s> rows of different lengths, right-padded with RoBERTa's pad id (1)."""
  rng = np.random.default_rng(0)
  lengths, width = (12, 7, 9, 4), 12
  ids = np.full((len(lengths), width), PAD, np.int64)
  mask = np.zeros_like(ids)
  for r, n in enumerate(lengths):
    ids[r, :n] = [BOS, *rng.integers(3, 64, n - 2), EOS]
    mask[r, :n] = 1
  return ids, mask


def tiny_tokenizer(path):
  """A byte-level BPE tokenizer in RoBERTa's files (vocab.json, merges.txt) at `path`."""
  vocab = {"<s>": BOS, "<pad>": PAD, "</s>": EOS, "<unk>": 3, "a": 4, "b": 5, "\u0120": 6,
           "\u0120ab": 7, "\u0120ba": 8, "<mask>": 9, "\u0120a": 10, "\u0120b": 11}
  (path / "vocab.json").write_text(json.dumps(vocab))
  (path / "merges.txt").write_text("#version: 0.2\n\u0120 a\n\u0120a b\n\u0120 b\n\u0120b a\n")
  transformers.RobertaTokenizerFast(str(path / "vocab.json"), str(path / "merges.txt"),
                                    add_prefix_space=True).save_pretrained(path)
  return path


def torch_forward(model, batch):
  ids, mask = (torch.tensor(x) for x in batch)
  with torch.no_grad():
    return model(input_ids=ids, attention_mask=mask, output_hidden_states=True)


def max_diff(a, b, mask=None):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  if mask is not None:  # Padded positions are free to differ (their rows are never used).
    a, b = a[mask.astype(bool)], b[mask.astype(bool)]
  return float(np.abs(a - b).max())


HEADS = {
    "mlm": (transformers.RobertaForMaskedLM, "logits"),
    "none": (transformers.RobertaModel, "pooler_output"),
    "token_classification": (transformers.RobertaForTokenClassification, "logits"),
}


@pytest.mark.parametrize("head", list(HEADS))
def test_roberta_matches_transformers_and_round_trips(head, batch, tmp_path):
  cls, out_name = HEADS[head]
  torch.manual_seed(0)
  pt = cls(tiny_config(num_labels=3)).eval()
  pt.save_pretrained(tmp_path / "src")
  model = hf.load(str(tmp_path / "src"), head=head)
  assert model.config.model_type == "roberta"
  mask = batch[1]

  def compare(out, ref):
    hidden = ref.hidden_states[-1]
    assert max_diff(out["hidden_states"], hidden, mask) <= TOL
    if head == "none":
      assert max_diff(out["pooled"], ref.pooler_output) <= TOL
    else:
      assert max_diff(out["logits"], getattr(ref, out_name), mask) <= TOL

  compare(model(*batch), torch_forward(pt, batch))
  out = hf.save(model.params, model.config, str(tmp_path / "export"), head=head,
                tokenizer_from=str(tiny_tokenizer(tmp_path / "src")))
  assert transformers.AutoTokenizer.from_pretrained(out)("ab ba")["input_ids"] == [
      BOS, 7, 8, EOS]
  with open(f"{out}/config.json") as f:
    written = json.load(f)
  assert written["model_type"] == "roberta" and written["architectures"] == [cls.__name__]
  reloaded, info = cls.from_pretrained(out, local_files_only=True, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  compare(model(*batch), torch_forward(reloaded.eval(), batch))


def test_roberta_masked_lm_on_a_4x2_mesh_matches_transformers(batch, tmp_path):
  torch.manual_seed(1)
  pt = transformers.RobertaForMaskedLM(tiny_config()).eval()
  pt.save_pretrained(tmp_path)
  model = hf.load(str(tmp_path), head="mlm")
  ref = torch_forward(pt, batch).logits
  rules = common_config.RULES
  logical = bert_lib.logical_axes(model.module)
  mesh = sharding.make_mesh({"data": 4, "model": 2}, jax.devices())
  p_sh = sharding.logical_to_sharding(logical, mesh, rules)
  with sharding.activate(mesh, rules):
    params = jax.device_put(model.params, p_sh)
    ids, mask = (jax.device_put(jnp.asarray(x), sharding.batch_sharding(mesh, rules))
                 for x in batch)
    logits = jax.jit(lambda p, i, m: model.module.apply(
        {"params": p}, i, m, jnp.zeros_like(i))["logits"])(params, ids, mask)
  words = params["bert"]["embeddings"]["word_embeddings"]["embedding"]
  assert words.sharding.spec == jax.sharding.PartitionSpec("model", None)
  query = params["bert"]["encoder"]["layer_0"]["attention"]["query"]["kernel"]
  assert query.sharding.spec == jax.sharding.PartitionSpec(None, "model", None)
  assert len(logits.sharding.device_set) == 8
  assert max_diff(logits, ref, batch[1]) <= TOL


def test_a_vocabulary_the_model_axis_does_not_divide_is_replicated(tmp_path):
  """RoBERTa's real vocabulary (50,265) is odd: on a `model` axis of 2 the embedding and the
  MLM head's bias stay whole, everything else is split as its logical axes say, and the
  logits still match transformers (JAX refuses the uneven split otherwise)."""
  torch.manual_seed(2)
  pt = transformers.RobertaForMaskedLM(tiny_config(vocab_size=65)).eval()
  pt.save_pretrained(tmp_path)
  model = hf.load(str(tmp_path), head="mlm")
  rules = common_config.RULES
  mesh = sharding.make_mesh({"data": 4, "model": 2}, jax.devices())
  p_sh = sharding.logical_to_sharding(bert_lib.logical_axes(model.module), mesh, rules,
                                      model.params)
  ids = np.random.RandomState(0).randint(3, 65, (8, 12))
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  ids[1, 7:] = 1  # <pad>
  with sharding.activate(mesh, rules):
    params = jax.device_put(model.params, p_sh)
    logits = jax.jit(lambda p, i, m: model.module.apply(
        {"params": p}, i, m, jnp.zeros_like(i))["logits"])(params, ids, mask)
  words = params["bert"]["embeddings"]["word_embeddings"]["embedding"]
  assert words.sharding.spec == jax.sharding.PartitionSpec(None, None)
  query = params["bert"]["encoder"]["layer_0"]["attention"]["query"]["kernel"]
  assert query.sharding.spec == jax.sharding.PartitionSpec(None, "model", None)
  ref = torch_forward(pt, (ids, mask)).logits
  assert max_diff(logits, ref, mask) <= TOL


def test_roberta_parameters_have_a_row_and_logical_axes():
  config = bert_lib.BertConfig.from_hf(tiny_config().to_dict())
  # RoBERTa's own sequence head is not mapped: that head is refused for it
  # (tests/test_sequence_heads.py).
  for head in (h for h in bert_lib.HEADS if h != "sequence_classification"):
    module = bert_lib.Bert(config, head=head)
    specs = flatten(bert_lib.logical_axes(module))
    for path, spec in specs.items():
      assert spec is not None and all(isinstance(a, str) for a in spec), path
      assert convert.hf_name(path, "roberta") is not None, path
  assert convert.hf_name("mlm_head/bias", "roberta") == ("lm_head.bias", "copy")


def test_roberta_position_ids_follow_transformers(batch):
  from transformers.models.roberta import modeling_roberta
  config = bert_lib.BertConfig.from_hf(tiny_config().to_dict())
  ids = np.concatenate([batch[0], batch[0][:, ::-1]])  # Right and left padding.
  ours = bert_lib.position_ids(jnp.asarray(ids), config)
  ref = modeling_roberta.RobertaEmbeddings.create_position_ids_from_input_ids(
      torch.tensor(ids.copy()), PAD)
  np.testing.assert_array_equal(np.asarray(ours), ref.numpy())


def test_other_model_types_are_one_line(tmp_path):
  cfg = tiny_config().to_dict() | {"model_type": "distilbert"}
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(hf.CheckpointError, match="model_type 'distilbert' is not supported"):
    hf.load(str(tmp_path / "other"))

  from axk.runs import common as runs_common
  from axk.runs import masked_word
  from configs import ith
  config = ith.get_config("smoke")
  config.model.init = str(tmp_path / "other")
  config.model.tiny = type(config.model.tiny)()
  with pytest.raises(runs_common.ConfigError) as e:
    masked_word.validate(config, str(tmp_path / "w"))
  assert "a distilbert checkpoint" in str(e.value) and "\n" not in str(e.value)
