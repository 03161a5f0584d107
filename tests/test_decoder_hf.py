"""The Flax decoder against transformers' `LlamaForCausalLM` and `Gemma2ForCausalLM` in
PyTorch, float32: full forward passes with and without padding, cached decoding, a 4 x 2
(`data` x `model`) mesh of the eight fake CPU devices, sharded checkpoints, scoring."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from jax.sharding import PartitionSpec as P

from axk import hf
from axk.hf import convert
from axk.models import decoder as decoder_lib
from axk.train import sharding
from axk.utils.tree import flatten
from configs import common as common_config

TOL = 1e-4
VOCAB, LENGTH = 64, 10  # LENGTH is over twice Gemma 2's sliding window (4).


def llama_config(**kw):
  # Llama 3's RoPE with an original context of 16: of head_dim 8's four frequencies one is
  # smoothed and three are divided by the factor, so every branch of "llama3" is used.
  kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5,
            max_position_embeddings=64, initializer_range=0.2, tie_word_embeddings=False,
            rope_scaling={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 16},
            attn_implementation="eager") | kw
  return transformers.LlamaConfig(**kw)


def gemma2_config(**kw):
  # Soft-caps small enough to bite on these weights; a query scalar other than head_dim.
  kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
            max_position_embeddings=64, initializer_range=0.2, sliding_window=4,
            query_pre_attn_scalar=12, attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0, attn_implementation="eager") | kw
  return transformers.Gemma2Config(**kw)


FAMILIES = {"llama": (transformers.LlamaForCausalLM, llama_config),
            "gemma2": (transformers.Gemma2ForCausalLM, gemma2_config)}


def torch_model(family, seed=0, **kw):
  cls, config = FAMILIES[family]
  torch.manual_seed(seed)
  model = cls(config(**kw)).eval()
  with torch.no_grad():  # Norm weights away from their identity start, so they count.
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.add_(0.3 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
  """(family, PyTorch model, axk model loaded from its save_pretrained directory)."""
  name = request.param
  pt = torch_model(name)
  path = tmp_path_factory.mktemp(name)
  pt.save_pretrained(path)
  return name, pt, hf.load_decoder(str(path))


def torch_logits(model, ids, mask=None, positions=None):
  as_t = lambda x: None if x is None else torch.tensor(np.asarray(x))
  with torch.no_grad():
    return model(input_ids=as_t(ids), attention_mask=as_t(mask),
                 position_ids=as_t(positions)).logits.numpy()


def max_diff(a, b, mask=None):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  if mask is not None:  # Padded positions are free to differ (nothing reads them).
    a, b = a[np.asarray(mask).astype(bool)], b[np.asarray(mask).astype(bool)]
  return float(np.abs(a - b).max())


def batch(rows=2, length=LENGTH, seed=0):
  return np.random.default_rng(seed).integers(0, VOCAB, (rows, length))


def test_logits_match_transformers_unpadded_and_right_padded(family):
  name, pt, model = family
  assert model.config.model_type == name
  if name == "gemma2":
    assert model.config.layer_types == (
        "sliding_attention", "full_attention", "sliding_attention")
  ids = batch()
  assert max_diff(model(ids)["logits"], torch_logits(pt, ids)) <= TOL
  mask = np.ones_like(ids)
  mask[1, 6:] = 0
  assert max_diff(model(ids, mask)["logits"], torch_logits(pt, ids, mask), mask) <= TOL


def test_left_padding_with_positions_matches_transformers(family):
  """Left-padded rows pass their positions (cumsum(mask) - 1), as `generate` does."""
  _, pt, model = family
  ids = batch(seed=1)
  mask = np.ones_like(ids)
  mask[0, :3] = 0
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  ours = model(ids, mask, positions)["logits"]
  assert max_diff(ours, torch_logits(pt, ids, mask, positions), mask) <= TOL


def test_cached_decoding_matches_full_forward_passes(family):
  """Prefill 5 tokens, then 5 single-token steps; each step's logits are transformers' last
  logits on the whole sequence so far (past the sliding window, so local layers mask). Row 0
  is left-padded by 2 and passes its positions, at the prefill and at every step."""
  _, pt, model = family
  ids = batch(seed=2)
  mask = np.ones_like(ids)
  mask[0, :2] = 0
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  prompt = 5
  cache = model.init_cache(ids.shape[0], max_length=LENGTH + 2)
  out = model(ids[:, :prompt], mask[:, :prompt], positions[:, :prompt], cache=cache)
  ref = torch_logits(pt, ids[:, :prompt], mask[:, :prompt], positions[:, :prompt])
  assert max_diff(out["logits"], ref, mask[:, :prompt]) <= TOL
  for t in range(prompt, LENGTH):
    step = slice(t, t + 1)
    out = model(ids[:, step], mask[:, step], positions[:, step], cache=out["cache"])
    assert int(out["cache"]["end"]) == t + 1
    ref = torch_logits(pt, ids[:, :t + 1], mask[:, :t + 1], positions[:, :t + 1])[:, -1:]
    assert max_diff(out["logits"], ref) <= TOL, t


def test_logits_on_a_4x2_mesh_match_transformers(family):
  name, pt, model = family
  rules = common_config.RULES
  mesh = sharding.make_mesh({"data": 4, "model": 2}, jax.devices())
  logical = decoder_lib.logical_axes(model.module)
  p_sh = sharding.logical_to_sharding(logical, mesh, rules, model.params)
  ids = batch(rows=4, seed=3)
  with sharding.activate(mesh, rules):
    params = jax.device_put(model.params, p_sh)
    ids_sh = jax.device_put(jnp.asarray(ids), sharding.batch_sharding(mesh, rules))
    logits = jax.jit(lambda p, i: model.module.apply({"params": p}, i)["logits"])(
        params, ids_sh)
  layer = params["layer_0"]
  for proj in ("q_proj", "k_proj", "v_proj"):
    assert layer["attention"][proj]["kernel"].sharding.spec == P(None, "model", None)
  assert layer["attention"]["o_proj"]["kernel"].sharding.spec == P("model", None, None)
  assert layer["mlp"]["gate_proj"]["kernel"].sharding.spec == P(None, "model")
  assert layer["mlp"]["up_proj"]["kernel"].sharding.spec == P(None, "model")
  assert layer["mlp"]["down_proj"]["kernel"].sharding.spec == P("model", None)
  assert params["embed_tokens"]["embedding"].sharding.spec == P("model", None)
  if name == "llama":
    assert params["lm_head"]["kernel"].sharding.spec == P(None, "model")
  assert len(logits.sharding.device_set) == 8
  assert max_diff(logits, torch_logits(pt, ids)) <= TOL


def test_a_sharded_checkpoint_loads(tmp_path):
  pt = torch_model("gemma2", seed=4)
  pt.save_pretrained(tmp_path, max_shard_size="20KB")
  shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
  assert (tmp_path / "model.safetensors.index.json").exists() and len(shards) > 1, shards
  model = hf.load_decoder(str(tmp_path))
  ids = batch(seed=4)
  assert max_diff(model(ids)["logits"], torch_logits(pt, ids)) <= TOL

  (tmp_path / shards[-1]).unlink()
  with pytest.raises(hf.CheckpointError) as e:
    hf.load_decoder(str(tmp_path))
  assert f"names {shards[-1]}, which is not in" in str(e.value) and "\n" not in str(e.value)


def test_loading_places_each_tensor_with_its_sharding(tmp_path):
  """`shardings` puts each parameter where its logical axes say, as it is read: the same
  logits as transformers, the q kernel split over `model`."""
  pt = torch_model("llama", seed=6)
  pt.save_pretrained(tmp_path, max_shard_size="20KB")
  mesh = sharding.make_mesh({"data": 4, "model": 2}, jax.devices())
  rules = common_config.RULES
  cfg = decoder_lib.DecoderConfig.from_hf(json.loads((tmp_path / "config.json").read_text()))
  module = decoder_lib.Decoder(cfg)
  abstract = jax.eval_shape(lambda: decoder_lib.init_params(module, jax.random.key(0)))
  shardings = flatten(sharding.logical_to_sharding(decoder_lib.logical_axes(module), mesh,
                                                   rules, abstract))
  model = hf.load_decoder(str(tmp_path), shardings=shardings)
  q = flatten(model.params)["layer_0/attention/q_proj/kernel"]
  assert q.sharding == shardings["layer_0/attention/q_proj/kernel"]
  assert len(q.sharding.device_set) == 8 and q.sharding.spec != P()
  ids = batch(seed=6)
  with sharding.activate(mesh, rules):
    assert max_diff(model(ids)["logits"], torch_logits(pt, ids)) <= TOL


_PEAK = """
import json, resource, sys
import jax, jax.numpy as jnp
from axk import hf
jnp.ones(4).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model = hf.load_decoder(sys.argv[1], dtype="bfloat16", param_dtype="bfloat16")
jax.block_until_ready(model.params)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_mb": (peak - before) / 1024,
                  "params_mb": sum(x.nbytes for x in jax.tree.leaves(model.params)) / 2**20}))
"""


def test_a_checkpoint_larger_than_the_host_budget_streams_under_it(tmp_path):
  """A 256 MB float32 checkpoint in 7 shards, loaded as bfloat16 parameters on the CPU
  device (which keeps them in host memory): the process's peak memory grows by at most the
  parameters plus 64 MB (8 of its largest tensors), a budget below the checkpoint's size.
  Reading the whole checkpoint first, as the loader did, grows it by 418 MB."""
  import subprocess
  import sys
  torch.manual_seed(0)
  config = transformers.LlamaConfig(vocab_size=4000, hidden_size=512, intermediate_size=2048,
                                    num_hidden_layers=16, num_attention_heads=8,
                                    num_key_value_heads=4, head_dim=64)
  transformers.LlamaForCausalLM(config).save_pretrained(tmp_path, max_shard_size="40MB")
  checkpoint_mb = sum(p.stat().st_size for p in tmp_path.glob("*.safetensors")) / 2**20
  out = subprocess.run([sys.executable, "-c", _PEAK, str(tmp_path)], capture_output=True,
                       text=True, timeout=300, cwd=pathlib.Path(__file__).resolve().parents[1])
  assert out.returncode == 0, out.stderr[-2000:]
  measured = json.loads(out.stdout.strip().splitlines()[-1])
  budget = measured["params_mb"] + 64
  assert budget < checkpoint_mb
  assert measured["grew_mb"] <= budget, (measured, budget, checkpoint_mb)


def test_log_likelihood_matches_transformers_loss(family):
  _, pt, model = family
  ids = batch(seed=5)
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  total, count = model.log_likelihood(ids, mask)
  labels = torch.tensor(np.where(mask == 1, ids, -100))
  with torch.no_grad():
    loss = pt(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
              labels=labels).loss.item()
  assert np.asarray(count).tolist() == [LENGTH - 1, 6]
  assert abs(-float(np.sum(total)) / float(np.sum(count)) - loss) <= TOL
  with torch.no_grad():  # One row alone: its own mean.
    row_loss = pt(input_ids=torch.tensor(ids[:1]), labels=torch.tensor(ids[:1])).loss.item()
  assert abs(-float(total[0]) / (LENGTH - 1) - row_loss) <= TOL


def test_every_parameter_has_a_row_and_logical_axes():
  for name, (_, config) in FAMILIES.items():
    for tie in (False, True):
      cfg = decoder_lib.DecoderConfig.from_hf(
          config(tie_word_embeddings=tie).to_dict())
      specs = flatten(decoder_lib.logical_axes(decoder_lib.Decoder(cfg)))
      assert ("lm_head/kernel" in specs) is not tie
      for path, spec in specs.items():
        assert spec is not None and all(isinstance(a, str) for a in spec), path
        assert convert.hf_name(path, name) is not None, (name, path)


@pytest.mark.parametrize("field,value,message", [
    ("model_type", "mistral", "model_type 'mistral' is not supported"),
    ("rope_parameters", {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4},
     "rope_type 'yarn' is not supported"),
    ("attention_bias", True, "attention_bias=true is not supported"),
])
def test_unsupported_config_fields_are_one_line(tmp_path, field, value, message):
  cfg = llama_config().to_dict() | {field: value}
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(hf.CheckpointError) as e:
    hf.load_decoder(str(tmp_path))
  text = str(e.value)
  assert message in text and "config.json" in text and "\n" not in text, text


def test_export_loads_in_transformers_with_the_same_tensors_and_logits(family, tmp_path):
  """The export of a loaded model is the checkpoint it came from: every tensor equal, the
  same architecture (Llama 3's RoPE; Gemma 2's windows, soft-caps and tied embeddings), the
  same logits, and axk reads back the same config."""
  name, pt, model = family
  out = hf.save_decoder(model.params, model.config, str(tmp_path / "export"))
  back = transformers.AutoModelForCausalLM.from_pretrained(
      out, local_files_only=True, attn_implementation="eager").eval()
  assert type(back) is type(pt)
  got, want = back.state_dict(), pt.state_dict()
  assert set(got) == set(want)
  for key, tensor in want.items():
    torch.testing.assert_close(got[key], tensor, rtol=0, atol=0, msg=key)
  ids = batch(seed=3)
  assert max_diff(torch_logits(back, ids), torch_logits(pt, ids)) <= 1e-6
  assert hf.load_decoder(out).config == model.config


def test_export_takes_the_tokenizer_and_token_ids_of_its_source(tmp_path):
  from axk.features import tiny
  source = tiny.build_decoder(str(tmp_path / "src"), ["a", "dog", "barks"], family="gemma2")
  model = hf.load_decoder(source)
  out = hf.save_decoder(model.params, model.config, str(tmp_path / "export"), source=source)
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert tokenizer("a dog barks")["input_ids"] == transformers.AutoTokenizer.from_pretrained(
      source)("a dog barks")["input_ids"]
  config = json.loads((pathlib.Path(out) / "config.json").read_text())
  assert config["bos_token_id"] == 1 and config["pad_token_id"] == 0
