"""The demo as a visitor meets it: only the runs given at launch answer, only the clips of
answers are served, several requests run at once, and the bold answer is the one over the
options when options are given.

The server tests start `python -m axk.demo` on the session's ITH smoke run (conftest.py),
bound to 127.0.0.1 on a free port, and talk to it over HTTP as any client would: Gradio's
API (`/gradio_api/call/predict`) and its file route (`/gradio_api/file=`).
"""

import hashlib
import html
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from axk import demo
from axk import predict

ROOT = pathlib.Path(__file__).resolve().parents[1]


# -- the handler, without a server ---------------------------------------------------------------
def test_demo_refuses_a_run_outside_its_list_without_touching_it(tmp_path, monkeypatch):
  run, other = str(tmp_path / "run"), str(tmp_path / "other")

  def no_loading(model, **kwargs):
    raise AssertionError(f"a request loaded {model}")
  monkeypatch.setattr(predict, "Predictor", no_loading)
  page = demo.Demo(demo.Runs(run, [other]), demo.Clips(str(tmp_path / "clips")))
  sentence = "Rattle is the sound a [MASK] makes."
  for model in ("/etc", str(tmp_path), run + "/", os.path.join(run, "..", "run"),
                os.path.join(run, "animal", "export"), "", "~"):
    out = page.respond(model, sentence, "auto", "")
    text = html.unescape(re.sub("<[^>]+>", "", out[0]))
    assert text == "That run is not one this demo serves; choose one from the list.", model
    assert out[2] == "" and out[3] == ""  # No answer, no gate.
    assert page.refusal(model, sentence, "auto", "") == text
  # A bad sentence of an allowed run is refused the same way, before the run loads.
  assert "has no [MASK]" in page.refusal(run, "No mask here.", "auto", "")
  assert not page.runs._predictors  # pylint: disable=protected-access


def test_demo_says_a_listed_folder_is_not_a_run(tmp_path):
  not_a_run = tmp_path / "not_a_run"
  not_a_run.mkdir()
  page = demo.Demo(demo.Runs(str(not_a_run)), demo.Clips(str(tmp_path / "clips")))
  out = page.respond(str(not_a_run), "Rattle is the sound a [MASK] makes.", "auto", "")
  assert "not a masked-word run" in out[0] and out[2] == ""


def test_demo_says_who_reaches_it_when_it_leaves_this_machine():
  runs = demo.Runs("workdirs/ith", ["workdirs/audiobert"])
  assert demo.reach(runs, "127.0.0.1", 7860, share=False) == ""
  for host, share, who in (("0.0.0.0", False, "anyone who reaches 0.0.0.0:7860"),
                           ("127.0.0.1", True, "anyone with the public gradio.live link")):
    line = demo.reach(runs, host, 7860, share=share)
    assert "\n" not in line and who in line, line
    assert "workdirs/ith, workdirs/audiobert" in line and "clips of those answers" in line


def test_demo_bold_answer_is_the_one_over_the_options():
  def answer(free, options):
    return {"predicted": free, "top": [{"answer": free, "probability": 0.5}],
            "options": {"predicted": options[0],
                        "probabilities": {o: 1 / len(options) for o in options}}}
  record = {"task": "animal", "task_inferred": True, "audio_changed": False,
            "answer": answer("cat", ["owl", "dog"]),
            "answer_without_audio": answer("cat", ["dog", "owl"])}
  page = demo.answer_html(record)
  assert _bold(page) == ["owl", "dog"]
  assert page.count("(free answer: cat)") == 2
  # What the page calls a change is a change of the bold answers.
  assert "audio changed the answer" in page


# -- a server ------------------------------------------------------------------------------------
def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _bold(answer_html: str) -> list[str]:
  return [html.unescape(b) for b in re.findall(r"class='axk-predicted'>([^<]*)<", answer_html)]


def _text(fragment: str) -> str:
  return html.unescape(re.sub("<[^>]+>", "", fragment))


class _Server:
  """`python -m axk.demo` on a free port of 127.0.0.1, driven through Gradio's HTTP API."""

  def __init__(self, run: pathlib.Path, *flags: str):
    self.run = str(run)
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    self.process = subprocess.Popen(
        [sys.executable, "-m", "axk.demo", f"--model={run}", f"--port={self.port}", *flags],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while True:
      assert self.process.poll() is None, self.process.stdout.read()[-3000:]
      try:
        urllib.request.urlopen(self.url, timeout=5).close()
        break
      except OSError:
        assert time.time() < deadline, "the demo did not start"
        time.sleep(1)

  def call(self, model: str, sentence: str, task: str = "auto", options: str = ""):
    """(event, data) of `/predict`: ("complete", outputs) or ("error", message)."""
    request = urllib.request.Request(
        f"{self.url}/gradio_api/call/predict",
        json.dumps({"data": [model, sentence, task, options]}).encode(),
        {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
      event = json.load(r)["event_id"]
    with urllib.request.urlopen(f"{self.url}/gradio_api/call/predict/{event}",
                                timeout=900) as r:
      lines = r.read().decode().splitlines()
    kind = [x for x in lines if x.startswith("event:")][-1].split(":", 1)[1].strip()
    return kind, json.loads([x for x in lines if x.startswith("data:")][-1][5:])

  def answer(self, sentence: str, options: str = "") -> list:
    kind, out = self.call(self.run, sentence, options=options)
    assert kind == "complete" and out[0] == "", (kind, out)
    return out

  def status(self, path: str) -> int:
    """The HTTP status of GET `path` (sent as written, `..` included)."""
    try:
      with urllib.request.urlopen(self.url + path, timeout=60) as r:
        return r.status
    except urllib.error.HTTPError as e:
      return e.code

  def close(self):
    self.process.terminate()
    self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(ith_smoke):
  s = _Server(ith_smoke, "--concurrency=4")
  yield s
  s.close()


def _listening_on(port: int) -> set[str]:
  """The addresses (hex, as /proc/net/tcp writes them) listening on `port`."""
  out = set()
  for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    if os.path.exists(table):
      with open(table, encoding="ascii") as f:
        for row in f.read().splitlines()[1:]:
          local, state = row.split()[1], row.split()[3]
          address, at = local.split(":")
          if int(at, 16) == port and state == "0A":  # 0A: LISTEN.
            out.add(address)
  return out


def _clip_sentence(ith_smoke) -> str:
  """A sentence whose detected span has accepted audio (test_use.py picks it)."""
  sys.path.insert(0, str(ROOT / "tests"))
  from test_use import _sentences  # pylint: disable=g-import-not-at-top
  return _sentences(ith_smoke, "features")[-1]


def _clips(out) -> list[dict]:
  return [p["value"] for p in out[4:] if isinstance(p, dict) and p.get("value")]


@pytest.mark.e2e
def test_demo_serves_the_clips_of_answers_and_no_file_of_the_run(server, ith_smoke):
  if os.path.exists("/proc/net/tcp"):  # This machine only, by default.
    assert _listening_on(server.port) == {"0100007F"}
  out = server.answer(_clip_sentence(ith_smoke))
  clips = _clips(out)
  assert clips, out
  # The clip of the answer: served, and exactly one of the run's clips.
  cached = {hashlib.sha1(p.read_bytes()).hexdigest()
            for p in (ith_smoke / "stages" / "features").rglob("*.flac")}
  for clip in clips:
    with urllib.request.urlopen(clip["url"], timeout=60) as r:
      assert r.status == 200
      assert hashlib.sha1(r.read()).hexdigest() in cached
  # No file of the run, whichever way it is named.
  run = ith_smoke
  targets = [run / "config.json", *run.glob("*/export/base/model.safetensors"),
             *run.glob("*/export/*.json"), run / "stages" / "span" / "export" /
             "model.safetensors", next((run / "stages" / "features").rglob("*.flac"))]
  assert len(targets) >= 5
  served_dir = os.path.dirname(clips[0]["path"])
  for target in targets:
    names = [str(target), os.path.relpath(target, ROOT),
             os.path.join(served_dir, os.path.relpath(target, served_dir)),  # ../ from a clip
             urllib.parse.quote(str(target), safe="")]
    for name in names:
      for route in ("/gradio_api/file=", "/gradio_api/file/"):
        code = server.status(route + urllib.parse.quote(name, safe="/%"))
        assert code in (403, 404), (route, name, code)
  # A run outside the list: refused by the page's own choices; the server keeps serving.
  kind, message = server.call("/etc", "Rattle is the sound a [MASK] makes.")
  assert kind == "error" and "not in the list of choices" in str(message)
  assert server.process.poll() is None


@pytest.mark.e2e
def test_demo_bold_answer_follows_the_options(server):
  sentence = "Hoot is the sound an [MASK] makes."
  free = server.answer(sentence)
  top = re.findall(r"<tr><td>([^<]*)</td>", free[2])
  assert _bold(free[2])[0] == top[0]
  options = [o for o in top[1:] if o != top[0]][:2]
  out = server.answer(sentence, "|".join(options))
  columns = out[2].split("<h4>")[1:]  # With audio, then without.
  assert len(columns) == 2
  for column in columns:
    bold = _bold(column)[0]
    assert bold in options
    scores = dict(re.findall(r"<tr><td>([^<]*)</td><td>([0-9.]+)</td>", column))
    assert bold == max(options, key=lambda o: float(scores[o]))
  # The free answer beside it: the one given without options.
  assert f"(free answer: {top[0]})" in _text(columns[0])


@pytest.mark.e2e
def test_demo_answers_20_concurrent_requests_as_it_answers_one(server, ith_smoke):
  sentences = [*predict.EXAMPLES, _clip_sentence(ith_smoke), "Meow is the sound a [MASK] makes."]
  start = time.time()
  reference = {s: server.answer(s) for s in sentences}  # One at a time (first loads).
  one_at_a_time = time.time() - start
  results = [None] * 20

  def ask(i):
    results[i] = server.answer(sentences[i % len(sentences)])
  threads = [threading.Thread(target=ask, args=(i,)) for i in range(20)]
  load = os.getloadavg()
  start = time.time()
  for t in threads:
    t.start()
  # The page's first step answers a bad sentence outside the queue, amid the model work.
  time.sleep(0.5)
  request = urllib.request.Request(
      f"{server.url}/gradio_api/run/show_refusal",
      json.dumps({"data": [server.run, "No mask here.", "auto", ""]}).encode(),
      {"Content-Type": "application/json"})
  with urllib.request.urlopen(request, timeout=60) as r:
    refusal = _text(json.load(r)["data"][0])
  pending = sum(t.is_alive() for t in threads)
  for t in threads:
    t.join()
  wall = time.time() - start
  print(f"20 concurrent requests: {wall:.1f} s (before them, the {len(sentences)} sentences "
        f"one at a time, first loads included: {one_at_a_time:.1f} s; load average {load})")
  assert "has no [MASK]" in refusal and pending, (refusal, pending)
  for i, out in enumerate(results):
    ref = reference[sentences[i % len(sentences)]]
    assert out[:4] == ref[:4], i  # Error, spans, answer, gate: as answered alone.
    assert [c["orig_name"] for c in _clips(out)] == [c["orig_name"] for c in _clips(ref)]
