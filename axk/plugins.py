"""Modules a config names in `plugins`, imported at start: each registers what it adds (a
benchmark task with `axk.tasks.register`, a method), so that a run, prediction or report of
that config finds it.

    plugins.load(config.get("plugins", ()))
"""

from __future__ import annotations

import importlib
from typing import Iterable


class PluginError(ValueError):
  """A plugin module that does not import (one line naming it)."""


def load(modules: Iterable[str]) -> None:
  """Imports every module of `modules` (dotted names, e.g. "mylab.loudness") once."""
  for name in modules or ():
    try:
      importlib.import_module(str(name))
    except Exception as e:  # pylint: disable=broad-except  (any fault of the module's import)
      raise PluginError(f"--config.plugins: module {name!r} does not import "
                        f"({type(e).__name__}: {e}).") from e
