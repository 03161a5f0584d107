r"""`report.html`: one self-contained page per AudioBERT/ITH run, opened from disk.

    python -m axk.report WORKDIR            # rebuilds WORKDIR/report.html from its files

The run writes it at its end (`axk.runs.masked_word.run`); this command rebuilds it from a
finished workdir. Nothing is fetched when the page opens: CSS and script are inline, plots
are matplotlib SVG inline, and the clips are relative links into the run's feature cache.

The page: the results table beside the majority baseline, the same model with its audio
removed, a text-only run when given (`--text_only=WORKDIR` of a `no_audio` run) and the
published numbers (the tasks' `published`); a legend of the protocols (from the tasks'
specs) and of the page's colours; training curves (loss, dev accuracy from `metrics.jsonl`,
the final evaluation after training as a star at the last step); accuracy by split; an
example browser (sentence with its spans, gold and predicted answers with and without
audio, right/wrong by each protocol, a player and the CLAP score per span clip, the gate per
token) with filters, examples where audio changed the answer first, then by id (numbers by
value), `PAGE_SIZE` a page: the examples travel as JSON in the page, the filters select
among all of them, and the script puts only the current page's rows into the document.

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
import re
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
PAGE_SIZE = 50  # Examples per page of the example browser.


# -- reading a workdir ---------------------------------------------------------------------------
def _read_jsonl(path: str) -> list[dict]:
  try:
    with open(path, encoding="utf-8") as f:
      return [json.loads(line) for line in f if line.strip()]
  except OSError:
    return []


def sub_runs(workdir: str) -> list[str]:
  """The folders holding one trained model each: `<workdir>/<task>/` or the workdir (their
`seed_<first seed>/` with several seeds)."""
  config = files.read_json(os.path.join(workdir, "config.json"), {})
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
  config = files.read_json(os.path.join(workdir, "config.json"), {})
  if "name" not in config.get("model", {}):
    raise ValueError(f"{workdir}: not a masked-word run (no config.json naming its model).")
  plugins.load(config.get("plugins", ()))  # Tasks and methods the run registered.
  results = files.read_json(os.path.join(workdir, "results.json"))
  if results is None:
    raise ValueError(f"{workdir}: no results.json; the run has not finished.")
  resolved = config.get("resolved", {})
  features_dir = resolved.get("features_dir", "")
  clip_files = Clips(features_dir)
  examples, curves, selections = [], {}, {}
  for sub in sub_runs(workdir):
    name = os.path.relpath(sub, workdir)
    curves[name] = _read_jsonl(os.path.join(sub, "metrics.jsonl"))
    selections[name] = (files.read_json(os.path.join(sub, "results.json"), {}) or {}).get(
        "selection", {})
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
  text_results = files.read_json(os.path.join(text_only, "results.json")) if text_only else None
  return {"workdir": workdir, "config": config, "results": results, "curves": curves,
          "selections": selections, "examples": examples, "text_only": text_results}


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


def natural_key(text: str) -> tuple:
  """Sort key of `text` that orders its runs of digits by number: "animal/dev/2" before
  "animal/dev/10"."""
  parts = re.split(r"([0-9]+)", text)
  return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


_DEV_METRICS = ("/dev/accuracy", "/dev/accuracy_candidates")


def curve_series(rows: Sequence[Mapping]) -> dict:
  """What the training plots show of one model's `metrics.jsonl` rows: `loss` [(step,
  value)], `dev` {"<task>/dev/<metric>": [(step, value)]} of the evaluations during training,
  and `final` {"<task>/dev/<metric>": (step, value)}: the evaluation after training (logged
  as `final/...` at the last step), of the parameters the results come from."""
  loss = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
  dev: dict[str, list] = {}
  final: dict[str, tuple] = {}
  for r in rows:
    for key, value in r.items():
      if not key.endswith(_DEV_METRICS):
        continue
      if key.startswith("final/"):
        final[key[len("final/"):]] = (r["step"], value)
      else:
        dev.setdefault(key, []).append((r["step"], value))
  return {"loss": loss, "dev": dict(sorted(dev.items())), "final": dict(sorted(final.items()))}


def plots(data: Mapping) -> dict[str, str]:
  """The inline SVG plots: training curves, accuracy by split."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  with plt.rc_context({"svg.fonttype": "none"}):  # Text as text: searchable, smaller.
    return _plots(data, plt)


def _plots(data: Mapping, plt) -> dict[str, str]:
  out = {}
  fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
  for name, rows in data["curves"].items():
    label = "" if name == "." else f"{name}: "
    series = curve_series(rows)
    # A task's model (`<task>/`) needs no prefix on its own task's metrics.
    named = lambda key: key if key.startswith(f"{name}/") else f"{label}{key}"
    if series["loss"]:
      loss_ax.plot(*zip(*series["loss"]), marker=".", label=f"{label}train loss")
    chosen = data.get("selections", {}).get(name, {}).get("step")
    for key in sorted({*series["dev"], *series["final"]}):
      colour = None
      if series["dev"].get(key):
        (line,) = acc_ax.plot(*zip(*series["dev"][key]), marker="o", label=named(key))
        colour = line.get_color()
      if key in series["final"]:
        step, value = series["final"][key]
        of = ("" if chosen is None or chosen == step else f", parameters of step {chosen}")
        acc_ax.plot([step], [value], marker="*", markersize=13, linestyle="none",
                    color=colour, markeredgecolor="black",
                    label=f"{named(key)}: final (step {step}{of})")
        acc_ax.annotate(f"{value:.1f}", (step, value), textcoords="offset points",
                        xytext=(6, 4), fontsize=7)
  loss_ax.set(title="training loss", xlabel="step")
  acc_ax.set(title="dev accuracy (%); ★ the final evaluation", xlabel="step")
  if loss_ax.get_legend_handles_labels()[0]:
    loss_ax.legend(fontsize=7)
  acc_ax.margins(y=0.12)  # Room for the final values.
  if acc_ax.get_legend_handles_labels()[0]:  # Beside the plot: it holds a line per metric.
    acc_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
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


def _mark(correct, protocol: str) -> str:
  """A right/wrong badge of one protocol's answer (colours in the page's legend)."""
  if correct is None:
    return ""
  ok = bool(correct)
  return (f"<span class='mark {'right' if ok else 'wrong'}' title='{protocol}: "
          f"{'right' if ok else 'wrong'}'>{'✓' if ok else '✗'} {protocol}</span>")


def example_html(e: Mapping) -> str:
  changed = ("predicted_without_audio" in e and e["predicted_without_audio"] != e["predicted"])
  has_audio = any(s["has_audio"] for s in e["spans"])
  attrs = (f"data-correct='{int(bool(e['correct']))}' data-audio='{int(has_audio)}' "
           f"data-task='{html.escape(e['task'])}' data-split='{html.escape(e['split'])}' "
           f"data-changed='{int(changed)}' data-id='{html.escape(e['id'])}'")
  sentence = e.get("sentence") or ""
  parts = [f"<div class='example {'right' if e['correct'] else 'wrong'}' {attrs}>",
           f"<div class='id'>{html.escape(e['id'])}"
           f"{' · audio changed the answer' if changed else ''}</div>",
           f"<div class='sentence'>{sentence_html(sentence, e['spans'], e.get('gate'))}</div>",
           f"<div>gold <b>{html.escape(str(e['answer']))}</b> · predicted "
           f"<b>{html.escape(str(e['predicted']))}</b> {_mark(e['correct'], 'paper')}"]
  if "predicted_without_audio" in e:
    parts.append(f" · without audio <b>{html.escape(str(e['predicted_without_audio']))}</b>")
  if e.get("predicted_candidate") is not None:
    parts.append(f" · best option <b>{html.escape(str(e['predicted_candidate']))}</b> "
                 f"{_mark(e.get('correct_candidate'), 'leak-free')}")
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


def legend_html(task_names: Sequence[str]) -> str:
  """How to read the page: each protocol (from the tasks' specs) and each colour."""
  known = [tasks.get(t) for t in task_names if t in tasks.names()]
  rows = []
  for protocol in tasks.PROTOCOLS:
    notes = "".join(f"<li><i>{html.escape(t.title)}</i>: {html.escape(t.protocol_note(protocol))}"
                    "</li>" for t in known if protocol in t.protocols)
    badge = "paper" if protocol == "paper" else "leak-free"
    rows.append(f"<tr><td><code>{tasks.PROTOCOL_METRICS[protocol]}</code></td>"
                f"<td>{html.escape(tasks.PROTOCOL_TITLES[protocol])} (badge "
                f"<span class='mark right'>✓ {badge}</span>)<ul>{notes}</ul></td></tr>")
  colours = [
      ("<span class='swatch' style='border-left:5px solid #2a2'></span>",
       "an example the model answers right by the papers' protocol (<code>accuracy</code>)"),
      ("<span class='swatch' style='border-left:5px solid #c22'></span>",
       "an example it answers wrong by the papers' protocol"),
      ("<span class='mark right'>✓ paper</span> <span class='mark wrong'>✗ leak-free</span>",
       "right (green) or wrong (red) by each protocol: <i>predicted</i> is the papers' "
       "answer, <i>best option</i> the leak-free one"),
      ("<span class='span'>underlined</span>", "an auditory span the span detector found"),
      (f"<span style='background:{_gate_colour(1.0)}'>text</span> "
       f"<span style='background:{_gate_colour(0.5)}'>half</span> "
       f"<span style='background:{_gate_colour(0.0)}'>audio</span>",
       "a token the fusion acted on, shaded by its gate g (fused = g·text + (1−g)·audio): "
       "blue keeps the text, red takes the audio"),
  ]
  colour_rows = "".join(f"<tr><td>{a}</td><td>{b}</td></tr>" for a, b in colours)
  return ("<div id='legend'><h2>How to read this page</h2>"
          "<table class='legend'><tr><th>metric</th><th>protocol</th></tr>"
          + "".join(rows) + "</table>"
          "<p><code>majority</code>: always giving the split's most frequent answer. "
          "<i>audio removed</i>: the same model with every span's audio taken away. "
          "<code>*_unseen</code>: over the sentences the task's train split does not hold. "
          "Published: the papers' BERT-base numbers, by the papers' protocol.</p>"
          "<table class='legend'><tr><th>mark</th><th>meaning</th></tr>" + colour_rows
          + "</table></div>")


_CSS = """
body{font-family:sans-serif;margin:1.5em;max-width:1200px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#eee}.span{border-bottom:2px solid #d80;background:#fff3d6}
.example{border:1px solid #ddd;border-left:5px solid #2a2;margin:6px 0;padding:6px}
.example.wrong{border-left-color:#c22}.id{color:#777;font-size:12px}.clip{font-size:13px}
.sentence{font-size:16px;margin:3px 0}.gates span{padding:1px 3px;margin-right:2px}
audio{height:28px;vertical-align:middle}#filters select{margin-right:1em}
.mark{font-size:11px;padding:0 4px;border-radius:3px;color:#fff;white-space:nowrap}
.mark.right{background:#2a2}.mark.wrong{background:#c22}
.legend ul{margin:2px 0;padding-left:1.2em}.legend td{vertical-align:top}
.swatch{display:inline-block;width:14px;height:14px;border:1px solid #ddd}
#legend table{margin-bottom:.6em}.pager{margin:6px 0}.pager button{margin:0 .4em}
"""
_JS = """
const rows = JSON.parse(document.getElementById('example-data').textContent);
const pageSize = %(page_size)d;
let matching = rows, page = 0;
function show(){
  const pages = Math.max(1, Math.ceil(matching.length / pageSize));
  page = Math.min(Math.max(page, 0), pages - 1);
  const first = page * pageSize, last = Math.min(first + pageSize, matching.length);
  document.getElementById('examples').innerHTML =
      matching.slice(first, last).map(r => r.html).join('');
  document.getElementById('shown').textContent = matching.length;
  for (const p of document.querySelectorAll('.pager')) {
    p.querySelector('.range').textContent = matching.length ?
        (first + 1) + '–' + last + ' of ' + matching.length : 'none';
    p.querySelector('.page').textContent = 'page ' + (page + 1) + ' of ' + pages;
    p.querySelector('.prev').disabled = page === 0;
    p.querySelector('.next').disabled = page >= pages - 1;
  }
}
function applyFilters(){
  const v = id => document.getElementById(id).value;
  matching = rows.filter(r =>
      (v('f-correct') === '' || r.correct === v('f-correct')) &&
      (v('f-audio') === '' || r.audio === v('f-audio')) &&
      (v('f-task') === '' || r.task === v('f-task')) &&
      (v('f-split') === '' || r.split === v('f-split')));
  page = 0;
  show();
}
document.querySelectorAll('#filters select').forEach(s => s.onchange = applyFilters);
document.querySelectorAll('.pager .prev').forEach(b => b.onclick = () => {
  page -= 1; show(); });
document.querySelectorAll('.pager .next').forEach(b => b.onclick = () => {
  page += 1; show(); });
applyFilters();
"""


def _select(name: str, label: str, options: Sequence[tuple[str, str]]) -> str:
  opts = "".join(f"<option value='{html.escape(v)}'>{html.escape(t)}</option>"
                 for v, t in [("", "all"), *options])
  return f"<label>{label} <select id='f-{name}'>{opts}</select></label>"


def _pager(where: str, n: int) -> str:
  """Page controls, as the script leaves them on the first page of `n` examples."""
  pages = max(1, -(-n // PAGE_SIZE))
  span = f"1–{min(n, PAGE_SIZE)} of {n}" if n else "none"
  return (f"<div class='pager' id='pager-{where}'><button class='prev' disabled>‹ previous"
          f"</button><span class='page'>page 1 of {pages}</span><button class='next'"
          f"{' disabled' if pages == 1 else ''}>next ›</button> examples "
          f"<span class='range'>{span}</span></div>")


def sorted_examples(examples: Sequence[Mapping]) -> list:
  """The example browser's order: examples where audio changed the answer first, then by
  task, split and id (numbers in ids by value, `natural_key`)."""
  return sorted(examples, key=lambda e: (
      e.get("predicted_without_audio", e["predicted"]) == e["predicted"],
      e["task"], e["split"], natural_key(e["id"])))


def _example_data(examples: Sequence[Mapping]) -> str:
  """The examples as JSON for the page's script: the filters' fields and each one's HTML
  (every `<` escaped, so no string ends or comments out the script element)."""
  rows = [{"correct": str(int(bool(e["correct"]))),
           "audio": str(int(any(s["has_audio"] for s in e["spans"]))),
           "task": e["task"], "split": e["split"], "html": example_html(e)}
          for e in examples]
  return json.dumps(rows, ensure_ascii=False).replace("<", "\\u003c")


def render(data: Mapping) -> str:
  """The page (a string), from `collect`'s data."""
  config = data["config"]
  figures = plots(data)
  examples = sorted_examples(data["examples"])
  tasks_shown = sorted({e["task"] for e in examples})
  splits = sorted({e["split"] for e in examples})
  filters = ("<div id='filters'>"
             + _select("correct", "answer (papers' protocol)", [("1", "right"), ("0", "wrong")])
             + _select("audio", "audio", [("1", "with audio"), ("0", "without audio")])
             + _select("task", "task", [(t, t) for t in tasks_shown])
             + _select("split", "split", [(s, s) for s in splits])
             + f" <span id='shown'>{len(examples)}</span> shown</div>")
  # The first page is in the document; the script pages through the rest.
  first_page = "".join(example_html(e) for e in examples[:PAGE_SIZE])
  title = html.escape(f"{config.get('name') or config['model']['name']}: {data['workdir']}")
  result_tasks = [t for t, _ in _splits(data["results"])]
  return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
          f"<title>{title}</title><style>{_CSS}</style></head><body>"
          f"<h1>{title}</h1>"
          f"<h2>Results</h2>{results_table(data)}"
          f"{legend_html(list(dict.fromkeys(result_tasks + tasks_shown)))}"
          f"<h2>Training</h2><div class='plot' id='plot-curves'>{figures['curves']}</div>"
          f"<h2>Accuracy by split</h2><div class='plot' id='plot-splits'>{figures['splits']}"
          "</div>"
          f"<h2>Examples</h2><p>Examples where audio changed the answer come first; "
          f"{PAGE_SIZE} a page, the filters apply to every page. Marks and colours: "
          "<a href='#legend'>How to read this page</a>.</p>"
          f"{filters}{_pager('top', len(examples))}<div id='examples'>{first_page}</div>"
          f"{_pager('bottom', len(examples))}"
          f"<script type='application/json' id='example-data'>{_example_data(examples)}"
          f"</script><script>{_JS % {'page_size': PAGE_SIZE}}</script></body></html>")


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
