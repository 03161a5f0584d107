"""JAX's persistent compilation cache: on by default, in one folder per user.

Most of a small run's time, and of predict's and the demo's first answer, is XLA compiling
the same programs again; with the cache a second start loads them from disk.

`enable(spec)`, called by `axk.main`, `axk.predict` and `axk.demo` before anything compiles:

  ""        the user's cache, `$XDG_CACHE_HOME/axk/jax` (`~/.cache/axk/jax` without it)
  "none"    off
  a path    that folder

`JAX_COMPILATION_CACHE_DIR` in the environment wins over `spec` (the test suite sets one per
session); `JAX_ENABLE_COMPILATION_CACHE=false` turns the cache off the same way. The choice is
written back to the environment, so the stage processes a run starts use the same cache.
"""

from __future__ import annotations

import logging
import os

ENV_DIR = "JAX_COMPILATION_CACHE_DIR"
ENV_ENABLE = "JAX_ENABLE_COMPILATION_CACHE"
ENV_MIN_TIME = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
ENV_MIN_SIZE = "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"
OFF = "none"
# Programs that compile faster than this are not written (JAX's default is 1 s, which leaves
# out most of a small run's programs, each a fraction of a second, together most of its time).
MIN_COMPILE_SECS = 0.0


def default_dir() -> str:
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "axk", "jax")


def _off_in_env() -> bool:
  return os.environ.get(ENV_ENABLE, "").strip().lower() in ("0", "false", "no", "off")


def enable(spec: str = "") -> str:
  """Points JAX's persistent compilation cache at the folder `spec` names (module
  docstring); returns that folder, or "" when the cache is off."""
  import jax
  before = (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir)
  path = _choose(jax, str(spec or "").strip())
  if before != (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir):
    _reset(jax)
  return path


def _reset(jax) -> None:
  """A cache already opened in this process (a second `enable` with another folder) is
  opened again on the next compilation."""
  try:
    from jax._src import compilation_cache
  except ImportError:
    return
  if compilation_cache.is_initialized():
    log = logging.getLogger(compilation_cache.__name__)
    level = log.level
    log.setLevel(logging.WARNING)  # It logs the reset.
    try:
      compilation_cache.reset_cache()
    finally:
      log.setLevel(level)


def _choose(jax, spec: str) -> str:
  if os.environ.get(ENV_DIR):
    path = os.environ[ENV_DIR]
  elif _off_in_env() or spec.lower() == OFF:
    jax.config.update("jax_enable_compilation_cache", False)
    jax.config.update("jax_compilation_cache_dir", None)
    os.environ[ENV_ENABLE] = "false"
    return ""
  else:
    path = os.path.abspath(os.path.expanduser(spec)) if spec else default_dir()
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", path)
  os.environ[ENV_DIR] = path
  # The environment's own thresholds (the tests' 0) are kept.
  min_time = float(os.environ.get(ENV_MIN_TIME, MIN_COMPILE_SECS))
  min_size = int(os.environ.get(ENV_MIN_SIZE, 0))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_time)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", min_size)
  os.environ[ENV_MIN_TIME] = str(min_time)
  os.environ[ENV_MIN_SIZE] = str(min_size)
  return path
