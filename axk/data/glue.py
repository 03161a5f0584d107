"""GLUE's sentence tasks read from a local folder, in one of three layouts, and written back
as leaderboard submissions.

    "tsv"   <dir>/SST-2/{train,dev,test}.tsv                GLUE's own (its download script)
            <dir>/MNLI/{train,dev_matched,dev_mismatched,test_matched,test_mismatched}.tsv
    "hf"    <dir>/sst2/{train,validation,test}-*.parquet    the Hugging Face dataset (nyu-mll/glue)
            <dir>/sst2/{train,validation,test}.jsonl        the same, saved as JSON Lines
    "tfds"  <dir>/glue/sst2/<version>/*.array_record-*      a TFDS data_dir (TFDS's glue/<config>)

The "tfds" layout is a data_dir in which TFDS prepared `glue/<config>` as array_record files
(`tfds build glue/sst2 --file_format=array_record --data_dir=<dir>`, run where there is
network: axk does not download); it is read with TFDS (`builder_from_directory` on the
highest version present, `as_data_source`), without TensorFlow, its splits and features
named as the Hugging Face dataset's, its rows in `idx` order. `layout="auto"` takes the
first of the three whose task folder `<dir>` holds.

Which folder and columns belong to a task is its spec's (`axk/tasks/glue.py`). A row with a
label that is not one of the task's (or, for STS-B, not a number) stops the read with one
line naming the file, line and column; a TSV line with too few fields is skipped and
counted, as GLUE's own readers do (QQP's train file has a few). Test splits have no labels.
`sample_dir()` is a tiny invented set in GLUE's layout, for smoke runs and tests.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import logging
import os
import pathlib
import re
import sys
from typing import Iterator

from axk.tasks import glue as glue_tasks
from axk.tasks.base import get as get_task
from axk.utils import files

LAYOUTS = ("auto", "tsv", "hf", "tfds")
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_TFDS_CHUNK = 4096  # Rows decoded a batch (TFDS, Parquet).


class GlueDataError(ValueError):
  """A GLUE file or folder that cannot be read."""


@dataclasses.dataclass(frozen=True)
class SentenceExample:
  """One row of a sentence task.

  Attributes:
    id: `"<task>/<split>/<index>"`.
    index: the row's index in its file (the leaderboard's `index` column).
    text_a: the first (or only) text.
    text_b: the second text of a pair; "" for a single-sentence task.
    label: the label id (classification) or score (regression); None in a test split.
  """

  id: str
  index: int
  text_a: str
  text_b: str
  label: int | float | None


def sample_dir() -> str:
  """The tiny invented GLUE-layout folder shipped with axk (a few rows per task and split)."""
  return str(pathlib.Path(__file__).parent / "sample" / "glue")


def resolve_dir(data_dir: str) -> str:
  """A `--config.data.dir` / `--data` value as a folder: "sample" is `sample_dir()`."""
  return sample_dir() if data_dir == "sample" else os.path.expanduser(data_dir)


def spec_of(task: str) -> glue_tasks.SentenceTask:
  spec = get_task(task)
  if not isinstance(spec, glue_tasks.SentenceTask):
    raise GlueDataError(f"benchmark task {task!r} is not a sentence task; sentence tasks: "
                        f"{', '.join(glue_tasks.NAMES)}")
  return spec


def layout_of(root: str, task: str, layout: str = "auto") -> str:
  """"tsv", "hf" or "tfds": `layout` itself, or the one `root` holds for `task`."""
  if layout not in LAYOUTS:
    raise GlueDataError(f"GLUE layout {layout!r} is not one of {', '.join(LAYOUTS)}")
  spec = spec_of(task)
  if layout != "auto":
    return layout
  if (pathlib.Path(root) / spec.folder).is_dir():
    return "tsv"
  if (pathlib.Path(root) / spec.name).is_dir():
    return "hf"
  if (pathlib.Path(root) / "glue" / spec.name).is_dir():
    return "tfds"
  raise GlueDataError(f"{root}: no {spec.folder}/ (GLUE's TSV layout) or {spec.name}/ (the "
                      f"Hugging Face dataset's files), nor glue/{spec.name}/ (a TFDS data_dir) "
                      f"for task {task}")


def task_folder(root: str, task: str, layout: str = "auto") -> str:
  """The folder that holds `task` in `root`'s layout (`<root>/SST-2`, `<root>/sst2` or
  `<root>/glue/sst2`)."""
  spec = spec_of(task)
  sub = {"tsv": (spec.folder,), "hf": (spec.name,), "tfds": ("glue", spec.name)}
  return os.path.join(root, *sub[layout_of(root, task, layout)])


def _split_names(spec, split: str) -> tuple[str, str]:
  """(GLUE TSV file stem, Hugging Face / TFDS split name) of `split`."""
  if split not in spec.splits:
    raise GlueDataError(f"task {spec.name} has no split {split!r}; its splits: "
                        f"{', '.join(spec.splits)}")
  return spec.splits[split]


def split_files(root: str, task: str, split: str, layout: str = "auto") -> list[str]:
  """The file(s) of `task`/`split` under `root` (a TFDS split: its array_record files, its
  features checked); a GlueDataError names what is missing."""
  spec = spec_of(task)
  tsv_stem, hf_split = _split_names(spec, split)
  layout = layout_of(root, task, layout)
  if layout == "tfds":
    return _tfds_split(root, spec, split, hf_split, not split.startswith("test"))[2]
  if layout == "tsv":
    path = os.path.join(root, spec.folder, f"{tsv_stem}.tsv")
    if not os.path.isfile(path):
      raise GlueDataError(f"{path}: no such file (task {task}, split {split})")
    return [path]
  folder = os.path.join(root, spec.name)
  found = sorted(glob.glob(os.path.join(folder, f"{hf_split}-*.parquet"))
                 + glob.glob(os.path.join(folder, f"{hf_split}.parquet")))
  found = found or sorted(glob.glob(os.path.join(folder, f"{hf_split}*.jsonl")))
  if not found:
    raise GlueDataError(f"{folder}: no {hf_split}-*.parquet or {hf_split}.jsonl (task "
                        f"{task}, split {split})")
  return found


def read_split(root: str, task: str, split: str, layout: str = "auto"
               ) -> list[SentenceExample]:
  """Every example of `task`/`split`, in file order (a TFDS split: in `idx` order)."""
  return list(iter_split(root, task, split, layout))


def iter_split(root: str, task: str, split: str, layout: str = "auto"
               ) -> Iterator[SentenceExample]:
  """`read_split`'s examples one at a time: a TSV, JSON Lines or Parquet split is read as it
  is iterated, so host memory holds a row (Parquet: a record batch), not the split; a TFDS
  split is read whole first (its rows are stored shuffled and come out in `idx` order)."""
  spec = spec_of(task)
  labelled = not split.startswith("test")
  _, hf_split = _split_names(spec, split)
  if layout_of(root, task, layout) == "tfds":
    yield from _read_tfds(root, spec, split, hf_split, labelled)
    return
  paths = split_files(root, task, split, layout)
  if paths[0].endswith(".tsv"):
    yield from _read_tsv(paths[0], spec, split, labelled)
    return
  a, b = spec.hf_columns
  position = 0
  for path in paths:
    for n, row in enumerate(_hf_rows(path), 1):
      where = f"{path}, row {n}"
      for column in (a, b, "label") if labelled else (a, b):
        if column and column not in row:
          raise GlueDataError(f"{where}: no column {column!r} (task {task} reads "
                              f"{', '.join(c for c in (a, b) if c)} and label)")
      label = _label(spec, row["label"], where, "label") if labelled else None
      index = int(row.get("idx", position))
      yield SentenceExample(f"{task}/{split}/{index}", index, str(row[a]),
                            str(row[b]) if b else "", label)
      position += 1


def split_rows(root: str, task: str, split: str, layout: str = "auto") -> int:
  """The rows of `task`/`split` without parsing them (a progress bar's total): a TSV's lines
  but its header, or JSON Lines' lines (an upper bound: blank and short lines count),
  Parquet's or TFDS's own counts."""
  spec = spec_of(task)
  _, hf_split = _split_names(spec, split)
  if layout_of(root, task, layout) == "tfds":
    return len(_tfds_split(root, spec, split, hf_split, not split.startswith("test"))[1])
  total = 0
  for path in split_files(root, task, split, layout):
    if path.endswith(".parquet"):
      import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
      total += pq.ParquetFile(path).metadata.num_rows
      continue
    with open(path, "rb") as f:
      lines = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    total += lines - path.endswith(".tsv")  # A TSV's header.
  return max(total, 0)


def _tfds_hint(root: str, spec) -> str:
  return (f"prepare it where there is network with `tfds build glue/{spec.name} "
          f"--file_format=array_record --data_dir={root}` (axk does not download)")


def _tfds_version_dir(root: str, spec) -> str:
  """The highest prepared version folder of `glue/<config>` under `root`."""
  folder = os.path.join(root, "glue", spec.name)
  versions = []
  if os.path.isdir(folder):
    for name in os.listdir(folder):
      match = _VERSION.fullmatch(name)
      if match and os.path.isfile(os.path.join(folder, name, "dataset_info.json")):
        versions.append((tuple(map(int, match.groups())), name))
  if not versions:
    raise GlueDataError(f"{folder}: no prepared TFDS dataset (<version>/dataset_info.json) for "
                        f"task {spec.name}; {_tfds_hint(root, spec)}")
  return os.path.join(folder, max(versions)[1])


def _first_line(e: Exception) -> str:
  lines = str(e).strip().splitlines()
  return lines[0] if lines else type(e).__name__


def _tfds_split(root: str, spec, split: str, hf_split: str, labelled: bool):
  """(version folder, the split's TFDS data source, its files), its features checked."""
  folder = _tfds_version_dir(root, spec)
  hint = _tfds_hint(root, spec)
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise GlueDataError(f"{folder}: reading a TFDS dataset needs tensorflow_datasets and "
                        "array_record (pip install tensorflow-datasets array-record)") from None
  try:
    builder = tfds.builder_from_directory(folder)
    info = builder.info
  except Exception as e:  # pylint: disable=broad-except
    raise GlueDataError(f"{folder}: not a readable TFDS dataset ({_first_line(e)}); "
                        f"{hint}") from None
  where = f"{folder} (task {spec.name}, split {split})"
  if hf_split not in info.splits:
    raise GlueDataError(f"{where}: no split {hf_split!r} (it holds "
                        f"{', '.join(sorted(info.splits)) or 'none'}); {hint}")
  a, b = spec.hf_columns
  needed = [c for c in (a, b, "label" if labelled else "") if c]
  missing = [c for c in needed if c not in info.features.keys()]
  if missing:
    raise GlueDataError(f"{where}: no feature {', '.join(map(repr, missing))} (task "
                        f"{spec.name} reads {', '.join(needed)}); {hint}")
  label = info.features["label"] if "label" in info.features.keys() else None
  if (spec.labels and isinstance(label, tfds.features.ClassLabel)
      and tuple(label.names) != spec.labels):
    raise GlueDataError(f"{where}: label names {', '.join(label.names)}, not {spec.title}'s "
                        f"{', '.join(spec.labels)}")
  formats = sorted(f.value for f in info.available_file_formats())
  if "array_record" not in formats:
    raise GlueDataError(f"{where}: prepared as {', '.join(formats) or 'no'} files, and axk "
                        f"reads array_record ones; {hint}")
  absent = [str(p) for p in info.splits[hf_split].filepaths if not os.path.isfile(p)]
  if absent:
    raise GlueDataError(f"{absent[0]}: no such file (task {spec.name}, split {split}); {hint}")
  try:
    source = builder.as_data_source(hf_split, file_format="array_record")
  except Exception as e:  # pylint: disable=broad-except
    raise GlueDataError(f"{where}: {_first_line(e)}; {hint}") from None
  return folder, source, [str(p) for p in info.splits[hf_split].filepaths]


def _read_tfds(root: str, spec, split: str, hf_split: str, labelled: bool
               ) -> list[SentenceExample]:
  folder, source, _ = _tfds_split(root, spec, split, hf_split, labelled)
  a, b = spec.hf_columns
  out = []
  for start in range(0, len(source), _TFDS_CHUNK):
    keys = range(start, min(start + _TFDS_CHUNK, len(source)))
    for position, row in zip(keys, source.__getitems__(keys)):
      where = f"{folder}, split {hf_split}, row {position}"
      label = _label(spec, row["label"], where, "label") if labelled else None
      index = int(row["idx"]) if "idx" in row else position
      out.append(SentenceExample(f"{spec.name}/{split}/{index}", index,
                                 _tfds_text(row[a], where, a),
                                 _tfds_text(row[b], where, b) if b else "", label))
  out.sort(key=lambda e: e.index)
  return out


def _tfds_text(value, where: str, feature: str) -> str:
  if isinstance(value, bytes):
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError:
      raise GlueDataError(f"{where}: feature {feature!r} is not UTF-8 text") from None
  return str(value)


def _hf_rows(path: str):
  if path.endswith(".jsonl"):
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if line.strip():
          try:
            yield json.loads(line)
          except json.JSONDecodeError as e:
            raise GlueDataError(f"{path}, line {n}: not JSON ({e.msg})") from None
    return
  try:
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise GlueDataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or "
                        "save the dataset as JSON Lines") from None
  for batch in pq.ParquetFile(path).iter_batches(batch_size=_TFDS_CHUNK):
    yield from batch.to_pylist()


def _label(spec, value, where: str, column: str):
  """A label id (classification: a name or an id) or a score (regression)."""
  text = str(value).strip()
  if spec.head == "regression":
    try:
      return float(text)
    except ValueError:
      raise GlueDataError(f"{where}: {column} {text!r} is not a number") from None
  if text in spec.labels:
    return spec.labels.index(text)
  if text.lstrip("-").isdigit() and 0 <= int(text) < len(spec.labels):
    return int(text)
  raise GlueDataError(f"{where}: {column} {text!r} is not a label of {spec.title} (names "
                      f"{', '.join(spec.labels)} or ids 0-{len(spec.labels) - 1})")


def _read_tsv(path: str, spec, split: str, labelled: bool) -> Iterator[SentenceExample]:
  a, b, label_column, index_column = spec.tsv_columns
  csv.field_size_limit(sys.maxsize)  # MNLI's parse columns are long.
  with open(path, encoding="utf-8-sig", newline="") as f:
    reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None)
    if header is None:
      raise GlueDataError(f"{path}: empty file")
    needed = [c for c in (a, b, label_column if labelled else "") if c]
    missing = [c for c in needed if c not in header]
    if missing:
      raise GlueDataError(f"{path}, line 1: no column {', '.join(map(repr, missing))} in the "
                          f"header (task {spec.name} reads {', '.join(needed)})")
    at = {c: header.index(c) for c in header}
    rows, short = 0, []
    for line, fields in enumerate(reader, 2):
      if not fields:
        continue
      if len(fields) < len(header):
        short.append(line)
        continue
      where = f"{path}, line {line}"
      label = _label(spec, fields[at[label_column]], where, label_column) if labelled else None
      index = rows
      if index_column in at:
        raw = fields[at[index_column]].strip()
        if not raw.isdigit():
          raise GlueDataError(f"{where}: {index_column} {raw!r} is not a row index")
        index = int(raw)
      yield SentenceExample(f"{spec.name}/{split}/{index}", index, fields[at[a]],
                            fields[at[b]] if b else "", label)
      rows += 1
  if short:
    logging.warning("%s: skipped %d line(s) with fewer than %d fields (lines %s)", path,
                    len(short), len(header), ", ".join(map(str, short[:10]))
                    + (", ..." if len(short) > 10 else ""))


def submission_name(task: str, split: str) -> str:
  """The leaderboard's file name of `task`/`split` (a test split)."""
  spec = spec_of(task)
  if split not in spec.submission:
    raise GlueDataError(f"task {task}: {split!r} is not a test split (those: "
                        f"{', '.join(spec.submission)})")
  return f"{spec.submission[split]}.tsv"


def write_submission(out_dir: str, task: str, split: str, indices, predictions) -> str:
  """Writes the leaderboard's `index<TAB>prediction` file of a test split (`indices`: the
  rows' `index`, in the order of `predictions`), atomically:
  label names for QNLI and MNLI, ids for the other classification tasks, scores with three
  decimals for STS-B. Returns its path."""
  spec = spec_of(task)
  path = os.path.join(out_dir, submission_name(task, split))
  named = spec.name in ("qnli", "mnli")
  lines = ["index\tprediction"]
  for index, p in zip(indices, predictions, strict=True):
    if spec.head == "regression":
      value = f"{float(p):.3f}"
    else:
      value = spec.labels[int(p)] if named else str(int(p))
    lines.append(f"{index}\t{value}")
  files.write_text(path, "\n".join(lines) + "\n")
  return path


# -- Span files (`python -m axk.glue_spans`): `<folder>/<task>_<split>.jsonl`, a line per row,
# `{"id", "texts": [{"text", "spans": [[start, end], ...]}, ...]}`, one text or two.


def span_file(folder: str, task: str, split: str) -> str:
  """The span file of `task`/`split` in `folder` (a `glue_spans` output, or its `spans/`)."""
  inner = os.path.join(folder, "spans")
  return os.path.join(inner if os.path.isdir(inner) else folder, f"{task}_{split}.jsonl")


def text_id(row_id: str, k: int) -> str:
  """The id of text `k` (0: the first, 1: the second of a pair) of a row."""
  return f"{row_id}#{k}"


def read_span_file(path: str, task: str, split: str):
  """The texts of a span file as `axk.data.types.Example`s (id `text_id(row, k)`, the
  text as `sentence`, its spans as gold spans, no answer), for the feature pipeline.

  Raises:
    GlueDataError: one line naming the file, line and field of a bad row.
  """
  from axk.data.types import Example  # pylint: disable=g-import-not-at-top
  from axk.data.types import Span  # pylint: disable=g-import-not-at-top
  out = []
  for number, row in span_rows(path):
    for k, t in enumerate(row["texts"]):
      text, spans = t["text"], t["spans"]
      bad = [s for s in spans if not 0 <= s[0] < s[1] <= len(text)]
      if bad:
        raise GlueDataError(f"{path}:{number}: texts[{k}] span {list(bad[0])} lies outside "
                            f"its {len(text)}-character text")
      out.append(Example(id=text_id(row["id"], k), task=task, split=split,
                         sentence=text, answer="",
                         spans=tuple(Span(a, b, text[a:b]) for a, b in spans),
                         options=(), label=-1))
  return out


def span_rows(path: str):
  """(line number, row) of each row of a span file, as `{"id": str, "texts": [{"text": str,
  "spans": [(start, end), ...]}, ...]}`; GlueDataError naming the file and line of a row
  that is not."""
  try:
    for number, row in files.json_lines(path):
      try:
        row = {"id": str(row["id"]),
               "texts": [{"text": str(t["text"]),
                          "spans": [(int(a), int(b)) for a, b in t["spans"]]}
                         for t in row["texts"]]}
      except (ValueError, KeyError, TypeError) as e:
        raise GlueDataError(f"{path}:{number}: expected {{\"id\", \"texts\": [{{\"text\", "
                            f"\"spans\": [[start, end], ...]}}]}} ({e})") from None
      yield number, row
  except GlueDataError:
    raise
  except ValueError as e:  # A line that is not JSON.
    raise GlueDataError(str(e)) from None


_WORD = re.compile(r"\w+")


def span_words(text: str, spans) -> tuple[int, int]:
  """(words of `text`, words that overlap one of `spans` [(start, end), ...])."""
  words = [m.span() for m in _WORD.finditer(text)]
  inside = sum(any(a < e and s < b for s, e in spans) for a, b in words)
  return len(words), inside


def span_statistics(rows) -> dict:
  """ITH Table 6's numbers of one split from its span-file rows (`read_span_file`'s input)."""
  texts = [t for r in rows for t in r["texts"]]
  words = inside = spans = with_span = 0
  for t in texts:
    n, k = span_words(t["text"], t["spans"])
    words, inside, spans = words + n, inside + k, spans + len(t["spans"])
    with_span += bool(t["spans"])
  return {"rows": len(rows), "texts": len(texts), "words": words, "span_words": inside,
          "span_words_pct": 100.0 * inside / words if words else 0.0, "spans": spans,
          "texts_with_spans": with_span}


def table6_lines(table: dict) -> list[str]:
  """ITH's Table 6 as markdown table lines: `{task: {split: span_statistics(...)}}`."""
  lines = ["| task | split | rows | words | span words | span words % | spans | texts with spans |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for task, splits in table.items():
    for split, s in splits.items():
      lines.append(f"| {task} | {split} | {s['rows']} | {s['words']} | {s['span_words']} | "
                   f"{s['span_words_pct']:.2f} | {s['spans']} | {s['texts_with_spans']} |")
  return lines


def table6_markdown(table: dict) -> str:
  return "\n".join(["# Auditory spans in GLUE (ITH's Table 6)", ""] + table6_lines(table)) + "\n"
