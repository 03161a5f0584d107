"""Uploading a run's exports to the Hugging Face Hub, through `huggingface_hub`.

    python -m axk.main --config=configs/ith.py --workdir=W --config.export.push_to_hub=org/axk-ith
    python -m axk.push --workdir=W --repo_id=org/axk-ith        # an existing run's export

Each export of the run (`axk.publish.card.run_exports`) goes to its own model repo: the run's
own `export/` to `repo_id`, `<task>/export/` to `repo_id-<task>`, `seed_<s>/export/` to
`repo_id-seed_<s>`. One commit per repo holds every file of the export, its model card
(rendered for that repo id) and, for PEFT adapters, an `adapter_config.json` whose
`base_model_name_or_path` names the repo (the base model is its `base/` folder). New repos
are private unless `private=False`. A repo that already holds files (other than the
`.gitattributes` the Hub creates) is refused unless `overwrite=True`, which replaces them
and deletes files the export does not have. A 401/403 becomes one line saying how to log in.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from axk import hub
from axk.publish import card as card_lib
from axk.utils import files


class PushError(RuntimeError):
  """An upload that cannot or must not happen (bad repo id, existing files, no access)."""


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def check_repo_id(repo_id: str, what: str = "--config.export.push_to_hub") -> None:
  """Refuses a malformed repo id before any work (`org/name`)."""
  if not _REPO_ID.match(repo_id or "") or ".." in repo_id or repo_id.endswith((".git", "-")):
    raise PushError(f"{what}={repo_id!r}: not a Hub repo id (expected `org/name`).")


def repo_ids(workdir: str, repo_id: str) -> dict[str, str]:
  """Export folder -> repo id, for every export of the run in `workdir`."""
  return {export: card_lib.hub_repo_id(workdir, export, repo_id)
          for export in card_lib.run_exports(workdir)}


def operations(export_dir: str, repo_id: str) -> list:
  """The `CommitOperationAdd`s that upload `export_dir` as `repo_id`."""
  from huggingface_hub import CommitOperationAdd  # pylint: disable=g-import-not-at-top
  ops = []
  for root, dirs, names in os.walk(export_dir):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in sorted(names):
      if name.startswith("."):
        continue
      full = os.path.join(root, name)
      rel = os.path.relpath(full, export_dir).replace(os.sep, "/")
      if rel == card_lib.CARD:
        continue  # Rendered below for this repo id.
      content: Any = full
      if rel == "adapter/adapter_config.json":
        with open(full, encoding="utf-8") as f:
          adapter = json.load(f)
        if os.path.isabs(str(adapter.get("base_model_name_or_path") or "/")):
          adapter["base_model_name_or_path"] = repo_id  # its `base/` folder, not a local path
        content = (json.dumps(adapter, indent=2, sort_keys=True) + "\n").encode()
      ops.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=content))
  text = card_lib.render(export_dir, repo_id=repo_id)
  ops.insert(0, CommitOperationAdd(path_in_repo=card_lib.CARD,
                                   path_or_fileobj=text.encode("utf-8")))
  return ops


def push_export(export_dir: str, repo_id: str, *, private: bool = True,
                overwrite: bool = False, api=None, token: str | None = None) -> str:
  """Uploads one export in one commit; returns the commit URL.

  Raises:
    PushError: a malformed repo id, a repo with files and `overwrite=False`, or no access.
  """
  check_repo_id(repo_id, "repo id")
  from huggingface_hub import CommitOperationDelete  # pylint: disable=g-import-not-at-top
  from huggingface_hub import HfApi  # pylint: disable=g-import-not-at-top
  api = api or HfApi(token=token)
  ops = operations(export_dir, repo_id)
  try:
    api.create_repo(repo_id, private=private, exist_ok=True)
    existing = sorted(set(api.list_repo_files(repo_id)) - {".gitattributes"})
    if existing and not overwrite:
      raise PushError(f"{repo_id} already holds {len(existing)} files ({', '.join(existing[:4])}"
                      f"{', ...' if len(existing) > 4 else ''}); pass "
                      "--config.export.overwrite=true (python -m axk.push --overwrite) to "
                      "replace them.")
    ours = {op.path_in_repo for op in ops}
    ops += [CommitOperationDelete(path_in_repo=p) for p in existing if p not in ours]
    info = api.create_commit(repo_id, operations=ops,
                             commit_message=f"axk export ({card_lib.export_kind(export_dir)})")
  except PushError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    denied = hub.access_message(e, repo_id, action="write to")
    if denied:
      raise PushError(denied) from None
    raise
  return getattr(info, "commit_url", str(info))


def push_run(workdir: str, repo_id: str, *, private: bool = True, overwrite: bool = False,
             api=None, token: str | None = None) -> dict[str, str]:
  """Writes the cards of every export of the run, then uploads each; export -> commit URL."""
  check_repo_id(repo_id)
  targets = repo_ids(workdir, repo_id)
  if not targets:
    raise PushError(f"{workdir}: no finished export (an export/ folder next to results.json).")
  return {export: push_export(export, repo, private=private, overwrite=overwrite, api=api,
                              token=token)
          for export, repo in targets.items()}


def finish_run(config, workdir: str) -> list[str]:
  """After a finished run (process 0): the model card of every export, then the upload
  when `config.export.push_to_hub` names a repo. Returns the cards written."""
  if not workdir or not os.path.isdir(workdir) or not files.is_writer():
    return []
  cards = card_lib.write_run_cards(workdir)
  export = config.get("export", {})
  if export.get("push_to_hub"):
    for path, url in push_run(workdir, export.push_to_hub, private=export.get("private", True),
                              overwrite=export.get("overwrite", False)).items():
      print(f"pushed {path} -> {url}")
  return cards
