"""The one name table between axk's parameters and Hugging Face state dicts: BERT and
RoBERTa (`axk/models/bert.py`), Llama and Gemma 2 (`axk/models/decoder.py`).

Each row is `(axk path, HF name, transform)`; `{i}` stands for the layer index. HF names are
written without the `bert.` (`roberta.`) prefix of `BertFor*` (`RobertaFor*`) checkpoints:
`to_axk` strips it (and maps the old `gamma`/`beta` LayerNorm names), `to_hf` adds it back
for the heads that have it. BERT and RoBERTa share the backbone rows (`BACKBONE`) and differ
in the MLM head's names (`cls.predictions.*` against `lm_head.*`); `TABLES` holds each
family's table, `TABLE` is BERT's. The decoders' names are written in full (`model.layers.{i}...`,
`lm_head.weight`); Llama and Gemma 2 share all rows but the norms': Llama's
`post_attention_layernorm` is the norm before the MLP, Gemma 2's the norm after attention.

Transforms, from HF (PyTorch `Linear.weight` is [out, in]) to axk:
  copy     the same array.
  kernel1  `weight.T` reshaped to the axk kernel ([embed, heads, kv] for q/k/v).
  kernel2  `weight.T` reshaped to [heads, kv, embed] (attention output).
  bias     reshaped to the axk shape ([heads, kv] for q/k/v).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np


BACKBONE: tuple[tuple[str, str, str], ...] = (
    ("bert/embeddings/word_embeddings/embedding", "embeddings.word_embeddings.weight", "copy"),
    ("bert/embeddings/position_embeddings/embedding", "embeddings.position_embeddings.weight",
     "copy"),
    ("bert/embeddings/token_type_embeddings/embedding",
     "embeddings.token_type_embeddings.weight", "copy"),
    ("bert/embeddings/norm/ln/scale", "embeddings.LayerNorm.weight", "copy"),
    ("bert/embeddings/norm/ln/bias", "embeddings.LayerNorm.bias", "copy"),
    ("bert/encoder/layer_{i}/attention/query/kernel",
     "encoder.layer.{i}.attention.self.query.weight", "kernel1"),
    ("bert/encoder/layer_{i}/attention/query/bias",
     "encoder.layer.{i}.attention.self.query.bias", "bias"),
    ("bert/encoder/layer_{i}/attention/key/kernel",
     "encoder.layer.{i}.attention.self.key.weight", "kernel1"),
    ("bert/encoder/layer_{i}/attention/key/bias",
     "encoder.layer.{i}.attention.self.key.bias", "bias"),
    ("bert/encoder/layer_{i}/attention/value/kernel",
     "encoder.layer.{i}.attention.self.value.weight", "kernel1"),
    ("bert/encoder/layer_{i}/attention/value/bias",
     "encoder.layer.{i}.attention.self.value.bias", "bias"),
    ("bert/encoder/layer_{i}/attention/out/kernel",
     "encoder.layer.{i}.attention.output.dense.weight", "kernel2"),
    ("bert/encoder/layer_{i}/attention/out/bias",
     "encoder.layer.{i}.attention.output.dense.bias", "bias"),
    ("bert/encoder/layer_{i}/attention_norm/ln/scale",
     "encoder.layer.{i}.attention.output.LayerNorm.weight", "copy"),
    ("bert/encoder/layer_{i}/attention_norm/ln/bias",
     "encoder.layer.{i}.attention.output.LayerNorm.bias", "copy"),
    ("bert/encoder/layer_{i}/intermediate/dense/kernel",
     "encoder.layer.{i}.intermediate.dense.weight", "kernel1"),
    ("bert/encoder/layer_{i}/intermediate/dense/bias",
     "encoder.layer.{i}.intermediate.dense.bias", "bias"),
    ("bert/encoder/layer_{i}/output/dense/kernel", "encoder.layer.{i}.output.dense.weight",
     "kernel1"),
    ("bert/encoder/layer_{i}/output/dense/bias", "encoder.layer.{i}.output.dense.bias", "bias"),
    ("bert/encoder/layer_{i}/output_norm/ln/scale", "encoder.layer.{i}.output.LayerNorm.weight",
     "copy"),
    ("bert/encoder/layer_{i}/output_norm/ln/bias", "encoder.layer.{i}.output.LayerNorm.bias",
     "copy"),
    ("bert/pooler/dense/kernel", "pooler.dense.weight", "kernel1"),
    ("bert/pooler/dense/bias", "pooler.dense.bias", "bias"),
    ("classifier/dense/kernel", "classifier.weight", "kernel1"),
    ("classifier/dense/bias", "classifier.bias", "bias"),
)
TABLE: tuple[tuple[str, str, str], ...] = BACKBONE + (
    ("mlm_head/transform/dense/kernel", "cls.predictions.transform.dense.weight", "kernel1"),
    ("mlm_head/transform/dense/bias", "cls.predictions.transform.dense.bias", "bias"),
    ("mlm_head/transform_norm/ln/scale", "cls.predictions.transform.LayerNorm.weight", "copy"),
    ("mlm_head/transform_norm/ln/bias", "cls.predictions.transform.LayerNorm.bias", "copy"),
    ("mlm_head/bias", "cls.predictions.bias", "copy"),
)
TABLES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "bert": TABLE,
    "roberta": BACKBONE + (
        ("mlm_head/transform/dense/kernel", "lm_head.dense.weight", "kernel1"),
        ("mlm_head/transform/dense/bias", "lm_head.dense.bias", "bias"),
        ("mlm_head/transform_norm/ln/scale", "lm_head.layer_norm.weight", "copy"),
        ("mlm_head/transform_norm/ln/bias", "lm_head.layer_norm.bias", "copy"),
        ("mlm_head/bias", "lm_head.bias", "copy"),
        # RobertaForSequenceClassification's head (`RobertaClassificationHead`).
        ("sequence_head/dense/dense/kernel", "classifier.dense.weight", "kernel1"),
        ("sequence_head/dense/dense/bias", "classifier.dense.bias", "bias"),
        ("sequence_head/out_proj/dense/kernel", "classifier.out_proj.weight", "kernel1"),
        ("sequence_head/out_proj/dense/bias", "classifier.out_proj.bias", "bias"),
    ),
}


def _decoder_rows(norms: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str, str], ...]:
  layer = tuple((f"layer_{{i}}/{a}/scale", f"model.layers.{{i}}.{h}.weight", "copy")
                for a, h in norms)
  attention = tuple(
      (f"layer_{{i}}/attention/{n}/kernel", f"model.layers.{{i}}.self_attn.{n}.weight",
       "kernel2" if n == "o_proj" else "kernel1") for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
  mlp = tuple((f"layer_{{i}}/mlp/{n}/kernel", f"model.layers.{{i}}.mlp.{n}.weight", "kernel1")
              for n in ("gate_proj", "up_proj", "down_proj"))
  return ((("embed_tokens/embedding", "model.embed_tokens.weight", "copy"),) + layer + attention
          + mlp + (("norm/scale", "model.norm.weight", "copy"),
                   ("lm_head/kernel", "lm_head.weight", "kernel1")))


TABLES["llama"] = _decoder_rows((("attention_norm", "input_layernorm"),
                                 ("mlp_norm", "post_attention_layernorm")))
TABLES["gemma2"] = _decoder_rows((("attention_norm", "input_layernorm"),
                                  ("attention_out_norm", "post_attention_layernorm"),
                                  ("mlp_norm", "pre_feedforward_layernorm"),
                                  ("mlp_out_norm", "post_feedforward_layernorm")))
# The prefix of the backbone's names in the checkpoints of a head other than "none".
PREFIXES = {"bert": "bert.", "roberta": "roberta.", "llama": "", "gemma2": ""}
# HF architecture of each axk head, by model type.
ARCHITECTURES = {
    "bert": {"none": "BertModel", "mlm": "BertForMaskedLM",
             "token_classification": "BertForTokenClassification",
             "sequence_classification": "BertForSequenceClassification"},
    "roberta": {"none": "RobertaModel", "mlm": "RobertaForMaskedLM",
                "token_classification": "RobertaForTokenClassification",
                "sequence_classification": "RobertaForSequenceClassification"},
}
# Tied copies of a head's bias that some checkpoints hold instead of the name of `TABLES`.
_ALIASES = {"cls.predictions.decoder.bias": "cls.predictions.bias",
            "lm_head.decoder.bias": "lm_head.bias"}
# HF names that axk never reads: the next-sentence head and tied or buffer copies.
_IGNORED = re.compile(
    r"^(cls\.seq_relationship\..*|cls\.predictions\.decoder\.(weight|bias)|"
    r"lm_head\.decoder\.(weight|bias)|embeddings\.(position_ids|token_type_ids)|"
    r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq)$")


def _compile(template: str) -> re.Pattern:
  return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


_ROWS = {m: tuple((_compile(a), _compile(h), a, h, t) for a, h, t in table)
         for m, table in TABLES.items()}


def _check_type(model_type: str) -> None:
  if model_type not in TABLES:
    raise ValueError(f"model_type {model_type!r} has no HF name table; known: "
                     f"{', '.join(TABLES)}.")


def normalize_hf_name(name: str, model_type: str = "bert") -> str:
  """Strips the `bert.` (`roberta.`) prefix and maps old LayerNorm `gamma`/`beta` names."""
  prefix = PREFIXES[model_type]
  if name.startswith(prefix):
    name = name[len(prefix):]
  return re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight",
                re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name))


def hf_name(axk_path: str, model_type: str = "bert") -> tuple[str, str] | None:
  """(HF name without prefix, transform) of an axk parameter path, or None."""
  _check_type(model_type)
  for a_re, _, _, h, t in _ROWS[model_type]:
    m = a_re.match(axk_path)
    if m:
      return h.format(**m.groupdict()), t
  return None


def from_hf(x: np.ndarray, transform: str, shape: tuple[int, ...]) -> np.ndarray:
  if transform.startswith("kernel"):
    x = x.T
  out = np.reshape(x, shape)
  return out


def _to_hf(x: np.ndarray, transform: str) -> np.ndarray:
  if transform.startswith("kernel"):
    n_in = int(transform[-1])
    return np.ascontiguousarray(np.reshape(x, (int(np.prod(x.shape[:n_in])), -1)).T)
  if transform == "bias":
    return np.reshape(x, (-1,))
  return x


def to_axk(state: Mapping[str, np.ndarray], target_shapes: Mapping[str, tuple[int, ...]],
           source: str = "checkpoint", model_type: str = "bert",
           place: Callable[[str, np.ndarray], Any] | None = None,
           ) -> tuple[dict[str, Any], list[str], list[str]]:
  """Maps a HF state dict onto axk paths.

  Args:
    state: HF names -> arrays (with or without the `bert.`/`roberta.` prefix); read one
      name at a time, so a lazy mapping (`axk.hf.io.LazyState`) is never held whole.
    target_shapes: flat axk path -> shape, from the abstract parameters of the model.
    source: the checkpoint's name, for error messages.
    model_type: "bert", "roberta", "llama" or "gemma2": which table of `TABLES`.
    place: `(axk path, converted array) -> what to keep` (e.g. a device copy in the
      parameter dtype), called as each tensor is converted, so the host copy can go at once.

  Returns:
    (flat axk params found, axk paths missing from the checkpoint, HF names not used).
  """
  _check_type(model_type)
  normalized = {normalize_hf_name(k, model_type): k for k in state}
  for alias, name in _ALIASES.items():
    if alias in normalized and name not in normalized:
      normalized[name] = normalized.pop(alias)
  params, missing, used, todo = {}, [], set(), []
  for path, shape in target_shapes.items():
    row = hf_name(path, model_type)
    if row is None:
      raise KeyError(f"No HF name for axk parameter {path!r}; add it to axk/hf/convert.py.")
    name, transform = row
    if name not in normalized:
      missing.append(path)
      continue
    todo.append((path, shape, name, transform))
  if place is not None and missing:  # Nothing is read or placed for a checkpoint that fails.
    return {}, missing, []
  for path, shape, name, transform in todo:
    x = np.asarray(state[normalized[name]])
    want = int(np.prod(shape))
    if x.size != want:
      raise ValueError(f"{source}: {normalized[name]} has shape {x.shape}, axk expects "
                       f"{shape} at {path}")
    x = from_hf(x, transform, tuple(shape))
    params[path] = place(path, x) if place else x
    del x  # With `place`, the host copy goes now (a lazy state holds none either).
    used.add(name)
  unused = sorted(k for n, k in normalized.items() if n not in used and not _IGNORED.match(n))
  return params, missing, unused


def to_hf(flat_params: Mapping[str, np.ndarray], head: str,
          model_type: str = "bert") -> dict[str, np.ndarray]:
  """axk flat params -> HF state dict of the architecture of `head` (tied copies omitted)."""
  _check_type(model_type)
  prefix = "" if head == "none" else PREFIXES[model_type]
  out = {}
  for path, x in flat_params.items():
    row = hf_name(path, model_type)
    if row is None:
      raise KeyError(f"No HF name for axk parameter {path!r}; add it to axk/hf/convert.py.")
    name, transform = row
    is_backbone = path.startswith("bert/")
    out[(prefix if is_backbone else "") + name] = _to_hf(np.asarray(x), transform)
  return out


def log_missing(missing: list[str], source: str) -> None:
  if missing:
    logging.info("%s: %d parameters not in the checkpoint, initialised at random: %s",
                 source, len(missing), ", ".join(sorted({_group(p) for p in missing})))


def _group(path: str) -> str:
  return re.sub(r"/(kernel|bias|scale|embedding)$", "", path)


def aux_to_torch(flat_params: Mapping[str, np.ndarray],
                 table: Sequence[tuple[str, str, str]]) -> dict[str, np.ndarray]:
  """Flat axk params of a model's own modules -> torch state dict, by the model's table.

  Each audio model declares its `(axk path, torch name, transform)` rows (the torch names of
  its module in `axk/pt/`, the transforms of `TABLE`); paths not in the table are ignored.
  """
  rows = {a: (h, t) for a, h, t in table}
  return {rows[p][0]: _to_hf(np.asarray(x), rows[p][1])
          for p, x in flat_params.items() if p in rows}
