"""AudioBERT and ITH in JAX against their exports run in PyTorch, gating exactness, sharding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from axk import methods
from axk.models import audiobert as audiobert_lib
from axk.models import bert as bert_lib
from axk.models import ith as ith_lib
from axk.pt.audiobert import AudioBertTorch
from axk.pt.ith import IthTorch
from axk.runs import masked_word
from axk.train import checkpoint as ckpt_lib
from axk.train import loop
from axk.train import sharding
from configs import audiobert as audiobert_config
from configs import common as common_config

CFG = bert_lib.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=48,
                          max_position_embeddings=64)
B, L, S, D, T = 4, 12, 2, 24, 5


def batch(seed=0):
  r = np.random.RandomState(seed)
  ids = r.randint(5, 120, (B, L)).astype(np.int32)
  mask = np.ones((B, L), np.int32)
  mask[3, 9:] = 0  # padding
  span_ids = np.zeros((B, L), np.int32)
  span_ids[1, 2:4] = 1  # example 1: one span with audio
  span_ids[2, 1:3], span_ids[2, 6:9] = 1, 2  # example 2: two spans, the second without audio
  span_ids[3, 4:6] = 1  # example 3: one span, no audio; example 0: no span
  has = np.array([[0, 0], [1, 0], [1, 0], [0, 0]], np.int32)
  has[2, 1] = 0
  has[2, 0] = 1
  return dict(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids),
              span_ids=span_ids, span_has_audio=has,
              span_audio=r.randn(B, S, D).astype(np.float32),
              span_audio_tokens=r.randn(B, S, T, D).astype(np.float32),
              lora_gate=has.any(1).astype(np.float32))


def randomize(params, seed):
  """Random values everywhere (LoRA's B starts at zero, which would hide the adapter)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [0.2 * jax.random.normal(k, x.shape, x.dtype)
                                   for k, x in zip(keys, leaves)])


def to_torch(b):
  return {k: torch.tensor(v) for k, v in b.items()}


def audiobert_inputs(b):
  """The batch fields the AudioBERT module declares it reads (one positional argument)."""
  return ({k: b[k] for k in methods.get("audiobert").inputs},)


def ith_inputs(b):
  return ({k: b[k] for k in methods.get("ith").inputs},)


def base_logits(params, b):
  return bert_lib.Bert(CFG, head="mlm").apply({"params": params["bert"]}, b["input_ids"],
                                               b["attention_mask"], b["token_type_ids"])["logits"]


@pytest.fixture(scope="module")
def audiobert():
  module = audiobert_lib.Model(CFG, audio_dim=D, lora_rank=4, lora_alpha=8.0)
  b = batch()
  params = nn.meta.unbox(module.init(jax.random.key(0), *audiobert_inputs(b))["params"])
  return module, randomize(params, 1), b


def test_audiobert_gate_off_is_exactly_the_base_model(audiobert):
  module, params, b = audiobert
  out = np.asarray(module.apply({"params": params}, *audiobert_inputs(b))["logits"])
  base = np.asarray(base_logits(params, b))
  # Example 0 (no span) and 3 (span without audio, gate 0): bit for bit the base model.
  np.testing.assert_array_equal(out[0], base[0])
  np.testing.assert_array_equal(out[3], base[3])
  assert np.abs(out[1] - base[1]).max() > 1e-3  # LoRA and audio do act where gated on.


def test_audiobert_export_matches_pytorch_peft(audiobert, tmp_path):
  module, params, b = audiobert
  methods.get("audiobert").export(jax.device_get(params), module, str(tmp_path))
  pt = AudioBertTorch.from_export(str(tmp_path))
  ours = np.asarray(module.apply({"params": params}, *audiobert_inputs(b))["logits"])
  theirs = pt(**{k: v for k, v in to_torch(b).items() if k != "span_audio_tokens"}).numpy()
  valid = b["attention_mask"].astype(bool)
  assert np.abs(ours - theirs)[valid].max() <= 1e-4


def test_audiobert_mask_positions_head(audiobert):
  module, params, b = audiobert
  pos = jnp.asarray([[3], [5], [1], [2]])
  full = module.apply({"params": params}, *audiobert_inputs(b))["logits"]
  part = module.apply({"params": params}, *audiobert_inputs(b), positions=pos)["logits"]
  np.testing.assert_allclose(part, jnp.take_along_axis(full, pos[..., None], 1), atol=1e-5)


def embedding_into_encoder(module, params, b):
  """The hidden states `module` passes to its BERT encoder (the injected embedding output)."""
  seen = []

  def spy(next_fun, args, kwargs, context):
    if isinstance(context.module, bert_lib.Bert) and context.method_name == "encode":
      seen.append(np.asarray(args[0]))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(spy):
    module.apply({"params": params}, *audiobert_inputs(b))
  return seen[0]


@pytest.mark.parametrize("injection", ["replace", "add"])
def test_audiobert_injects_the_raw_ast_vector_at_each_spans_first_token(injection):
  w = CFG.hidden_size  # AST width == model width: no projection ("auto"), as published
  module = audiobert_lib.Model(CFG, audio_dim=w, lora_rank=4, lora_alpha=8.0,
                               injection=injection, audio_adapter="none")
  b = dict(batch(), span_audio=np.random.RandomState(7).randn(B, S, w).astype(np.float32))
  params = randomize(nn.meta.unbox(module.init(jax.random.key(0), *audiobert_inputs(b))[
      "params"]), 3)
  assert "audio_proj" not in params and "audio_adapter" not in params
  x = embedding_into_encoder(module, params, b)
  emb = np.asarray(bert_lib.Bert(CFG, head="mlm").apply(
      {"params": params["bert"]}, b["input_ids"], b["token_type_ids"], method="embed"))
  # The spans with audio in `batch()`: row 1's first span starts at token 2, row 2's at 1
  # (row 2's second span and row 3's span have none).
  expected = emb.copy()
  for row, token in ((1, 2), (2, 1)):
    vector = b["span_audio"][row, 0]
    expected[row, token] = vector if injection == "replace" else emb[row, token] + vector
  if injection == "replace":
    np.testing.assert_array_equal(x, expected)
  else:
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-6)
  always = audiobert_lib.Model(CFG, audio_dim=w, audio_projection="always")
  assert "audio_proj" in always.init(jax.random.key(0), *audiobert_inputs(b))["params"]


def test_audiobert_replace_without_projection_exports_to_pytorch_and_jax(tmp_path):
  w = CFG.hidden_size
  module = audiobert_lib.Model(CFG, audio_dim=w, lora_rank=4, lora_alpha=8.0,
                               injection="replace", audio_adapter="none")
  b = dict(batch(), span_audio=np.random.RandomState(8).randn(B, S, w).astype(np.float32))
  params = randomize(nn.meta.unbox(module.init(jax.random.key(0), *audiobert_inputs(b))[
      "params"]), 4)
  methods.get("audiobert").export(jax.device_get(params), module, str(tmp_path))
  assert not (tmp_path / "audio_projection.safetensors").exists()
  ours = np.asarray(module.apply({"params": params}, *audiobert_inputs(b))["logits"])
  pt = AudioBertTorch.from_export(str(tmp_path))
  theirs = pt(**{k: v for k, v in to_torch(b).items() if k != "span_audio_tokens"}).numpy()
  loaded = methods.load_export(str(tmp_path))
  assert loaded.module.injection == "replace" and not loaded.module.projects
  again = np.asarray(loaded(**{k: b[k] for k in methods.get("audiobert").inputs}))
  valid = b["attention_mask"].astype(bool)
  assert np.abs(ours - theirs)[valid].max() <= 1e-4
  assert np.abs(ours - again)[valid].max() <= 1e-5


def _adapter_model(width, **fields):
  """The default AudioBERT (trained adapter) at AST width `width`: its params with BERT, LoRA
  and the projection random and the adapter as initialised, and a batch."""
  module = audiobert_lib.Model(CFG, audio_dim=width, lora_rank=4, lora_alpha=8.0, **fields)
  b = dict(batch(), span_audio=np.random.RandomState(9).randn(B, S, width).astype(np.float32))
  params = nn.meta.unbox(module.init(jax.random.key(0), *audiobert_inputs(b))["params"])
  params = {**randomize({k: v for k, v in params.items() if k != "audio_adapter"}, 11),
            "audio_adapter": params["audio_adapter"]}
  return module, params, b


@pytest.mark.parametrize("width", [CFG.hidden_size, D])
def test_audiobert_adapter_starts_as_the_plain_addition(width):
  module, params, b = _adapter_model(width)
  assert module.adapts and module.projects == (width != CFG.hidden_size)
  frozen = audiobert_lib.Model(CFG, audio_dim=width, lora_rank=4, lora_alpha=8.0,
                               audio_adapter="none")
  without = {k: v for k, v in params.items() if k != "audio_adapter"}
  # Exactly the frozen addition: W2 and b2 start at zero.
  np.testing.assert_array_equal(
      np.asarray(module.apply({"params": params}, *audiobert_inputs(b))["logits"]),
      np.asarray(frozen.apply({"params": without}, *audiobert_inputs(b))["logits"]))
  # By hand: the embedding plus the stored vector (through the projection `a W + c` where
  # the widths differ) at the first token of each span with audio (row 1 token 2, row 2
  # token 1, as in `batch()`).
  x = embedding_into_encoder(module, params, b)
  emb = np.asarray(bert_lib.Bert(CFG, head="mlm").apply(
      {"params": params["bert"]}, b["input_ids"], b["token_type_ids"], method="embed"))
  expected = emb.copy()
  for row, token in ((1, 2), (2, 1)):
    a = b["span_audio"][row, 0]
    if module.projects:
      proj = params["audio_proj"]["dense"]
      a = a @ np.asarray(proj["kernel"]) + np.asarray(proj["bias"])
    expected[row, token] += a
  np.testing.assert_allclose(x, expected, rtol=0, atol=1e-5)


def test_audiobert_adapter_trains_at_equal_widths():
  """At BERT-base's case (AST width = model width, no projection) the audio side still
  learns: the adapter is in the config's trainable set and a step moves it."""
  from axk.train import optim
  from axk.utils.tree import flatten, unflatten
  w = CFG.hidden_size
  module, params, b = _adapter_model(w)
  assert "audio_proj" not in params
  n = 2
  mask_tokens = np.zeros((B, L), bool)
  mask_tokens[np.arange(B), [5, 6, 4, 7]] = True  # one [MASK] a row, outside every span
  mlm = np.where(mask_tokens, 7, -100).astype(np.int32)
  feed = {**{k: jnp.asarray(v) for k, v in b.items() if k != "span_audio_tokens"},
          "mlm_labels": jnp.asarray(mlm),
          "mask_positions": jnp.asarray(np.argmax(mask_tokens, 1)[:, None].astype(np.int32)),
          "mask_count": jnp.ones(B, jnp.int32)}
  tc = audiobert_config.get_config().train
  tc.learning_rate, tc.warmup_ratio = 1e-3, 0.0
  flat = flatten(params)
  trainable = optim.trainable_paths(flat, tc.trainable, tc.frozen)
  adapter = [k for k in flat if k.startswith("audio_adapter/")]
  assert len(adapter) == 4 and set(adapter) <= set(trainable)
  task = object.__new__(masked_word.MaskedWord)  # `loss` reads only its config and model
  task.model, task.config = module, audiobert_config.get_config()
  tx, _ = optim.make(tc, 10)

  def loss(train, frozen):
    return task.loss(unflatten({**frozen, **train}), feed, jax.random.key(0))[0]

  train = {k: flat[k] for k in trainable}
  frozen = {k: v for k, v in flat.items() if k not in train}
  state = tx.init(train)
  before = dict(train)
  for step in range(n):
    grads = jax.grad(loss)(train, frozen)
    if step == 0:
      # W2 = 0 blocks W1's gradient at the first step; W2's and b2's are not zero.
      assert float(jnp.abs(grads["audio_adapter/fc2/dense/kernel"]).max()) > 0
      assert float(jnp.abs(grads["audio_adapter/fc2/dense/bias"]).max()) > 0
      assert float(jnp.abs(grads["audio_adapter/fc1/dense/bias"]).max()) == 0
    updates, state = tx.update(grads, state, train)
    if step == 0:
      # Adam's first step is lr * g / (|g| + eps) (W2 is zero, so no decay on it): the
      # config's `lr_scales` puts the audio path at a tenth of LoRA's rate.
      g = np.asarray(grads["audio_adapter/fc2/dense/kernel"])
      np.testing.assert_allclose(np.asarray(updates["audio_adapter/fc2/dense/kernel"]),
                                 -0.1 * 1e-3 * g / (np.abs(g) + tc.eps), rtol=1e-4, atol=1e-12)
      lora = next(k for k in trainable if k.startswith("lora/") and
                  float(jnp.abs(grads[k]).max()) > 0)
      g, w = np.asarray(grads[lora]), np.asarray(flat[lora])
      np.testing.assert_allclose(np.asarray(updates[lora]),
                                 -1e-3 * (g / (np.abs(g) + tc.eps) + tc.weight_decay * w),
                                 rtol=1e-4, atol=1e-12)
    train = optax.apply_updates(train, updates)
  for k in adapter:  # after two steps every adapter parameter has moved
    assert float(jnp.abs(train[k] - before[k]).max()) > 0, k


@pytest.mark.parametrize("width", [CFG.hidden_size, D])
def test_audiobert_adapter_exports_to_pytorch_and_back(width, tmp_path):
  module = audiobert_lib.Model(CFG, audio_dim=width, lora_rank=4, lora_alpha=8.0)
  b = dict(batch(), span_audio=np.random.RandomState(10).randn(B, S, width).astype(np.float32))
  params = randomize(nn.meta.unbox(module.init(jax.random.key(0), *audiobert_inputs(b))[
      "params"]), 12)  # a trained adapter: nonzero W2, b2
  methods.get("audiobert").export(jax.device_get(params), module, str(tmp_path))
  from safetensors.numpy import load_file
  state = load_file(str(tmp_path / "audio_projection.safetensors"))
  np.testing.assert_array_equal(state["audio_adapter.fc2.weight"],
                                np.asarray(params["audio_adapter"]["fc2"]["dense"]["kernel"]).T)
  assert ("audio_proj.weight" in state) == (width != CFG.hidden_size)
  ours = np.asarray(module.apply({"params": params}, *audiobert_inputs(b))["logits"])
  pt = AudioBertTorch.from_export(str(tmp_path))
  assert pt.audio_adapter is not None
  theirs = pt(**{k: v for k, v in to_torch(b).items() if k != "span_audio_tokens"}).numpy()
  loaded = methods.load_export(str(tmp_path))
  assert loaded.module.adapts
  again = np.asarray(loaded(**{k: b[k] for k in methods.get("audiobert").inputs}))
  valid = b["attention_mask"].astype(bool)
  assert np.abs(ours - theirs)[valid].max() <= 1e-4
  assert np.abs(ours - again)[valid].max() <= 1e-5
  # The adapter acts: without it the rows with audio differ.
  frozen = audiobert_lib.Model(CFG, audio_dim=width, lora_rank=4, lora_alpha=8.0,
                               audio_adapter="none")
  plain = np.asarray(frozen.apply({"params": {k: v for k, v in params.items()
                                              if k != "audio_adapter"}},
                                  *audiobert_inputs(b))["logits"])
  assert np.abs(ours[1] - plain[1]).max() > 1e-3


def test_loss_at_mask_or_over_the_sentence_equals_torch_cross_entropy():
  """Two rows of a made-up encoding: [CLS] w [MASK] [MASK] w [SEP] with answer pieces 7, 8,
  and [CLS] w [MASK] [SEP] [PAD] [PAD] with answer piece 9."""
  cfg = bert_lib.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=24,
                            max_position_embeddings=16, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0)
  module = audiobert_lib.Model(cfg, audio_dim=16, lora_rank=2, lora_alpha=4.0,
                               lora_dropout=0.0)
  cls, sep, pad, msk = 2, 3, 0, 4
  ids = np.array([[cls, 11, msk, msk, 12, sep], [cls, 13, msk, sep, pad, pad]], np.int32)
  mlm = np.full(ids.shape, -100, np.int32)
  mlm[0, 2:4], mlm[1, 2] = (7, 8), 9
  b = dict(input_ids=ids, attention_mask=(ids != pad).astype(np.int32),
           token_type_ids=np.zeros_like(ids), span_ids=np.zeros_like(ids),
           span_audio=np.zeros((2, 1, 16), np.float32), span_has_audio=np.zeros((2, 1), np.int32),
           lora_gate=np.ones(2, np.float32), mlm_labels=mlm,
           mask_positions=np.array([[2, 3], [2, 0]], np.int32), mask_count=np.array([2, 1]))
  params = randomize(nn.meta.unbox(module.init(jax.random.key(0), b)["params"]), 6)
  logits = torch.tensor(np.asarray(module.apply({"params": params}, b)["logits"]))
  task = object.__new__(masked_word.MaskedWord)  # `loss` reads only its config and model
  task.model = module
  targets = {"mask": [[-100, -100, 7, 8, -100, -100], [-100, -100, 9, -100, -100, -100]],
             "sentence": [[cls, 11, 7, 8, 12, sep], [cls, 13, 9, sep, -100, -100]]}
  for tokens, target in targets.items():
    task.config = common_config.masked_word_config()
    task.config.train.loss_tokens = tokens
    ours, _ = task.loss(params, {k: jnp.asarray(v) for k, v in b.items()}, jax.random.key(0))
    theirs = torch.nn.functional.cross_entropy(logits.reshape(-1, 40),
                                               torch.tensor(target).reshape(-1))
    assert abs(float(ours) - float(theirs)) <= 1e-5, tokens


@pytest.fixture(scope="module")
def ith():
  module = ith_lib.Model(CFG, audio_dim=D)
  b = batch(1)
  params = nn.meta.unbox(module.init(jax.random.key(0), *ith_inputs(b))["params"])
  return module, randomize(params, 2), b


def test_ith_leaves_tokens_outside_fused_spans_unchanged(ith):
  module, params, b = ith
  x = jax.random.normal(jax.random.key(3), (B, L, CFG.hidden_size))
  audio = jax.random.normal(jax.random.key(4), (B, S, T, CFG.hidden_size))
  fusion = ith_lib.GatedCrossAttentionFusion(CFG)
  mask = jnp.broadcast_to(jnp.asarray(b["span_has_audio"])[:, :, None], (B, S, T))
  y = np.asarray(fusion.apply({"params": params["fusion"]}, x, b["span_ids"], audio, mask,
                              b["span_has_audio"]))
  x = np.asarray(x)
  fused = np.zeros((B, L), bool)
  for i in range(B):
    for s in range(S):
      if b["span_has_audio"][i, s]:
        fused[i] |= b["span_ids"][i] == s + 1
  np.testing.assert_array_equal(y[~fused], x[~fused])
  assert (np.abs(y[fused] - x[fused]).max(axis=-1) > 1e-4).all()
  out = np.asarray(module.apply({"params": params}, *ith_inputs(b))["logits"])
  base = np.asarray(base_logits(params, b))
  np.testing.assert_array_equal(out[0], base[0])  # no span
  np.testing.assert_array_equal(out[3], base[3])  # span without audio


@pytest.mark.parametrize("fusion_layer, options", [
    (0, {}), (1, {}), (0, {"fusion_gate": False}),
    (1, {"gate_on": "audio", "audio_activation": "gelu"})])
def test_ith_export_matches_pytorch_span_by_span(fusion_layer, options, tmp_path):
  module = ith_lib.Model(CFG, audio_dim=D, fusion_layer=fusion_layer, **options)
  b = batch(2)
  params = randomize(nn.meta.unbox(module.init(jax.random.key(0), *ith_inputs(b))["params"]), 5)
  methods.get("ith").export(jax.device_get(params), module, str(tmp_path))
  pt = IthTorch.from_export(str(tmp_path))
  ours = np.asarray(module.apply({"params": params}, *ith_inputs(b))["logits"])
  tb = to_torch(b)
  theirs = pt(tb["input_ids"], tb["attention_mask"], tb["token_type_ids"], tb["span_ids"],
              tb["span_audio_tokens"], tb["span_has_audio"]).numpy()
  valid = b["attention_mask"].astype(bool)
  assert np.abs(ours - theirs)[valid].max() <= 1e-4
  # The batched PyTorch fusion (the benchmark's) equals the span-by-span one.
  torch.manual_seed(0)
  hidden = torch.randn(B, L, CFG.hidden_size)
  audio = torch.randn(B, S, T, CFG.hidden_size)
  args = (hidden, tb["span_ids"], audio, tb["span_has_audio"])
  with torch.no_grad():
    torch.testing.assert_close(pt.fusion.forward_batched(*args), pt.fusion(*args),
                               atol=1e-5, rtol=1e-5)


def test_ith_forward_and_train_step_on_a_4x2_mesh_equal_one_device(ith):
  module, params, b = ith
  rules = common_config.RULES
  boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), *ith_inputs(b))["params"])
  logical = nn.get_partition_spec(boxed)
  # Plain SGD: Adam's first step divides each gradient by its own magnitude, which turns
  # float-rounding noise in near-zero gradients into full-size steps on any two devices.
  tx = optax.sgd(0.1)

  def step(p, opt, batch):
    def loss(p):
      logits = module.apply({"params": p}, *ith_inputs(batch), deterministic=True)["logits"]
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, batch["input_ids"]).mean()
    value, grads = jax.value_and_grad(loss)(p)
    updates, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, updates), opt, value

  results = []
  for devices, shape in ((jax.devices(), {"data": 4, "model": 2}),
                         (jax.devices()[:1], {"data": 1, "model": 1})):
    mesh = sharding.make_mesh(shape, devices)
    p_sh = sharding.logical_to_sharding(logical, mesh, rules)
    with sharding.activate(mesh, rules):
      p = jax.device_put(params, p_sh)
      data = jax.device_put({k: jnp.asarray(v) for k, v in b.items()},
                            sharding.batch_sharding(mesh, rules))
      fwd = jax.jit(lambda p, x: module.apply({"params": p}, *ith_inputs(x))["logits"])(p, data)
      opt = jax.jit(tx.init)(p)
      p2, _, value = jax.jit(step, out_shardings=(p_sh, None, None))(p, opt, data)
      if len(devices) == 8:
        kernel = p2["fusion"]["query"]["kernel"]
        assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model", None)
    results.append((np.asarray(fwd), jax.device_get(p2), float(value)))
  (f8, p8, v8), (f1, p1, v1) = results
  np.testing.assert_allclose(f8, f1, atol=1e-5)
  assert abs(v8 - v1) <= 1e-5
  for a, c in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)):
    np.testing.assert_allclose(a, c, atol=1e-5)


def test_audiobert_trains_only_lora_and_its_audio_path(tmp_path):
  from configs import audiobert as audiobert_config
  from axk.utils.tree import flatten
  config = audiobert_config.get_config("smoke")
  config.features.dir = ""  # Text only: the frozen/trained split is the same.
  config.spans.predictions = ""
  task = masked_word.MaskedWord(config, str(tmp_path), masked_word.Inputs())
  trainer = loop.Trainer(config, str(tmp_path), task, devices=jax.devices()[:1])
  assert trainer.trainable and all(p.startswith(("lora/", "audio_adapter/", "audio_proj/"))
                                   for p in trainer.trainable)
  assert any(p.startswith("audio_proj/") for p in trainer.trainable)
  assert sum(p.startswith("audio_adapter/") for p in trainer.trainable) == 4
  state, _ = trainer.init_state(ckpt_lib.Checkpoints(str(tmp_path / "ckpt")))
  before = flatten(jax.device_get(state["params"]))
  # The optimizer holds state for the trained tensors only.
  opt_leaves = sum(x.size for x in jax.tree.leaves(state["opt"]))
  trained = sum(before[p].size for p in trainer.trainable)
  assert opt_leaves <= 2 * trained + 8
  with sharding.activate(trainer.mesh, trainer.rules):
    for step in range(2):
      state, _ = trainer.train_step(state, sharding.global_batch(trainer.batches[step],
                                                                 trainer.batch_sharding))
  after = flatten(jax.device_get(state["params"]))
  for p in before:
    if p in trainer.trainable:
      continue
    np.testing.assert_array_equal(after[p], before[p], err_msg=p)
  assert any(not np.array_equal(after[p], before[p]) for p in trainer.trainable
             if p.startswith("lora/"))
