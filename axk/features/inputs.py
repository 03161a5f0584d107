"""What a feature run reads: the benchmark's examples, and where its models are.

Both the pipeline (`axk.features.pipeline`) and the feature sources that need the examples
themselves (the shuffled oracle) read them here, from `config.data`.
"""

from __future__ import annotations

from collections.abc import Sequence
import os

from axk import tasks as tasks_lib
from axk.data import auditorybench
from axk.data.types import Example
from axk.data.types import SPLITS
from axk.features import shards


def split_list(value, allowed: Sequence[str], what: str) -> list[str]:
  """The items of a config field (a comma-separated string or a sequence), each one of
  `allowed`; a ValueError naming the field otherwise."""
  items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value)]
  items = [v for v in items if v]
  bad = [v for v in items if v not in allowed]
  if bad or not items:
    raise ValueError(f"{what}={value!r}: expected a comma-separated subset of {allowed}")
  return items


def load_data(config) -> tuple[dict[str, dict[str, list[Example]]], dict[str, dict]]:
  """Examples by task and split, and the inputs' provenance for the manifest: AuditoryBench's
  rows, or with `data.glue_spans` the texts of GLUE's span files (`glue_examples`)."""
  if config.data.get("glue_spans"):
    return glue_examples(config)
  data_dir = auditorybench.resolve_data_dir(config.data.dir, config.data.cache_dir or None,
                                            config.data.get("revision", ""))
  tasks = split_list(config.data.tasks, tasks_lib.names(), "data.tasks")
  splits = split_list(config.data.splits, SPLITS, "data.splits")
  examples, inputs = {}, {}
  for task in tasks:
    loaded = auditorybench.load_task(data_dir, task, splits,
                                     keep_missing_spans=config.data.keep_missing_spans)
    examples[task] = {split: d.examples for split, d in loaded.items()}
    for split, d in loaded.items():
      inputs[f"{task}/{split}"] = {"path": os.path.abspath(d.path),
                                   "sha256": d.sha256 or shards.sha256_file(d.path),
                                   "num_examples": len(d.examples), "skipped": d.skipped}
  return examples, inputs


def glue_examples(config) -> tuple[dict[str, dict[str, list[Example]]], dict[str, dict]]:
  """Every text of the span files in `data.glue_spans` (`python -m axk.glue_spans`'s output)
  for the GLUE tasks of `data.tasks` and each of their splits, as examples whose gold spans
  are the files' (so `spans.source="gold"`); FileNotFoundError naming a missing file."""
  from axk.data import glue as glue_data  # pylint: disable=g-import-not-at-top
  folder = os.path.expanduser(config.data.glue_spans)
  tasks = split_list(config.data.tasks, [t for t in tasks_lib.names()
                                         if tasks_lib.get(t).rows is None], "data.tasks")
  examples, inputs = {}, {}
  for task in tasks:
    for split in glue_data.spec_of(task).splits:
      path = glue_data.span_file(folder, task, split)
      if not os.path.isfile(path):
        raise FileNotFoundError(f"data.glue_spans={folder}: no {os.path.basename(path)} "
                                "(python -m axk.glue_spans writes one per task and split)")
      examples.setdefault(task, {})[split] = glue_data.read_span_file(path, task, split)
      inputs[f"{task}/{split}"] = {"path": os.path.abspath(path),
                                   "sha256": shards.sha256_file(path),
                                   "num_examples": len(examples[task][split]), "skipped": {}}
  return examples, inputs


def model_paths(config, workdir: str) -> dict[str, str]:
  """Configured model locations, or tiny random models built in the workdir."""
  paths = {"clap": config.models.clap, "ast": config.models.ast,
           "generator": config.models.generator}
  if config.models.tiny:
    from axk.features import tiny  # pylint: disable=g-import-not-at-top
    generator = tiny.GENERATORS.get(config.generation.pipeline_class, "stable_audio")
    built = tiny.build_all(os.path.join(workdir, "tiny_models"), generator=generator)
    paths = {"clap": built["clap"], "ast": built["ast"], "generator": built[generator]}
  return paths

