"""Uploads an existing run's exports, with their model cards, to the Hugging Face Hub.

    python -m axk.push --workdir=workdirs/ith [--repo_id=org/axk-ith] [--public] [--overwrite]

`--repo_id` defaults to the run's `export.push_to_hub` (config.json). Each export of the run
goes to its own repo (see `axk.publish.push`); new repos are private unless `--public`, and a repo
that already holds files is refused unless `--overwrite`.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app
from absl import flags

from axk.publish import push

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir (holds results.json).")
_REPO_ID = flags.DEFINE_string("repo_id", None, "Hub repo id, `org/name`.")
_PUBLIC = flags.DEFINE_bool("public", False, "Create new repos as public.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace files an existing repo holds.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  workdir = _WORKDIR.value
  repo_id = _REPO_ID.value
  config_file = os.path.join(workdir, "config.json")
  if not repo_id and os.path.exists(config_file):
    with open(config_file, encoding="utf-8") as f:
      repo_id = json.load(f).get("export", {}).get("push_to_hub")
  if not repo_id:
    sys.exit("error: --repo_id is required (the run's config names no export.push_to_hub).")
  try:
    for path, url in push.push_run(workdir, repo_id, private=not _PUBLIC.value,
                                   overwrite=_OVERWRITE.value).items():
      print(f"pushed {path} -> {url}")
  except (push.PushError, ValueError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
