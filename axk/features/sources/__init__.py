"""Feature sources: where a span's audio comes from, behind one interface.

A source turns acquisition keys (by default the normalised span texts) into per-key
arrays: `has_audio`, `clap_score`, `source`, `clap_text`, `clap_audio`, `ast_pooled`,
`ast_tokens`, plus any extras of its own. The pipeline (`axk.features.pipeline`) only ever
talks to this interface, so it never asks which source it runs:

  describe()  -> `Setup`: the models, parameters and run key, without loading a model; the
                 run key names the parts folder, so equal setups share finished work.
  keys(e, s)  -> the acquisition key of each span `s` of example `e` (deduplication unit).
  prepare()   work before acquisition (retrieval: embed the database); a source with a
              stage of its own lists it in `stages` (`stage=database`).
  acquire(b)  -> the arrays of a batch of keys; models load on the first call.
  manifest()  -> entries this source adds to `manifest.json` (retrieval: the database).
  record(r)   -> extras of one key's line in `acquisitions.jsonl` (top-k; accepted
                 candidate and scores).
  check(c)    (a classmethod) refuses a config the source cannot run, before any stage.

Sources are registered by name (`@register`); `config.source` lists the names to run, and
each source reads its own config section, `config.<name>` (`features_dir` at least).

  base.py        the interface (`FeatureSource`), the registry, what CLAP+AST sources share
  retrieval.py   AudioBERT: CLAP retrieval from an audio database
  generation.py  ITH: text-to-audio generation with CLAP rejection sampling
  oracle.py      vectors from the gold answers, no model (a diagnostic)

Adding a source is one module here (imported below, so that it registers) plus a config
variant, for example retrieval for each span's gold answer instead of its text:

    @register
    class AnswerSource(RetrievalSource):
      name = "answer"
      def keys(self, example, spans):
        return [normalise(example.answer)] * len(spans)   # audio of the answer, at each span

with `c.answer = ...` (a copy of `c.retrieval`'s fields and its own `features_dir`) and
`c.source = "answer"` in a config variant. Its run key, parts folder, manifest and shards
follow from the interface; the pipeline does not change. `OracleSource` (`oracle.py`,
`configs/features.py:oracle`) is such a source: vectors from the gold answers, no model.
"""

from axk.features.clips import cached_clip_path
from axk.features.sources.base import FeatureSource
from axk.features.sources.base import SOURCES
from axk.features.sources.base import Setup
from axk.features.sources.base import make
from axk.features.sources.base import register
from axk.features.sources.base import to_part
from axk.features.sources.generation import GenerationSource
from axk.features.sources.generation import generation_params
from axk.features.sources.generation import task_taus
from axk.features.sources.oracle import ORACLE_NOTE
from axk.features.sources.oracle import ORACLE_SHUFFLED_NOTE
from axk.features.sources.oracle import OracleSource
from axk.features.sources.oracle import oracle_roles
from axk.features.sources.retrieval import RetrievalSource

__all__ = [
    "FeatureSource", "GenerationSource", "ORACLE_NOTE", "ORACLE_SHUFFLED_NOTE", "OracleSource",
    "RetrievalSource", "SOURCES", "Setup", "cached_clip_path", "generation_params", "make",
    "oracle_roles", "register", "task_taus", "to_part",
]
