"""Setup shared by the runs: config checks, model directory, data, tokenizer."""

from __future__ import annotations

import logging
import os
import jax
from jax.experimental import multihost_utils

from axk import hf
from axk import tasks
from axk.data import auditorybench as ab
from axk.data import encode as enc
from axk.data import types
from axk.models import bert as bert_lib
from axk.train import metrics as metrics_lib
from axk.train import optim
from axk.train import sharding
from axk.utils import files


class ConfigError(ValueError):
  """A config value that cannot work; raised before any work starts."""


def check_config(config) -> None:
  """Fails fast, with one line, on the fields every run shares (train, data, model init)."""
  tc = config.train
  for name in ("batch_size", "eval_batch_size", "log_every"):
    # Per-task batches (`task_batch_sizes`) are checked by the run that has them.
    if name == "batch_size" and "task_batch_sizes" in tc and int(tc[name]) == 0:
      continue
    if int(tc[name]) <= 0:
      raise ConfigError(f"--config.train.{name}={tc[name]}: must be a positive integer.")
  if int(tc.epochs) < 0:
    raise ConfigError(f"--config.train.epochs={tc.epochs}: must be >= 0 (0: evaluate only).")
  # Per-task rates (`task_learning_rates`, the tasks' own) are checked by the run that has them.
  if "learning_rate" in tc and not tc.learning_rate > 0 and "task_learning_rates" not in tc:
    raise ConfigError(f"--config.train.learning_rate={tc.learning_rate}: must be positive.")
  if not 0 <= tc.warmup_ratio < 1:
    raise ConfigError(f"--config.train.warmup_ratio={tc.warmup_ratio}: must be in [0, 1).")
  if tc.get("schedule", "cosine") not in optim.SCHEDULES:
    raise ConfigError(f"--config.train.schedule={tc.schedule!r}: must be one of "
                      f"{', '.join(optim.SCHEDULES)}.")
  n = jax.process_count()
  if tc.batch_size % n or tc.eval_batch_size % n:
    raise ConfigError(f"Batch sizes ({tc.batch_size}, {tc.eval_batch_size}) must divide by the "
                      f"{n} processes.")
  sharding.check_config(config)  # Mesh vs devices, batch vs data axis.
  check_data(config.data)
  init = str(config.model.init)
  if init and (init.startswith((".", "/", "~")) or os.sep in init[:1]) and not os.path.isdir(
      os.path.expanduser(init)):
    raise ConfigError(f"--config.model.init={init}: no such directory.")
  if config.get("resume") and not os.path.isdir(config.resume) and "://" not in config.resume:
    raise ConfigError(f"--config.resume={config.resume}: no such directory.")


def check_data(data, training: bool = True) -> None:
  """One line for unknown benchmark tasks (not registered, `axk.tasks`) or splits in
  `config.data` (and, for a run that trains, a missing train split)."""
  for field, known in (("tasks", tasks.names()), ("splits", types.SPLITS)):
    values = tuple(data[field])
    unknown = [v for v in values if v not in known]
    if unknown or not values:
      raise ConfigError(f"--config.data.{field}={values}: {unknown or 'empty'}; known: "
                        f"{', '.join(known)}.")
  if training and "train" not in data.splits:
    raise ConfigError(f"--config.data.splits={tuple(data.splits)}: training needs 'train'.")


def model_dir(config, workdir: str) -> str:
  """The local HF directory the task starts from.

  `config.model.tiny` set: a random BERT of those sizes, written once to
  `<workdir>/tiny_model` with the tokenizer of `config.model.init`. Otherwise
  `config.model.init` itself (a hub id is downloaded; offline that fails in seconds).
  """
  source = hf.resolve(config.model.init, config.model.get("revision") or None)
  if not config.model.tiny:
    return source
  out = os.path.join(workdir, "tiny_model")
  if jax.process_index() == 0 and not os.path.exists(os.path.join(out, "config.json")):
    tokenizer = enc.load_tokenizer(source)
    cfg = bert_lib.BertConfig(vocab_size=len(tokenizer),
                              **tiny_fields(source, dict(config.model.tiny)))
    module = bert_lib.Bert(cfg, head="mlm")
    params = bert_lib.init_params(module, jax.random.key(config.seed + 1))
    hf.save(params, cfg, out, head="mlm", tokenizer_from=source)
    logging.info("Wrote a random %s (%s) to %s", cfg.model_type, dict(config.model.tiny), out)
  if jax.process_count() > 1:
    # The other processes read the model that process 0 writes (the workdir is shared).
    multihost_utils.sync_global_devices("axk: tiny model written")
  return out


def tiny_fields(source: str, tiny: dict) -> dict:
  """The `BertConfig` fields of a random model of sizes `tiny` that uses the tokenizer of
  `source`: of its family. For a RoBERTa checkpoint: its `model_type`, padding id, single
  token type, LayerNorm epsilon, and `pad_token_id + 1` more position rows, which its
  position ids skip (`bert.position_ids`)."""
  hf_config = hf.io.read_config(source)
  if hf_config.get("model_type", "bert") != "roberta":
    return tiny
  pad = int(hf_config.get("pad_token_id", 1))
  return {**tiny, "model_type": "roberta", "pad_token_id": pad, "type_vocab_size": 1,
          "layer_norm_eps": float(hf_config.get("layer_norm_eps", 1e-5)),
          "max_position_embeddings": int(tiny.get("max_position_embeddings", 512)) + pad + 1}


def bert_config(config, path: str, **overrides) -> bert_lib.BertConfig:
  """The architecture at `path` (a BERT or RoBERTa checkpoint) with the run's numerics and
  dropout; any other `model_type` is refused here, in one line."""
  hf_config = hf.io.read_config(path)
  if hf_config.get("model_type", "bert") not in bert_lib.MODEL_TYPES:
    raise ConfigError(f"--config.model.init={config.model.init}: a "
                      f"{hf_config['model_type']} checkpoint; the span detector, AudioBERT "
                      f"and ITH run on {' and '.join(bert_lib.MODEL_TYPES)} checkpoints.")
  out = bert_lib.BertConfig.from_hf(
      hf_config, dtype=config.model.dtype, param_dtype=config.model.param_dtype,
      remat=config.model.remat, hidden_dropout_prob=config.model.dropout,
      attention_probs_dropout_prob=config.model.dropout, **overrides)
  max_length = int(config.data.get("max_length", 0))
  if max_length > out.max_tokens:
    raise ConfigError(f"--config.data.max_length={max_length}: {config.model.init} holds "
                      f"positions for {out.max_tokens} tokens.")
  return out


def bert_config_of(config) -> bert_lib.BertConfig:
  """The architecture a run will build, for checks before any work: the `tiny` sizes, or
  the `config.json` of `config.model.init` (a hub id is downloaded: fails fast offline)."""
  if config.model.tiny:  # Its family from a local init's config.json; no download to check.
    init = os.path.expanduser(str(config.model.init))
    tiny = dict(config.model.tiny)
    return bert_lib.BertConfig(vocab_size=2, **(tiny_fields(init, tiny) if os.path.isfile(
        os.path.join(init, "config.json")) else tiny))
  return bert_config(config, hf.resolve(config.model.init, config.model.get("revision") or None))


def load_data(config, *, keep_missing_spans: bool = False) -> dict[str, dict[str, ab.SplitData]]:
  """{task: {split: SplitData}} for the configured tasks and splits (wiki where its file
  exists)."""
  data_dir = ab.resolve_data_dir(config.data.dir, config.data.cache_dir or None,
                                  config.data.get("revision", ""))
  return {t: ab.load_task(data_dir, t, tuple(config.data.splits),
                          keep_missing_spans=keep_missing_spans)
          for t in config.data.tasks}


def eval_keys(data: dict[str, dict[str, ab.SplitData]]) -> list[str]:
  """`"<task>/<split>"` of every loaded evaluation split."""
  return [f"{t}/{s}" for t, splits in data.items() for s in splits if s != "train"]


def gold_splits(config) -> tuple[str, ...]:
  """The splits of `config.spans.gold_splits` (a comma-separated string or a sequence) that
  keep their gold spans whatever the span source; one line for an unknown split."""
  value = config.spans.get("gold_splits", "")
  items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value)]
  items = tuple(v for v in items if v)
  bad = [v for v in items if v not in types.SPLITS]
  if bad:
    raise ConfigError(f"--config.spans.gold_splits={value!r}: {bad[0]!r} is not a split "
                      f"({', '.join(types.SPLITS)}).")
  return items


# The columns of the table a run ends with, those its results have: the masked-word runs'
# paper protocol and leak-free protocol (`accuracy`, `accuracy_candidates`), the span
# detector's token and span F1, the sentence tasks' F1, Pearson and Spearman.
SUMMARY_METRICS = ("accuracy", "accuracy_candidates", "token_f1", "span_f1", "f1", "pearson",
                   "spearman")


def summary(workdir: str) -> str:
  """What `axk.main` prints when a run ends (a finished run's rerun included): the results
  of `<workdir>/results.json` as one table (`SUMMARY_METRICS` by task and split, means ± std
  over seeds), then the paths of results.md and report.html; "" without results.json."""
  saved = files.read_json(os.path.join(workdir, "results.json"))
  if not isinstance(saved, dict):
    return ""
  known = set(tasks.names())
  results = {t: v for t, v in saved.items() if t in known and isinstance(v, dict)}
  if not results:
    return ""
  lines = metrics_lib.results_table(results, SUMMARY_METRICS) + [""]
  for name in ("results.md", "report.html"):
    if os.path.exists(os.path.join(workdir, name)):
      lines.append(f"{name}: {os.path.abspath(os.path.join(workdir, name))}")
  return "\n".join(lines) + "\n"
