"""Feature shards: a TFDS `array_record` dataset per task, and a torch-free reader.

On-disk layout (`<features_dir>` is `<workdir>/features` by default; see
`configs/features.py`):

    <features_dir>/
      manifest.json                       models, parameters, inputs, and the size and
                                          sha256 of every other file (`read_manifest`)
      verified.json                       sizes and modification times of the files last
                                          hashed by `verify` (a cache; safe to delete)
      acquisitions.jsonl                  one line per distinct span: what was acquired
      axk_features/<task>/1.0.0/          a TFDS dataset, one builder config per task
        dataset_info.json  features.json
        axk_features-<split>.array_record-00000-of-0000N

Each record is one example:

    id        str     "animal/test/3" (see `axk.data.types.Example.id`)
    sentence  str
    spans     sequence, one entry per span of the example, in sentence order:
      start, end   int32    character offsets, `sentence[start:end] == text`
      text         str      the span as it appears in the sentence
      has_audio    bool     a clip was retrieved / accepted by rejection sampling
      clap_score   float32  cosine(CLAP text, CLAP audio) of that clip (generation: the
                            best rejected score when none passed)
      source       str      retrieved clip id or generated clip key, "" when none
      ast_pooled   float16[D_ast]                     mean of AST's last hidden states
      ast_tokens   float16[num_audio_tokens, D_ast]   ITH's AST tokens, in the layout the
                            manifest names (`params.ast.token_layout`, axk/features/ast.py)
      clap_text    float16[D_clap]   CLAP text embedding of the query / scoring text
      clap_audio   float16[D_clap]   CLAP audio embedding (zeros when no audio)

Spans with the same normalised text share one acquisition, so their features are equal.
The datasets are readable without TensorFlow (`tfds.data_source`,
`tfds.builder_from_directory(...).as_data_source()`, grain); `load_features` is the
reader the JAX side uses, and `verify` checks the files against the manifest before
anyone trains on them. With `lazy_tokens=True` it hands out a `TokenRef` per span instead of
its `ast_tokens` (1.9 MB a span in the `full` layout): the tokens stay in the shards and are
read record by record when a batch needs them (`TokenStore`). This module never imports
torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import dataclasses
import glob
import json
import logging
import os
import shutil

import numpy as np

from axk import tasks as tasks_lib
from axk.utils import files

logger = logging.getLogger(__name__)

BUILDER_NAME = "axk_features"
VERSION = "1.0.0"
MANIFEST = "manifest.json"
ACQUISITIONS = "acquisitions.jsonl"
VERIFIED = "verified.json"
# Bumped whenever the record layout changes; the manifest carries it.
FORMAT_VERSION = 1
SPAN_FIELDS = ("start", "end", "text", "has_audio", "clap_score", "source", "ast_pooled",
               "ast_tokens", "clap_text", "clap_audio")


class FeaturesMismatch(ValueError):
  """Features that cannot be used: built from other data, spans or models than the caller
  expects, or damaged on disk (a file missing, truncated or changed, a corrupt manifest)."""


def builder_dir(features_dir: str, task: str) -> str:
  """The TFDS builder folder of `task` (holding `dataset_info.json`)."""
  return os.path.join(features_dir, BUILDER_NAME, task, VERSION)


def _feature_spec(dims: Mapping[str, int]):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  f = tfds.features
  # Raw bytes: 2 bytes a value on disk (a float list in the proto would store float32).
  raw = f.Encoding.BYTES
  return f.FeaturesDict({
      "id": f.Text(),
      "sentence": f.Text(),
      "spans": f.Sequence({
          "start": np.int32,
          "end": np.int32,
          "text": f.Text(),
          "has_audio": np.bool_,
          "clap_score": np.float32,
          "source": f.Text(),
          "ast_pooled": f.Tensor(shape=(dims["ast"],), dtype=np.float16, encoding=raw),
          "ast_tokens": f.Tensor(shape=(dims["num_audio_tokens"], dims["ast"]),
                                 dtype=np.float16, encoding=raw),
          "clap_text": f.Tensor(shape=(dims["clap"],), dtype=np.float16, encoding=raw),
          "clap_audio": f.Tensor(shape=(dims["clap"],), dtype=np.float16, encoding=raw),
      }),
  })


def _builder_class():
  """The TFDS builder, defined lazily so that importing this module stays cheap."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class AxkFeatures(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """AST and CLAP features of AuditoryBench spans, one builder config per task."""

    name = BUILDER_NAME
    VERSION = tfds.core.Version(VERSION)
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=t) for t in tasks_lib.names()]
    # TFDS locates a builder's source file through `importlib_resources`, which it does
    # not install on Python >= 3.9; nothing here needs that file (no checksums).
    code_path = None

    def __init__(self, *, rows: Mapping[str, Iterable[dict]], dims: Mapping[str, int],
                 **kwargs):
      self._rows = rows
      self._dims = dict(dims)
      super().__init__(**kwargs)

    def _info(self):
      return self.dataset_info_from_configs(
          features=_feature_spec(self._dims),
          description="AST and CLAP features of AuditoryBench spans (axk).",
          disable_shuffling=True)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(rows) for split, rows in self._rows.items()}

    def _generate_examples(self, rows):
      for row in rows:
        yield row["id"], row

    # TFDS prints "Downloading and preparing dataset ..." and "... downloaded and prepared"
    # for every builder; these rows are written from memory, nothing is downloaded.
    def _log_download_bytes(self):
      pass

    def _log_download_done(self):
      pass

  return AxkFeatures


def encode_row(example_id: str, sentence: str, spans: Sequence[Mapping],
               dims: Mapping[str, int]) -> dict:
  """A record in the layout of the module docstring, from per-span dicts."""
  n = len(spans)
  col = lambda k, dtype: np.asarray([s[k] for s in spans], dtype=dtype)
  shape = lambda *s: (n, *s)
  return {
      "id": example_id,
      "sentence": sentence,
      "spans": {
          "start": col("start", np.int32).reshape(n),
          "end": col("end", np.int32).reshape(n),
          "text": [s["text"] for s in spans],
          "has_audio": col("has_audio", np.bool_).reshape(n),
          "clap_score": col("clap_score", np.float32).reshape(n),
          "source": [s["source"] for s in spans],
          "ast_pooled": col("ast_pooled", np.float16).reshape(shape(dims["ast"])),
          "ast_tokens": col("ast_tokens", np.float16).reshape(
              shape(dims["num_audio_tokens"], dims["ast"])),
          "clap_text": col("clap_text", np.float16).reshape(shape(dims["clap"])),
          "clap_audio": col("clap_audio", np.float16).reshape(shape(dims["clap"])),
      },
  }


def write_task(features_dir: str, task: str, rows: Mapping[str, Iterable[dict]],
               dims: Mapping[str, int]) -> str:
  """Writes one task's splits (`encode_row` records) as a TFDS array_record dataset.

  Each split's rows may be a generator; it is consumed once, so that a large split is
  never held in memory as encoded records.

  Returns:
    The builder folder (`builder_dir`).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # TFDS draws a bar per split and per temporary shard file; the pipeline's own bars and
  # log lines say where it is.
  tfds.disable_progress_bar()
  builder = _builder_class()(rows=rows, dims=dims,
                             config=task, data_dir=features_dir,
                             file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(verify_ssl=False))
  # TFDS leaves an empty `downloads/extracted` tree behind; nothing is downloaded here.
  downloads = os.path.join(features_dir, "downloads")
  if os.path.isdir(downloads) and not any(files for _, _, files in os.walk(downloads)):
    shutil.rmtree(downloads)
  return str(builder.data_dir)


def data_source(features_dir: str, task: str, split: str):
  """The random-access source of one split (for grain): `source[i]` -> record dict."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  path = builder_dir(features_dir, task)
  if not os.path.exists(os.path.join(path, "dataset_info.json")):
    found = glob.glob(os.path.join(features_dir, BUILDER_NAME, "*", "*", "dataset_info.json"))
    have = sorted({os.path.relpath(os.path.dirname(os.path.dirname(p)),
                                   os.path.join(features_dir, BUILDER_NAME)) for p in found})
    raise FileNotFoundError(f"no features for task {task!r} in {features_dir} (expected "
                            f"{path}; tasks present: {have or 'none'})")
  sources = tfds.builder_from_directory(path).as_data_source()
  if split not in sources:
    raise KeyError(f"{path}: no split {split!r}; splits: {sorted(sources)}")
  return sources[split]


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def decode_record(record: Mapping, dims: Mapping[str, int] | None = None) -> dict:
  """A record as read from the data source -> `{"id", "sentence", "spans": [dict]}`."""
  raw = record["spans"]
  n = len(raw["start"])
  spans = []
  for i in range(n):
    spans.append({
        "start": int(raw["start"][i]),
        "end": int(raw["end"][i]),
        "text": _text(raw["text"][i]),
        "has_audio": bool(raw["has_audio"][i]),
        "clap_score": float(raw["clap_score"][i]),
        "source": _text(raw["source"][i]),
        "ast_pooled": np.asarray(raw["ast_pooled"][i], dtype=np.float16),
        "ast_tokens": np.asarray(raw["ast_tokens"][i], dtype=np.float16),
        "clap_text": np.asarray(raw["clap_text"][i], dtype=np.float16),
        "clap_audio": np.asarray(raw["clap_audio"][i], dtype=np.float16),
    })
  del dims
  return {"id": _text(record["id"]), "sentence": _text(record["sentence"]), "spans": spans}


class TokenStore:
  """The stored `ast_tokens` of one features folder, read a record at a time.

  Attributes:
    features_dir: the folder holding `axk_features/`.
    reads: records read so far (a batch of rows reads one record per distinct row).
  """

  def __init__(self, features_dir: str):
    self.features_dir = features_dir
    self.reads = 0
    self._sources: dict[tuple[str, str], object] = {}
    self._last: tuple[tuple | None, np.ndarray | None] = (None, None)

  def source(self, task: str, split: str):
    if (task, split) not in self._sources:
      self._sources[task, split] = data_source(self.features_dir, task, split)
    return self._sources[task, split]

  def record_tokens(self, task: str, split: str, index: int) -> np.ndarray:
    """`[spans, num_audio_tokens, D_ast]` float16 of record `index` (the last one is kept,
    so that the spans of one row cost one read)."""
    key = (task, split, index)
    if self._last[0] != key:
      self._last = (key, self.records_tokens(task, split, [index])[index])
    return self._last[1]

  def records_tokens(self, task: str, split: str, indices: Sequence[int]
                     ) -> dict[int, np.ndarray]:
    """`record_tokens` of several records, read in one call (array_record reads them in
    parallel)."""
    indices = sorted(set(int(i) for i in indices))
    records = self.source(task, split).__getitems__(indices)
    self.reads += len(indices)
    return {i: np.stack([np.asarray(t, dtype=np.float16) for t in r["spans"]["ast_tokens"]])
            for i, r in zip(indices, records)}


def read_tokens(cells: Sequence) -> list[np.ndarray]:
  """Each of `cells` (a `TokenRef` or an array) as an array; the refs of one store and split
  are read together, one read per distinct record (`TokenStore.records_tokens`)."""
  groups: dict[tuple, set[int]] = {}
  for c in cells:
    if isinstance(c, TokenRef):
      groups.setdefault((id(c.store), c.task, c.split), set()).add(c.record)
  stores = {id(c.store): c.store for c in cells if isinstance(c, TokenRef)}
  read = {key: stores[key[0]].records_tokens(key[1], key[2], sorted(indices))
          for key, indices in groups.items()}
  return [read[id(c.store), c.task, c.split][c.record][c.span] if isinstance(c, TokenRef)
          else np.asarray(c) for c in cells]


@dataclasses.dataclass(frozen=True)
class TokenRef:
  """One span's `ast_tokens`, still in the shards: `np.asarray(ref)` reads them."""

  store: TokenStore
  task: str
  split: str
  record: int  # the record's index in its split
  span: int  # the span's index in the record
  shape: tuple[int, int]  # (num_audio_tokens, D_ast)

  def __array__(self, dtype=None, copy=None):
    del copy
    tokens = self.store.record_tokens(self.task, self.split, self.record)[self.span]
    return tokens if dtype is None else tokens.astype(dtype)


def load_features(features_dir: str, task: str, split: str, *, lazy_tokens: bool = False,
                  store: TokenStore | None = None) -> dict[str, dict]:
  """Reads one split's features.

  Args:
    features_dir: the folder holding `manifest.json` and `axk_features/`.
    task: a registered benchmark task (`axk.tasks`).
    split: one of the splits written (see the manifest).
    lazy_tokens: each span's `ast_tokens` is a `TokenRef` (read on demand through `store`,
      or a new `TokenStore`), so the split's tokens are never all in memory.
    store: the `TokenStore` the refs read through.

  Returns:
    Example id -> `{"sentence": str, "spans": [span dict]}`, span dicts with the fields of
    the module docstring (`ast_pooled`, `ast_tokens`, `clap_text`, `clap_audio` as
    np.float16 arrays, `ast_tokens` a `TokenRef` with `lazy_tokens`).
  """
  source = data_source(features_dir, task, split)
  if lazy_tokens and store is None:
    store = TokenStore(features_dir)
  out = {}
  for i in range(len(source)):
    record = decode_record(source[i])
    if lazy_tokens:
      for j, span in enumerate(record["spans"]):
        span["ast_tokens"] = TokenRef(store, task, split, i, j, span["ast_tokens"].shape)
    out[record.pop("id")] = record
  return out


def read_manifest(features_dir: str) -> dict:
  """The manifest written beside the datasets (models, parameters, inputs' sha256).

  Raises:
    FileNotFoundError: there is none.
    FeaturesMismatch: it is not a JSON object (a truncated or overwritten file).
  """
  path = os.path.join(features_dir, MANIFEST)
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f"{path}: no feature manifest; build features with "
                            "`python -m axk.main --config=configs/features.py:... "
                            "--workdir=...`") from None
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise FeaturesMismatch(f"{path}: corrupt manifest ({e}); rebuild the features") from None
  if not isinstance(manifest, dict):
    raise FeaturesMismatch(f"{path}: corrupt manifest (not a JSON object); rebuild the "
                           "features")
  return manifest


# Module-level so that a test can count the files hashed.
sha256_file = files.sha256_file


def file_table(features_dir: str) -> dict[str, dict]:
  """`{relative path: {"size", "sha256"}}` of every file of a features folder but the
  manifest and the verification cache: what the manifest lists under `files`."""
  table = {}
  for root, dirs, names in os.walk(features_dir):
    dirs.sort()
    for name in sorted(names):
      full = os.path.join(root, name)
      rel = os.path.relpath(full, features_dir).replace(os.sep, "/")
      if rel in (MANIFEST, VERIFIED):
        continue
      table[rel] = {"size": os.path.getsize(full), "sha256": sha256_file(full)}
  return table


# Files hashed by this process: absolute path -> (size, mtime_ns, sha256). Used when the
# folder is read-only and `verified.json` cannot be written: then files hash once a run.
_HASHED: dict[str, tuple[int, int, str]] = {}


def _read_verified(features_dir: str) -> dict:
  try:
    with open(os.path.join(features_dir, VERIFIED), encoding="utf-8") as f:
      state = json.load(f)
    return state if isinstance(state, dict) else {}
  except (OSError, ValueError):
    return {}


def verify(features_dir: str, *, num_audio_tokens: int | None = None) -> dict:
  """Checks a features folder against its manifest before anything trains on it.

  Sizes are checked every time; a file's sha256 only when its size or modification time
  differs from when `verify` last hashed it (recorded in `verified.json`, or in this
  process when the folder is read-only), so an unchanged folder costs a few `stat` calls.

  Args:
    features_dir: the folder holding `manifest.json`.
    num_audio_tokens: the AST token count the caller needs, when it needs one.

  Returns:
    The manifest.

  Raises:
    FileNotFoundError: no manifest.
    FeaturesMismatch: one line naming the file and what is wrong with it: a corrupt
      manifest, a manifest without checksums, a missing file, a size or sha256 that differs
      from the manifest's, or another `num_audio_tokens`.
  """
  manifest = read_manifest(features_dir)
  path = os.path.join(features_dir, MANIFEST)
  table = manifest.get("files")
  if not isinstance(table, dict) or not table:
    raise FeaturesMismatch(f"{path}: lists no file checksums (written by an older axk); "
                           "rebuild the features")
  have = manifest.get("dims", {}).get("num_audio_tokens")
  if num_audio_tokens is not None and have != num_audio_tokens:
    layout = manifest.get("params", {}).get("ast", {}).get("token_layout", "unrecorded")
    raise FeaturesMismatch(f"{path}: num_audio_tokens is {have}, {num_audio_tokens} wanted; "
                           f"the features have layout {layout!r}: rebuild them with the "
                           "--config.ast.token_layout / ast.grid / ast.num_audio_tokens that "
                           f"give {num_audio_tokens} tokens (axk/features/ast.py)")
  stamps = {}
  for rel, entry in sorted(table.items()):
    full = os.path.join(features_dir, rel)
    try:
      st = os.stat(full)
    except FileNotFoundError:
      raise FeaturesMismatch(f"{full}: missing (listed in {path})") from None
    if st.st_size != entry.get("size"):
      raise FeaturesMismatch(f"{full}: {st.st_size} bytes, the manifest says "
                             f"{entry.get('size')} (truncated or replaced)")
    stamps[rel] = (st.st_size, st.st_mtime_ns)
  state = _read_verified(features_dir)
  changed = False
  for rel, (size, mtime) in stamps.items():
    full = os.path.abspath(os.path.join(features_dir, rel))
    want = table[rel].get("sha256")
    if state.get(rel) == [size, mtime, want] or _HASHED.get(full) == (size, mtime, want):
      continue
    got = sha256_file(full)
    if got != want:
      raise FeaturesMismatch(f"{full}: sha256 {got[:12]}... differs from the manifest's "
                             f"{str(want)[:12]}... (the file changed)")
    _HASHED[full] = (size, mtime, got)
    state[rel] = [size, mtime, got]
    changed = True
  if changed:
    state = {rel: state[rel] for rel in stamps if rel in state}
    try:
      files.write_json(os.path.join(features_dir, VERIFIED), state)
    except OSError:
      pass  # A read-only folder: this process remembers what it hashed.
  return manifest


def verified(features_dir: str, **kwargs) -> bool:
  """Whether `verify` passes; when the folder exists but does not, one line says why."""
  try:
    verify(features_dir, **kwargs)
    return True
  except FileNotFoundError:
    if os.path.exists(features_dir):
      logger.warning("%s: no manifest.json; the features will be rebuilt", features_dir)
    return False
  except FeaturesMismatch as e:
    logger.warning("%s; the features will be rebuilt", e)
    return False


def check_manifest(manifest: Mapping, *, csv_sha256: Mapping[str, str] | None = None,
                   spans_source: str | None = None,
                   num_audio_tokens: int | None = None,
                   data_revision: str | None = None) -> None:
  """Refuses features that do not match what the caller trains or evaluates on.

  Args:
    manifest: from `read_manifest`.
    csv_sha256: `"<task>/<split>"` -> sha256 of the CSV file the caller loaded
      (`SplitData.sha256`); each must equal the manifest's.
    spans_source: `"gold"`, `"predictions"` or `"detector"`, when the caller needs one.
    num_audio_tokens: the audio token count the model expects.
    data_revision: the caller's data revision (`auditorybench.data_revision`); features
      built from another revision, or with none recorded, are refused.

  Raises:
    FeaturesMismatch: naming every mismatch.
  """
  problems = []
  if manifest.get("format_version") != FORMAT_VERSION:
    problems.append(f"format_version {manifest.get('format_version')} != {FORMAT_VERSION}")
  inputs = manifest.get("inputs", {})
  for name, digest in (csv_sha256 or {}).items():
    have = inputs.get(name, {}).get("sha256")
    if have is None:
      problems.append(f"{name}: not in the features")
    elif have != digest:
      problems.append(f"{name}: built from a CSV with sha256 {have[:12]}..., caller has "
                      f"{digest[:12]}...")
  if spans_source is not None and manifest.get("spans", {}).get("source") != spans_source:
    problems.append(f"spans from {manifest.get('spans', {}).get('source')!r}, caller wants "
                    f"{spans_source!r}")
  if num_audio_tokens is not None and manifest.get("dims", {}).get(
      "num_audio_tokens") != num_audio_tokens:
    problems.append(f"num_audio_tokens {manifest.get('dims', {}).get('num_audio_tokens')} "
                    f"!= {num_audio_tokens}")
  if data_revision is not None:
    have = manifest.get("data", {}).get("revision")
    if have != data_revision:
      problems.append(f"built from data revision {have or 'unrecorded'}, caller has "
                      f"{data_revision}")
  if problems:
    raise FeaturesMismatch("features do not match: " + "; ".join(problems))
