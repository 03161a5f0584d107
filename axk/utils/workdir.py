"""A run's workdir: usable (a writable folder) and used by one run at a time.

`<workdir>/axk.lock` holds the running holder's pid, host, process start time and command.
A second run on the same workdir is refused with one line naming the holder. A lock whose
holder is gone (same host, and no process with that pid and start time) is stale: the next
run takes it over with a warning. The lock is claimed by hard-linking a fully written file
to its name, which fails when the name exists, so a reader never sees a half-written lock
and two runs can never both claim it.
"""

from __future__ import annotations

import atexit
import datetime
import errno
import json
import logging
import os
import socket
import sys

from axk.utils import files

LOCK = "axk.lock"


class WorkdirError(RuntimeError):
  """The workdir cannot be used (not a folder, not writable, or in use); one line."""


def prepare(workdir: str | None) -> str:
  """The absolute workdir, created; `WorkdirError` when it is missing, a file or read-only."""
  if not workdir:
    raise WorkdirError("--workdir is required: the folder for checkpoints, metrics, results.")
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"--workdir={workdir}: is a file, not a folder.")
  try:
    os.makedirs(path, exist_ok=True)
    # Write permission bits say nothing for root or on a read-only mount: try a write.
    probe = os.path.join(path, f".axk-probe-{os.getpid()}")
    with open(probe, "wb"):
      pass
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f"--workdir={workdir}: cannot write there "
                       f"({e.strerror or e}).") from None
  return path


def _start_time(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      # Field 22; the command name (field 2) may hold spaces but ends at the last ")".
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int, start: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Exists, owned by another user.
    return True
  now = _start_time(pid)
  return start is None or now is None or now == start


class WorkdirLock:
  """`<workdir>/axk.lock` for the life of this process (see the module docstring)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK)
    self.workdir = workdir
    self.held = False
    self.info = {
        "pid": os.getpid(), "host": socket.gethostname(), "start_time": _start_time(os.getpid()),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *(["-m", "axk.main"] if sys.argv[0].endswith(
            os.path.join("axk", "main.py")) else sys.argv[:1]), *sys.argv[1:]]),
    }

  def _holder(self) -> dict | None:
    try:
      with open(self.path) as f:
        return json.load(f)
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}  # Not a lock this code wrote (it writes whole files only): treat as stale.

  def acquire(self) -> "WorkdirLock":
    tmp = os.path.join(self.workdir, f".{LOCK}.{os.getpid()}")
    files.write_json(tmp, self.info)
    try:
      for _ in range(10):  # Only a race with another taker repeats this.
        try:
          os.link(tmp, self.path)
          self.held = True
          atexit.register(self.release)
          return self
        except FileExistsError:
          pass
        holder = self._holder()
        if holder is None:
          continue  # Released in between.
        same_host = holder.get("host") == self.info["host"]
        if holder and (not same_host or _alive(int(holder["pid"]), holder.get("start_time"))):
          where = "" if same_host else f" on host {holder.get('host')}"
          stale = "" if same_host else " (or, if it is not running any more, delete it)"
          raise WorkdirError(
              f"--workdir={self.workdir} is in use by pid {holder.get('pid')}{where}, running "
              f"since {holder.get('started')}: {holder.get('command')}. Wait for it to end, "
              f"or use another workdir; the lock is {self.path}{stale}.")
        logging.warning("Taking over the lock %s of a run that is gone (pid %s on %s, started "
                        "%s).", self.path, holder.get("pid", "?"), holder.get("host", "?"),
                        holder.get("started", "?"))
        # A rename wins once: of two runs taking over the same stale lock, one proceeds.
        aside = f"{self.path}.stale-{os.getpid()}"
        try:
          os.rename(self.path, aside)
          os.remove(aside)
        except FileNotFoundError:
          pass
      raise WorkdirError(f"--workdir={self.workdir}: could not take the lock {self.path}.")
    finally:
      try:
        os.remove(tmp)
      except OSError as e:
        if e.errno != errno.ENOENT:
          raise

  def release(self) -> None:
    """Removes the lock if this process still holds it."""
    if not self.held:
      return
    self.held = False
    holder = self._holder()
    if holder and holder.get("pid") == self.info["pid"] and holder.get(
        "start_time") == self.info["start_time"]:
      os.remove(self.path)

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
