"""AudioBERT's source: top-1 CLAP retrieval from the configured audio database."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
import logging
import os

import numpy as np

from axk import hub
from axk.features import audio as audio_lib
from axk.features import retrieval
from axk.features.sources.base import FeatureSource
from axk.features.sources.base import register
from axk.utils import files

logger = logging.getLogger(__name__)

# Retrieved clips whose AST features are kept in memory (clips are often retrieved again).
_AST_CACHE_SIZE = 4096


@register
class RetrievalSource(FeatureSource):
  """AudioBERT: top-1 CLAP retrieval from `config.database`, AST features of the clip."""

  name = "retrieval"
  stages = ("database",)

  def __init__(self, config, workdir: str, model_paths: Mapping[str, str]):
    self.db_config = _database_config(config, workdir)
    self.db = retrieval.AudioDatabase.from_config(
        self.db_config, shard_index=config.shard_index, num_shards=config.num_shards)
    section = config[self.name]
    self.exclude = retrieval.read_exclude(section.exclude_ids, section.exclude_file)
    unknown = sorted(self.exclude - set(self.db.index))
    if unknown:
      logger.warning("retrieval: %d of %d excluded ids name no database clip (e.g. %s); ids "
                     "of a shard database are <shard name>/<key>", len(unknown),
                     len(self.exclude), unknown[:3])
    self.ast_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    super().__init__(config, workdir, model_paths)

  def params(self) -> dict:
    r = self.section
    # The database by content, not by location: a moved database keeps the run key.
    where = ("dir", "folder")
    return {"retrieval": {"query_template": r.query_template, "top_k": int(r.top_k),
                          "min_score": float(r.min_score),
                          "exclude": hub.digest(sorted(self.exclude)),
                          "num_excluded": len(self.exclude)},
            "database": {**{k: v for k, v in self.db.description.items() if k not in where},
                         "content": self.db.content_fingerprint(),
                         "max_seconds": self.db.max_seconds}}

  def prepare(self) -> None:
    self.db.embed(self.clap, self.db_config.cache_dir, chunk_size=int(self.db_config.chunk_size),
                  shard_index=self.config.shard_index, num_shards=self.config.num_shards)
    # For the manifest, which `assemble` may write in a process that never embeds.
    files.write_json(os.path.join(self.parts_dir, "database.json"), {
        **self.db.info, "excluded": {"ids": len(self.exclude), "in_database": len(
            self.exclude & set(self.db.index))}})

  def manifest(self) -> dict:
    path = os.path.join(self.parts_dir, "database.json")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        return {"database": json.load(f)}
    return {"database": self.db.info}

  def record(self, row: Mapping[str, np.ndarray]) -> dict:
    out = {"top_k": [[str(i), float(v)] for i, v in zip(row["topk_ids"], row["topk_scores"])
                     if i]}
    chosen = self.db.index.get(str(row["source"]))
    if chosen is not None and self.db.clips[chosen].caption:
      out["caption"] = self.db.clips[chosen].caption  # what the retrieved clip is said to be
    return out

  def clip_file(self, source: str) -> str | None:
    """The database file of clip id `source`; a clip inside a TFDS record is written once
    as WAV under `<workdir>/cache/retrieved/`."""
    i = self.db.index.get(source)
    if i is None:
      return None
    path = self.db.clips[i].path
    if os.path.isfile(path):
      return path
    out = os.path.join(self.workdir, "cache", "retrieved", hub.digest(source) + ".wav")
    if not os.path.exists(out):
      import io  # pylint: disable=g-import-not-at-top

      import soundfile as sf  # pylint: disable=g-import-not-at-top
      wave, buf = self._load(i), io.BytesIO()
      if wave is None:
        return None
      sf.write(buf, wave, self.ast.sampling_rate, format="WAV", subtype="PCM_16")
      files.write_bytes(out, buf.getvalue())
    return out

  def _load(self, i: int):
    try:
      return self.db.load(i, self.ast.sampling_rate)
    except audio_lib.DecodeError as e:
      logger.warning("retrieval: clip %s cannot be decoded (%s)", self.db.clips[i].id, e)
      return None

  def _ast_of(self, i: int) -> tuple[np.ndarray, np.ndarray] | None:
    if i not in self.ast_cache:
      wave = self._load(i)
      if wave is None:
        return None
      pooled, tokens = self.ast([wave])
      if len(self.ast_cache) >= _AST_CACHE_SIZE:
        self.ast_cache.pop(next(iter(self.ast_cache)))
      self.ast_cache[i] = (pooled[0], tokens[0])
    return self.ast_cache[i]

  def acquire(self, batch: Sequence[str]) -> dict[str, np.ndarray]:
    r = self.section
    text = self.clap.text([r.query_template.format(span=s) for s in batch])
    idx, scores = self.db.search(text, max(1, int(r.top_k)), self.exclude)
    # Decode the needed clips in one AST batch (clips already cached are skipped).
    wanted = sorted({int(i) for i in idx[:, 0] if i >= 0} - set(self.ast_cache))
    loaded = [(i, w) for i in wanted if (w := self._load(i)) is not None]
    if loaded:
      pooled, tokens = self.ast([w for _, w in loaded])
      for n, (i, _) in enumerate(loaded):
        self.ast_cache[i] = (pooled[n], tokens[n])
    out = self.empty(len(batch))
    out["clap_text"] = text
    out["topk_ids"] = np.array([[self.db.clips[j].id if j >= 0 else "" for j in row]
                                for row in idx])
    out["topk_scores"] = scores
    for b in range(len(batch)):
      if idx[b, 0] >= 0:
        out["clap_score"][b] = scores[b, 0]
      # The best of the top-k that decodes (a clip can embed yet fail later, e.g. a file
      # replaced on disk) and clears `min_score`.
      for j, s in zip(idx[b], scores[b]):
        if j < 0 or s < r.min_score:
          break
        feats = self._ast_of(int(j))
        if feats is None:
          continue
        out["has_audio"][b] = True
        out["clap_score"][b] = s
        out["source"][b] = self.db.clips[j].id
        out["clap_audio"][b] = self.db.embeddings[j]
        out["ast_pooled"][b], out["ast_tokens"][b] = feats
        break
    return out


def _database_config(config, workdir: str):
  """`config.database`, its cache folder resolved, the synthetic database written if asked."""
  db = config.database.copy_and_resolve_references()
  with db.unlocked():
    db.cache_dir = db.cache_dir or os.path.join(workdir, "cache", "database")
    if db.synthetic_clips:
      from axk.features import tiny  # pylint: disable=g-import-not-at-top
      db.dir = os.path.join(workdir, "audio_db")
      tiny.write_synthetic_database(db.dir, db.synthetic_clips)
  return db
