r"""Auditory spans in GLUE's sentences, found by a span detector, and their statistics (ITH's
Table 6: the share of words inside spans, span counts per task and split).

    python -m axk.glue_spans --detector=workdirs/span/export --data=/data/glue --out=W
    python -m axk.glue_spans --detector=D --data=sample --tasks=sst2,stsb --out=W

`--detector` is a span detector export (`configs/span.py` writes one to `<workdir>/export`;
a hub id works too). Every text of every row is read (both texts of a pair), test splits
included. Outputs in `--out`:
  * `spans/<task>_<split>.jsonl`: a line per row, `{"id", "texts": [{"text", "spans":
    [[start, end], ...]}]}` (character offsets into each text), the span file an ITH run on
    GLUE reads;
  * `table6.json` and `table6.md`: per task and split, rows, texts, words (`\w+` runs),
    words inside spans and their share in percent (`span_words_pct`), spans, and texts with
    at least one span.
A split whose span file exists is not detected again: an interrupted command continues.
The paper labelled GLUE's spans with an LLM and trained its detector on them; this command
uses whichever detector it is given (the AuditoryBench one, by default of `configs/span.py`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from axk import hub
from axk.data import glue as glue_data
from axk.tasks import glue as glue_tasks
from axk.utils import files

def detect_split(detector, examples) -> list[dict]:
  texts = [e.text_a for e in examples] + [e.text_b for e in examples if e.text_b]
  found = iter(detector(texts, names=[f"{e.id} (text {i})" for i in (1, 2) for e in examples
                                      if i == 1 or e.text_b]))
  first = {e.id: next(found) for e in examples}
  second = {e.id: next(found) for e in examples if e.text_b}
  rows = []
  for e in examples:
    parts = [(e.text_a, first[e.id])] + ([(e.text_b, second[e.id])] if e.text_b else [])
    rows.append({"id": e.id, "texts": [{"text": text, "spans": [[s.start, s.end] for s in sp]}
                                       for text, sp in parts]})
  return rows


def run(detector_path: str, data: str, out: str, tasks=glue_tasks.NAMES, layout="auto",
        device="auto", batch_size=32) -> dict:
  root = glue_data.resolve_dir(data)
  # Every file is checked before the detector loads.
  plan = [(t, s) for t in tasks for s in glue_data.spec_of(t).splits]
  for task, split in plan:
    glue_data.split_files(root, task, split, layout)
  detector = None
  table = {}
  for task, split in plan:
    path = os.path.join(out, "spans", f"{task}_{split}.jsonl")
    if not os.path.exists(path):
      if detector is None:
        from axk.features.detector import Detector  # pylint: disable=g-import-not-at-top
        detector = Detector(detector_path, device=device, batch_size=batch_size)
      rows = detect_split(detector, glue_data.read_split(root, task, split, layout))
      files.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
      logging.info("%s/%s: %d rows, spans in %s", task, split, len(rows), path)
    rows = [row for _, row in glue_data.span_rows(path)]
    table.setdefault(task, {})[split] = glue_data.span_statistics(rows)
  files.write_json(os.path.join(out, "table6.json"), table)
  files.write_text(os.path.join(out, "table6.md"), glue_data.table6_markdown(table))
  return table


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--detector", required=True, help="span detector export or hub id")
  parser.add_argument("--data", required=True, help="GLUE folder, or `sample`")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--tasks", default=",".join(glue_tasks.NAMES))
  parser.add_argument("--layout", default="auto", choices=glue_data.LAYOUTS)
  parser.add_argument("--device", default="auto")
  parser.add_argument("--batch_size", type=int, default=32)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  tasks = tuple(t for t in args.tasks.split(",") if t)
  try:
    table = run(args.detector, args.data, args.out, tasks, args.layout, args.device,
                args.batch_size)
  except (glue_data.GlueDataError, hub.ModelNotAvailable, ValueError, OSError) as e:
    # The detector is named `spans.detector` in the run configs; here it is a flag.
    print(f"error: {str(e).replace('--config.spans.detector', '--detector')}", file=sys.stderr)
    return 2
  print(glue_data.table6_markdown(table))
  return 0


if __name__ == "__main__":
  sys.exit(main())
