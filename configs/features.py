"""Offline audio features (PyTorch) for AudioBERT (retrieval) and ITH (generation).

Retrieval (AudioBERT): CLAP top-1 from an audio database, AST features of the clip:

    python -m axk.main --config=configs/features.py:retrieval --workdir=workdirs/feat_ret \
        --config.data.dir=/data/auditorybench --config.database.dir=/data/audio_db

Generation (ITH): Stable Audio Open with CLAP rejection sampling, AST tokens of the clip:

    python -m axk.main --config=configs/features.py:generation --workdir=workdirs/feat_ith \
        --config.data.dir=/data/auditorybench

Offline smoke run (sample data, tiny random models, synthetic database, both sources):

    python -m axk.main --config=configs/features.py:smoke --workdir=/tmp/feat_smoke

Several workers (processes or machines sharing the workdir, or copying their
`<workdir>/parts/` folders into one afterwards):

    python -m axk.main --config=configs/features.py:generation --workdir=W \
        --config.num_shards=4 --config.shard_index=$I        # one per worker, I = 0..3
    python -m axk.main --config=configs/features.py:generation --workdir=W \
        --config.num_shards=4 --config.stage=assemble        # once, at the end

Oracle (a diagnostic, not audio): vectors built from the gold answers at the gold spans of
every split, as ordinary shards labelled `oracle` in the manifest; `oracle_shuffled` permutes
them across the examples of each task and split (see README, "Oracle features"):

    python -m axk.main --config=configs/features.py:oracle --workdir=workdirs/feat_oracle \
        --config.data.dir=/data/auditorybench        # then --config.features.dir=<that>/features

Spans from the detector instead of the gold ones:

    --config.spans.source=predictions --config.spans.predictions=SPAN_WORKDIR/predictions
    --config.spans.source=detector --config.spans.detector=EXPORTED_HF_DIR

Features land in `<workdir>/features` (see `axk/features/shards.py` for the layout).
"""

import ml_collections

from configs import common

VARIANTS = ("retrieval", "generation", "smoke", "oracle", "oracle_shuffled")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Features config; `arg` is one of `VARIANTS` (default `retrieval`)."""
  variant = arg or "retrieval"
  if variant not in VARIANTS:
    raise ValueError(f"unknown features variant {variant!r}; expected one of {VARIANTS}")

  c = ml_collections.ConfigDict()
  c.entry = "axk.features.pipeline:run"  # what axk.main calls: run(config, workdir)
  # Registered sources (axk/features/sources.py) to run: "retrieval", "generation", or both,
  # "retrieval,generation"; each reads its own section below (c.retrieval, c.generation).
  c.source = "retrieval"
  c.stage = "all"  # all | spans | database | acquire | assemble (see pipeline docstring)
  c.shard_index = 0  # this worker takes distinct spans with hash % num_shards == index
  c.num_shards = 1  # workers; with 1, `stage=all` also assembles the datasets
  c.device = "auto"  # torch device for every model: auto (CUDA if present), cpu, cuda:0
  c.batch_size = 64  # distinct spans per part file (the unit of resumption)
  c.torch_threads = 0  # torch intra-op threads (0: torch's default)

  c.data = common.data_config()  # The same data fields as the training configs.
  # Keep rows whose gold span is missing (no row is lost when spans come from a model).
  c.data.keep_missing_spans = True

  c.spans = ml_collections.ConfigDict()
  c.spans.source = "gold"  # gold | predictions | detector
  c.spans.predictions = ""  # JSON-lines file ({task}/{split} filled in) or folder
  c.spans.detector = ""  # exported HF BertForTokenClassification dir (or hub id)
  # Splits that keep their gold spans whatever the source (the paper trains on gold spans;
  # the detector writes predictions for the evaluation splits only). "" for none.
  c.spans.gold_splits = "train"
  c.spans.batch_size = 64  # sentences per detector forward pass

  c.models = ml_collections.ConfigDict()
  c.models.clap = "laion/clap-htsat-fused"  # CLAP: hub id or local dir
  c.models.ast = "MIT/ast-finetuned-audioset-10-10-0.4593"  # AST: hub id or local dir
  c.models.generator = "stabilityai/stable-audio-open-1.0"  # text-to-audio: id or dir
  c.models.tiny = False  # build tiny random models in <workdir>/tiny_models and use them

  c.clap = ml_collections.ConfigDict()
  c.clap.batch_size = 16  # clips or texts per CLAP forward pass

  c.ast = ml_collections.ConfigDict()
  c.ast.batch_size = 8  # clips per AST forward pass
  c.ast.num_audio_tokens = 32  # AST tokens kept per clip (ITH's audio tokens)
  c.ast.token_pooling = "time"  # time (mean over frequency, pool along time) | flat

  c.retrieval = ml_collections.ConfigDict()
  c.retrieval.query_template = "{span} sound"  # CLAP text query (AudioBERT)
  c.retrieval.top_k = 5  # candidates kept (the best decodable one is used; all logged)
  c.retrieval.min_score = -1.0  # top-1 cosine below this: the span gets no audio
  c.retrieval.exclude_ids = ()  # clip ids never retrieved (e.g. test items' own clips)
  c.retrieval.exclude_file = ""  # file with more ids to exclude, one per line
  c.retrieval.features_dir = "features"  # output folder, relative to the workdir

  c.database = ml_collections.ConfigDict()
  c.database.dir = ""  # folder of audio files (wav, flac, ogg, mp3), searched recursively
  c.database.metadata = ""  # optional CSV/JSONL in (or relative to) dir: id, path, caption
  c.database.tfds_name = ""  # or a TFDS audio dataset (array_record/tfrecord), by name
  c.database.tfds_data_dir = ""  # its TFDS data dir
  c.database.tfds_split = "train"  # its split
  c.database.tfds_audio_key = "audio"  # its audio feature
  c.database.tfds_id_key = ""  # feature holding clip ids ("" -> file#record)
  c.database.tfds_caption_key = ""  # feature holding captions ("" -> none)
  c.database.tfds_sample_rate = 0  # rate when the audio feature does not record one
  c.database.max_seconds = 30.0  # decode at most this much of each clip
  c.database.chunk_size = 256  # clips per cached embedding chunk
  c.database.cache_dir = ""  # embedding cache ("" -> <workdir>/cache/database)
  c.database.synthetic_clips = 0  # > 0: write that many synthetic clips and use them

  c.generation = ml_collections.ConfigDict()
  # A diffusers pipeline class, or "MusicgenForConditionalGeneration" (transformers).
  c.generation.pipeline_class = "StableAudioPipeline"
  c.generation.steps = 50  # diffusion steps
  c.generation.seconds = 5.0  # clip length
  c.generation.guidance_scale = 7.0  # classifier-free guidance
  c.generation.negative_prompt = "Low quality"  # negative prompt ("" for none)
  c.generation.prompt_template = "{span}"  # generator prompt
  c.generation.score_template = "{span}"  # CLAP text the clips are scored against
  c.generation.candidates = 5  # k: candidates per round
  c.generation.max_rounds = 2  # n: rounds (a span has up to n * k candidates)
  c.generation.tau = 0.0  # acceptance threshold (paper: 0 animal, 0.6 pitch)
  # "first": the first candidate in order with score >= tau, drawn lazily (published code);
  # "best": per round, the best of k clips when its score > tau.
  c.generation.rule = "first"
  c.generation.base_seed = 0  # seeds are hash(base_seed, span, round, candidate)
  c.generation.spans_per_call = 0  # clips per generator call / k (0: sized to the device)
  c.generation.keep_rejected = False  # also store rejected clips as FLAC
  c.generation.torch_dtype = "auto"  # generator weights dtype ("auto": float16 on CUDA)
  c.generation.cache_dir = ""  # clip cache ("" -> <workdir>/cache/clips)
  c.generation.features_dir = "features"  # output folder, relative to the workdir

  # The oracle (axk/features/sources.py: OracleSource): no model, no audio; each span gets a
  # fixed random vector chosen by the gold answer (pitch: "high"/"low"; animal: its animal).
  c.oracle = ml_collections.ConfigDict()
  c.oracle.shuffle = False  # Permute the vectors across each task/split's examples (control).
  c.oracle.seed = 0  # Draws the vectors and the permutation.
  c.oracle.dim = 768  # Width of the vectors (AST's, which both models' audio paths expect).
  c.oracle.scale = 1.0  # RMS of their entries (1: the scale of layer-normalised features).
  c.oracle.features_dir = "features"  # output folder, relative to the workdir

  if variant == "generation":
    c.source = "generation"
  elif variant in ("oracle", "oracle_shuffled"):
    # Keyed on the gold answers at the gold spans: gold spans for every split.
    c.source = "oracle"
    c.spans.source = "gold"
    c.oracle.shuffle = variant == "oracle_shuffled"
    c.ast.num_audio_tokens = 4  # ITH's audio tokens per span; all equal the span's vector.
    c.batch_size = 2048  # keys per part file: one per span here, so many more than spans
  elif variant == "smoke":
    c.source = "retrieval,generation"
    c.device = "cpu"
    # Tiny models are all per-op overhead; extra threads only wait on each other.
    c.torch_threads = 1
    c.batch_size = 16
    c.data.dir = "sample"
    c.models.tiny = True
    c.ast.num_audio_tokens = 4
    c.database.synthetic_clips = 24
    c.database.chunk_size = 8
    c.retrieval.features_dir = "features_retrieval"
    c.generation.steps = 4
    c.generation.seconds = 0.5
    c.generation.candidates = 2
    c.generation.tau = -0.07  # about half of the tiny models' clips pass
    c.generation.spans_per_call = 8
  return c
