"""Synthetic masked-word tasks for the benchmarks: the models and loss of AudioBERT and ITH on
random rows, as a `axk.train.loop.Task`, so the production train step and loop run without
any data, weights or the `configs` package.

The loss is the tasks' own: masked-LM cross-entropy at the `[MASK]` positions only.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from axk.models import audiobert as audiobert_lib
from axk.models import bert as bert_lib
from axk.models import ith as ith_lib

SIZES = {
    "tiny": dict(vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=256),
    # all-MiniLM-L6-v2's architecture.
    "minilm": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                   num_attention_heads=12, intermediate_size=1536),
    "base": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                 num_attention_heads=12, intermediate_size=3072),
}
MODELS = ("ith", "audiobert", "bert")


def rows(n: int, length: int, *, vocab: int, spans: int = 2, audio_dim: int = 768,
         audio_tokens: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
  """`n` random rows of full length with one `[MASK]` each and `spans` spans with audio."""
  r = np.random.default_rng(seed)
  ids = r.integers(min(1000, vocab // 2), vocab, (n, length)).astype(np.int32)
  span_ids = np.zeros((n, length), np.int32)
  span_ids[:, 3:6] = 1
  if spans > 1:
    span_ids[:, length // 3:length // 3 + 4] = 2
  mask_pos = np.full((n, 1), 10, np.int32)
  mlm = np.full((n, length), -100, np.int32)
  mlm[:, 10] = r.integers(min(1000, vocab // 2), vocab, n)
  return {"input_ids": ids, "attention_mask": np.ones_like(ids),
          "token_type_ids": np.zeros_like(ids), "span_ids": span_ids,
          "span_has_audio": np.ones((n, spans), np.int32),
          "span_audio": r.standard_normal((n, spans, audio_dim)).astype(np.float16),
          "span_audio_tokens": r.standard_normal(
              (n, spans, audio_tokens, audio_dim)).astype(np.float16),
          "lora_gate": np.ones(n, np.float32), "mlm_labels": mlm, "mask_positions": mask_pos,
          "mask_count": np.ones(n, np.int32), "example_index": np.arange(n, dtype=np.int32)}


def bert_config(size: str, dtype: str = "float32", **overrides) -> bert_lib.BertConfig:
  """A BERT of a named size without dropout (so every framework does the same work)."""
  return bert_lib.BertConfig(**SIZES[size], hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0, dtype=dtype, **overrides)


class SyntheticTask:
  """A `Task` over random rows: ITH (everything trained), AudioBERT (LoRA and the audio
  projection trained; see `trainable`) or plain BERT with its MLM head."""

  def __init__(self, model: str, config: bert_lib.BertConfig, train_rows: dict,
               eval_rows: dict | None = None, audio_dim: int = 768):
    if model not in MODELS:
      raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    self.model, self.bert_config, self.audio_dim = model, config, audio_dim
    self.name = f"synthetic {model}"
    if model == "ith":
      self.module = ith_lib.Model(config, audio_dim=audio_dim)
    elif model == "audiobert":
      self.module = audiobert_lib.Model(config, audio_dim=audio_dim, lora_dropout=0.0)
    else:
      self.module = bert_lib.Bert(config, head="mlm")
    self.train_arrays = train_rows
    self.eval_arrays = {"synthetic/dev": {"paper": eval_rows}} if eval_rows else {}
    self.selection = "synthetic/dev/accuracy"
    self._sample = {k: v[:1] for k, v in train_rows.items()}

  # AudioBERT trains only its adapter and audio projection (the base model is frozen).
  @property
  def trainable(self) -> tuple[str, ...]:
    return ("lora/.*", "audio_proj/.*") if self.model == "audiobert" else (".*",)

  def _call(self, params_or_none, batch, *, deterministic=True, rngs=None, init_rng=None):
    """The model on `batch` (method models take the batch dict, BERT its three arrays)."""
    batch = dict(batch)
    for k in ("span_audio", "span_audio_tokens"):
      batch[k] = batch[k].astype(jnp.float32)
    if self.model == "bert":
      args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    else:
      args = (batch,)
    kwargs = dict(positions=batch["mask_positions"], deterministic=deterministic)
    if init_rng is not None:
      return self.module.init(init_rng, *args, **kwargs)
    return self.module.apply({"params": params_or_none}, *args, rngs=rngs, **kwargs)

  def _logits(self, params, batch, deterministic=True):
    return self._call(params, batch, deterministic=deterministic)["logits"]

  def init_params(self, rng):
    sample = jax.tree.map(jnp.asarray, self._sample)
    return nn.meta.unbox(self._call(None, sample, init_rng=rng)["params"])

  def logical_axes(self):
    sample = jax.tree.map(jnp.asarray, self._sample)
    abstract = jax.eval_shape(lambda: self._call(None, sample, init_rng=jax.random.key(0)))
    return nn.get_partition_spec(abstract["params"])

  def pretrained_params(self):
    return None

  def loss(self, params, batch, rng):
    logits = self._call(params, batch, deterministic=False, rngs={"dropout": rng})["logits"]
    labels = jnp.take_along_axis(batch["mlm_labels"], batch["mask_positions"], axis=1)
    valid = jnp.arange(labels.shape[1])[None, :] < batch["mask_count"][:, None]
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.where(valid, labels, 0))
    return jnp.sum(losses * valid) / jnp.maximum(valid.sum(), 1), {}

  def predict(self, params, batch):
    logits = self._logits(params, batch)
    labels = jnp.take_along_axis(batch["mlm_labels"], batch["mask_positions"], axis=1)
    return {"correct": (logits.argmax(-1) == labels).all(-1).astype(jnp.int32)}

  def evaluate(self, key, views, outputs):
    return {"accuracy": 100 * float(np.mean(outputs["paper"]["correct"]))}

  def finish(self, params, workdir, outputs):
    return []


def trainer_config(task: SyntheticTask, **kwargs):
  """`common.train_config` with the task's trainable paths."""
  from axk.bench import common
  return common.train_config(trainable=task.trainable, **kwargs)
