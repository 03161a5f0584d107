"""The installed `axk` command: subcommands as `python -m` modules, configs from any folder."""

import importlib
import importlib.metadata
import os
import pathlib
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _axk(args, cwd):
  env = {**os.environ, "PYTHONPATH": str(ROOT)}  # As an installed axk: importable anywhere.
  return subprocess.run([sys.executable, "-m", "axk.cli", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def test_pyproject_installs_the_command_and_the_configs():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())
  module, _, function = project["project"]["scripts"]["axk"].partition(":")
  assert callable(getattr(importlib.import_module(module), function))
  assert "configs" in project["tool"]["setuptools"]["packages"]["find"]["include"]


def test_help_lists_each_subcommand_with_its_module():
  proc = _axk([], ROOT)
  assert proc.returncode == 0, proc.stderr
  for name, module in [("train", "axk.main"), ("predict", "axk.predict"), ("demo", "axk.demo"),
                       ("report", "axk.report"), ("push", "axk.push")]:
    assert f"  {name} " in proc.stdout and f"python -m {module}" in proc.stdout
    assert importlib.util.find_spec(module) is not None


def test_unknown_subcommand_is_one_line():
  proc = _axk(["trian"], ROOT)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: axk trian: no such command; commands: train, predict, demo, report, push "
      "(axk --help)."]


@pytest.mark.e2e
def test_train_reads_configs_from_any_folder(tmp_path):
  """From a folder without configs/, `configs/span.py:smoke` is axk's own file."""
  proc = _axk(["train", "--config=configs/span.py:smoke", "--show_config",
               "--config.train.epochs=7"], tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  shown = dict(line.split(" = ", 1) for line in proc.stdout.splitlines() if " = " in line)
  assert shown["train.epochs"].split("  #")[0] == "7"
  assert shown["data.dir"].split("  #")[0] == "'sample'"  # The sample data shipped with axk.


def test_installed_command_runs_when_axk_is_installed():
  try:
    dist = importlib.metadata.distribution("axk")
  except importlib.metadata.PackageNotFoundError:
    pytest.skip("axk is not installed (pip install -e .)")
  (entry,) = [e for e in dist.entry_points if e.name == "axk"]
  assert entry.value == "axk.cli:main"
  script = pathlib.Path(sys.executable).parent / "axk"
  proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and "python -m axk.main" in proc.stdout
