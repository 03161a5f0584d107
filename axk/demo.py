r"""A web demo of trained AudioBERT or ITH runs (Gradio), on top of `axk.predict`.

    python -m axk.demo --model=workdirs/ith [--allow_model=workdirs/audiobert ...]
        [--port=7860] [--concurrency=4] [--host=0.0.0.0] [--share]

A sentence box (with example sentences), the task (inferred by default), optional animal
options and the run, chosen from the runs given at launch; the page shows the detected spans
highlighted, a player per span with its CLAP score (what the model imagined or retrieved),
the answer with its probabilities next to the answer without audio (over the options when
they are given, the free answer beside it), and the gate per token (ITH: the fusion gate;
AudioBERT: the LoRA gate). A bad sentence (empty, no `[MASK]`, two `[MASK]`s), a run that is
not one of the launch's, or a folder that is not a run is shown as one sentence, and the
server keeps serving.

What a visitor reaches: the answers of the runs given at launch (`--model`, `--allow_model`,
each loaded once) and the clips of those answers, copied into a temporary folder that is the
only one the server reads files from; the runs' folders are refused. The server listens on
127.0.0.1 unless `--host` or `--share` says otherwise, and then says so before it starts.
Requests run `--concurrency` at a time (a queue shows the position of the others); a bad
sentence is answered before it queues behind model work.

A Hugging Face Space runs the same file: `app_file: axk/demo.py` in the Space's README, the
run's workdir in the repository and `AXK_MODEL=<that folder>` in the Space's variables (the
Space sets `GRADIO_SERVER_NAME`, the default of `--host`).
"""

from __future__ import annotations

import argparse
import atexit
import functools
import hashlib
import html
import logging
import os
import shutil
import sys
import tempfile
import threading
from typing import Sequence

if __package__ in (None, ""):  # Run as a file (a Space's app_file): import axk from the repo.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from axk import predict  # pylint: disable=g-import-not-at-top,wrong-import-position
from axk import tasks  # pylint: disable=g-import-not-at-top,wrong-import-position
from axk.utils import jax_cache  # pylint: disable=g-import-not-at-top,wrong-import-position

MAX_PLAYERS = 4  # Audio players on the page (spans beyond them are listed, not played).
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Runs:
  """The runs a demo answers with: `--model` first, then the `--allow_model` list; nothing
  else. A name is one of the strings given at launch (the page's choices), compared as
  given, so a visitor's string never reaches the file system. Each run loads once."""

  def __init__(self, model: str, allowed: Sequence[str] = ()):
    self.names = tuple(dict.fromkeys(n for n in (model, *allowed) if n))
    if not self.names:
      raise predict.ModelError("no run to serve: give --model (or $AXK_MODEL).")
    self._predictors: dict[str, predict.Predictor] = {}
    self._lock = threading.Lock()

  def check(self, name: str) -> str:
    """`name`, or InputError when it is not one of the launch's runs."""
    if name not in self.names:
      raise predict.InputError("That run is not one this demo serves; choose one from the "
                               "list.")
    return name

  def get(self, name: str) -> predict.Predictor:
    """The predictor of run `name` (ModelError when its folder is not a run)."""
    self.check(name)
    with self._lock:
      if name not in self._predictors:
        self._predictors[name] = predict.Predictor(name)
      return self._predictors[name]

  def folders(self) -> list[str]:
    """Every folder the runs read (run, features, database, span detector): none of them
    may be served."""
    out = []
    for name in self.names:
      try:
        p = self.get(name)
      except predict.ModelError:
        out.append(os.path.abspath(os.path.expanduser(name)))
        continue
      out.append(p.run_dir)
      if p.detector_dir:  # The span detector's run: `<its workdir>/export`.
        out.append(os.path.dirname(p.detector_dir))
      if p.features_dir:
        out.append(os.path.dirname(p.features_dir))
        db = p.manifest.get("database", {}).get("dir")
        if db:
          out.append(os.path.abspath(db))
    return list(dict.fromkeys(out))


class Clips:
  """Copies of the clips of answers, in a folder of their own: the only folder the page
  serves files from. A copy, not a link: Gradio resolves links, and the original lies in a
  run's folder."""

  def __init__(self, folder: str = ""):
    if not folder:
      folder = tempfile.mkdtemp(prefix="axk-demo-clips-")
      atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.makedirs(folder, exist_ok=True)
    self.folder = folder

  def serve(self, path: str) -> str:
    """The copy of clip `path` that the page may play (made once per clip)."""
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:16]
    out = os.path.join(self.folder, f"{digest}{os.path.splitext(path)[1]}")
    if not os.path.isfile(out):
      part = f"{out}.{os.getpid()}.{threading.get_ident()}.part"
      shutil.copyfile(path, part)
      os.replace(part, out)  # Concurrent requests for one clip: whole files only.
    return out


def _gate_style(g: float) -> str:
  g = min(max(g, 0.0), 1.0)
  return f"background:rgba({int(220 * (1 - g))},60,{int(220 * g)},0.4)"


def shown_answer(answer: dict) -> str:
  """The answer the page shows in bold: over the given options when there are some."""
  return answer["options"]["predicted"] if "options" in answer else answer["predicted"]


def answer_html(record: dict) -> str:
  """The answer with probabilities beside the answer without audio; with options, the
  answer over them in bold and the free answer beside it."""
  def rows(a: dict) -> str:
    pairs = (a["probabilities"].items() if "probabilities" in a else
             [(t["answer"], t["probability"]) for t in a["top"]])
    return "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in pairs)

  def column(a: dict) -> str:
    head = f"<b class='axk-predicted'>{html.escape(shown_answer(a))}</b>"
    if "options" in a:
      head += (f" <span class='axk-free'>(free answer: {html.escape(a['predicted'])})</span>")
      body = (rows(a["options"]) + "<tr><th colspan=2>free answer</th></tr>" + rows(a))
    else:
      body = rows(a)
    return f"<div class='axk-answer-col'>{head}<table>{body}</table></div>"

  with_audio, without = record["answer"], record["answer_without_audio"]
  changed = ("audio changed the answer" if shown_answer(with_audio) != shown_answer(without)
             else "audio did not change the answer")
  return (f"<div id='axk-answer'><p>task: {record['task']}"
          f"{' (inferred)' if record['task_inferred'] else ''} · {changed}</p>"
          "<div style='display:flex;gap:3em'>"
          f"<div><h4>with audio</h4>{column(with_audio)}</div>"
          f"<div><h4>without audio</h4>{column(without)}</div>"
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


class Demo:
  """The page over `runs` (`Runs`), serving the clips of its answers from `clips`."""

  def __init__(self, runs: Runs, clips: Clips | None = None):
    self.runs = runs
    self.clips = clips or Clips()

  def query(self, model: str, sentence: str, task: str, options: str) -> predict.Query:
    """The request as a query of an allowed run, or InputError; touches no model."""
    self.runs.check(model)
    opts = tuple(o for o in (predict.normalise(x) for x in (options or "").split("|")) if o)
    return predict.Query(predict.check_sentence(sentence or ""),
                         "" if task == "auto" else task, opts)

  def refusal(self, model: str, sentence: str, task: str, options: str) -> str:
    """The sentence refusing a request before any model work ("" when it may go on)."""
    try:
      self.query(model, sentence, task, options)
    except predict.InputError as e:
      return str(e)
    return ""

  def _outputs(self, error: str = "", spans=None, answer: str = "", gate: str = "",
               players=()) -> list:
    import gradio as gr  # pylint: disable=g-import-not-at-top
    hidden = gr.update(visible=False, value=None)
    spans = (gr.update(value=None, visible=False) if spans is None else
             gr.update(value=spans, visible=True))
    return [_error(error) if error else "", spans, answer, gate,
            *players, *[hidden] * (MAX_PLAYERS - len(players))]

  def show_refusal(self, model: str, sentence: str, task: str, options: str) -> list:
    """The page's outputs for a refused request (at once, outside the queue); nothing
    changes for one that may go on."""
    import gradio as gr  # pylint: disable=g-import-not-at-top
    error = self.refusal(model, sentence, task, options)
    return self._outputs(error) if error else [gr.skip()] * (4 + MAX_PLAYERS)

  def stop_if_refused(self, model: str, sentence: str, task: str, options: str) -> None:
    """Ends the page's event chain for a refused request (shown already), so it never
    queues behind model work."""
    import gradio as gr  # pylint: disable=g-import-not-at-top
    if self.refusal(model, sentence, task, options):
      raise gr.Error("refused", visible=False, print_exception=False)

  def respond(self, model: str, sentence: str, task: str, options: str) -> list:
    """The page's outputs for one sentence; errors become one sentence in the page."""
    import gradio as gr  # pylint: disable=g-import-not-at-top
    try:
      query = self.query(model, sentence, task, options)  # Before any model work.
      record = self.runs.get(model)([query])[0]
    except (predict.InputError, predict.ModelError) as e:
      return self._outputs(str(e))
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("demo: prediction failed")
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      return self._outputs(f"The prediction failed: {first}")
    players = []
    for s in record["spans"][:MAX_PLAYERS]:
      score = "" if s["clap_score"] is None else f" · CLAP {s['clap_score']:+.3f}"
      label = f"“{s['text']}” · {'accepted' if s['accepted'] else 'no audio'}{score}"
      players.append(gr.update(visible=True, label=label,
                               value=self.clips.serve(s["audio"]) if s["audio"] else None))
    spans = ("" if record["spans"] else "<p id='axk-nospan'>No auditory span detected: the "
             "model answers from the text alone.</p>")
    # A sentence too long for the detector or the model, cut around its [MASK].
    spans += "".join(f"<p class='axk-warning'>{html.escape(w)}</p>"
                     for w in record.get("warnings", ()))
    return self._outputs(spans=spans_value(record), answer=spans + answer_html(record),
                         gate=gate_html(record), players=players)

  def build(self):
    """The Gradio app."""
    import gradio as gr  # pylint: disable=g-import-not-at-top
    with gr.Blocks(title="axk: what the model imagines") as app:
      gr.Markdown("## axk: what an AudioBERT / ITH model hears\nWrite a sentence with one "
                  "`[MASK]`. The span detector finds the auditory spans, the run's feature "
                  "source generates (ITH) or retrieves (AudioBERT) their audio, and the model "
                  "answers with and without it.")
      with gr.Row():
        sentence = gr.Textbox(label="sentence", lines=2, elem_id="axk-sentence", scale=4)
        with gr.Column(scale=1):
          task = gr.Dropdown(["auto", *tasks.names()], value="auto", label="task")
          options = gr.Textbox(label="animal options (a|b|c|d, optional)")
      model = gr.Dropdown(list(self.runs.names), value=self.runs.names[0], label="run",
                          elem_id="axk-model", interactive=len(self.runs.names) > 1)
      button = gr.Button("Predict", variant="primary", elem_id="axk-submit")
      gr.Examples([[e] for e in predict.EXAMPLES], inputs=[sentence])
      error = gr.HTML(elem_id="axk-error-box")
      spans = gr.HighlightedText(label="detected spans", elem_id="axk-spans",
                                 color_map={"span (audio)": "orange",
                                            "span (no audio)": "gray"})
      players = [gr.Audio(visible=False, type="filepath", interactive=False,
                          elem_id=f"axk-audio-{i}") for i in range(MAX_PLAYERS)]
      answer = gr.HTML(elem_id="axk-answer-box")
      gate = gr.HTML(elem_id="axk-gate-box")
      outputs = [error, spans, answer, gate, *players]
      inputs = [model, sentence, task, options]
      # A refused request is answered outside the queue and ends there; the rest queue
      # for the model (`respond`, also the API's `/predict`, which refuses the same way).
      triggers = [button.click, sentence.submit]
      quick = functools.partial(gr.on, triggers, inputs=inputs, queue=False,
                                api_visibility="private", show_progress="hidden")
      quick(self.show_refusal, outputs=outputs).success(
          self.stop_if_refused, inputs, None, queue=False, api_visibility="private",
          show_progress="hidden").success(self.respond, inputs, outputs, api_name="predict")
    return app

  def launch(self, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
             concurrency: int = 4, **kwargs):
    """Serves the page: `concurrency` requests at a time; files only from the clips'
    folder, every run folder refused."""
    # api_open=False: no direct POST skips the queue and its limit.
    app = self.build().queue(default_concurrency_limit=concurrency, api_open=False)
    return app.launch(server_name=host, server_port=port, share=share,
                      allowed_paths=[self.clips.folder], blocked_paths=self.runs.folders(),
                      ssr_mode=False, **kwargs)


def reach(runs: Runs, host: str, port: int, share: bool) -> str:
  """One line saying who reaches what ("" when only this machine does)."""
  who = []
  if host not in LOOPBACK and not host.startswith("127."):
    who.append(f"anyone who reaches {host}:{port}")
  if share:
    who.append("anyone with the public gradio.live link")
  if not who:
    return ""
  return (f"axk.demo: {' and '.join(who)} can ask {', '.join(runs.names)} for answers and play "
          "the clips of those answers; no other file of this machine is served.")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m axk.demo", description=__doc__.split(
      "\n\n")[0])
  parser.add_argument("--model", default=os.environ.get("AXK_MODEL", ""),
                      help="the run's workdir served by default (default: $AXK_MODEL)")
  parser.add_argument("--allow_model", action="append", default=[], metavar="WORKDIR",
                      help="another run a visitor may choose (repeat for more)")
  parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                      help="the address to listen on (default: 127.0.0.1, this machine only)")
  parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT",
                                                                     7860)))
  parser.add_argument("--concurrency", type=int, default=4,
                      help="requests answered at once (the others wait in the queue)")
  parser.add_argument("--share", action="store_true", help="a public gradio.live link")
  parser.add_argument("--jax_cache_dir", default="", help="JAX's compilation cache: \"\" the "
                      "user's (~/.cache/axk/jax), \"none\" off, or a folder")
  args = parser.parse_args(argv)
  jax_cache.enable(args.jax_cache_dir)
  if args.concurrency < 1:
    parser.error("--concurrency must be at least 1")
  try:
    runs = Runs(args.model, args.allow_model)
  except predict.ModelError as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  line = reach(runs, args.host, args.port, args.share)
  if line:
    print(line, flush=True)
  Demo(runs).launch(host=args.host, port=args.port, share=args.share,
                    concurrency=args.concurrency)
  return 0


if __name__ == "__main__":
  sys.exit(main())
