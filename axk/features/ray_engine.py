"""The acquire stage on Ray as one actor per shard of the distinct spans, on a local Ray
instance or a cluster (`--config.ray.address`): `--config.engine=ray` for the retrieval and
oracle sources, and for generation with `--config.ray.pipeline=shards` (generation's default
on Ray is the streaming pipeline of `axk/features/ray_stream.py`). `init` starts or joins the
Ray instance for both.

Each actor runs the in-process acquire stage for its shard (`hash % workers == index`,
`axk.features.pipeline.acquire_stage`): the same part files, so the datasets and manifest
the driver assembles afterwards are the in-process run's. Work is resumable at the part
file: an actor that dies (a lost node, `ray.kill`) is restarted by Ray and its call retried
(`ray.max_restarts`), and the retry skips the spans whose parts exist; a killed driver is
rerun with the same command. A span's candidates keep their seeds whichever worker draws
them, and the clip cache is shared through the workdir, which every worker must see (one
machine, or a shared filesystem or bucket mount on a cluster).

Each actor asks Ray for `ray.gpus_per_worker` GPUs and `ray.cpus_per_worker` CPUs, so on a
machine with 8 GPUs `ray.workers=8` puts one worker on each. Each worker runs its source's
stages one batch after another, as in-process.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Mapping, Sequence

import tqdm

from axk.features import parts

logger = logging.getLogger(__name__)

ACTOR_PREFIX = "axk-features-shard-"  # Named actors: `ray.get_actor(f"{prefix}{i}")`.


def _package_path() -> str:
  """The folder holding the `axk` package, for workers started from another directory."""
  return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def init(config) -> None:
  """Starts a local Ray instance (`ray.address` "") or joins `ray.address`, unless Ray is
  running in this process already."""
  import ray  # pylint: disable=g-import-not-at-top
  if ray.is_initialized():
    return
  path = os.pathsep.join(p for p in (_package_path(), os.environ.get("PYTHONPATH", "")) if p)
  kwargs = dict(include_dashboard=False, log_to_driver=True,
                runtime_env={"env_vars": {"PYTHONPATH": path}})
  if config.ray.address:
    ray.init(address=config.ray.address, **kwargs)
  else:
    ray.init(num_cpus=config.ray.num_cpus or None, **kwargs)


class ShardWorker:
  """A Ray actor running the acquire stage of one shard (wrapped by `ray.remote` in
  `acquire`)."""

  def acquire(self, stage: Callable, config_dict: dict, workdir: str,
              paths: Mapping[str, str], name: str, keys: Sequence[str], index: int,
              workers: int) -> int:
    """`stage` (the pipeline's `acquire_stage`) for shard `index` of `workers`."""
    import ml_collections  # pylint: disable=g-import-not-at-top

    from axk.features import sources as sources_lib  # pylint: disable=g-import-not-at-top
    config = ml_collections.ConfigDict(config_dict)
    config.num_shards, config.shard_index, config.stage = workers, index, "acquire"
    source = sources_lib.SOURCES[name](config, workdir, dict(paths))
    stage(source, config, list(keys), "acquire")
    return index


def acquire(stage: Callable, source, config, workdir: str, paths: Mapping[str, str],
            keys: Sequence[str]) -> None:
  """Every pending key of `source` acquired by `ray.workers` actors, each running `stage`
  (the pipeline's `acquire_stage`, passed in so that this module does not import the
  pipeline that imports it) on its shard; returns when all are written (progress: spans done
  with an ETA, read from the part files)."""
  import ray  # pylint: disable=g-import-not-at-top
  workers = int(config.ray.workers)
  if workers < 1:
    raise ValueError(f"--config.ray.workers={workers}: at least 1")
  folder = source.parts_dir
  pending = [k for k in keys if k not in parts.finished(folder)]
  if not pending:
    logger.info("%s: all %d acquisitions done", source.name, len(keys))
    return
  if source.stages:  # e.g. retrieval's database: embedded once here, read by every worker
    source.prepare()
  init(config)
  remote = ray.remote(ShardWorker)
  actors = [remote.options(
      name=f"{ACTOR_PREFIX}{i}", num_cpus=float(config.ray.cpus_per_worker),
      num_gpus=float(config.ray.gpus_per_worker), max_restarts=int(config.ray.max_restarts),
      max_task_retries=int(config.ray.max_restarts)).remote() for i in range(workers)]
  config_dict = config.to_dict()
  calls = [a.acquire.remote(stage, config_dict, workdir, dict(paths), source.name, pending,
                            i, workers) for i, a in enumerate(actors)]
  bar = tqdm.tqdm(total=len(keys), initial=len(keys) - len(pending), unit="span",
                  desc=f"{source.name} on {workers} Ray workers")
  waiting, seen, todo = list(calls), {}, set(pending)
  try:
    while waiting:
      done, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=2.0)
      if done:
        ray.get(done)  # A worker's exception, after its retries, ends the run here.
      for path in parts.part_files(folder):  # Each new part file read once.
        if path not in seen:
          arrays = parts.load_npz(path, "part file", mmap=True) or {}
          seen[path] = {str(t) for t in arrays.get("text", ())} & todo
      bar.n = len(keys) - len(todo) + len(set().union(*seen.values()))
      bar.refresh()
  finally:
    bar.close()
    for a in actors:
      ray.kill(a, no_restart=True)
  logger.info("%s: %d acquisitions on %d Ray workers in %s", source.name, len(pending),
              workers, folder)

