"""Offline audio features (PyTorch) for AudioBERT (retrieval) and ITH (generation).

Spans: the span detector's, as both methods use them (`spans.source="predictions"`), so a
standalone run needs the detector's predictions folder (`python -m axk.main
--config=configs/span.py --workdir=SPAN_WORKDIR` writes it); every command below takes
`--config.spans.predictions=SPAN_WORKDIR/predictions` (shown once below). A masked-word run
given features built at gold spans for its detected-span splits refuses them (see
docs/fidelity.md). Without `--config.features.dir`, ITH and AudioBERT runs build their
features themselves from their own detector's spans.

Retrieval (AudioBERT): CLAP top-1 from an audio database, AST features of the clip:

    python -m axk.main --config=configs/features.py:retrieval --workdir=workdirs/feat_ret \
        --config.data.dir=/data/auditorybench --config.database.dir=/data/audio_db \
        --config.spans.predictions=SPAN_WORKDIR/predictions

The published code's database, LAION-Audio-630K as webdataset shards, read in place:

    python -m axk.main --config=configs/features.py:retrieval --workdir=workdirs/feat_ret \
        --config.data.dir=/data/auditorybench --config.database.dir=/data/CLAP_freesound \
        --config.database.shards='freesound/*/*.tar'

Generation (ITH): Stable Audio Open with CLAP rejection sampling, AST tokens of the clip:

    python -m axk.main --config=configs/features.py:generation --workdir=workdirs/feat_ith \
        --config.data.dir=/data/auditorybench --config.spans.predictions=SPAN_WORKDIR/predictions

The candidates per span: n = 2 (the paper's, Figure 2); the published code's batch of 5 is
`--config.generation.n=5`.

ITH's ablations, as modifiers after a comma (the generation source alone; on `smoke` too):
`generation,no_rejection` (the first clip drawn), `generation,sentence_audio` (one clip per
sentence, "w/o DKI"), `generation,audioldm2` and `generation,musicgen` (other generators).
`glue` (`generation,glue`, `smoke,glue`) builds ITH's features for GLUE: the spans of the span
files `python -m axk.glue_spans` wrote (`--config.data.glue_spans=W`), every task and split
there (`--config.data.tasks` picks tasks), for `configs/glue.py:ith`.
`gold` (after any variant: `generation,gold`) builds at the gold spans of every split instead
of the detector's: an oracle of the spans, for a run that asks for gold spans
(`--config.spans.gold_splits`) or says it accepts them (`--config.spans.accept_gold_features`).

Figure 2's sweeps run from one clip cache shared by one workdir per setting; a candidate
drawn once is never drawn again (every candidate is kept with its score):

    python -m axk.main --config=configs/features.py:generation --workdir=workdirs/feat_p04 \
        --config.generation.cache_dir=workdirs/clips --config.generation.tau.pitch=0.4
    python -m axk.main --config=configs/features.py:generation --workdir=workdirs/feat_n5 \
        --config.generation.cache_dir=workdirs/clips --config.generation.n=5

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
them across the examples of each task and split (see docs/features.md, "Oracle features"):

    python -m axk.main --config=configs/features.py:oracle --workdir=workdirs/feat_oracle \
        --config.data.dir=/data/auditorybench        # then --config.features.dir=<that>/features

Spans (`spans.source`): the detector's predictions (the default), an exported detector run
here, or the gold ones (the `gold` modifier; `oracle` and `smoke`, which has no detector):

    --config.spans.source=predictions --config.spans.predictions=SPAN_WORKDIR/predictions
    --config.spans.source=detector --config.spans.detector=EXPORTED_HF_DIR
    --config.spans.source=gold

Features land in `<workdir>/features` (see `axk/features/shards.py` for the layout).
"""

import ml_collections

from axk import tasks
from configs import common

VARIANTS = ("retrieval", "generation", "smoke", "oracle", "oracle_shuffled")
# Modifiers of the generation source (after a comma: `generation,no_rejection`,
# `smoke,audioldm2`), ITH's ablations of the paper's Tables 2 and 3.
MODIFIERS = ("no_rejection", "sentence_audio", "audioldm2", "musicgen", "gold", "glue")
# Modifiers that concern the generation source alone (the others select it).
GENERATION_MODIFIERS = ("no_rejection", "sentence_audio", "audioldm2", "musicgen")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Features config; `arg` is one of `VARIANTS` (default `retrieval`), then any
  `MODIFIERS` after commas."""
  variant, *mods = [v.strip() for v in (arg or "retrieval").split(",")]
  if variant not in VARIANTS:
    raise ValueError(f"unknown features variant {variant!r}; expected one of {VARIANTS}")
  unknown = [m for m in mods if m not in MODIFIERS]
  if unknown:
    raise ValueError(f"unknown features modifier {unknown[0]!r}; expected any of {MODIFIERS}")

  c = ml_collections.ConfigDict()
  c.entry = "axk.features.pipeline:run"  # what axk.main calls: run(config, workdir)
  common.add_jax_cache(c)
  # Registered sources (axk/features/sources/) to run: "retrieval", "generation", or both,
  # "retrieval,generation"; each reads its own section below (c.retrieval, c.generation).
  c.source = "retrieval"
  c.stage = "all"  # all | spans | database | acquire | assemble (see pipeline docstring)
  c.shard_index = 0  # this worker takes distinct spans with hash % num_shards == index
  c.num_shards = 1  # workers; with 1, `stage=all` also assembles the datasets
  c.device = "auto"  # torch device for every model: auto (CUDA if present), cpu, cuda:0
  c.batch_size = 64  # distinct spans per part file (the unit of resumption)
  c.torch_threads = 0  # torch intra-op threads (0: torch's default)
  # "local": this process (and the workers started by hand with num_shards); "ray": on a Ray
  # instance (docs/ray.md), then the datasets assembled here.
  c.engine = "local"
  c.ray = ml_collections.ConfigDict()
  c.ray.address = ""  # "": a local Ray instance; "auto" or "ray://host:10001": a cluster.
  c.ray.num_cpus = 0  # CPUs of the local instance (0: every core).
  # "auto": generation as a streaming Ray Data pipeline of stages and retrieval's database
  # embedded on Ray Data (axk/features/ray_stream.py), the acquisitions of the other sources
  # as one actor per shard (axk/features/ray_engine.py); "shards": every source as one actor
  # per shard.
  c.ray.pipeline = "auto"  # "auto": Ray Data where it can; "shards": shard actors only.
  # Shard actors: how many (e.g. one per GPU), and what each asks for.
  c.ray.workers = 2  # Also the size of a stage's actor pool whose `workers` is 0.
  c.ray.gpus_per_worker = 0.0  # GPUs each actor asks for (1 on a GPU machine: one each).
  c.ray.cpus_per_worker = 1.0  # CPUs each actor asks for.
  c.ray.max_restarts = 2  # Restarts of a dead actor, each retrying its shard from its parts.
  # The streaming pipeline: pending spans decided a chunk at a time (the driver's memory).
  c.ray.chunk = 4096  # Pending spans decided at a time by the streaming pipeline.
  # Its actor pools: size (0: ray.workers), resources of each actor and batch size (0: the
  # in-process one: generation.spans_per_call * n clips, clap.batch_size, ast.batch_size).
  # On a machine with G GPUs: workers=G for each, gpus 0.5 (generate), 0.25 (score, embed).
  c.ray.generate = ml_collections.ConfigDict()
  c.ray.generate.workers = 0  # Generator actors (0: ray.workers).
  c.ray.generate.gpus = 0.0  # GPUs each asks for (0.5: two share a GPU).
  c.ray.generate.cpus = 1.0  # CPUs each generator actor asks for.
  c.ray.generate.batch_size = 0  # Clips a generator call (0: generation.spans_per_call * n).
  c.ray.score = ml_collections.ConfigDict()
  c.ray.score.workers = 0  # CLAP actors scoring clips and embedding the database (0: ray.workers).
  c.ray.score.gpus = 0.0  # GPUs each asks for (0.25: four share a GPU).
  c.ray.score.cpus = 1.0  # CPUs each CLAP actor asks for.
  c.ray.score.batch_size = 0  # Clips a CLAP call (0: clap.batch_size).
  c.ray.embed = ml_collections.ConfigDict()
  c.ray.embed.workers = 0  # AST actors (0: ray.workers).
  c.ray.embed.gpus = 0.0  # GPUs each asks for (0.25: four share a GPU).
  c.ray.embed.cpus = 1.0  # CPUs each AST actor asks for.
  c.ray.embed.batch_size = 0  # Clips an AST call (0: ast.batch_size).
  # Its CPU tasks (the FLAC round trip, reading clips, resampling; writing parts).
  c.ray.decode = ml_collections.ConfigDict()
  c.ray.decode.cpus = 1.0  # CPUs each CPU task (or database decoder actor) asks for.
  c.ray.decode.batch_size = 8  # Clips a CPU task.

  c.data = common.data_config()  # The same data fields as the training configs.
  c.plugins = ()  # Modules imported at start that register tasks (a run's own tasks).
  # Keep rows whose gold span is missing (no row is lost when spans come from a model).
  c.data.keep_missing_spans = True
  # GLUE span files (`python -m axk.glue_spans --out=W`: W or W/spans): the features of their
  # texts' spans instead of AuditoryBench's (the `glue` modifier sets the rest).
  c.data.glue_spans = ""

  c.spans = ml_collections.ConfigDict()
  # gold | predictions | detector. "predictions": the span detector's (both methods detect
  # their spans; `spans.predictions` names its predictions folder). "gold": the CSVs' spans on
  # every split, an oracle of the spans (the `gold` modifier, `oracle`, `smoke`): their
  # manifest says so, and a masked-word run refuses them for the splits it detects spans on.
  c.spans.source = "predictions"
  c.spans.predictions = ""  # JSON-lines file ({task}/{split} filled in) or folder
  c.spans.detector = ""  # exported HF BertForTokenClassification dir (or hub id)
  # Splits that keep their gold spans whatever the source, e.g. "train" ("": none, every
  # split from the source, as ITH's published code runs the detector on train too).
  c.spans.gold_splits = ""
  # "span": the spans found; "sentence": one span per example covering its whole sentence
  # (ITH's "w/o DKI" ablation, the :sentence_audio modifier), whatever the source found.
  c.spans.unit = "span"
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
  # ITH's audio tokens per clip (axk/features/ast.py). AST's output is 2 special tokens and
  # a 12 x 101 grid of patches (frequency x time); the published ITH code feeds all 1214 to
  # the cross-attention: `full` (1.86 MB a clip in float16).
  # Deviation from the published code: `grid` keeps the 2 specials and pools the patches to
  # `ast.grid` cells, frequency kept as its own axis (frequency-major). Chosen from
  # `python -m axk.bench.audio_tokens` (docs/features.md, "ITH's audio tokens"): full's
  # shards for all of AuditoryBench are 59 GB (grid 12 x 8: 5 GB), a 32-row batch of full
  # reads ~110 MB, and its BERT-base train step costs 1.5-1.9x the FLOPs of 16 time tokens
  # (grid 12 x 8: 1.03-1.06x). Grid keeps every frequency band, which the pitch task asks about.
  # `--config.ast.token_layout=full` undoes the deviation. `time` (patches averaged over
  # frequency, pooled along time to num_audio_tokens) was axk's earlier layout; `flat`
  # pools the whole sequence to num_audio_tokens.
  c.ast.token_layout = "grid"  # grid | full | time | flat
  c.ast.grid = (12, 8)  # grid: (frequency cells, time cells); tokens = 2 + 12 * 8 = 98
  c.ast.num_audio_tokens = 32  # time | flat: tokens kept per clip

  c.retrieval = ml_collections.ConfigDict()
  c.retrieval.query_template = "{span} sound"  # CLAP text query (AudioBERT)
  c.retrieval.top_k = 5  # candidates kept (the best decodable one is used; all logged)
  c.retrieval.min_score = -1.0  # top-1 cosine below this: the span gets no audio
  c.retrieval.exclude_ids = ()  # clip ids never retrieved (e.g. test items' own clips)
  c.retrieval.exclude_file = ""  # file with more ids to exclude, one per line
  c.retrieval.features_dir = "features"  # output folder, relative to the workdir

  c.database = ml_collections.ConfigDict()
  # A folder of audio files (wav, flac, ogg, mp3), searched recursively, or of webdataset
  # `.tar` shards: the published code's database, LAION-Audio-630K, is distributed as such
  # shards (Hub dataset `Meranti/CLAP_freesound`, downloaded separately), read here in place.
  c.database.dir = ""
  c.database.format = "auto"  # auto (shards if dir holds .tar files) | folder | webdataset
  # Shards to read, a glob relative to dir ("" -> every .tar at any depth), e.g.
  # "freesound/*/*.tar" (the Hub repo holds two versions, freesound/ and
  # freesound_no_overlap/, which share most clips: pick one).
  c.database.shards = ""
  c.database.caption_key = "text"  # JSON member field with the caption(s) (LAION: a list)
  c.database.metadata = ""  # folder only: CSV/JSONL in (or relative to) dir: id, path, caption
  c.database.tfds_name = ""  # or a TFDS audio dataset (array_record/tfrecord), by name
  c.database.tfds_data_dir = ""  # its TFDS data dir
  c.database.tfds_split = "train"  # its split
  c.database.tfds_audio_key = "audio"  # its audio feature
  c.database.tfds_id_key = ""  # feature holding clip ids ("" -> file#record)
  c.database.tfds_caption_key = ""  # feature holding captions ("" -> none)
  c.database.tfds_sample_rate = 0  # rate when the audio feature does not record one
  c.database.max_seconds = 30.0  # decode at most this much of each clip
  c.database.chunk_size = 256  # clips per cached embedding chunk
  # Embedding cache, and the shards' member indexes ("" -> <workdir>/cache/database).
  c.database.cache_dir = ""
  c.database.synthetic_clips = 0  # > 0: write that many synthetic clips and use them

  c.generation = ml_collections.ConfigDict()
  # A diffusers pipeline class ("StableAudioPipeline", "AudioLDM2Pipeline"), or
  # "MusicgenForConditionalGeneration" (transformers); the :audioldm2 and :musicgen modifiers
  # set this and models.generator together.
  c.generation.pipeline_class = "StableAudioPipeline"
  c.generation.steps = 50  # diffusion steps (published)
  c.generation.seconds = 5.0  # clip length (published)
  c.generation.guidance_scale = 7.0  # classifier-free guidance (diffusers' default, published)
  c.generation.negative_prompt = "Low quality"  # negative prompt (published; "" for none)
  c.generation.prompt_template = "{span} sound"  # generator prompt (published code)
  c.generation.score_template = "{span}"  # CLAP text clips are scored against (published)
  # Latent window Stable Audio denoises: "full" (published) its whole window (47.55 s for
  # Stable Audio Open), trimmed to `seconds` after decoding; "clip" only the latent frames
  # `seconds` needs (other samples, their own cache keys; faster, see docs/features.md).
  # StableAudioPipeline only.
  c.generation.window = "full"
  # n: candidates tried per span, in a fixed order (candidate j always has the same seed).
  # 2: the paper's (Figure 2 peaks at n = 2 and the paper searched n). The published code
  # draws a batch of 5: --config.generation.n=5. Candidate j keeps its seed whatever n is, so
  # n = 2 uses the first 2 of the same 5 clips.
  c.generation.n = 2
  # tau per benchmark task, applied in one run: a candidate passes with score >= tau (the
  # published code's comparison; the paper writes >). Each task's spec holds its default
  # (axk/tasks/; the paper's best: 0 animal, 0.6 pitch).
  c.generation.tau = ml_collections.ConfigDict({t: tasks.get(t).tau for t in c.data.tasks})
  # "first": the first candidate in order that passes, drawn lazily (published code's rule);
  # "best": the best-scoring of the n when it passes (CLAP reranking; neither paper nor code).
  c.generation.rule = "first"
  # A span with no passing candidate: "none" gets no audio (the paper's rule: dropped from
  # fusion); "sound" uses the published code's generic clip, candidate 0 of the prompt "sound".
  c.generation.fallback = "none"
  c.generation.base_seed = 0  # candidate j of a span is seeded hash(base_seed, span, j)
  c.generation.spans_per_call = 0  # clips per generator call / n (0: sized to the device)
  # Keep every candidate drawn as FLAC (not only accepted ones), so that any other tau, n or
  # rule runs from the cache without drawing a clip twice (Figure 2's sweeps). Cost per
  # candidate: a 5 s 44.1 kHz stereo clip is 0.55 MB as FLAC (tone + noise burst; white noise,
  # the worst case, 0.80 MB; raw 16-bit 0.88 MB): at most n = 5 per span, so up to 2.8-4.0 GB
  # per 1,000 spans when every candidate is drawn (tau 0 mostly draws one). False keeps only
  # accepted clips; another setting then redraws the passing clips it lacks (same seeds).
  c.generation.keep_rejected = True
  c.generation.torch_dtype = "auto"  # generator weights dtype ("auto": float16 on CUDA)
  # Clip cache ("" -> <workdir>/cache/clips). Point several feature workdirs (one per sweep
  # setting) at one folder: candidates already drawn there are never drawn again.
  c.generation.cache_dir = ""
  c.generation.features_dir = "features"  # output folder, relative to the workdir

  # The oracle (axk/features/sources/oracle.py: OracleSource): no model, no audio; each span gets a
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
    c.spans.source = "gold"  # No span detector in the smoke run: the sample's gold spans.
    c.device = "cpu"
    # Tiny models are all per-op overhead; extra threads only wait on each other.
    c.torch_threads = 1
    c.batch_size = 16
    c.data.dir = "sample"
    c.models.tiny = True
    c.ast.num_audio_tokens = 4
    c.ast.grid = (2, 2)  # the tiny AST's patch grid is 2 x 4: 2 + 4 tokens
    c.database.synthetic_clips = 24
    c.database.chunk_size = 8
    c.retrieval.features_dir = "features_retrieval"
    c.generation.steps = 4
    c.generation.seconds = 0.5
    c.generation.n = 2
    # About half of the tiny models' clips pass; pitch stricter, so the tasks differ.
    c.generation.tau.update({"animal": -0.10, "pitch": -0.09})
    c.generation.spans_per_call = 8
  if "no_rejection" in mods:  # "w/o rejection": the first clip drawn, whatever its score
    c.generation.n = 1
    c.generation.tau.update({"animal": -1.0, "pitch": -1.0})  # every cosine is >= -1
  if "sentence_audio" in mods:  # "w/o DKI": one clip for the whole sentence, [MASK] dropped
    c.spans.unit = "sentence"
    c.generation.prompt_template = "{span}"  # the sentence is the prompt, no " sound"
  if "audioldm2" in mods:  # The paper does not give its settings: the pipeline's defaults.
    c.generation.pipeline_class = "AudioLDM2Pipeline"
    c.models.generator = "cvssp/audioldm2"
    c.generation.steps = 200 if variant != "smoke" else c.generation.steps
    c.generation.guidance_scale = 3.5
  if "musicgen" in mods:  # The paper does not give its size or settings: transformers'.
    c.generation.pipeline_class = "MusicgenForConditionalGeneration"
    c.models.generator = "facebook/musicgen-small"
    c.generation.guidance_scale = 3.0
  if "gold" in mods:  # Gold spans on every split: an oracle of the spans, said in the manifest.
    c.spans.source = "gold"
  if any(m in GENERATION_MODIFIERS for m in mods):
    c.source = "generation"
  if "glue" in mods:  # ITH on GLUE: generated audio for the spans of GLUE's span files.
    from axk.tasks import glue as glue_tasks  # pylint: disable=g-import-not-at-top
    c.source = "generation"
    c.spans.source = "gold"  # The span files' spans (a detector's), read as the texts' own.
    c.data.tasks = glue_tasks.NAMES
    # The paper gives no GLUE threshold: each GLUE task's `tau` (0), under `smoke` the tiny
    # CLAP's animal threshold.
    smoke_tau = c.generation.tau.get("animal") if variant == "smoke" else None
    c.generation.tau = ml_collections.ConfigDict(
        {t: tasks.get(t).tau if smoke_tau is None else smoke_tau for t in glue_tasks.NAMES})
  return c
