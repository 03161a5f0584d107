"""BERT and RoBERTa in flax.linen, as pure functions over a plain parameter dict.

The layout follows Hugging Face's `BertModel` so that the name table in `axk/hf/convert.py`
stays a one-to-one list. RoBERTa is the same network with other position ids (counted over
the non-padding tokens, from `pad_token_id + 1`, as HF's `create_position_ids_from_input_ids`)
and other HF names; `BertConfig.model_type` ("bert" or "roberta", from the HF `config.json`)
switches both, and the parameter tree is the same. Every kernel carries logical axis names (`vocab`, `embed`, `heads`,
`kv`, `mlp`, ...) and activations are constrained at block boundaries (`batch`, `length`,
`embed`); only the config's rules turn these into mesh axes, so the model never names a mesh.

Parameter tree of `Bert(config, head="mlm")`:

    bert/embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding
    bert/embeddings/norm/{scale,bias}
    bert/encoder/layer_{i}/attention/{query,key,value}/{kernel[embed,heads,kv],bias[heads,kv]}
    bert/encoder/layer_{i}/attention/out/{kernel[heads,kv,embed],bias}
    bert/encoder/layer_{i}/attention_norm, intermediate, output, output_norm
    bert/pooler/{kernel,bias}                       (head="none" only, as in HF BertModel)
    mlm_head/{transform,transform_norm}, mlm_head/bias   (decoder tied to word embeddings)
    classifier/{kernel,bias}                         (head="token_classification")
    bert/pooler/..., classifier/{kernel,bias}        (head="sequence_classification": HF's
                                                      BertForSequenceClassification; one
                                                      label is regression)

Hooks that the audio models use, all optional and all no-ops when absent:
  * `lora` / `lora_gate`: per-layer low-rank updates of the attention projections, multiplied
    per example by a gate (AudioBERT). The LoRA parameters live outside this module's tree.
  * `Bert.embed` / `Bert.encode(..., start, stop)` / `Bert.heads`: run the stack in pieces,
    so a module can act on the embedding output (AudioBERT's audio injection) or sit after
    layer k (ITH's fusion).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from axk.models.lora import apply_lora

Array = jax.Array

HEADS = ("none", "mlm", "token_classification", "sequence_classification")
# HF `model_type`s this module is: the same layers, RoBERTa's position ids differ.
MODEL_TYPES = ("bert", "roberta")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Architecture and numerics of a BERT or RoBERTa model (the fields of HF's `BertConfig`
  and `RobertaConfig`)."""

  model_type: str = "bert"  # "bert" or "roberta" (its position ids; its HF names).
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  initializer_range: float = 0.02
  pad_token_id: int = 0
  num_labels: int = 2
  # Numerics: parameters are stored in `param_dtype`, matmuls run in `dtype`. Softmax,
  # LayerNorm statistics and the logits are always float32.
  dtype: str = "float32"
  param_dtype: str = "float32"
  # Recompute each encoder layer in the backward pass instead of storing its activations.
  remat: bool = False
  # Attention kernel: "auto" (cuDNN's fused kernel on GPUs in float16/bfloat16, XLA's
  # otherwise), "xla" or "cudnn" (`jax.nn.dot_product_attention`), or "einsum" (written out).
  attention: str = "auto"

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def max_tokens(self) -> int:
    """The longest row the position table holds: RoBERTa's position ids start after
    `pad_token_id` (`position_ids`), so it holds `pad_token_id + 1` fewer."""
    skipped = self.pad_token_id + 1 if self.model_type == "roberta" else 0
    return self.max_position_embeddings - skipped

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], **overrides) -> "BertConfig":
    """From a HF `config.json` dict; unknown HF fields are ignored, `overrides` win."""
    if hf.get("hidden_act", "gelu") != "gelu":
      raise ValueError(f"Only hidden_act='gelu' is supported, got {hf['hidden_act']!r}.")
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError("Only absolute position embeddings are supported.")
    if hf.get("model_type", "bert") not in MODEL_TYPES:
      raise ValueError(f"model_type {hf['model_type']!r} is not supported; axk reads "
                       f"{' and '.join(MODEL_TYPES)} checkpoints.")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in hf.items() if k in names}
    if "id2label" in hf:
      kwargs["num_labels"] = len(hf["id2label"])
    kwargs.update(overrides)
    return cls(**kwargs)

  def to_hf(self) -> dict[str, Any]:
    """The HF `config.json` fields of this architecture."""
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    for k in ("dtype", "param_dtype", "remat", "attention", "num_labels"):
      out.pop(k)
    out.update(hidden_act="gelu", position_embedding_type="absolute")
    return out


def position_ids(input_ids: Array, config: BertConfig) -> Array:
  """BERT: 0, 1, 2, ... RoBERTa: the non-padding tokens counted from `pad_token_id + 1`,
  padding at `pad_token_id` (HF's `create_position_ids_from_input_ids`)."""
  if config.model_type == "roberta":
    real = (input_ids != config.pad_token_id).astype(jnp.int32)
    return jnp.cumsum(real, axis=-1) * real + config.pad_token_id
  return jnp.arange(input_ids.shape[-1])[None, :]


def _init(config: BertConfig, axes: tuple[str, ...]):
  return nn.with_logical_partitioning(
      nn.initializers.normal(stddev=config.initializer_range), axes)


def _zeros(axes: tuple[str, ...]):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _ones(axes: tuple[str, ...]):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


def constrain(x: Array, axes: tuple[str, ...]) -> Array:
  """Logical sharding constraint at a block boundary (a no-op outside a mesh)."""
  return nn.with_logical_constraint(x, axes)


class LayerNorm(nn.Module):
  """LayerNorm with float32 statistics and logical axes on its parameters."""

  config: BertConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config
    return nn.LayerNorm(
        epsilon=c.layer_norm_eps, dtype=c.dtype, param_dtype=c.param_dtype,
        use_fast_variance=False,
        scale_init=_ones(("embed",)), bias_init=_zeros(("embed",)), name="ln")(x)


class Dense(nn.Module):
  """A dense layer whose kernel carries logical axes (`in_axis`, `out_axis`)."""

  config: BertConfig
  features: int
  axes: tuple[str, str]
  zero: bool = False  # Kernel initialised to zeros (else normal, `initializer_range`).

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config
    kernel_init = _zeros(self.axes) if self.zero else _init(c, self.axes)
    return nn.Dense(
        self.features, dtype=c.dtype, param_dtype=c.param_dtype,
        kernel_init=kernel_init, bias_init=_zeros(self.axes[1:]), name="dense")(x)


class Projection(nn.Module):
  """`x` contracted over its last `contract` axes with a kernel [*in, *features], plus bias.

  Like `nn.DenseGeneral`, but the kernel is created in its final shape, so its logical axes
  hold from initialisation on (q/k/v kernels are [embed, heads, kv]).
  """

  config: BertConfig
  features: int | tuple[int, ...]
  contract: int
  axes: tuple[str, ...]

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    kernel = self.param("kernel", _init(c, self.axes),
                        x.shape[-self.contract:] + features, c.param_dtype)
    bias = self.param("bias", _zeros(self.axes[self.contract:]), features, c.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=c.dtype)
    y = jax.lax.dot_general(x, kernel, (((tuple(range(x.ndim - self.contract, x.ndim))),
                                         tuple(range(self.contract))), ((), ())))
    return y + bias


def select_rows(table: Array, ids: Array) -> Array:
  """`table[ids]` for a table of a few rows (token types), as one select per row. Its
  gradient is a masked sum per row; a gather's is a scatter-add, which on a GPU serialises
  every position's update onto those few rows: for BERT-base at 256 x 128 on an H200 the
  token-type scatter took 121 of the train step's 175 ms of kernels. An id outside the table
  selects zeros."""
  out = jnp.zeros((*ids.shape, table.shape[-1]), table.dtype)
  for row in range(table.shape[0]):
    out = jnp.where((ids == row)[..., None], table[row], out)
  return out


class Embeddings(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids, token_type_ids, *, deterministic: bool) -> Array:
    c = self.config
    embed = functools.partial(nn.Embed, features=c.hidden_size, dtype=c.dtype,
                              param_dtype=c.param_dtype)
    words = embed(c.vocab_size, embedding_init=_init(c, ("vocab", "embed")),
                  name="word_embeddings")(input_ids)
    positions = position_ids(input_ids, c)
    types = embed(c.type_vocab_size, embedding_init=_init(c, ("token_type", "embed")),
                  name="token_type_embeddings")
    x = (words
         + embed(c.max_position_embeddings, embedding_init=_init(c, ("position", "embed")),
                 name="position_embeddings")(positions)
         + select_rows(types.embedding.astype(c.dtype), token_type_ids))
    x = LayerNorm(c, name="norm")(x)
    x = nn.Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)
    return constrain(x, ("batch", "length", "embed"))


class SelfAttention(nn.Module):
  """Multi-head self-attention with optional per-example gated LoRA on q/k/v/out."""

  config: BertConfig

  def _project(self, name, x, lora, lora_gate, kernel_axes, features, lora_dropout,
               deterministic, contract=1):
    c = self.config
    y = Projection(c, features, contract, kernel_axes, name=name)(x)
    if lora is not None and name in lora:
      y = apply_lora(y, x, lora[name], lora_gate, contract=contract, dropout=lora_dropout,
                     deterministic=deterministic, module=self)
    return y

  @nn.compact
  def __call__(self, x: Array, attention_bias: Array, *, deterministic: bool,
               lora: Mapping[str, Any] | None = None, lora_gate: Array | None = None,
               lora_dropout: float = 0.0) -> Array:
    c = self.config
    h, d = c.num_attention_heads, c.head_dim
    proj = functools.partial(self._project, lora=lora, lora_gate=lora_gate,
                             lora_dropout=lora_dropout, deterministic=deterministic)
    q = proj("query", x, kernel_axes=("embed", "heads", "kv"), features=(h, d))
    k = proj("key", x, kernel_axes=("embed", "heads", "kv"), features=(h, d))
    v = proj("value", x, kernel_axes=("embed", "heads", "kv"), features=(h, d))
    q = constrain(q, ("batch", "length", "heads", "kv"))
    k = constrain(k, ("batch", "length", "heads", "kv"))
    v = constrain(v, ("batch", "length", "heads", "kv"))
    ctx = attention(q, k, v, attention_bias, c, deterministic=deterministic, module=self)
    out = proj("out", ctx, kernel_axes=("heads", "kv", "embed"), features=c.hidden_size,
               contract=2)
    return out


ATTENTION = ("auto", "xla", "cudnn", "einsum")


def attention_implementation(config: BertConfig, dtype) -> str:
  """The kernel for `config.attention`: "auto" takes cuDNN's fused flash attention on GPUs
  for half-precision inputs (the only ones it accepts) and XLA's otherwise."""
  if config.attention not in ATTENTION:
    raise ValueError(f"attention must be one of {ATTENTION}, got {config.attention!r}")
  if config.attention != "auto":
    return config.attention
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  return "cudnn" if half and jax.default_backend() == "gpu" else "xla"


def attention(q: Array, k: Array, v: Array, bias: Array, config: BertConfig, *,
              deterministic: bool, module: nn.Module) -> Array:
  """softmax(q k^T / sqrt(d) + bias) v over [batch, length, heads, kv] inputs.

  `bias` broadcasts to [batch, heads, queries, keys] (0 to attend, a large negative to
  mask). Logits and softmax are float32. `jax.nn.dot_product_attention` has no dropout on the
  attention probabilities, so while that dropout is active (training with
  `attention_probs_dropout_prob > 0`) the product is written out, as Hugging Face's BERT does.
  """
  impl = attention_implementation(config, q.dtype)
  dropout = config.attention_probs_dropout_prob and not deterministic
  if impl == "einsum" or dropout:
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(q.shape[-1])) + bias
    probs = jax.nn.softmax(scores, axis=-1)
    probs = nn.Dropout(config.attention_probs_dropout_prob, parent=module)(
        probs, deterministic=deterministic) if dropout else probs
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
  if impl == "cudnn":
    # cuDNN wants the bias at its full query length and in the inputs' dtype.
    bias = jnp.broadcast_to(bias, bias.shape[:2] + (q.shape[1], k.shape[1])).astype(q.dtype)
  else:
    bias = bias.astype(jnp.float32)
  return jax.nn.dot_product_attention(q, k, v, bias=bias, implementation=impl)


class Layer(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x: Array, attention_bias: Array, deterministic: bool,
               lora=None, lora_gate=None, lora_dropout: float = 0.0) -> Array:
    c = self.config
    a = SelfAttention(c, name="attention")(
        x, attention_bias, deterministic=deterministic, lora=lora, lora_gate=lora_gate,
        lora_dropout=lora_dropout)
    a = nn.Dropout(c.hidden_dropout_prob)(a, deterministic=deterministic)
    x = LayerNorm(c, name="attention_norm")(x + a)
    h = Dense(c, c.intermediate_size, ("embed", "mlp"), name="intermediate")(x)
    h = nn.gelu(h, approximate=False)
    h = constrain(h, ("batch", "length", "mlp"))
    h = Dense(c, c.hidden_size, ("mlp", "embed"), name="output")(h)
    h = nn.Dropout(c.hidden_dropout_prob)(h, deterministic=deterministic)
    x = LayerNorm(c, name="output_norm")(x + h)
    return constrain(x, ("batch", "length", "embed"))


class Encoder(nn.Module):
  config: BertConfig

  def setup(self):
    c = self.config
    # Positional args 2..5 (deterministic, lora, lora_gate, lora_dropout) are static for remat.
    layer_cls = nn.remat(Layer, static_argnums=(3, 6)) if c.remat else Layer
    self.layers = [layer_cls(c, name=f"layer_{i}") for i in range(c.num_hidden_layers)]

  def __call__(self, x: Array, attention_bias: Array, *, deterministic: bool,
               lora: Mapping[str, Any] | None = None, lora_gate: Array | None = None,
               lora_dropout: float = 0.0, start: int = 0, stop: int | None = None) -> Array:
    stop = len(self.layers) if stop is None else stop
    for i in range(start, stop):
      layer_lora = None if lora is None else lora.get(f"layer_{i}")
      x = self.layers[i](x, attention_bias, deterministic, layer_lora, lora_gate, lora_dropout)
    return x


def attention_bias_from_mask(attention_mask: Array) -> Array:
  """[batch, length] 0/1 mask -> additive float32 bias [batch, 1, 1, length]."""
  m = attention_mask[:, None, None, :].astype(jnp.float32)
  return (1.0 - m) * jnp.finfo(jnp.float32).min


def sequence_loss(logits: Array, labels: Array) -> Array:
  """The loss of the "sequence_classification" head as transformers'
  `BertForSequenceClassification` takes it: one label (`logits` [batch, 1]) is regression,
  the mean squared error to float `labels`; more is single-label classification, the mean
  cross-entropy of integer `labels`."""
  if logits.shape[-1] == 1:
    return jnp.mean((logits[:, 0] - labels.astype(jnp.float32)) ** 2)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, labels.astype(jnp.int32)[:, None], axis=-1))


class BertBackbone(nn.Module):
  """Embeddings, encoder and (optionally) the pooler: HF's `BertModel`."""

  config: BertConfig
  add_pooler: bool = False

  def setup(self):
    c = self.config
    self.embeddings = Embeddings(c)
    self.encoder = Encoder(c)
    if self.add_pooler:
      self.pooler = Dense(c, c.hidden_size, ("embed", "embed_out"))

  def __call__(self, input_ids, attention_mask, token_type_ids, *, deterministic=True,
               lora=None, lora_gate=None, lora_dropout=0.0):
    x = self.embeddings(input_ids, token_type_ids, deterministic=deterministic)
    x = self.encoder(x, attention_bias_from_mask(attention_mask), deterministic=deterministic,
                     lora=lora, lora_gate=lora_gate, lora_dropout=lora_dropout)
    return x

  def pool(self, hidden: Array) -> Array:
    return jnp.tanh(self.pooler(hidden[:, 0]))


class MaskedLMHead(nn.Module):
  """Transform (dense, GELU, LayerNorm) then the decoder tied to the word embeddings."""

  config: BertConfig

  @nn.compact
  def __call__(self, hidden: Array, word_embeddings: Array) -> Array:
    c = self.config
    h = Dense(c, c.hidden_size, ("embed", "embed_out"), name="transform")(hidden)
    h = nn.gelu(h, approximate=False)
    h = LayerNorm(c, name="transform_norm")(h)
    bias = self.param("bias", _zeros(("vocab",)), (c.vocab_size,), c.param_dtype)
    logits = jnp.einsum("...e,ve->...v", h, word_embeddings.astype(h.dtype),
                        preferred_element_type=jnp.float32)
    return logits + bias.astype(jnp.float32)


class RobertaSequenceHead(nn.Module):
  """RoBERTa's sequence head (transformers' `RobertaClassificationHead`): on the first
  token, dropout, `dense`, tanh, dropout, `out_proj` (`Bert.heads` applies them in order)."""

  config: BertConfig

  def setup(self):
    c = self.config
    self.dense = Dense(c, c.hidden_size, ("embed", "embed_out"))
    self.out_proj = Dense(c, c.num_labels, ("embed", "labels"))


class Bert(nn.Module):
  """BERT with one of the heads in `HEADS`.

  `__call__` returns a dict: `hidden_states` [batch, length, embed] (last layer), and
  `pooled` (head "none"), `logits` [batch, length or positions, vocab] (head "mlm"),
  `logits` [batch, length, num_labels] (head "token_classification") or `pooled` and
  `logits` [batch, num_labels] (head "sequence_classification"; RoBERTa's has no pooler, so
  no `pooled`: `RobertaSequenceHead`). For the MLM head,
  `positions` [batch, P] restricts the vocabulary projection to those token positions, which
  is all that masked-word prediction needs and a fraction of the work.
  """

  config: BertConfig
  head: str = "mlm"

  def setup(self):
    if self.head not in HEADS:
      raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
    c = self.config
    # RoBERTa's sequence head reads the first token through its own dense layer, no pooler.
    self.roberta_sequence = self.head == "sequence_classification" and c.model_type == "roberta"
    self.bert = BertBackbone(c, add_pooler=self.head == "none" or (
        self.head == "sequence_classification" and not self.roberta_sequence))
    if self.head == "mlm":
      self.mlm_head = MaskedLMHead(c)
    elif self.roberta_sequence:
      self.dropout = nn.Dropout(c.hidden_dropout_prob)
      self.sequence_head = RobertaSequenceHead(c)
    elif self.head in ("token_classification", "sequence_classification"):
      self.dropout = nn.Dropout(c.hidden_dropout_prob)
      self.classifier = Dense(c, c.num_labels, ("embed", "labels"))

  # The pieces, for models that insert modules between them.
  def embed(self, input_ids, token_type_ids, *, deterministic=True):
    return self.bert.embeddings(input_ids, token_type_ids, deterministic=deterministic)

  def encode(self, x, attention_mask, *, deterministic=True, lora=None, lora_gate=None,
             lora_dropout=0.0, start=0, stop=None):
    return self.bert.encoder(x, attention_bias_from_mask(attention_mask),
                             deterministic=deterministic, lora=lora, lora_gate=lora_gate,
                             lora_dropout=lora_dropout, start=start, stop=stop)

  def heads(self, hidden, *, deterministic=True, positions=None):
    out = {"hidden_states": hidden}
    if self.head == "none":
      out["pooled"] = self.bert.pool(hidden)
    elif self.head == "mlm":
      if positions is not None:
        hidden = jnp.take_along_axis(hidden, positions[..., None], axis=1)
      word_embeddings = self.bert.embeddings.variables["params"]["word_embeddings"]["embedding"]
      out["logits"] = self.mlm_head(hidden, nn.meta.unbox(word_embeddings))
    elif self.roberta_sequence:
      h = self.dropout(hidden[:, 0], deterministic=deterministic)
      h = self.dropout(jnp.tanh(self.sequence_head.dense(h)), deterministic=deterministic)
      out["logits"] = self.sequence_head.out_proj(h).astype(jnp.float32)
    elif self.head == "sequence_classification":
      out["pooled"] = self.bert.pool(hidden)
      h = self.dropout(out["pooled"], deterministic=deterministic)
      out["logits"] = self.classifier(h).astype(jnp.float32)
    else:
      h = self.dropout(hidden, deterministic=deterministic)
      out["logits"] = self.classifier(h).astype(jnp.float32)
    return out

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               deterministic=True, positions=None, lora=None, lora_gate=None,
               lora_dropout=0.0):
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = self.embed(input_ids, token_type_ids, deterministic=deterministic)
    x = self.encode(x, attention_mask, deterministic=deterministic, lora=lora,
                    lora_gate=lora_gate, lora_dropout=lora_dropout)
    return self.heads(x, deterministic=deterministic, positions=positions)


def init_params(model: nn.Module, rng: Array, length: int = 8) -> dict:
  """Random parameters of `model` as a plain (unboxed) dict."""
  ids = jnp.zeros((1, length), jnp.int32)
  variables = model.init(rng, ids, jnp.ones_like(ids), jnp.zeros_like(ids))
  return nn.meta.unbox(variables["params"])


def logical_axes(model: nn.Module, length: int = 8) -> dict:
  """The logical axis names of every parameter of `model` (a tree of PartitionSpecs)."""
  ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(ids.shape, ids.dtype),
                         jnp.ones(ids.shape, ids.dtype), jnp.zeros(ids.shape, ids.dtype)))
  return nn.get_partition_spec(abstract["params"])
