"""A newcomer's first runs: the results table at the end, a finished run not run again, one
results.md for a run of several tasks, JAX's compilation cache where the config says, and
progress bars whose speed leaves compilation out."""

import io
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import pytest

from axk.runs import masked_word
from axk.train.progress import StepBar
from axk.utils import jax_cache
from configs import audiobert as audiobert_config
from configs import features as features_config
from configs import ith as ith_config
from configs import paper as paper_config
from configs import span as span_config

from conftest import ROOT

# The smallest masked-word chain: ITH's smoke config, text only (no stage), one epoch, both
# tasks (one model each, so the top results.md gathers two).
TEXT_ONLY = ("--config.features.dir=", "--config.spans.predictions=", "--config.train.epochs=1")


def _text_only_config():
  c = ith_config.get_config("smoke")
  c.features.dir, c.spans.predictions, c.train.epochs = "", "", 1
  return c


@pytest.fixture(scope="module")
def text_only_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("text_only") / "run"
  assert masked_word.run(_text_only_config(), str(workdir))
  return workdir


def _json(path):
  with open(path) as f:
    return json.load(f)


def _final_lines(path):
  with open(path) as f:
    return [line for line in f if any(k.startswith("final/") for k in json.loads(line))]


def _printed(stdout: str) -> dict[tuple[str, str], list[str]]:
  """{(task, split): cells} of the markdown table rows in `stdout`, and its header."""
  rows = {}
  for line in stdout.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if line.startswith("|") and len(cells) > 2 and not cells[0].startswith("---"):
      rows[(cells[0], cells[1])] = cells[2:]
  return rows


def _main(args, env=None, timeout=600):
  return subprocess.run([sys.executable, "-m", "axk.main", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, env=env)


@pytest.mark.e2e  # A complete two-task run (`text_only_run`) and its top results.md.
def test_a_run_of_two_tasks_has_one_results_md_with_one_header_and_one_table(text_only_run):
  text = (text_only_run / "results.md").read_text()
  assert len(re.findall(r"^# ", text, re.M)) == 1, text
  assert len(re.findall(r"^## ", text, re.M)) == 0, text
  headers = [l for l in text.splitlines() if l.startswith("| task | split |")]
  assert len(headers) == 1, text
  columns = [c.strip() for c in headers[0].strip("|").split("|")]
  rows = _printed(text)
  for task in ("animal", "pitch"):
    own = _json(text_only_run / task / "results.json")[task]  # The task's own run.
    for split in ("dev", "test", "wiki"):
      cells = dict(zip(columns[2:], rows[(task, split)]))
      assert cells["accuracy"] == f"{own[split]['accuracy']:.2f}"
      assert cells["accuracy_candidates"] == f"{own[split]['accuracy_candidates']:.2f}"
  # Each task's note on where its parameters came from, once, named by task.
  assert len(re.findall(r"^- animal: Parameters from step", text, re.M)) == 1, text
  assert len(re.findall(r"^- pitch: Parameters from step", text, re.M)) == 1, text


@pytest.mark.e2e  # Starts `axk.main` on a finished run.
@pytest.mark.slow
def test_a_finished_run_rerun_prints_its_table_without_evaluating_again(text_only_run,
                                                                         tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(text_only_run, workdir)
  rerun = _main(["--config=configs/ith.py:smoke", f"--workdir={workdir}", *TEXT_ONLY])
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  for task in ("animal", "pitch"):
    assert len(_final_lines(workdir / task / "metrics.jsonl")) == 1, task
  assert "from checkpoint" not in rerun.stderr + rerun.stdout
  assert "finished before" in rerun.stderr
  # The table it ends with: the accuracies of results.json, by task and split.
  printed = _printed(rerun.stdout)
  saved = _json(workdir / "results.json")
  for task in ("animal", "pitch"):
    for split in ("dev", "test", "wiki"):
      accuracy, candidates = printed[(task, split)][:2]
      assert accuracy == f"{saved[task][split]['accuracy']:.2f}"
      assert candidates == f"{saved[task][split]['accuracy_candidates']:.2f}"
  lines = rerun.stdout.strip().splitlines()
  assert lines[-2:] == [f"results.md: {workdir / 'results.md'}",
                        f"report.html: {workdir / 'report.html'}"]


@pytest.mark.e2e  # Evaluates a complete run (`text_only_run`) again, in process.
def test_reevaluate_evaluates_again_and_says_where_the_run_started(text_only_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(text_only_run, workdir)
  config = _text_only_config()
  config.data.tasks = ("pitch",)
  config.train.reevaluate = True
  masked_word.run(config, str(workdir / "pitch"))
  assert len(_final_lines(workdir / "pitch" / "metrics.jsonl")) == 2
  steps = _json(workdir / "pitch" / "results.json")["selection"]["total_steps"]
  note = (workdir / "pitch" / "results.md").read_text()
  assert (f"started from random initialisation; resumed from checkpoint step {steps}."
          in note), note


@pytest.mark.e2e  # Starts `axk.main`: a run that evaluates, with the cache in a folder.
@pytest.mark.slow
def test_a_run_ends_with_its_table_and_fills_the_cache_folder_it_is_given(tmp_path):
  cache = tmp_path / "jax"
  env = {k: v for k, v in os.environ.items() if k != jax_cache.ENV_DIR}
  run = _main(["--config=configs/span.py:smoke", f"--workdir={tmp_path / 'run'}",
               "--config.train.epochs=0", f"--config.jax_cache_dir={cache}"], env=env)
  assert run.returncode == 0, run.stderr[-3000:]
  assert os.listdir(cache)  # The programs it compiled.
  saved = _json(tmp_path / "run" / "results.json")
  printed = _printed(run.stdout)
  for task in ("animal", "pitch"):
    for split in ("dev", "test"):
      token_f1, span_f1 = printed[(task, split)][:2]
      assert token_f1 == f"{saved[task][split]['token_f1']:.2f}"
      assert span_f1 == f"{saved[task][split]['span_f1']:.2f}"


@pytest.fixture
def jax_settings(monkeypatch):
  """JAX's cache settings and environment, restored after the test."""
  names = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
           "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  before = {n: getattr(jax.config, n) for n in names}
  for name in (jax_cache.ENV_DIR, jax_cache.ENV_ENABLE, jax_cache.ENV_MIN_TIME,
               jax_cache.ENV_MIN_SIZE):
    monkeypatch.setenv(name, "")  # Recorded, restored at teardown.
    monkeypatch.delenv(name)
  yield
  for n, v in before.items():
    jax.config.update(n, v)
  jax_cache._reset(jax)


def test_the_cache_goes_where_the_field_says_off_with_none_and_the_environment_wins(
    jax_settings, tmp_path, monkeypatch):
  folder = tmp_path / "cache"
  assert jax_cache.enable(str(folder)) == str(folder)
  assert jax.config.jax_compilation_cache_dir == str(folder)
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
  assert os.environ[jax_cache.ENV_DIR] == str(folder)  # What stage processes inherit.
  jax.jit(lambda x: x * 3.25 + 1.5)(jax.numpy.arange(7.0)).block_until_ready()
  assert os.listdir(folder)

  monkeypatch.delenv(jax_cache.ENV_DIR)
  assert jax_cache.enable("none") == ""
  assert jax.config.jax_enable_compilation_cache is False
  assert jax.config.jax_compilation_cache_dir is None
  monkeypatch.delenv(jax_cache.ENV_ENABLE)

  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert jax_cache.enable("") == str(tmp_path / "xdg" / "axk" / "jax")

  monkeypatch.setenv(jax_cache.ENV_DIR, str(tmp_path / "env"))
  assert jax_cache.enable(str(tmp_path / "field")) == str(tmp_path / "env")
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "env")
  assert jax_cache.enable("none") == str(tmp_path / "env")
  assert jax.config.jax_enable_compilation_cache is True


@pytest.mark.parametrize("get_config", [
    lambda: span_config.get_config("smoke"), lambda: ith_config.get_config("smoke"),
    lambda: audiobert_config.get_config("smoke"), lambda: features_config.get_config("smoke"),
    lambda: paper_config.get_config("smoke")])
def test_every_config_family_has_the_cache_field_with_the_default(get_config):
  assert get_config().jax_cache_dir == ""


def test_the_step_rate_leaves_out_the_first_step_that_compiles():
  now = [100.0]
  out = io.StringIO()
  bar = StepBar(total=30, desc="ITH", unit="step", clock=lambda: now[0], file=out,
                mininterval=0, miniters=1)
  assert "compiling" in str(bar)
  now[0] += 60.0  # The first step: compilation.
  bar.update(1)
  assert "compiling" not in str(bar)
  for _ in range(10):  # Then 10 steps of 0.25 s: 4 steps/s, 19 left, 4.75 s.
    now[0] += 0.25
    bar.update(1)
  text = str(bar)
  assert "11/30" in text and "4.00step/s" in text, text
  assert "<00:04," in text, text  # tqdm shows the 4.75 s left as 00:04.
