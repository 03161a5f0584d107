"""What exactly a run used: axk's commit, the data's revision and every model's revision.

`collect(config)` returns the record that `config.json` and `results.json` carry under
`"revisions"` and that model cards cite:

    {"axk": {"commit": "<git commit>[-dirty]"},
     "data": {"source": "github", "repository": "HJ-Ok/AudioBERT", "revision": "<commit>",
              "pinned": true, "files": {"animal_sound_recognition/train.csv": "<sha256>", ...}},
     "models": {"model.init": {"name", "requested_revision", "revision", "source"},
                "features.clap": {...}, ...},
     "features": {"dir", "data_revision"}}

A model's `revision` is the exact hub commit it was read from, or `sha256:...` of a local
folder's content; the data's is the upstream commit, or `sha256:...` of a local folder's CSV
files. Imports neither torch nor jax.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess

from axk import hf
from axk import hub
from axk.data import auditorybench as ab
from axk.data import download

REVISIONS_KEY = "revisions"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def axk_commit() -> str:
  """The git commit of this axk checkout (`-dirty` with uncommitted changes to tracked
  files), or "unknown" outside a git checkout."""
  try:
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                          text=True, timeout=10)
    if head.returncode:
      return "unknown"
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def data_record(data_config) -> dict:
  """`download.data_revision` of the folder `data_config` resolves to."""
  folder = ab.resolve_data_dir(data_config.dir, data_config.get("cache_dir") or None,
                               data_config.get("revision", ""))
  return download.data_revision(folder)


def collect(config, resolved: dict | None = None) -> dict:
  """The revisions record of a run of `config` (see the module docstring).

  `resolved`: what the run's stages produced (`features_dir`, `spans_predictions`), which
  wins over the config's fields (there they may read "auto")."""
  resolved = resolved or {}
  record: dict = {"axk": {"commit": axk_commit()}}
  # A task read its data and model before the loop calls this, so these resolve again from
  # the cache; a task that reads neither (a test's) gets the reason instead of a revision.
  if "data" in config:
    try:
      record["data"] = data_record(config.data)
    except ab.DataError as e:
      record["data"] = {"revision": None, "error": str(e)}
  models = {}
  model = config.get("model")
  if model is not None and model.get("init"):
    revision = model.get("revision") or None
    try:
      path = hf.resolve(model.init, revision)
      models["model.init"] = hub.describe(model.init, path, revision)
    except hf.CheckpointError as e:
      models["model.init"] = {"name": str(model.init), "revision": None, "error": str(e)}
    if model.get("tiny"):
      models["model.init"]["note"] = "tokenizer only: model.tiny builds random weights"
  features_dir = resolved.get("features_dir") or config.get("features", {}).get("dir", "")
  manifest_path = os.path.join(features_dir, "manifest.json") if features_dir else ""
  if manifest_path and os.path.exists(manifest_path):
    with open(manifest_path, encoding="utf-8") as f:
      manifest = json.load(f)
    for name, entry in manifest.get("models", {}).items():
      models[f"features.{name}"] = entry
    record["features"] = {"dir": os.path.abspath(features_dir),
                          "data_revision": manifest.get("data", {}).get("revision")}
  predictions = (resolved.get("spans_predictions")
                 or config.get("spans", {}).get("predictions", ""))
  detector_results = os.path.join(os.path.dirname(os.path.abspath(predictions)), "results.json")
  if predictions and os.path.isdir(predictions) and os.path.exists(detector_results):
    with open(detector_results, encoding="utf-8") as f:
      detector = json.load(f).get(REVISIONS_KEY, {})
    if "model.init" in detector.get("models", {}):
      models["span_detector.model.init"] = detector["models"]["model.init"]
  record["models"] = models
  return record
