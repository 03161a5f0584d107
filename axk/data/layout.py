"""The layout of an AuditoryBench folder: where each task's split files lie, and its checks.

A folder holds one folder per task (its spec's `folder`, `axk.tasks`) with `train`, `dev`, `test`
and (optionally) `wiki` CSV files. The tiny invented sample that ships with axk has that
layout too.
"""

from __future__ import annotations

import os
import pathlib

from axk import tasks
from axk.data.types import SPLITS

# Splits a task folder must have; `wiki` (the out-of-domain test) is optional.
REQUIRED_SPLITS = ("train", "dev", "test")

# How to name a folder, for every message about one that cannot be used.
DATA_DIR_HINT = (
    "pass --config.data.dir=/path/to/auditorybench (a folder holding "
    f"{' and '.join(tasks.get(t).folder for t in tasks.auditorybench.NAMES)}), or --config.data.dir=sample for the tiny "
    "sample dataset shipped with axk (axk.data.auditorybench.sample_data_dir())"
)


class DataError(ValueError):
  """A data file or folder that cannot be used as AuditoryBench."""


def split_path(data_dir: str | os.PathLike[str], task: str, split: str) -> pathlib.Path:
  """The CSV file of `task`/`split` under `data_dir`."""
  folder = tasks.get(task).folder
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  return pathlib.Path(data_dir) / folder / f"{split}.csv"


def sample_data_dir() -> str:
  """The tiny invented dataset shipped with axk, for demos and smoke tests."""
  return str(pathlib.Path(__file__).parent / "sample")


def check_data_dir(path: str | os.PathLike[str]) -> str:
  """Returns `path` when it holds every required split file of every task.

  Raises:
    DataError: listing every missing folder or file.
  """
  root = pathlib.Path(path).expanduser()
  if not root.is_dir():
    raise DataError(f"AuditoryBench folder {root} does not exist or is not a folder; "
                    f"{DATA_DIR_HINT}")
  missing = []
  for task in tasks.auditorybench.NAMES:
    name = tasks.get(task).folder
    folder = root / name
    if not folder.is_dir():
      missing.append(f"{name}/")
      continue
    missing.extend(f"{name}/{s}.csv" for s in REQUIRED_SPLITS
                   if not (folder / f"{s}.csv").is_file())
  if missing:
    flat = sorted(p.name for p in root.glob("*_*.csv"))
    hint = (f" It holds {flat}: the upstream repository's older flat layout, whose animal "
            "train file is its test file; use the per-task folders instead."
            if flat else "")
    raise DataError(f"AuditoryBench folder {root} lacks {', '.join(missing)}.{hint}")
  return str(root)
