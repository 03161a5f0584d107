"""AuditoryBench from GitHub, at a pinned commit, and the record of what data a folder holds.

`download` fetches the benchmark's files at one commit of the AudioBERT repository
(`axk.data.pins`) and checks each against its pinned or first-recorded sha256;
`data_revision` says which data a folder holds, for provenance, results and manifests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import socket
import urllib.error
import urllib.parse
import urllib.request

from axk.data import pins
from axk.data.layout import DATA_DIR_HINT
from axk.data.layout import DataError
from axk.data.layout import REQUIRED_SPLITS
from axk.data.layout import check_data_dir
from axk.data.layout import sample_data_dir
from axk.data.layout import split_path
from axk.data.types import SPLITS
from axk import tasks
from axk.utils import files as files_lib

logger = logging.getLogger(__name__)

# In each downloaded commit's folder: the commit and the sha256 of each file.
REVISION_FILE = "revision.json"
DEFAULT_CACHE_DIR = "~/.cache/axk/auditorybench"
# Short enough that an offline machine fails in seconds rather than hanging a launch.
DOWNLOAD_TIMEOUT_S = 5.0


def _urlopen(url: str, timeout: float):
  # Looked up at call time, so that tests can replace either this function or
  # `urllib.request.urlopen`.
  return urllib.request.urlopen(url, timeout=timeout)


def _fetch(url: str) -> bytes:
  with _urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
    return response.read()


def _hash_mismatch(name: str, have: str, want: str, what: str) -> DataError:
  return DataError(f"{name}: sha256 {have} differs from the {what} {want}; the file changed. "
                   "Delete it to download it again, or move the pin on purpose with "
                   "--config.data.revision=<commit>.")


def download(cache_dir: str | os.PathLike[str] | None = None, revision: str = "") -> str:
  """Downloads AuditoryBench at one commit of the AudioBERT repository into `cache_dir`.

  The files go to `<cache_dir>/<commit>/`, so that commits never mix. Every file, new or
  already there, is checked: against `axk.data.pins.PINS` when the commit is pinned there,
  else against the sha256 recorded at its first download (`revision.json` in that folder).
  A missing upstream `wiki` file (HTTP 404, or a pin without it) is remembered with a
  `wiki.csv.missing` marker, so that later runs, offline ones too, do not ask again.

  Args:
    cache_dir: target folder, default `DEFAULT_CACHE_DIR`.
    revision: a 40-hex commit of `pins.REPOSITORY`, or a branch pinned by content in
      `pins.PINS` (default `pins.DEFAULT_REVISION`, "main").

  Returns:
    The folder of that commit, checked by `check_data_dir`.

  Raises:
    DataError: a malformed revision; a file whose sha256 differs from the pinned or
      recorded one (naming the file and both hashes); the network cannot be reached (after
      one try with a short timeout, so that an offline machine fails in seconds) or a
      required file cannot be fetched.
  """
  revision = str(revision or pins.DEFAULT_REVISION).strip()
  if not pins.COMMIT.match(revision) and revision not in pins.PINS:
    raise DataError(f"--config.data.revision={revision}: not a 40-hex commit of "
                    f"{pins.REPOSITORY} (a branch or tag moves; name the commit).")
  pin = pins.PINS.get(revision)
  layout = pin.layout if pin else "per_task"
  root = pathlib.Path(cache_dir or DEFAULT_CACHE_DIR).expanduser() / revision
  record_path = root / REVISION_FILE
  recorded = {}
  if record_path.exists():
    recorded = json.loads(record_path.read_text()).get("files", {})
  files = {}
  for task in tasks.auditorybench.NAMES:
    for split in SPLITS:
      dest = split_path(root, task, split)
      rel = dest.relative_to(root).as_posix()
      marker = dest.with_name(dest.name + ".missing")
      upstream = pins.upstream_path(layout, tasks.get(task).folder, split)
      want = pin.files.get(upstream) if pin else recorded.get(rel)
      what = (f"pinned sha256 of {pins.REPOSITORY}@{revision[:12]}:{upstream}" if pin
              else "sha256 recorded at its first download")
      required = split in REQUIRED_SPLITS
      if dest.exists():
        have = files_lib.sha256_file(dest)
        if want and have != want:
          raise _hash_mismatch(str(dest), have, want, what)
        files[rel] = have
        continue
      if marker.exists():
        continue
      if pin and want is None:
        if required:
          raise DataError(f"{pins.REPOSITORY}@{revision}: the pin lists no {upstream}.")
        logger.info("%s@%s: the pin lists no %s; %s/%s left out (%s)", pins.REPOSITORY,
                    revision, upstream, task, split, pin.note)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        continue
      url = pins.url(revision, upstream)
      try:
        data = _fetch(url)
      except urllib.error.HTTPError as e:
        if e.code == 404 and not required:
          logger.info("%s: not published upstream (404); %s/%s left out", url, task, split)
          marker.parent.mkdir(parents=True, exist_ok=True)
          marker.touch()
          continue
        raise DataError(f"downloading {url} failed: HTTP {e.code} {e.reason}; "
                        f"{DATA_DIR_HINT}") from e
      except (urllib.error.URLError, OSError) as e:
        if not required:
          logger.warning("downloading %s failed (%s); %s/%s left out", url, e, task, split)
          continue
        reason = getattr(e, "reason", e)
        raise DataError(f"cannot download AuditoryBench from {url} ({reason}); offline? "
                        f"{DATA_DIR_HINT}") from e
      have = hashlib.sha256(data).hexdigest()
      if want and have != want:  # Checked before the file is written: nothing is kept.
        raise _hash_mismatch(url, have, want, what)
      # Readers never see a half-written file: the name appears only once complete.
      files_lib.write_bytes(str(dest), data)
      files[rel] = have
      logger.info("downloaded %s -> %s (sha256 %s)", url, dest, have)
  record = {"repository": pins.REPOSITORY, "revision": revision, "pinned": pin is not None,
            "layout": layout, "files": {**recorded, **files}}
  if not record_path.exists() or json.loads(record_path.read_text()) != record:
    files_lib.write_json(str(record_path), record)
  return check_data_dir(root)


def locate(cache_dir: str | os.PathLike[str] | None = None, revision: str = "") -> tuple[str, str]:
  """Where `download` would find AuditoryBench, without downloading: `(where, problem)`.

  The folder when every required file of that commit is already in the cache (their hashes
  are checked by `download` at the run); else `GitHub` when its host answers a short
  connection probe; else the one line the run would fail with.
  """
  revision = str(revision or pins.DEFAULT_REVISION).strip()
  if not pins.COMMIT.match(revision) and revision not in pins.PINS:
    return "", (f"--config.data.revision={revision}: not a 40-hex commit of "
                f"{pins.REPOSITORY} (a branch or tag moves; name the commit).")
  root = pathlib.Path(cache_dir or DEFAULT_CACHE_DIR).expanduser() / revision
  try:
    return str(check_data_dir(root)), ""
  except DataError:
    pass
  url = pins.url(revision, "")
  host = urllib.parse.urlparse(url).hostname or ""
  try:
    with socket.create_connection((host, 443), timeout=DOWNLOAD_TIMEOUT_S):
      return f"GitHub ({pins.REPOSITORY}@{revision}), downloaded into {root}", ""
  except OSError as e:
    return "", (f"--config.data.dir=github: AuditoryBench@{revision} is not in {root} and "
                f"{host} cannot be reached ({e.strerror or e}); {DATA_DIR_HINT}.")


def data_revision(data_dir: str | os.PathLike[str]) -> dict:
  """What the data of a run is: for `provenance`, `config.json`, results and manifests.

  Returns:
    `{"source", "revision", "pinned", "files"}` (+ `"repository"` for downloads, `"path"`
    for folders): `revision` is the upstream commit for a download, the pinned commit whose
    files a local folder holds byte for byte, or else `sha256:<digest>` of the folder's
    CSV files (a content fingerprint); `files` maps each CSV to its sha256.
  """
  root = pathlib.Path(data_dir).expanduser()
  files = {}
  for task in tasks.auditorybench.NAMES:
    for split in SPLITS:
      path = split_path(root, task, split)
      if path.is_file():
        files[path.relative_to(root).as_posix()] = files_lib.sha256_file(path)
  record_path = root / REVISION_FILE
  if record_path.exists():
    record = json.loads(record_path.read_text())
    return {"source": "github", "repository": record["repository"],
            "revision": record["revision"], "pinned": bool(record["pinned"]), "files": files}
  matched = None
  for revision, pin in pins.PINS.items():
    expected = {split_path(pathlib.Path(), t, s).as_posix(): pin.files[p]
                for t in tasks.auditorybench.NAMES for s in SPLITS
                if (p := pins.upstream_path(pin.layout, tasks.get(t).folder, s)) in pin.files}
    if expected == files:
      matched = revision
  digest = hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in sorted(files.items())).encode())
  source = "sample" if root.resolve() == pathlib.Path(sample_data_dir()).resolve() else "local"
  return {"source": source, "path": str(root.resolve()),
          "revision": matched or f"sha256:{digest.hexdigest()[:16]}",
          "pinned": matched is not None, "files": files}
