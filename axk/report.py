r"""`report.html`: one self-contained page per AudioBERT/ITH run, opened from disk.

    python -m axk.report WORKDIR            # rebuilds WORKDIR/report.html from its files

The run writes it at its end (`axk.runs.masked_word.run`); this command rebuilds it from a
finished workdir. Nothing is fetched when the page opens: CSS and script are inline, plots
are matplotlib SVG inline, and the clips are relative links into the run's feature cache.

The page: the results table beside the majority baseline, the same model with its audio
removed, a text-only run when given (`--text_only=WORKDIR` of a `no_audio` run) and the
published numbers (the tasks' `published`); training curves (loss, dev accuracy from
`metrics.jsonl`); accuracy by split; an example browser (sentence with its spans, gold and
predicted answers with and without audio, a player and the CLAP score per span clip, the
gate per token) with filters, examples where audio changed the answer first.

A renderer of files: the answers without audio and the gates come from the run's end
(`axk.runs.analysis`, called by `MaskedWord.finish`): one more forward pass over each
evaluated split with `span_has_audio` zeroed (the LoRA gate recomputed from it), and one with
the fusion's sown gate, both written into `predictions/<task>_<split>.jsonl` beside the
answers.
"""

from __future__ import annotations

import argparse
import html
import io
import json
import os
import sys
from typing import Mapping, Sequence

import numpy as np

from axk import methods
from axk import plugins
from axk import tasks
from axk.data import spans as spans_lib
from axk.features import clips
from axk.features import shards
from axk.features.database import folder as folder_db
from axk.utils import files

# The published accuracy (%) the page shows (BERT-base): label -> row of the tasks'
# `published` tables (`axk.tasks.Task.published`).
PUBLISHED_ROWS = {"BERT-base, no training": "bert", "AudioBERT (paper)": "audiobert",
                  "ITH (paper)": "ith"}
REPORT = "report.html"


# -- reading a workdir ---------------------------------------------------------------------------
def _read_json(path: str, default=None):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return default


def _read_jsonl(path: str) -> list[dict]:
  try:
    with open(path, encoding="utf-8") as f:
      return [json.loads(line) for line in f if line.strip()]
  except OSError:
    return []


def sub_runs(workdir: str) -> list[str]:
  """The folders holding one trained model each: `<workdir>/<task>/` or the workdir (their
`seed_<first seed>/` with several seeds)."""
  config = _read_json(os.path.join(workdir, "config.json"), {})
  tasks = config.get("data", {}).get("tasks", [])
  subs = [os.path.join(workdir, t) for t in tasks
          if os.path.isfile(os.path.join(workdir, t, "results.json"))] or [workdir]
  # With several seeds, the examples and curves of the first seed.
  seeds = config.get("seeds", [0])
  return [os.path.join(s, f"seed_{seeds[0]}") if len(seeds) > 1 else s for s in subs]


class Clips:
  """Span clip files of a run's features, by acquisition `source` (torch-free)."""

  def __init__(self, features_dir: str):
    self.manifest = shards.read_manifest(features_dir) if features_dir else {}
    self.kind = self.manifest.get("source", "")
    self.workdir = os.path.dirname(features_dir)
    self._paths: dict[str, str] = {}
    if self.kind == "generation":
      cache = (self.manifest.get("config", {}).get("generation", {}).get("cache_dir") or
               os.path.join(self.workdir, "cache", "clips"))
      self._path = lambda key: clips.cached_clip_path(cache, key)
    elif self.kind == "retrieval":
      db = self.manifest.get("database", {})
      if db.get("kind") == "folder" and os.path.isdir(db.get("dir", "")):
        self._paths = {c.id: c.path for c in folder_db.list_folder(db["dir"],
                                                                    db.get("metadata", ""))}
      self._path = self._paths.get
    else:
      self._path = lambda key: None

  def __call__(self, source: str) -> str | None:
    path = self._path(source) if source else None
    return path if path and os.path.isfile(path) else None


def _spans(features_dir: str, predictions: str, task: str, split: str) -> dict[str, dict]:
  """Example id -> {"sentence", "spans"} (spans with audio fields when the run had
  features)."""
  if features_dir:
    try:
      rows = shards.load_features(features_dir, task, split)
    except (FileNotFoundError, ValueError):
      rows = {}
    return {i: {"sentence": r.get("sentence", ""),
                "spans": sorted(r["spans"], key=lambda s: s["start"])} for i, r in rows.items()}
  if predictions:
    return {r["id"]: r for r in _read_jsonl(
        spans_lib.predictions_path(predictions, task, split))}
  return {}


def collect(workdir: str, text_only: str = "") -> dict:
  """Everything the page shows, from the workdir's files."""
  config = _read_json(os.path.join(workdir, "config.json"), {})
  if "name" not in config.get("model", {}):
    raise ValueError(f"{workdir}: not a masked-word run (no config.json naming its model).")
  plugins.load(config.get("plugins", ()))  # Tasks and methods the run registered.
  results = _read_json(os.path.join(workdir, "results.json"))
  if results is None:
    raise ValueError(f"{workdir}: no results.json; the run has not finished.")
  resolved = config.get("resolved", {})
  features_dir = resolved.get("features_dir", "")
  clip_files = Clips(features_dir)
  examples, curves = [], {}
  for sub in sub_runs(workdir):
    curves[os.path.relpath(sub, workdir)] = _read_jsonl(os.path.join(sub, "metrics.jsonl"))
    for path in sorted(os.listdir(os.path.join(sub, "predictions"))
                       if os.path.isdir(os.path.join(sub, "predictions")) else []):
      if not path.endswith(".jsonl"):
        continue
      task, split = path[:-len(".jsonl")].split("_", 1)
      spans = _spans(features_dir, resolved.get("spans_predictions", ""), task, split)
      for a in _read_jsonl(os.path.join(sub, "predictions", path)):
        known = spans.get(a["id"], {})
        a.setdefault("sentence", known.get("sentence", ""))
        a.update(task=task, split=split, spans=[
            {"start": int(s["start"]), "end": int(s["end"]), "text": str(s["text"]),
             "has_audio": bool(s.get("has_audio", False)),
             "clap_score": float(s["clap_score"]) if "clap_score" in s else None,
             "clip": _relative(clip_files(str(s.get("source", ""))), workdir)}
            for s in known.get("spans", [])])
        examples.append(a)
  text_results = _read_json(os.path.join(text_only, "results.json")) if text_only else None
  return {"workdir": workdir, "config": config, "results": results, "curves": curves,
          "examples": examples, "text_only": text_results}


def _relative(path: str | None, workdir: str) -> str | None:
  return os.path.relpath(path, workdir) if path else None


# -- the page ------------------------------------------------------------------------------------
def _figure_svg(fig) -> str:
  buf = io.StringIO()
  fig.savefig(buf, format="svg", bbox_inches="tight")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  plt.close(fig)
  svg = buf.getvalue()
  return svg[svg.index("<svg"):]


def _splits(results: Mapping) -> list[tuple[str, str]]:
  return [(t, s) for t, splits in results.items() if isinstance(splits, dict)
          for s, m in splits.items() if isinstance(m, dict) and "accuracy" in m]


def _without_audio(examples: Sequence[Mapping]) -> dict[tuple[str, str], float]:
  out = {}
  for key in {(e["task"], e["split"]) for e in examples if "correct_without_audio" in e}:
    rows = [e for e in examples if (e["task"], e["split"]) == key]
    out[key] = 100 * float(np.mean([e["correct_without_audio"] for e in rows]))
  return out


def _published(method: str, task_names) -> dict:
  """label -> {task: {split: accuracy}} of the published rows for `method`'s page: the
  untrained BERT and the method's own row (`Method.published_row`), or every method's row
  for a method the papers do not have."""
  try:
    row = methods.get(method).published_row
  except (methods.MethodError, ImportError):
    row = ""
  rows = [row] if row in PUBLISHED_ROWS.values() else [r for r in PUBLISHED_ROWS.values()
                                                        if r != "bert"]
  labels = {r: label for label, r in PUBLISHED_ROWS.items()}
  known = [t for t in dict.fromkeys(task_names) if t in tasks.names()]
  return {labels[r]: {t: dict(tasks.get(t).published.get(r, {})) for t in known}
          for r in ("bert", *rows)}


def plots(data: Mapping) -> dict[str, str]:
  """The inline SVG plots: training curves, accuracy by split."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  out = {}
  fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.2))
  for name, rows in data["curves"].items():
    label = "" if name == "." else f"{name}: "
    steps = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
    if steps:
      loss_ax.plot(*zip(*steps), marker=".", label=f"{label}train loss")
    for key in sorted({k for r in rows for k in r if k.endswith("/dev/accuracy")
                       or k.endswith("/dev/accuracy_candidates")} - {""}):
      if key.startswith("final/"):
        continue
      points = [(r["step"], r[key]) for r in rows if key in r]
      acc_ax.plot(*zip(*points), marker="o", label=f"{label}{key}")
  loss_ax.set(title="training loss", xlabel="step")
  acc_ax.set(title="dev accuracy (%)", xlabel="step")
  for ax in (loss_ax, acc_ax):
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  out["curves"] = _figure_svg(fig)
  keys = _splits(data["results"])
  silent = _without_audio(data["examples"])
  series = {"model": [data["results"][t][s]["accuracy"] for t, s in keys],
            "audio removed": [silent.get((t, s), np.nan) for t, s in keys],
            "majority": [data["results"][t][s].get("majority", np.nan) for t, s in keys]}
  for name, table in _published(data["config"]["model"]["name"], [t for t, _ in keys]).items():
    series[name] = [table.get(t, {}).get(s, np.nan) for t, s in keys]
  fig, ax = plt.subplots(figsize=(10, 3.2))
  width = 0.8 / len(series)
  x = np.arange(len(keys))
  for n, (name, values) in enumerate(series.items()):
    ax.bar(x + n * width, values, width, label=name)
  ax.set_xticks(x + 0.4 - width / 2, [f"{t}/{s}" for t, s in keys])
  ax.set(title="accuracy by split (%)", ylim=(0, 100))
  ax.legend(fontsize=7, ncol=3)
  out["splits"] = _figure_svg(fig)
  return out


def _fmt(x) -> str:
  return "" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.2f}"


def results_table(data: Mapping) -> str:
  silent = _without_audio(data["examples"])
  published = _published(data["config"]["model"]["name"],
                         [t for t, _ in _splits(data["results"])])
  text = data.get("text_only") or {}
  head = (["task/split", "accuracy", "accuracy_candidates", "audio removed", "majority"]
          + (["text-only run"] if text else []) + list(published) + ["examples", "with_audio"])
  rows = []
  for t, s in _splits(data["results"]):
    m = data["results"][t][s]
    cells = [f"{t}/{s}", _fmt(m["accuracy"]), _fmt(m.get("accuracy_candidates")),
             _fmt(silent.get((t, s))), _fmt(m.get("majority"))]
    if text:
      cells.append(_fmt(text.get(t, {}).get(s, {}).get("accuracy")))
    cells += [_fmt(p.get(t, {}).get(s)) for p in published.values()]
    cells += [str(int(m.get("examples", 0))), _fmt(m.get("with_audio"))]
    rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
  return ("<table id='results'><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
          + "</tr>" + "".join(rows) + "</table>")


def _gate_colour(g: float) -> str:
  """Low gate (audio dominates) red, high gate (text kept) blue."""
  g = min(max(g, 0.0), 1.0)
  return f"rgba({int(220 * (1 - g))},{60},{int(220 * g)},0.35)"


def sentence_html(sentence: str, spans: Sequence[Mapping], gates: Sequence) -> str:
  """The sentence with its spans underlined and each fused token shaded by its gate."""
  marks = [None] * len(sentence)
  for s in spans:
    for i in range(s["start"], min(s["end"], len(sentence))):
      marks[i] = ("span", None)
  for start, end, g in gates or ():
    for i in range(start, min(end, len(sentence))):
      marks[i] = ("gate", g)
  out, i = [], 0
  while i < len(sentence):
    j = i
    while j < len(sentence) and marks[j] == marks[i]:
      j += 1
    text = html.escape(sentence[i:j])
    if marks[i] is None:
      out.append(text)
    elif marks[i][0] == "span":
      out.append(f"<span class='span'>{text}</span>")
    else:
      g = marks[i][1]
      out.append(f"<span class='span gate' style='background:{_gate_colour(g)}' "
                 f"title='gate {g:.3f}'>{text}</span>")
    i = j
  return "".join(out)


def example_html(e: Mapping) -> str:
  changed = ("predicted_without_audio" in e and e["predicted_without_audio"] != e["predicted"])
  has_audio = any(s["has_audio"] for s in e["spans"])
  attrs = (f"data-correct='{int(bool(e['correct']))}' data-audio='{int(has_audio)}' "
           f"data-task='{html.escape(e['task'])}' data-split='{html.escape(e['split'])}' "
           f"data-changed='{int(changed)}'")
  sentence = e.get("sentence") or ""
  parts = [f"<div class='example {'right' if e['correct'] else 'wrong'}' {attrs}>",
           f"<div class='id'>{html.escape(e['id'])}"
           f"{' · audio changed the answer' if changed else ''}</div>",
           f"<div class='sentence'>{sentence_html(sentence, e['spans'], e.get('gate'))}</div>",
           f"<div>gold <b>{html.escape(str(e['answer']))}</b> · predicted "
           f"<b>{html.escape(str(e['predicted']))}</b>"]
  if "predicted_without_audio" in e:
    parts.append(f" · without audio <b>{html.escape(str(e['predicted_without_audio']))}</b>")
  if e.get("predicted_candidate") is not None:
    parts.append(f" · best option <b>{html.escape(str(e['predicted_candidate']))}</b>")
  if e.get("lora_gate") is not None:
    parts.append(f" · LoRA {'on' if e['lora_gate'] else 'off'}")
  parts.append("</div>")
  for s in e["spans"]:
    score = "" if s["clap_score"] is None else f"CLAP {s['clap_score']:+.3f}"
    state = "accepted" if s["has_audio"] else "no audio"
    player = (f"<audio controls preload='none' src='{html.escape(s['clip'])}'></audio>"
              if s["clip"] else "")
    parts.append(f"<div class='clip'>“{html.escape(s['text'])}” {state} {score} {player}</div>")
  if e.get("gate"):
    parts.append("<div class='gates'>gate: " + " ".join(
        f"<span style='background:{_gate_colour(g)}'>{html.escape(sentence[a:b])} {g:.2f}"
        "</span>" for a, b, g in e["gate"]) + "</div>")
  parts.append("</div>")
  return "".join(parts)


_CSS = """
body{font-family:sans-serif;margin:1.5em;max-width:1200px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#eee}.span{border-bottom:2px solid #d80;background:#fff3d6}
.example{border:1px solid #ddd;border-left:5px solid #2a2;margin:6px 0;padding:6px}
.example.wrong{border-left-color:#c22}.id{color:#777;font-size:12px}.clip{font-size:13px}
.sentence{font-size:16px;margin:3px 0}.gates span{padding:1px 3px;margin-right:2px}
audio{height:28px;vertical-align:middle}#filters select{margin-right:1em}
"""
_JS = """
function applyFilters(){
  const v = id => document.getElementById(id).value;
  let shown = 0;
  for (const e of document.querySelectorAll('.example')) {
    const ok = (v('f-correct') === '' || e.dataset.correct === v('f-correct')) &&
               (v('f-audio') === '' || e.dataset.audio === v('f-audio')) &&
               (v('f-task') === '' || e.dataset.task === v('f-task')) &&
               (v('f-split') === '' || e.dataset.split === v('f-split'));
    e.style.display = ok ? '' : 'none'; shown += ok;
  }
  document.getElementById('shown').textContent = shown;
}
document.querySelectorAll('#filters select').forEach(s => s.onchange = applyFilters);
applyFilters();
"""


def _select(name: str, label: str, options: Sequence[tuple[str, str]]) -> str:
  opts = "".join(f"<option value='{html.escape(v)}'>{html.escape(t)}</option>"
                 for v, t in [("", "all"), *options])
  return f"<label>{label} <select id='f-{name}'>{opts}</select></label>"


def render(data: Mapping) -> str:
  """The page (a string), from `collect`'s data."""
  config = data["config"]
  figures = plots(data)
  examples = sorted(data["examples"], key=lambda e: (
      e.get("predicted_without_audio", e["predicted"]) == e["predicted"],
      e["task"], e["split"], e["id"]))
  tasks = sorted({e["task"] for e in examples})
  splits = sorted({e["split"] for e in examples})
  filters = ("<div id='filters'>"
             + _select("correct", "answer", [("1", "right"), ("0", "wrong")])
             + _select("audio", "audio", [("1", "with audio"), ("0", "without audio")])
             + _select("task", "task", [(t, t) for t in tasks])
             + _select("split", "split", [(s, s) for s in splits])
             + " <span id='shown'></span> shown</div>")
  title = html.escape(f"{config.get('name') or config['model']['name']}: {data['workdir']}")
  return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
          f"<title>{title}</title><style>{_CSS}</style></head><body>"
          f"<h1>{title}</h1>"
          "<p>accuracy: the paper protocol; accuracy_candidates: leak-free, each option "
          "scored as a whole word; audio removed: the same model with every span's audio "
          "taken away; published: the papers' BERT-base numbers.</p>"
          f"<h2>Results</h2>{results_table(data)}"
          f"<h2>Training</h2><div class='plot' id='plot-curves'>{figures['curves']}</div>"
          f"<h2>Accuracy by split</h2><div class='plot' id='plot-splits'>{figures['splits']}"
          "</div>"
          f"<h2>Examples</h2><p>Spans underlined; on the tokens the fusion acted on, the "
          "gate g (fused = g·text + (1−g)·audio): blue keeps the text, red takes the audio. "
          "Examples where audio changed the answer come first.</p>"
          f"{filters}<div id='examples'>{''.join(example_html(e) for e in examples)}</div>"
          f"<script>{_JS}</script></body></html>")


def write(workdir: str, text_only: str = "") -> str:
  """Writes `<workdir>/report.html` (atomically); returns its path."""
  path = os.path.join(workdir, REPORT)
  files.write_text(path, render(collect(os.path.abspath(workdir), text_only)))
  return path


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m axk.report",
                                   description="Rebuild a run's report.html.")
  parser.add_argument("workdir", help="a finished AudioBERT or ITH run's workdir")
  parser.add_argument("--text_only", default="", help="workdir of a text-only (no_audio) run "
                      "to show beside it")
  args = parser.parse_args(argv)
  try:
    print(write(args.workdir, args.text_only))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  return 0


if __name__ == "__main__":
  sys.exit(main())
