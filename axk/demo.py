r"""A web demo of a trained AudioBERT or ITH run (Gradio), on top of `axk.predict`.

    python -m axk.demo --model=workdirs/ith [--port=7860] [--share]

A sentence box (with example sentences), the task (inferred by default) and optional animal
options; the page shows the detected spans highlighted, a player per span with its CLAP score
(what the model imagined or retrieved), the answer with its probabilities next to the answer
without audio, and the gate per token (ITH: the fusion gate; AudioBERT: the LoRA gate). A bad
sentence (empty, no `[MASK]`, two `[MASK]`s) or a model folder that is not a run is shown as
one sentence, and the server keeps serving.

A Hugging Face Space runs the same file: `app_file: axk/demo.py` in the Space's README, the
run's workdir in the repository and `AXK_MODEL=<that folder>` in the Space's variables.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import sys

if __package__ in (None, ""):  # Run as a file (a Space's app_file): import axk from the repo.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from axk import predict  # pylint: disable=g-import-not-at-top,wrong-import-position
from axk import tasks  # pylint: disable=g-import-not-at-top,wrong-import-position

MAX_PLAYERS = 4  # Audio players on the page (spans beyond them are listed, not played).
_predictors: dict[str, predict.Predictor] = {}


def predictor(model: str) -> predict.Predictor:
  """The run `model`, loaded once per folder."""
  key = os.path.abspath(os.path.expanduser(model or ""))
  if key not in _predictors:
    _predictors[key] = predict.Predictor(model or ".")
  return _predictors[key]


def task_choices(model: str) -> tuple[str, ...]:
  """The tasks the run `model` trained (its registered specs' names), else every registered
  task when the folder is not a run (the page then says why at the first prediction)."""
  try:
    return tuple(predictor(model).exports)
  except predict.ModelError:
    return tasks.names()


def _gate_style(g: float) -> str:
  g = min(max(g, 0.0), 1.0)
  return f"background:rgba({int(220 * (1 - g))},60,{int(220 * g)},0.4)"


def answer_html(record: dict) -> str:
  """The answer with probabilities beside the answer without audio."""
  def column(a: dict) -> str:
    rows = (a["probabilities"].items() if "probabilities" in a else
            [(t["answer"], t["probability"]) for t in a["top"]])
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in rows)
    if "options" in a:
      body += "<tr><th colspan=2>over the options</th></tr>" + "".join(
          f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>"
          for k, v in a["options"]["probabilities"].items())
    return (f"<div class='axk-answer-col'><b class='axk-predicted'>{html.escape(a['predicted'])}"
            f"</b><table>{body}</table></div>")

  changed = "audio changed the answer" if record["audio_changed"] else \
      "audio did not change the answer"
  return (f"<div id='axk-answer'><p>task: {record['task']}"
          f"{' (inferred)' if record['task_inferred'] else ''} · {changed}</p>"
          "<div style='display:flex;gap:3em'>"
          f"<div><h4>with audio</h4>{column(record['answer'])}</div>"
          f"<div><h4>without audio</h4>{column(record['answer_without_audio'])}</div>"
          "</div></div>")


def gate_html(record: dict) -> str:
  """The tokens of the sentence, fused ones coloured by their gate (ITH), or the LoRA
  gate (AudioBERT)."""
  if record["lora_gate"] is not None:
    return (f"<div id='axk-gate'>LoRA gate: <b>{'on' if record['lora_gate'] else 'off'}</b> "
            "(on when a span has audio)</div>")
  cells = []
  for t in record["tokens"]:
    if t["gate"] is None:
      cells.append(f"<span class='axk-token'>{html.escape(t['token'])}</span>")
    else:
      cells.append(f"<span class='axk-token axk-fused' style='{_gate_style(t['gate'])}' "
                   f"title='gate {t['gate']:.3f}'>{html.escape(t['token'])}<sub>"
                   f"{t['gate']:.2f}</sub></span>")
  note = ("gate g per fused token (fused = g·text + (1−g)·audio): blue keeps the text, red "
          "takes the audio" if any(t["gate"] is not None for t in record["tokens"]) else
          "no span had accepted audio: the fusion did not act")
  return f"<div id='axk-gate'><p>{note}</p>{' '.join(cells)}</div>"


def spans_value(record: dict) -> list[tuple[str, str | None]]:
  """The sentence as (text, label) pieces for `gr.HighlightedText`."""
  s, out, at = record["sentence"], [], 0
  for span in record["spans"]:
    if span["start"] > at:
      out.append((s[at:span["start"]], None))
    out.append((s[span["start"]:span["end"]], "span (audio)" if span["accepted"] else
                "span (no audio)"))
    at = span["end"]
  if at < len(s):
    out.append((s[at:], None))
  return out


def _error(sentence: str) -> str:
  return (f"<div id='axk-error' style='color:#b00;font-weight:bold;padding:.5em'>"
          f"{html.escape(sentence)}</div>")


def respond(model: str, sentence: str, task: str, options: str):
  """The page's outputs for one sentence; errors become one sentence in the page."""
  import gradio as gr  # pylint: disable=g-import-not-at-top
  hidden = [gr.update(visible=False, value=None)] * MAX_PLAYERS
  try:
    p = predictor(model)
    opts = tuple(o for o in (predict.normalise(x) for x in (options or "").split("|")) if o)
    query = predict.Query(predict.check_sentence(sentence or ""), "" if task == "auto" else task,
                          opts)
    record = p([query])[0]
  except (predict.InputError, predict.ModelError) as e:
    return [_error(str(e)), gr.update(value=None, visible=False), "", ""] + hidden
  except Exception as e:  # pylint: disable=broad-except
    logging.exception("demo: prediction failed")
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return [_error(f"The prediction failed: {first}"), gr.update(value=None, visible=False), "",
            ""] + hidden
  players = []
  for s in record["spans"][:MAX_PLAYERS]:
    score = "" if s["clap_score"] is None else f" · CLAP {s['clap_score']:+.3f}"
    label = f"“{s['text']}” · {'accepted' if s['accepted'] else 'no audio'}{score}"
    players.append(gr.update(visible=True, value=s["audio"], label=label))
  players += hidden[len(players):]
  spans = ("" if record["spans"] else "<p id='axk-nospan'>No auditory span detected: the "
           "model answers from the text alone.</p>")
  return (["", gr.update(value=spans_value(record), visible=True),
           spans + answer_html(record), gate_html(record)] + players)


def build(model: str):
  """The Gradio app for run `model`."""
  import gradio as gr  # pylint: disable=g-import-not-at-top
  with gr.Blocks(title="axk: what the model imagines") as app:
    gr.Markdown("## axk: what an AudioBERT / ITH model hears\nWrite a sentence with one "
                "`[MASK]`. The span detector finds the auditory spans, the run's feature "
                "source generates (ITH) or retrieves (AudioBERT) their audio, and the model "
                "answers with and without it.")
    with gr.Row():
      sentence = gr.Textbox(label="sentence", lines=2, elem_id="axk-sentence", scale=4)
      with gr.Column(scale=1):
        task = gr.Dropdown(["auto", *task_choices(model)], value="auto", label="task")
        options = gr.Textbox(label="animal options (a|b|c|d, optional)")
    model_box = gr.Textbox(value=model, label="model (a run's workdir)", elem_id="axk-model")
    button = gr.Button("Predict", variant="primary", elem_id="axk-submit")
    gr.Examples([[e] for e in predict.EXAMPLES], inputs=[sentence])
    error = gr.HTML(elem_id="axk-error-box")
    spans = gr.HighlightedText(label="detected spans", elem_id="axk-spans",
                               color_map={"span (audio)": "orange", "span (no audio)": "gray"})
    players = [gr.Audio(visible=False, type="filepath", interactive=False,
                        elem_id=f"axk-audio-{i}") for i in range(MAX_PLAYERS)]
    answer = gr.HTML(elem_id="axk-answer-box")
    gate = gr.HTML(elem_id="axk-gate-box")
    outputs = [error, spans, answer, gate, *players]
    inputs = [model_box, sentence, task, options]
    button.click(respond, inputs, outputs)
    sentence.submit(respond, inputs, outputs)
  return app


def allowed_paths(model: str) -> list[str]:
  """Folders the page may serve clips from: the run's, its features', its database's."""
  try:
    p = predictor(model)
  except predict.ModelError:
    return []
  paths = [p.run_dir]
  if p.features_dir:
    paths.append(os.path.dirname(p.features_dir))
    db = p.manifest.get("database", {}).get("dir")
    if db:
      paths.append(db)
  return paths


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m axk.demo", description=__doc__.split(
      "\n\n")[0])
  parser.add_argument("--model", default=os.environ.get("AXK_MODEL", ""),
                      help="a run's workdir (default: $AXK_MODEL)")
  parser.add_argument("--host", default="127.0.0.1")
  parser.add_argument("--port", type=int, default=7860)
  parser.add_argument("--share", action="store_true", help="a public gradio.live link")
  args = parser.parse_args(argv)
  build(args.model).launch(server_name=args.host, server_port=args.port, share=args.share,
                           allowed_paths=allowed_paths(args.model), ssr_mode=False)
  return 0


if __name__ == "__main__":
  sys.exit(main())
