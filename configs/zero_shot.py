r"""Zero-shot AuditoryBench accuracy of a decoder LM, without training: the papers' untrained
LLM rows (AudioBERT's main table: LLaMA3.1-8B and Gemma2-2B). Protocol in
`axk/runs/zero_shot.py` and docs/fidelity.md: every option in place of `[MASK]`, the sentence
with the highest log-likelihood is the answer.

    python -m axk.main --config=configs/zero_shot.py --workdir=workdirs/llama
    python -m axk.main --config=configs/zero_shot.py:gemma2 --workdir=workdirs/gemma2
    python -m axk.main --config=configs/zero_shot.py:smoke --workdir=/tmp/zs
    python -m axk.main --config=configs/zero_shot.py --workdir=W \
        --config.model.init=/path/to/Llama-3.1-8B      # a local copy, offline

Variants: `smoke` (a tiny random model with a word-level tokenizer over the sample data's
words, offline, seconds); modifier `gemma2` (Gemma 2 2B; under `smoke`, a tiny random Gemma 2).
The default is LLaMA 3.1 8B (gated on the Hub:
accept its licence, then `huggingface-cli login`). Both run in bfloat16 on one device (16 GB
of parameters for 8B); loading streams the checkpoint to it one tensor at a time.

Outputs: results.json/.md (accuracy, rows and the majority baseline per task and split),
predictions.jsonl (every option's score per row).
"""

import ml_collections

from configs import common

VARIANTS = ("smoke",)  # Bases.
MODIFIERS = ("gemma2",)  # After a comma, or alone.
MODELS = {"llama": "meta-llama/Llama-3.1-8B", "gemma2": "google/gemma-2-2b"}


def get_config(arg=None):
  variant, mods = common.parse_variants(arg, VARIANTS, MODIFIERS)
  family = "gemma2" if "gemma2" in mods else "llama"
  c = ml_collections.ConfigDict()
  c.entry = "axk.runs.zero_shot:run"  # What axk.main runs (axk/runs/zero_shot.py).
  common.add_jax_cache(c)
  c.plugins = ()  # Modules imported at start that register tasks.
  c.seed = 0  # The tiny model's weights (`smoke`); scoring itself is deterministic.
  c.seeds = (0,)  # One run: nothing is trained or sampled.
  c.data = common.data_config()
  c.data.splits = ("dev", "test", "wiki")  # Scored splits (wiki only where its file exists).
  del c.data["max_length"]  # Sentences are scored whole.
  c.model = ml_collections.ConfigDict()
  c.model.init = MODELS[family]  # Checkpoint: hub id or local folder with its tokenizer.
  c.model.tiny = family if variant == "smoke" else ""  # A tiny random model of this family.
  c.model.dtype = "float32" if variant == "smoke" else "bfloat16"  # Parameters and compute.
  c.batch_size = 32  # Sentences per call.
  if variant == "smoke":
    c.data.dir = "sample"  # The sample shipped with axk.
    c.batch_size = 8  # Sentences per call.
  return c
