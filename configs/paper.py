r"""The papers' tables as commands: ITH's Tables 1-3 and Figure 2, AudioBERT's main table and
its Table II (the span detector).

    python -m axk.main --config=configs/paper.py:table1 --workdir=workdirs/paper
    python -m axk.main --config=configs/paper.py:all --workdir=workdirs/paper
    python -m axk.main --config=configs/paper.py:smoke --workdir=/tmp/paper_smoke
    python -m axk.main --config=configs/paper.py:smoke,table2 --workdir=/tmp/paper_smoke
    python -m axk.main --config=configs/paper.py:smoke,detector --workdir=/tmp/paper_smoke

Every row of a table is one masked-word run (configs/ith.py or configs/audiobert.py with its
variant) in `<workdir>/<row>/`; a row whose results.json exists is not run again, so a rerun
of the same command resumes. Rows share what they can: one span detector
(`<workdir>/stages/span`), one feature stage per distinct feature setting
(`<workdir>/stages/features_<setting>`), one clip cache for every generation setting
(`<workdir>/stages/clips`: a clip is drawn once whatever tau and n a row asks for). At the end:
`paper_table.md` (the papers' layout, the published numbers beside), `results.json` and
`figure2.png`.

Variants (an optional base, then the tables, after commas; no table: all of them):
  smoke      every row on tiny random models and the sample data, offline, one seed.
  minilm     all-MiniLM-L6-v2's weights (offline; see configs/ith.py).
  table1     ITH Table 1: untrained BERT-base, BERT-large, RoBERTa-base and RoBERTa-large,
             LLaMA3.1-8B without training
             (configs/zero_shot.py), text-only fine-tuned (the row the papers leave out),
             AudioBERT, ITH; dev, test, wiki of both tasks, mean +- std over the seeds.
  table2     ITH's ablations as differences from the full model: w/o FG, w/o DKI,
             w/o (DKI + FG) (sentence-level audio and no gate), w/o rejection; the paper's
             difference beside axk's where the tasks' published tables hold that row.
  table3     ITH's generators: Stable Audio Open (the full model), AudioLDM 2, MusicGen.
  figure2    accuracy against tau (both tasks) and against n (pitch, tau 0.6), with the share
             of spans left without audio. Under `smoke` the taus are spread over the tiny
             CLAP's scores (SMOKE_FIGURE2_TAUS), so that its points accept part of the clips.
  audiobert  AudioBERT's main table: untrained BERT-base, BERT-large, RoBERTa-base and
             RoBERTa-large, Gemma2-2B and LLaMA3.1-8B without training, LoRA text-only,
             AudioBERT on BERT-base and on BERT-large, with the Combined columns (accuracy
             over both tasks' rows of a split, as the paper).
The LLM rows score the real checkpoints (gated on the Hub), the BERT-large rows start from
bert-large-uncased and the RoBERTa rows from roberta-base and roberta-large; under `smoke` all
are tiny random models (a RoBERTa with the sample folder's tokenizer); under `minilm`, which
stays offline, they are left out and LLaMA's published numbers show instead.
  detector   AudioBERT's Table II: the span detector (configs/span.py) trained on animal
             only, on pitch only and on both, token and span F1 on every task's splits.
  glue       ITH's Table 5 (GLUE, dev): BERT-base text only and ITH, RoBERTa-base text only
             and ITH, one run per GLUE task each (configs/glue.py, its grid of learning rates
             and 5 seeds), the paper's numbers beside; it needs a local GLUE folder,
             `--config.glue.dir=/data/glue` (`sample` under smoke), and runs only when named.
  all        every table above but glue.

AudioBERT's rows retrieve from an audio database, given to every feature stage:

    python -m axk.main --config=configs/paper.py:table1 --workdir=workdirs/paper \
        --config.features_args='("--config.database.dir=/data/audio_db",)'

`--config.only='("bert","ith")'` runs a subset of the rows (the others show as not run). A
row whose variant or feature field does not exist stops the run before any work with one line
naming the row; `--config.missing=skip` runs the others and lists it in the table.
"""

import ml_collections

from axk.tasks import auditorybench
from axk.tasks import glue as glue_tasks
from configs import common

TABLES = ("table1", "table2", "table3", "figure2", "audiobert", "detector", "glue")
# Tables that run only when named (not by default, nor under `all`): Table 5 needs a local
# GLUE folder (`glue.dir`).
NAMED_ONLY = ("glue",)
BASES = ("smoke", "minilm")
VARIANTS = BASES  # An optional base, then tables after commas.
MODIFIERS = TABLES + ("all",)

# Feature fields the Figure 2 sweeps set (configs/features.py), by name: renaming is one line.
TAU_FIELD = "generation.tau.{task}"  # The per-task acceptance threshold.
TRIES_FIELD = "generation.n"  # n: candidates tried per span.
CACHE_FIELD = "generation.cache_dir"  # The clip cache every feature setting shares.
FIGURE2_TAUS = (0.0, 0.2, 0.4, 0.6, 0.8)
FIGURE2_TRIES = (1, 2, 3, 4, 5)
FIGURE2_TRIES_TAU = 0.6  # Figure 2's n sweep: pitch at this tau.
# Under `smoke`: the tiny random CLAP scores its clips between about -0.19 and 0.02 (median
# -0.10), below every tau of the paper, so the paper's sweep would accept no clip. These taus
# span its scores: the lowest accepts most spans, the highest few.
SMOKE_FIGURE2_TAUS = (-0.16, -0.13, -0.1, -0.07, -0.04)
SMOKE_FIGURE2_TRIES_TAU = -0.1
# Features of the rows (configs/features.py variant) under each base: the n a row gets when it
# leaves TRIES_FIELD alone is read from there.
FEATURES_VARIANT = {"smoke": "smoke", "minilm": "generation", "": "generation"}
FIGURE2_TRIES_TASK = "pitch"  # Figure 2's n sweep: its task.
TASKS = auditorybench.NAMES  # The papers' benchmark tasks: the tables' columns.
BERT_LARGE = "bert-large-uncased"  # The BERT-large rows' weights.
ROBERTA = {"roberta": "roberta-base", "roberta_large": "roberta-large"}  # The RoBERTa rows'.


def _row(label, config, variant="", overrides=(), features=(), seeds=(), tau=-1.0, tries=0):
  """One run of a table: `config[:base,variant]`, `overrides` ((field, value) pairs of that
  config), `features` ((field, value) pairs of its feature stage's config), `seeds` (empty:
  the table's), and for Figure 2's points their tau and n."""
  return dict(label=label, config=config, variant=variant, overrides=tuple(overrides),
              features=tuple(features), seeds=tuple(seeds), tau=float(tau), tries=int(tries))


def _tau_name(tau: float) -> str:
  """A tau point's row name: tau_0_6 for 0.6, tau_m0_13 for -0.13."""
  text = f"{abs(tau):.2f}"
  text = text[:-1] if text.endswith("0") else text
  return "tau_" + ("m" if tau < 0 else "") + text.replace(".", "_")


def default_tries(base: str) -> int:
  """n of the rows that leave TRIES_FIELD alone: their feature config's default."""
  from configs import features  # pylint: disable=g-import-not-at-top
  return int(features.get_config(FEATURES_VARIANT[base]).generation.n)


def _figure2(base: str) -> tuple[tuple[float, ...], float]:
  """Figure 2's taus and the tau of its n sweep under `base`."""
  if base == "smoke":
    return SMOKE_FIGURE2_TAUS, SMOKE_FIGURE2_TRIES_TAU
  return FIGURE2_TAUS, FIGURE2_TRIES_TAU


def _tries_rows(base: str) -> list[tuple[int, str]]:
  """Figure 2's n points, (n, row name): the tau sweep's row at the n sweep's tau is the
  point of the features' default n."""
  taus, tries_tau = _figure2(base)
  default = default_tries(base)
  return [(n, _tau_name(tries_tau) if n == default and tries_tau in taus
           else f"{FIGURE2_TRIES_TASK}_n_{n}") for n in FIGURE2_TRIES]


def _rows(base: str = "") -> dict:
  """Every row of every table, by name (its folder in the workdir). One data table: a
  new variant of configs/ith.py is used by writing its name here."""
  ith, audiobert, span = "configs/ith.py", "configs/audiobert.py", "configs/span.py"
  glue = "configs/glue.py"
  zero_shot = "configs/zero_shot.py"
  large = [] if base == "smoke" else [("model.init", BERT_LARGE)]

  def roberta(name: str) -> list:
    # Under `smoke`: a tiny random RoBERTa (its tokenizer from the sample folder).
    return [("model.init", common.tiny_roberta_dir() if base == "smoke" else ROBERTA[name])]

  rows = {
      # The pretrained model is deterministic at evaluation: one seed says everything.
      "bert": _row("BERT-base, no training", ith, "no_train", seeds=(0,)),
      "text_only": _row("BERT-base, text-only fine-tuned", ith, "no_audio"),
      # BERT-large (AudioBERT's Table III): the same runs from bert-large-uncased (under
      # `smoke`, tiny models like every row).
      "bert_large": _row("BERT-large, no training", ith, "no_train", seeds=(0,),
                         overrides=large),
      "audiobert_large": _row("AudioBERT (BERT-large)", audiobert, overrides=large),
      # RoBERTa-base and -large, untrained (AudioBERT's Table III), scored at `<mask>`.
      "roberta": _row("RoBERTa-base, no training", ith, "no_train", seeds=(0,),
                      overrides=roberta("roberta")),
      "roberta_large": _row("RoBERTa-large, no training", ith, "no_train", seeds=(0,),
                            overrides=roberta("roberta_large")),
      # The papers' LLMs, scored without training (configs/zero_shot.py).
      "llama": _row("LLaMA3.1-8B, no training", zero_shot),
      "gemma2": _row("Gemma2-2B, no training", zero_shot, "gemma2"),
      "audiobert": _row("AudioBERT", audiobert),
      "ith": _row("Imagine to Hear", ith),
      "no_gate": _row("w/o FG", ith, "no_gate"),
      "sentence_audio": _row("w/o DKI", ith, "sentence_audio"),
      # Both ablations at once: one clip per sentence, fused without the gate.
      "sentence_audio_no_gate": _row("w/o (DKI + FG)", ith, "sentence_audio,no_gate"),
      "no_rejection": _row("w/o rejection", ith, "no_rejection"),
      "audioldm2": _row("AudioLDM 2", ith, "audioldm2"),
      "musicgen": _row("MusicGen", ith, "musicgen"),
      "audiobert_text_only": _row("AudioBERT, text-only (LoRA)", audiobert, "no_audio"),
      # AudioBERT's Table II: the detector trained on one task or both, tested on both.
      "span_animal": _row("animal", span, overrides=[("train.tasks", ("animal",))]),
      "span_pitch": _row("pitch", span, overrides=[("train.tasks", ("pitch",))]),
      "span_both": _row("animal + pitch", span),
      # ITH's Table 5 (GLUE): each row one run per GLUE task (configs/glue.py), the paper's
      # grid, epochs and seeds; ITH's stages run in each task's folder.
      "glue_bert": _row("BERT-base, text only", glue),
      "glue_ith": _row("Imagine to Hear", glue, "ith"),
      "glue_roberta": _row("RoBERTa-base, text only", glue, overrides=roberta("roberta")),
      "glue_roberta_ith": _row("Imagine to Hear (RoBERTa-base)", glue, "ith",
                               overrides=roberta("roberta")),
  }
  taus, tries_tau = _figure2(base)
  for tau in taus:
    rows[_tau_name(tau)] = _row(
        f"tau = {tau:g}", ith, features=[(TAU_FIELD.format(task=t), tau) for t in TASKS],
        tau=tau)
  for n, name in _tries_rows(base):
    if name in rows:
      continue  # The tau sweep's point at the n sweep's tau and the default n.
    rows[name] = _row(
        f"{FIGURE2_TRIES_TASK}, tau = {tries_tau:g}, n = {n}", ith,
        overrides=[("data.tasks", (FIGURE2_TRIES_TASK,))],
        features=[(TAU_FIELD.format(task=FIGURE2_TRIES_TASK), tries_tau),
                  (TRIES_FIELD, n)],
        tau=tries_tau, tries=n)
  return rows


def _layouts(base: str = "") -> dict:
  """Each table's rows, in the papers' order. Table 2's first row is the model the deltas
  are taken from; Figure 2 has its tau points and its n points (pitch)."""
  taus, _ = _figure2(base)
  # The LLM and BERT-large rows need their checkpoints (downloaded; the LLMs' gated): not
  # under the offline `minilm`.
  online = base != "minilm"
  large = ("bert_large", "roberta", "roberta_large") if online else ()
  llama, llms = (("llama",), ("gemma2", "llama")) if online else ((), ())
  return {
      "table1": ("bert", *large, *llama, "text_only", "audiobert", "ith"),
      "table2": ("ith", "no_gate", "sentence_audio", "sentence_audio_no_gate",
                 "no_rejection"),
      "table3": ("ith", "audioldm2", "musicgen"),
      "figure2": {"tau": tuple(_tau_name(t) for t in taus),
                  "tries": tuple(name for _, name in _tries_rows(base))},
      "audiobert": ("bert", *large, *llms, "audiobert_text_only", "audiobert",
                    *(("audiobert_large",) if online else ())),
      "detector": ("span_animal", "span_pitch", "span_both"),
      "glue": ("glue_bert", "glue_ith",
                 *(("glue_roberta", "glue_roberta_ith") if online else ())),
  }


def get_config(arg=None):
  names = [n.strip() for n in (arg or "").split(",") if n.strip()]
  base = names.pop(0) if names and names[0] in BASES else ""
  unknown = [n for n in names if n not in TABLES + ("all",)]
  if unknown:
    raise SystemExit(f"error: unknown config variant {unknown[0]!r}; known: "
                     f"{', '.join(BASES + TABLES + ('all',))}.")
  tables = (tuple(t for t in TABLES if t not in NAMED_ONLY or t in names)
            if not names or "all" in names else tuple(t for t in TABLES if t in names))
  layouts, rows = _layouts(base), _rows(base)

  c = ml_collections.ConfigDict()
  c.entry = "axk.runs.paper:run"
  c.plugins = ()  # Modules imported at start that register methods or tasks (every row too).
  c.name = "The papers' tables"
  c.base = base  # Base variant of every row's config ("smoke", "minilm" or "" for BERT-base).
  c.tables = tables  # Which tables to run and write.
  c.only = ()  # Row names to run (empty: every row of `tables`); the others show as missing.
  c.seeds = (0,) if base == "smoke" else (0, 1, 2, 3, 4)  # Seeds of every row (papers: 5).
  # A row whose config variant or field does not exist: "error" stops before any work,
  # "skip" runs the other rows and marks it in the tables.
  c.missing = "error"
  c.metric = "accuracy"  # The results.json metric in the tables ("accuracy" = paper protocol).
  # Further metrics tabled when the rows' results carry them (evaluation rows whose sentence
  # does not occur in train).
  c.extra_metrics = ("accuracy_unseen",)
  # n of the rows that leave TRIES_FIELD alone (the feature config's default): the n sweep's
  # point at that n is the tau sweep's row at FIGURE2_TRIES_TAU.
  c.default_tries = default_tries(base)
  c.figure_split = "test"  # Split of Figure 2's accuracy and share of spans without audio.
  c.figure_tries_task = FIGURE2_TRIES_TASK  # The task of Figure 2's n sweep.
  # AudioBERT's main table: the Combined columns, accuracy over the rows of both tasks of a
  # split (each task weighed by its rows, as the paper's Combined: LLaMA3.1-8B's 21.80 animal
  # and 62.55 pitch test give its 48.83; their plain mean is 42.18).
  c.combined = True
  # The detector table's metrics (configs/span.py's results): token F1 (the published
  # code's kind of score, without its padding positions) and span exact-match F1.
  c.detector_metrics = ("token_f1", "span_f1")
  # The benchmark tasks of the tables' columns (each with its spec's `columns` splits); empty:
  # the tasks the rows train (their data.tasks).
  c.tasks = TASKS
  # JAX's persistent compilation cache, shared by the rows (which all run in this process)
  # and their stages: rows of one model size share their programs.
  common.add_jax_cache(c)
  c.data = ml_collections.ConfigDict()  # Given to every row (and so to its stages).
  c.data.dir = "sample" if base == "smoke" else "github"  # AuditoryBench folder.
  c.data.cache_dir = ""  # Where "github" downloads go.
  c.data.revision = ""  # The HJ-Ok/AudioBERT commit "github" downloads.
  # Field overrides for every masked-word row's config (not the detector rows), (field,
  # value) pairs, e.g. (("train.batch_size", 16),); applied after the row's variant (an
  # epochs override would also train the untrained row).
  c.overrides = ()
  c.features_args = ()  # Extra flags for every feature stage.
  # The clip cache every feature stage shares ("": <workdir>/stages/clips), and the feature
  # config field it is given as.
  c.clip_cache = ""
  c.clip_cache_field = CACHE_FIELD
  # Table 5's data: a local GLUE folder (axk/data/glue.py; "sample" under smoke) and tasks.
  c.glue = ml_collections.ConfigDict()
  c.glue.dir = "sample" if base == "smoke" else ""
  c.glue.tasks = glue_tasks.NAMES
  # Each table's rows in the papers' order (Table 2: the full model first, the deltas' base).
  c.layouts = ml_collections.ConfigDict({t: layouts[t] for t in tables})
  needed = {r for t in tables for r in (sum(layouts[t].values(), ()) if t == "figure2"
                                         else layouts[t])}
  needed = sorted(needed, key=list(rows).index)
  # The rows these tables need, by name (`_row`): --config.rows.<name>.variant=... redefines
  # one.
  c.rows = ml_collections.ConfigDict({r: rows[r] for r in needed})
  return c
