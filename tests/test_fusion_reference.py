"""ITH's fusion against an independent PyTorch reference, written from the paper and the
published code's description (REFERENCE.md), not from `axk.pt.ith`.

The reference: the audio MLP (Linear, ReLU or GELU, Linear), `torch.nn.MultiheadAttention`
(batch first) of a span's text tokens over that span's audio tokens, `LayerNorm(q + attn)`,
a feed-forward (Linear, GELU, Linear), `LayerNorm(out1 + ffn)`, and the published gate
`g = sigmoid(W_a h_a + W_t h_t)`, `fused = g * h_a + (1 - g) * h_t`, span by span in a Python
loop. axk's Flax weights go in through a mapping written here; for axk's default (the paper's
`fused = g * x + (1 - g) * z`) the mapping negates the gate's weights and biases, since
`1 - sigmoid(a) = sigmoid(-a)`.
"""

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch

from axk.models import bert as bert_lib
from axk.models import ith as ith_lib

CFG = bert_lib.BertConfig(vocab_size=90, hidden_size=32, num_hidden_layers=1,
                          num_attention_heads=4, intermediate_size=48,
                          max_position_embeddings=32)
B, L, S, T, D = 4, 10, 2, 6, 20


class ReferenceFusion(torch.nn.Module):
  """The fusion as the paper and the published code describe it (one span at a time)."""

  def __init__(self, width, heads, audio_dim, activation, gate):
    super().__init__()
    act = {"relu": torch.nn.ReLU(), "gelu": torch.nn.GELU()}[activation]
    self.audio_mlp = torch.nn.Sequential(torch.nn.Linear(audio_dim, width), act,
                                         torch.nn.Linear(width, width))
    self.attn = torch.nn.MultiheadAttention(width, heads, dropout=0.1, batch_first=True)
    self.norm1 = torch.nn.LayerNorm(width)
    self.ffn = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(),
                                   torch.nn.Linear(4 * width, width))
    self.norm2 = torch.nn.LayerNorm(width)
    self.gate = gate
    if gate:
      self.w_a = torch.nn.Linear(width, width)  # on the fusion output h_a
      self.w_t = torch.nn.Linear(width, width)  # on the text features h_t

  def forward(self, hidden, span_ids, audio_tokens, has_audio):
    out = hidden.clone()
    for b in range(hidden.shape[0]):
      for s in range(audio_tokens.shape[1]):
        where = [i for i in range(hidden.shape[1]) if int(span_ids[b, i]) == s + 1]
        if not where or not int(has_audio[b, s]):
          continue
        h_t = hidden[b, where][None]  # [1, n, width]
        audio = self.audio_mlp(audio_tokens[b, s])[None]  # [1, t, width]
        attn, _ = self.attn(h_t, audio, audio, need_weights=False)
        out1 = self.norm1(h_t + attn)
        h_a = self.norm2(out1 + self.ffn(out1))
        if self.gate:
          g = torch.sigmoid(self.w_a(h_a) + self.w_t(h_t))
          fused = g * h_a + (1 - g) * h_t
        else:
          fused = h_a
        out[b, where] = fused[0]
    return out


def load_axk_weights(ref, params, *, gate_on):
  """axk's `audio_mlp/...` and `fusion/...` into `ref`; `gate_on` is axk's orientation."""
  t = lambda x: torch.tensor(np.asarray(x, np.float32))
  w = CFG.hidden_size
  mlp, f = params["audio_mlp"], params["fusion"]
  lin = lambda p: (t(p["dense"]["kernel"]).T, t(p["dense"]["bias"]))
  state = {}
  for i, name in ((0, "fc1"), (2, "fc2")):
    state[f"audio_mlp.{i}.weight"], state[f"audio_mlp.{i}.bias"] = lin(mlp[name])
  # q/k/v kernels [embed, heads, head_dim] -> rows of in_proj_weight [3 * width, width].
  state["attn.in_proj_weight"] = torch.cat(
      [t(f[n]["kernel"]).reshape(w, w).T for n in ("query", "key", "value")])
  state["attn.in_proj_bias"] = torch.cat(
      [t(f[n]["bias"]).reshape(w) for n in ("query", "key", "value")])
  state["attn.out_proj.weight"] = t(f["out"]["kernel"]).reshape(w, w).T
  state["attn.out_proj.bias"] = t(f["out"]["bias"])
  for torch_name, axk_name in (("norm1", "attention_norm"), ("norm2", "ffn_norm")):
    state[f"{torch_name}.weight"] = t(f[axk_name]["ln"]["scale"])
    state[f"{torch_name}.bias"] = t(f[axk_name]["ln"]["bias"])
  for i, name in ((0, "ffn_in"), (2, "ffn_out")):
    state[f"ffn.{i}.weight"], state[f"ffn.{i}.bias"] = lin(f[name])
  if ref.gate:
    # axk's gate_x acts on the text, gate_z on the fusion output. With axk's g on the text,
    # the published g (on the audio) is 1 - g = sigmoid(-(...)): negate.
    sign = -1.0 if gate_on == "text" else 1.0
    for torch_name, axk_name in (("w_t", "gate_x"), ("w_a", "gate_z")):
      weight, bias = lin(f[axk_name])
      state[f"{torch_name}.weight"], state[f"{torch_name}.bias"] = sign * weight, sign * bias
  ref.load_state_dict(state)
  return ref.eval()


def the_batch():
  r = np.random.RandomState(0)
  ids = r.randint(5, CFG.vocab_size, (B, L)).astype(np.int32)
  mask = np.ones((B, L), np.int32)
  mask[3, 8:] = 0
  span_ids = np.zeros((B, L), np.int32)  # row 0: no span
  span_ids[1, 2:5] = 1  # row 1: one span with audio
  span_ids[2, 1:3], span_ids[2, 5:8] = 1, 2  # row 2: two spans with audio
  span_ids[3, 1:2], span_ids[3, 4:7] = 1, 2  # row 3: two spans, the second without audio
  has = np.array([[0, 0], [1, 0], [1, 1], [1, 0]], np.int32)
  return dict(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids),
              span_ids=span_ids, span_has_audio=has,
              span_audio_tokens=r.randn(B, S, T, D).astype(np.float32))


def randomize(params, seed):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, x.shape, x.dtype)
                                   for k, x in zip(keys, leaves)])


def axk_at_fusion(options, seed=1):
  """axk's `Model`: its parameters, the batch, the fusion's input (the embedding output) and
  its output, captured from one forward pass of the whole model."""
  model = ith_lib.Model(CFG, audio_dim=D, **options)
  b = the_batch()
  params = randomize(nn.meta.unbox(model.init(jax.random.key(0), b)["params"]), seed)
  keep = lambda mdl, method: (isinstance(mdl, ith_lib.GatedCrossAttentionFusion)
                              or (isinstance(mdl, bert_lib.Bert) and method == "embed"))
  _, state = model.apply({"params": params}, b, capture_intermediates=keep,
                         mutable=["intermediates"])
  inter = state["intermediates"]
  return (params, b, np.asarray(inter["bert"]["embed"][0]),
          np.asarray(inter["fusion"]["__call__"][0]), inter["fusion"])


def reference(params, b, x, options):
  ref = ReferenceFusion(CFG.hidden_size, CFG.num_attention_heads, D,
                        options.get("audio_activation", "relu"),
                        options.get("fusion_gate", True))
  load_axk_weights(ref, params, gate_on=options.get("gate_on", "text"))
  with torch.no_grad():
    return ref(torch.tensor(x), torch.tensor(b["span_ids"]), torch.tensor(b["span_audio_tokens"]),
               torch.tensor(b["span_has_audio"])).numpy()


def fused_positions(b):
  where = np.zeros((B, L), bool)
  for i in range(B):
    for s in range(S):
      if b["span_has_audio"][i, s]:
        where[i] |= b["span_ids"][i] == s + 1
  return where


@pytest.mark.parametrize("options", [
    {},  # the defaults: a gate on the text (the paper), ReLU audio MLP (published code)
    {"audio_activation": "gelu"},
    {"gate_on": "audio"},  # the published code's orientation
    {"fusion_gate": False},  # "w/o FG"
], ids=["default", "gelu", "gate_on_audio", "no_gate"])
def test_fusion_equals_the_span_by_span_reference(options):
  params, b, x, y, inter = axk_at_fusion(options)
  theirs = reference(params, b, x, options)
  where = fused_positions(b)
  assert where.sum() == 3 + 2 + 3 + 1  # rows 1, 2 (two spans), 3 (its first span only)
  assert np.abs(y - theirs).max() <= 1e-4
  np.testing.assert_array_equal(y[~where], x[~where])  # outside fused spans: untouched
  assert np.abs(y[where] - x[where]).max(axis=-1).min() > 1e-3  # every fused token moved
  np.testing.assert_array_equal(np.asarray(inter["fused"][0]), where)
  assert ("gate" in inter) == options.get("fusion_gate", True)
  assert ("gate_x" in params["fusion"]) == options.get("fusion_gate", True)


def test_the_reference_tells_the_gate_orientations_and_activations_apart():
  """The comparison can fail: the other orientation's mapping, or the other activation,
  disagrees far beyond the tolerance."""
  params, b, x, y, _ = axk_at_fusion({})
  where = fused_positions(b)
  flipped = reference(params, b, x, {"gate_on": "audio"})  # no negation
  assert np.abs(y - flipped)[where].max() > 1e-2
  other = reference(params, b, x, {"audio_activation": "gelu"})
  assert np.abs(y - other)[where].max() > 1e-3


# -- the LayerNorm epsilon the run uses ------------------------------------------------------
def _run_fusion_options():
  """The fusion options an ITH run builds its model with (configs/ith.py's defaults, through
  the run's own `method_fields`)."""
  from axk.runs import masked_word  # pylint: disable=g-import-not-at-top
  from configs import ith as ith_config  # pylint: disable=g-import-not-at-top
  fields = masked_word.method_fields(ith_config.get_config(""))
  return {k: fields[k] for k in ("fusion_norm_eps", "gate_on", "audio_activation",
                                 "fusion_gate", "fusion_layer")}


def _quiet(params):
  """Parameters under which the fusion's first LayerNorm sees a variance (about 1e-7) below
  PyTorch's eps 1e-5: the embedding LayerNorm scales its output by 1e-3 and the attention's
  output projection is scaled by 1e-3, so `q + attn` is tiny and the eps decides the result."""
  params = jax.tree.map(lambda x: x, params)
  norm = params["bert"]["bert"]["embeddings"]["norm"]["ln"]
  norm["scale"] = norm["scale"] * 0 + 1e-3
  norm["bias"] = norm["bias"] * 0
  out = params["fusion"]["out"]
  out["kernel"], out["bias"] = out["kernel"] * 1e-3, out["bias"] * 1e-3
  return params


@pytest.mark.parametrize("source", ["model_default", "configs/ith.py"])
def test_fusion_layer_norm_eps_is_pytorchs_default(source):
  """Against `torch.nn.LayerNorm(width)` (eps 1e-5, as the published code), on inputs whose
  variance is far below the eps: an eps of 1e-12 anywhere (the module's default or the
  config's) normalises them to unit variance and disagrees by orders of magnitude."""
  options = {} if source == "model_default" else _run_fusion_options()
  model = ith_lib.Model(CFG, audio_dim=D, **options)
  b = the_batch()
  params = _quiet(randomize(nn.meta.unbox(model.init(jax.random.key(0), b)["params"]), 1))
  keep = lambda mdl, method: (isinstance(mdl, ith_lib.GatedCrossAttentionFusion)
                              or (isinstance(mdl, bert_lib.Bert) and method == "embed"))
  _, state = model.apply({"params": params}, b, capture_intermediates=keep,
                         mutable=["intermediates"])
  x = np.asarray(state["intermediates"]["bert"]["embed"][0])
  y = np.asarray(state["intermediates"]["fusion"]["__call__"][0])
  where = fused_positions(b)
  assert np.var(x[where], axis=-1).max() < 1e-5  # the eps is not negligible here
  theirs = reference(params, b, x, options)  # nn.LayerNorm's default eps
  assert np.abs(y - theirs)[where].max() <= 1e-4
  # The reference itself tells the eps apart: with 1e-12 it lands far away.
  ref = ReferenceFusion(CFG.hidden_size, CFG.num_attention_heads, D, "relu", True)
  load_axk_weights(ref, params, gate_on="text")
  ref.norm1.eps = ref.norm2.eps = 1e-12
  with torch.no_grad():
    other = ref(torch.tensor(x), torch.tensor(b["span_ids"]),
                torch.tensor(b["span_audio_tokens"]), torch.tensor(b["span_has_audio"])).numpy()
  assert np.abs(other - theirs)[where].max() > 1e-2


# -- the fusion's placement: after encoder layer k -------------------------------------------
CFG2 = bert_lib.BertConfig(vocab_size=90, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=48,
                           max_position_embeddings=32)


@pytest.mark.parametrize("fusion_layer", [0, 1, 2])
def test_fusion_after_layer_k_equals_hf_bert_run_layer_by_layer(fusion_layer, tmp_path):
  """transformers' `BertForMaskedLM` (loaded from axk's BERT weights), its layers called one
  by one with the reference fusion inserted after layer k (k = 0: on the embedding output),
  gives axk's logits; the fusion at any other depth gives other logits."""
  from transformers import BertForMaskedLM  # pylint: disable=g-import-not-at-top
  from axk import hf  # pylint: disable=g-import-not-at-top
  model = ith_lib.Model(CFG2, audio_dim=D, fusion_layer=fusion_layer)
  b = the_batch()
  params = randomize(nn.meta.unbox(model.init(jax.random.key(0), b)["params"]), 3)
  ours = np.asarray(model.apply({"params": params}, b)["logits"])
  hf.save(jax.device_get(params["bert"]), CFG2, str(tmp_path / "bert"), head="mlm")
  mlm = BertForMaskedLM.from_pretrained(str(tmp_path / "bert"), local_files_only=True,
                                        attn_implementation="eager").eval()
  fusion = ReferenceFusion(CFG2.hidden_size, CFG2.num_attention_heads, D, "relu", True)
  load_axk_weights(fusion, params, gate_on="text")
  t = {k: torch.tensor(v) for k, v in b.items()}
  additive = (1.0 - t["attention_mask"][:, None, None, :].float()) * torch.finfo(
      torch.float32).min

  def logits_with_fusion_after(k):
    with torch.no_grad():
      h = mlm.bert.embeddings(input_ids=t["input_ids"].long(),
                              token_type_ids=t["token_type_ids"].long())
      layers = mlm.bert.encoder.layer
      for i in range(len(layers) + 1):
        if i == k:
          h = fusion(h, t["span_ids"], t["span_audio_tokens"], t["span_has_audio"])
        if i < len(layers):
          out = layers[i](h, attention_mask=additive)
          h = out[0] if isinstance(out, tuple) else out
      return mlm.cls(h).numpy()

  valid = b["attention_mask"].astype(bool)
  assert np.abs(ours - logits_with_fusion_after(fusion_layer))[valid].max() <= 1e-4
  for other in {0, 1, 2} - {fusion_layer}:
    assert np.abs(ours - logits_with_fusion_after(other))[valid].max() > 1e-3
