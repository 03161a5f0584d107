r"""The papers' tables as commands: ITH's Tables 1-3 and Figure 2, AudioBERT's main table.

    python -m axk.main --config=configs/paper.py:table1 --workdir=workdirs/paper
    python -m axk.main --config=configs/paper.py:all --workdir=workdirs/paper
    python -m axk.main --config=configs/paper.py:smoke --workdir=/tmp/paper_smoke
    python -m axk.main --config=configs/paper.py:smoke,table2 --workdir=/tmp/paper_smoke

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
  table1     ITH Table 1: untrained BERT, text-only fine-tuned (the row the papers leave
             out), AudioBERT, ITH; dev, test, wiki of both tasks, mean +- std over the seeds.
  table2     ITH's ablations as deltas from the full model: w/o FG, w/o DKI, w/o rejection.
  table3     ITH's generators: Stable Audio Open (the full model), AudioLDM 2, MusicGen.
  figure2    accuracy against tau (both tasks) and against n (pitch, tau 0.6), with the share
             of spans left without audio.
  audiobert  AudioBERT's main table: untrained BERT, LoRA text-only, AudioBERT.
  all        every table above.

AudioBERT's rows retrieve from an audio database, given to every feature stage:

    python -m axk.main --config=configs/paper.py:table1 --workdir=workdirs/paper \
        --config.features_args='("--config.database.dir=/data/audio_db",)'

`--config.only='("bert","ith")'` runs a subset of the rows (the others show as not run). A
row whose variant or feature field does not exist stops the run before any work with one line
naming the row; `--config.missing=skip` runs the others and lists it in the table.
"""

import ml_collections

from axk.tasks import auditorybench
from configs import common

TABLES = ("table1", "table2", "table3", "figure2", "audiobert")
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
FIGURE2_TRIES_TASK = "pitch"  # Figure 2's n sweep: its task.
TASKS = auditorybench.NAMES  # The papers' benchmark tasks: the tables' columns.


def _row(label, config, variant="", overrides=(), features=(), seeds=(), tau=-1.0, tries=0):
  """One run of a table: `config[:base,variant]`, `overrides` ((field, value) pairs of that
  config), `features` ((field, value) pairs of its feature stage's config), `seeds` (empty:
  the table's), and for Figure 2's points their tau and n."""
  return dict(label=label, config=config, variant=variant, overrides=tuple(overrides),
              features=tuple(features), seeds=tuple(seeds), tau=float(tau), tries=int(tries))


def _tau_name(tau: float) -> str:
  return f"tau_{tau:.1f}".replace(".", "_")


def _rows() -> dict:
  """Every row of every table, by name (its folder in the workdir). One data table: a
  new variant of configs/ith.py is used by writing its name here."""
  ith, audiobert = "configs/ith.py", "configs/audiobert.py"
  rows = {
      # The pretrained model is deterministic at evaluation: one seed says everything.
      "bert": _row("BERT-base, no training", ith, "no_train", seeds=(0,)),
      "text_only": _row("BERT-base, text-only fine-tuned", ith, "no_audio"),
      "audiobert": _row("AudioBERT", audiobert),
      "ith": _row("Imagine to Hear", ith),
      "no_gate": _row("w/o FG", ith, "no_gate"),
      "sentence_audio": _row("w/o DKI", ith, "sentence_audio"),
      "no_rejection": _row("w/o rejection", ith, "no_rejection"),
      "audioldm2": _row("AudioLDM 2", ith, "audioldm2"),
      "musicgen": _row("MusicGen", ith, "musicgen"),
      "audiobert_text_only": _row("AudioBERT, text-only (LoRA)", audiobert, "no_audio"),
  }
  for tau in FIGURE2_TAUS:
    rows[_tau_name(tau)] = _row(
        f"tau = {tau:.1f}", ith, features=[(TAU_FIELD.format(task=t), tau) for t in TASKS],
        tau=tau)
  for n in FIGURE2_TRIES:
    if n == FIGURE2_TRIES[-1]:
      continue  # The tau sweep's point at FIGURE2_TRIES_TAU (n = 5) is this one.
    rows[f"{FIGURE2_TRIES_TASK}_n_{n}"] = _row(
        f"{FIGURE2_TRIES_TASK}, tau = {FIGURE2_TRIES_TAU}, n = {n}", ith,
        overrides=[("data.tasks", (FIGURE2_TRIES_TASK,))],
        features=[(TAU_FIELD.format(task=FIGURE2_TRIES_TASK), FIGURE2_TRIES_TAU),
                  (TRIES_FIELD, n)],
        tau=FIGURE2_TRIES_TAU, tries=n)
  return rows


def _layouts() -> dict:
  """Each table's rows, in the papers' order. Table 2's first row is the model the deltas
  are taken from; Figure 2 has its tau points and its n points (pitch)."""
  tries = ([f"{FIGURE2_TRIES_TASK}_n_{n}" for n in FIGURE2_TRIES[:-1]]
           + [_tau_name(FIGURE2_TRIES_TAU)])
  return {
      "table1": ("bert", "text_only", "audiobert", "ith"),
      "table2": ("ith", "no_gate", "sentence_audio", "no_rejection"),
      "table3": ("ith", "audioldm2", "musicgen"),
      "figure2": {"tau": tuple(_tau_name(t) for t in FIGURE2_TAUS), "tries": tuple(tries)},
      "audiobert": ("bert", "audiobert_text_only", "audiobert"),
  }


def get_config(arg=None):
  names = [n.strip() for n in (arg or "").split(",") if n.strip()]
  base = names.pop(0) if names and names[0] in BASES else ""
  unknown = [n for n in names if n not in TABLES + ("all",)]
  if unknown:
    raise SystemExit(f"error: unknown config variant {unknown[0]!r}; known: "
                     f"{', '.join(BASES + TABLES + ('all',))}.")
  tables = TABLES if not names or "all" in names else tuple(t for t in TABLES if t in names)
  layouts, rows = _layouts(), _rows()

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
  # last point is the tau sweep's row at FIGURE2_TRIES_TAU.
  c.default_tries = FIGURE2_TRIES[-1]
  c.figure_split = "test"  # Split of Figure 2's accuracy and share of spans without audio.
  c.figure_tries_task = FIGURE2_TRIES_TASK  # The task of Figure 2's n sweep.
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
  # Field overrides for every row's config, (field, value) pairs, e.g.
  # (("train.batch_size", 16),); applied after the row's variant (an epochs override would
  # also train the untrained row).
  c.overrides = ()
  c.features_args = ()  # Extra flags for every feature stage.
  # The clip cache every feature stage shares ("": <workdir>/stages/clips), and the feature
  # config field it is given as.
  c.clip_cache = ""
  c.clip_cache_field = CACHE_FIELD
  # Each table's rows in the papers' order (Table 2: the full model first, the deltas' base).
  c.layouts = ml_collections.ConfigDict({t: layouts[t] for t in tables})
  needed = {r for t in tables for r in (sum(layouts[t].values(), ()) if t == "figure2"
                                         else layouts[t])}
  needed = sorted(needed, key=list(rows).index)
  # The rows these tables need, by name (`_row`): --config.rows.<name>.variant=... redefines
  # one.
  c.rows = ml_collections.ConfigDict({r: rows[r] for r in needed})
  return c
