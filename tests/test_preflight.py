"""The preflight (axk/runs/preflight.py), `--dry_run`, `--help`, a mistyped config path, and
`--show_config`'s comments.

A run that cannot get one of its chain's inputs stops before any stage with every missing
input on its own line; the references are the models and folders each config names (read
from the config files by hand here), the steps the smoke chain's loop really ran, and the
comments written in the config sources (tokenize, with the variable of each file listed by
hand).
"""

import ast
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import time
import tokenize

import pytest

from axk import hub
from axk.runs import config_source
from axk.runs import preflight
from configs import audiobert as audiobert_config
from configs import features as features_config
from configs import glue as glue_config
from configs import ith as ith_config
from configs import span as span_config
from configs import zero_shot as zero_shot_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLAP = "laion/clap-htsat-fused"
AST = "MIT/ast-finetuned-audioset-10-10-0.4593"
STABLE_AUDIO = "stabilityai/stable-audio-open-1.0"


def _offline_env(tmp_path):
  """No network to the hub and an empty hub cache."""
  hf = tmp_path / "hf"
  return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf),
          "HF_HUB_CACHE": str(hf / "hub")}


def _main(tmp_path, *args, env=None, timeout=120):
  start = time.time()
  proc = subprocess.run([sys.executable, "-m", "axk.main", *args], cwd=ROOT, text=True,
                        capture_output=True, timeout=timeout, env=env or os.environ)
  return proc, time.time() - start


# -- the chain's inputs, checked before any stage ------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("config, missing", [
    # ITH: the feature stage's CLAP, AST and Stable Audio Open (the span detector's MiniLM
    # ships in a package).
    ("configs/ith.py:minilm", (CLAP, AST, STABLE_AUDIO)),
    # ...and at BERT-base, its weights (the run's and the span detector's init).
    ("configs/ith.py", ("bert-base-uncased", CLAP, AST, STABLE_AUDIO)),
    # AudioBERT: CLAP, AST, and the retrieval database (empty by default).
    ("configs/audiobert.py:minilm", (CLAP, AST, "--config.database.dir is empty")),
])
def test_offline_chain_names_every_missing_input_before_any_stage(tmp_path, config, missing):
  workdir = tmp_path / "w"
  proc, seconds = _main(tmp_path, f"--config={config}", f"--workdir={workdir}",
                        "--config.data.dir=sample", env=_offline_env(tmp_path), timeout=60)
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert seconds < 30, seconds
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  for name in missing:  # Each on a line of its own.
    assert len([e for e in errors if name in e]) == 1, (name, errors)
  assert len(errors) == len(missing), errors
  if STABLE_AUDIO in missing:  # Gated: the line says how to get access.
    line = next(e for e in errors if STABLE_AUDIO in e)
    assert "accept its terms" in line and "huggingface-cli login" in line
  assert not (workdir / "stages").exists() and not workdir.exists()


def test_missing_data_folder_is_named_in_seconds(tmp_path):
  config = ith_config.get_config("minilm")
  config.data.dir = "/nonexistent"
  start = time.time()
  plan = preflight.plan(config, str(tmp_path / "w"))
  assert time.time() - start < 20
  assert [p for p in plan.problems if p.startswith("--config.data.dir=/nonexistent: ")], \
      plan.problems
  with pytest.raises(preflight.PreflightError, match="--config.data.dir=/nonexistent"):
    preflight.check(config, str(tmp_path / "w"))


def test_hub_check_says_why_without_downloading(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
  assert hub.check(str(tmp_path), "models.clap") == ""  # a local folder
  assert hub.check(str(tmp_path / "nope"), "models.clap") == (
      f"--config.models.clap={tmp_path / 'nope'}: no such directory.")
  line = hub.check(STABLE_AUDIO, "models.generator")
  assert line.startswith(f"Cannot get '{STABLE_AUDIO}' (--config.models.generator)")
  assert f"https://huggingface.co/{STABLE_AUDIO}" in line and "\n" not in line
  assert not (tmp_path / "hub").exists()  # nothing fetched, no cache made


def test_workdir_and_database_problems_come_together(tmp_path):
  (tmp_path / "file").write_text("")
  config = features_config.get_config("retrieval")
  config.data.dir = "sample"
  config.models.tiny = True
  config.database.dir = str(tmp_path / "no_db")
  config.spans.source = "gold"  # No detector's predictions to name.
  plan = preflight.plan(config, str(tmp_path / "file"))
  assert plan.problems == [f"--workdir={tmp_path / 'file'}: is a file, not a folder.",
                           f"--config.database.dir={tmp_path / 'no_db'}: no such folder."]


@pytest.mark.e2e
def test_dry_run_prints_the_plan_and_creates_nothing(tmp_path):
  workdir = tmp_path / "w"
  proc, _ = _main(tmp_path, "--config=configs/ith.py:smoke", f"--workdir={workdir}",
                  "--dry_run")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  stages = workdir / "stages"
  assert f"span detector: configs/span.py:smoke in {stages / 'span'}: runs" in out
  assert f"features: configs/features.py:smoke in {stages / 'features'}: runs" in out
  for role in ("clap", "ast", "generator"):  # built by the stage itself
    assert re.search(rf"models\.{role} = .*: tiny random model, built in", out), out
  # The sample's rows (the files' valid rows: axk/data/sample, counted by hand).
  assert "animal: train 27, dev 16, test 16, wiki 12" in out
  assert re.search(r"span detector \(configs/span.py:smoke\): \d+ train steps", out)
  assert re.search(r"Imagine to Hear: animal \d+ steps .* pitch \d+ steps", out)
  assert "Problems: none" in out
  assert not workdir.exists()


@pytest.mark.e2e
@pytest.mark.slow
def test_plan_matches_the_smoke_chain_and_skips_finished_stages(ith_smoke, tmp_path):
  """The planned train steps are those the chain's loop ran; once its stages are finished,
  the models of those stages are not needed."""
  config = ith_config.get_config("smoke")
  plan = preflight.plan(config, str(tmp_path / "fresh"))
  assert plan.problems == []
  costs = "\n".join(plan.costs)

  def last_step(metrics):
    steps = [json.loads(l).get("step", 0) for l in metrics.read_text().splitlines()]
    return max(steps)

  span_steps = int(re.search(r"span detector.*?: (\d+) train steps", costs).group(1))
  assert span_steps == last_step(ith_smoke / "stages" / "span" / "metrics.jsonl")
  for task in ("animal", "pitch"):
    steps = int(re.search(rf"{task} (\d+) steps", costs).group(1))
    metrics = next((ith_smoke / task).rglob("metrics.jsonl"))
    assert steps == last_step(metrics), task
  # Finished stages: reused, and a feature model nobody has is not asked for.
  config.stages.features_args = ("--config.models.tiny=False",
                                 "--config.models.clap=/nonexistent/clap")
  done = preflight.plan(config, str(ith_smoke))
  assert [s.runs for s in done.stages] == [False, False], done.stages
  assert done.problems == []
  fresh = preflight.plan(config, str(tmp_path / "fresh"))
  assert [p for p in fresh.problems if "/nonexistent/clap" in p], fresh.problems


# -- the command line ----------------------------------------------------------------------

# Each config file's variants and modifiers, by hand.
VARIANTS = {
    "span.py": ("minilm", "smoke", "cosine"),
    "features.py": ("retrieval", "generation", "smoke", "oracle", "oracle_shuffled",
                    "no_rejection", "sentence_audio", "audioldm2", "musicgen"),
    "audiobert.py": ("minilm", "smoke", "no_audio", "no_train", "one_seed"),
    "ith.py": ("minilm", "smoke", "no_audio", "no_train", "lora", "no_gate", "one_seed",
               "no_rejection", "sentence_audio", "audioldm2", "musicgen"),
    "paper.py": ("smoke", "minilm", "table1", "table2", "table3", "figure2", "audiobert", "all"),
    "zero_shot.py": ("smoke", "gemma2"),
    "glue.py": ("minilm", "smoke"),
}


@pytest.mark.e2e
def test_help_exits_0_and_lists_every_config(tmp_path):
  proc, _ = _main(tmp_path, "--help")
  assert proc.returncode == 0, proc.stderr[-2000:]
  files = sorted(p.name for p in (ROOT / "configs").glob("*.py")
                 if "\ndef get_config(" in p.read_text())
  assert files == sorted(VARIANTS)
  lines = proc.stdout.splitlines()
  for name in files:
    doc = ast.get_docstring(ast.parse((ROOT / "configs" / name).read_text()))
    start = lines.index(f"  configs/{name}: {doc.splitlines()[0]}")
    listed = " ".join(lines[start + 1:start + 3])
    for variant in VARIANTS[name]:
      assert re.search(rf"\b{variant}\b", listed), (name, variant, listed)
  assert "--dry_run" in proc.stdout and "--show_config" in proc.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("spec", ["configs/ith.pyy", "configs/nothing.py:smoke"])
def test_mistyped_config_path_is_one_line(tmp_path, spec):
  proc, _ = _main(tmp_path, f"--config={spec}", f"--workdir={tmp_path / 'w'}")
  assert proc.returncode == 3
  assert proc.stderr.strip().splitlines() == [
      f"error: --config={spec}: no such config file (configs: audiobert.py, features.py, "
      "glue.py, ith.py, paper.py, span.py, zero_shot.py)."]


# -- --show_config: each field's own comment -------------------------------------------------

# The variable that holds the config (or a part of it) in each file, by hand: `c` is the config
# everywhere, `d` the `data` fields in configs/common.py's data_config().
VARIABLES = {"c": "", "d": "data."}
ASSIGNMENT = re.compile(r"^\s*(\w+)\.([\w.]+)\s*(?:\+|-)?=(?!=)")


# The helpers of configs/common.py each config calls, by hand.
HELPERS = {
    "span.py": ("base_config", "data_config", "add_jax_cache", "minilm", "smoke"),
    "features.py": ("data_config", "add_jax_cache"),
    "zero_shot.py": ("data_config", "add_jax_cache"),
    "glue.py": ("base_config", "data_config", "add_jax_cache", "minilm", "smoke"),
    "audiobert.py": ("masked_word_config", "base_config", "data_config", "add_jax_cache",
                     "add_lora", "apply_base", "minilm", "smoke"),
}
HELPERS["ith.py"] = HELPERS["audiobert.py"]


def _written_comments(name: str) -> dict[str, set[str]]:
  """field path -> the comments on the lines that assign it, in configs/<name> and in the
  helpers of configs/common.py it calls (tokenize's comments; the assignment's target by a
  regex)."""
  out: dict[str, set[str]] = {}
  common = ROOT / "configs" / "common.py"
  used = set()
  for node in ast.parse(common.read_text()).body:
    if isinstance(node, ast.FunctionDef) and node.name in HELPERS[name]:
      used.update(range(node.lineno, node.end_lineno + 1))
  for file in (ROOT / "configs" / name, common):
    source = file.read_text()
    comments, code = {}, set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
      if tok.type == tokenize.COMMENT and tok.start[0] in code:
        comments[tok.start[0]] = tok.string[1:].strip()
      elif tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                            tokenize.DEDENT):
        code.add(tok.start[0])
    for number, line in enumerate(source.splitlines(), 1):
      m = ASSIGNMENT.match(line)
      if m and m.group(1) in VARIABLES and (file != common or number in used):
        field = VARIABLES[m.group(1)] + m.group(2)
        out.setdefault(field, set())
        if number in comments:
          out[field].add(comments[number])
  return out


def _shown(module, spec: str) -> dict[str, str]:
  config = module.get_config(spec.partition(":")[2] or None)
  text = config_source.show(config, config_source.field_comments(spec))
  shown = {}
  for line in text.splitlines():
    field, _, rest = line.partition(" = ")
    shown[field] = rest.split("  # ", 1)[1] if "  # " in rest else ""
  return shown


CONFIGS = [(span_config, "span.py"), (features_config, "features.py"),
           (audiobert_config, "audiobert.py"), (ith_config, "ith.py"),
           (zero_shot_config, "zero_shot.py"), (glue_config, "glue.py")]


@pytest.mark.parametrize("module, name", CONFIGS)
@pytest.mark.parametrize("variant", ["", "smoke"])
def test_show_config_comment_is_the_one_on_the_fields_own_line(module, name, variant):
  written = _written_comments(name)
  shown = _shown(module, f"{ROOT / 'configs' / name}:{variant}" if variant
                 else str(ROOT / "configs" / name))
  assert len(shown) > (10 if name == "zero_shot.py" else 30)
  for field, comment in shown.items():
    options = written.get(field, set())
    if comment:  # Never another field's comment.
      assert comment in options, (field, comment, options)
    else:  # None only where no line of that field has one (or its line did not run).
      assert not options or field in UNCOMMENTED_HERE.get((name, variant), ()), (
          field, options)


# Fields whose only commented line is in a variant branch this variant does not run.
UNCOMMENTED_HERE = {("ith.py", ""): ("features.dir", "train.task_warmup_epochs.pitch"),
                    ("ith.py", "smoke"): ("features.dir",),
                    ("features.py", ""): ("spans.source",)}


@pytest.mark.parametrize("module, spec, field, comment", [
    # The three comments the old last-name matching got wrong:
    (ith_config, "ith.py", "model.name", "axk/methods/ith.py"),
    (audiobert_config, "audiobert.py", "model.name", "axk/methods/audiobert.py"),
    (ith_config, "ith.py", "train.trainable",
     "Parameter paths (regex, full match) that are trained."),
    (audiobert_config, "audiobert.py", "train.trainable",
     "Parameter paths (regex, full match) that are trained."),
    (features_config, "features.py", "database.dir", ""),  # no comment on its own line
    # A variant's own line wins where it runs, and only there:
    (audiobert_config, "audiobert.py:no_train", "train.trainable",
     "Nothing is trained; the optimizer just needs a subset."),
    (span_config, "span.py:smoke", "model.init",
     "Only its tokenizer: `tiny` makes random weights."),
    (span_config, "span.py", "model.init", "Pretrained weights: hub id or local HF directory."),
    # common.py's line belongs to every config that runs it (`d` in data_config()):
    (features_config, "features.py", "data.dir",
     'AuditoryBench folder; "github" downloads it, "sample" is the demo set.'),
    (ith_config, "ith.py:smoke", "data.dir",
     'AuditoryBench folder; "github" downloads it, "sample" is the demo set.'),
    (ith_config, "ith.py", "model.lora_rank", "LoRA rank."),  # add_lora(c)
    (ith_config, "ith.py", "features.dir", ""),  # only no_audio's line has one...
    (ith_config, "ith.py:no_audio", "features.dir",  # ...and it runs there
     "No shards: every span has no audio, so the fusion never fires."),
    (ith_config, "ith.py", "model.tiny", "If set: a random BERT of these sizes instead."),
])
def test_show_config_known_comments(module, spec, field, comment):
  assert _shown(module, str(ROOT / "configs" / spec))[field] == comment
