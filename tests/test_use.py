"""Using a trained run: `axk.predict`, the Gradio demo in a real browser, `report.html`.

Everything runs on the session's smoke runs (`ith_smoke`, and `audiobert_smoke` on its
stages; conftest.py). References are independent of the code under test: the span detector's
export run in JAX by hand, the features stage's own acquisitions and parts, the models' own
forward passes (`model.apply(..., mutable=["intermediates"])`) on inputs built here, and the
clips decoded with soundfile. Screenshots go to `$AXK_SCREENSHOTS` (default: a temporary
folder), named in the test output.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from axk.data import encode as enc
from axk.data import spans as spans_lib
from axk.data import types
from axk.data.auditorybench import normalise
from conftest import chromium

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Every test here stands on the smoke chain (`ith_smoke`); some start axk.predict or axk.demo.
pytestmark = pytest.mark.e2e


# -- fixtures ------------------------------------------------------------------------------------
def _acquisitions(features_dir) -> dict[str, dict]:
  with open(os.path.join(features_dir, "acquisitions.jsonl"), encoding="utf-8") as f:
    return {r["text"]: r for r in map(json.loads, f)}


def _sentences(ith_smoke, features: str) -> list[str]:
  """The examples' sentences plus one evaluated sentence whose detected span has accepted
  audio in the run's features (so the fusion acts)."""
  # Generation keys are "<task>|<span>" (a threshold per task); retrieval keys the span.
  accepted = {r.get("span", k) for k, r in
              _acquisitions(ith_smoke / "stages" / "features" / features).items()
              if r["has_audio"] and r.get("task", "animal") == "animal"}
  from axk.predict import EXAMPLES
  for path in sorted((ith_smoke / "stages" / "span" / "predictions").glob("animal_*.jsonl")):
    for line in path.read_text().splitlines():
      row = json.loads(line)
      if row["spans"] and all(normalise(s["text"]) in accepted for s in row["spans"]):
        return [*EXAMPLES, row["sentence"]]
  raise AssertionError("no evaluated sentence with accepted audio in the smoke features")


def _detector_spans(export: pathlib.Path, sentence: str) -> list[tuple[int, int, str]]:
  """The span detector's export run by hand in JAX: argmax labels -> spans by offsets."""
  from axk import hf
  from axk.hf import io as hf_io
  from axk.models import bert as bert_lib
  cfg = bert_lib.BertConfig.from_hf(hf_io.read_config(str(export)))
  module = bert_lib.Bert(cfg, head="token_classification")
  params = hf.load_params(str(export), module)
  tokenizer = enc.load_tokenizer(str(export))
  t = tokenizer(sentence, return_offsets_mapping=True, return_special_tokens_mask=True)
  ids = np.asarray([t["input_ids"]])
  logits = module.apply({"params": params}, ids, np.ones_like(ids), np.zeros_like(ids))["logits"]
  offsets = [(0, 0) if sp else tuple(o) for o, sp in zip(t["offset_mapping"],
                                                          t["special_tokens_mask"])]
  return [(s.start, s.end, s.text) for s in spans_lib.spans_from_labels(
      sentence, offsets, np.asarray(logits[0]).argmax(-1).tolist())]


def _feature_key(table, task: str, text: str):
  """The features stage's entry for a span: generation keys are "<task>|<span>" (one
  threshold per task), retrieval keys the span alone."""
  span = normalise(text)
  return table.get(f"{task}|{span}", table.get(span))


def _parts_rows(features_dir) -> dict:
  """The features stage's own acquired arrays, by span text (its part files)."""
  from axk.features import parts
  manifest = json.loads((features_dir / "manifest.json").read_text())
  folder = parts.folder(str(features_dir.parent), manifest["source"], manifest["run_key"])
  return parts.read_parts(folder)


# -- axk.predict ---------------------------------------------------------------------------------
def _check_record(r, sentence, run, features):
  import soundfile as sf
  assert r["sentence"] == sentence
  assert r["task"] == ("pitch" if "pitch" in sentence else "animal") and r["task_inferred"]
  # Spans: the detector's own (its export run by hand).
  expected = _detector_spans(run / "stages" / "span" / "export", sentence)
  assert [(s["start"], s["end"], s["text"]) for s in r["spans"]] == expected
  assert all(sentence[s["start"]:s["end"]] == s["text"] for s in r["spans"])
  # Audio: what the features stage decided for the same span text, with a playable clip.
  acquired = _acquisitions(run / "stages" / "features" / features)
  for s in r["spans"]:
    known = _feature_key(acquired, r["task"], s["text"])
    if known is not None:
      assert s["accepted"] == known["has_audio"]
      assert s["clap_score"] == pytest.approx(known["clap_score"], abs=2e-3)
      assert (s["source"] or "") == known["source"]
    if s["accepted"]:
      wave, rate = sf.read(s["audio"])
      assert rate > 0 and len(wave) > 0 and np.isfinite(wave).all()
    else:
      assert s["audio"] is None
  # Probabilities.
  for name in ("answer", "answer_without_audio"):
    a = r[name]
    if r["task"] == "pitch":
      assert set(a["probabilities"]) == {"higher", "lower"}
      assert sum(a["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
      assert a["predicted"] == max(a["probabilities"], key=a["probabilities"].get)
    else:
      probs = [t["probability"] for t in a["top"]]
      assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
      assert a["predicted"] == a["top"][0]["answer"]
      if "options" in a:
        assert sum(a["options"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
  if not any(s["accepted"] for s in r["spans"]):
    assert r["answer"] == r["answer_without_audio"] and not r["audio_changed"]


def _forward(export, method, r, run, features):
  """The model's own forward pass on inputs built here from the features stage's arrays:
  (logits at the masks, gate [length] or None, fused [length] or None, lora_gate)."""
  from axk import methods
  from axk.runs import inputs as inputs_lib
  module_file = methods.get(method)
  loaded = module_file.load(str(export))
  tokenizer = enc.load_tokenizer(str(export / "base"))
  rows = _parts_rows(run / "stages" / "features" / features)
  spans = []
  for s in r["spans"]:
    row = _feature_key(rows, r["task"], s["text"])
    if row is None:
      return None  # A span the features stage never saw: no independent audio.
    spans.append({"start": s["start"], "end": s["end"], "text": s["text"],
                  "has_audio": bool(row["has_audio"]), "ast_pooled": row["ast_pooled"],
                  "ast_tokens": row["ast_tokens"]})
  answer = r["answer"]["predicted"]
  example = types.Example("t/0", r["task"], "test", r["sentence"], answer, (), (answer,), 0)
  arrays = enc.encode([example], tokenizer, max_length=128, protocol="paper",
                      spans=[[types.Span(s["start"], s["end"], s["text"]) for s in spans]])
  manifest = json.loads((run / "stages" / "features" / features / "manifest.json").read_text())
  arrays.update(inputs_lib.audio_arrays([spans], max_spans=8, audio_dim=loaded.module.audio_dim,
                                        audio=module_file.audio,
                                        audio_tokens=manifest["dims"]["num_audio_tokens"]))
  arrays["lora_gate"] = arrays["span_has_audio"].any(axis=1).astype(np.float32)
  batch = {k: np.asarray(arrays[k]) for k in module_file.inputs}  # tokens: a lazy array
  out, state = loaded.module.apply({"params": loaded.params}, batch,
                                   positions=arrays["mask_positions"], mutable=["intermediates"])
  fusion = state.get("intermediates", {}).get("fusion", {})
  gate = np.asarray(fusion["gate"][0][0]) if "gate" in fusion else None
  fused = np.asarray(fusion["fused"][0][0]) if "fused" in fusion else None
  return np.asarray(out["logits"][0]), gate, fused, float(arrays["lora_gate"][0]), tokenizer


def _predict(run, sentences, out):
  """`python -m axk.predict` with these flags, in this process."""
  from axk import predict
  assert predict.main([f"--model={run}", *[f"--text={s}" for s in sentences],
                       "--options=dog|cat|owl|snake", f"--output={out}"]) == 0
  return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.slow  # Audio generated for the sentences' new spans, on the tiny generator.
def test_predict_ith_reports_spans_clips_answers_and_the_models_own_gate(ith_smoke, tmp_path):
  sentences = _sentences(ith_smoke, "features")
  records = _predict(ith_smoke, sentences, tmp_path / "ith.jsonl")
  assert len(records) == len(sentences)
  fused_checked = 0
  for sentence, r in zip(sentences, records):
    _check_record(r, sentence, ith_smoke, "features")
    assert r["method"] == "ith" and r["lora_gate"] is None
    accepted = {k + 1 for k, s in enumerate(r["spans"]) if s["accepted"]}
    for t in r["tokens"]:  # The gate exists exactly on the tokens of fused spans.
      assert (t["gate"] is not None) == (t["span"] in accepted), t
      assert t["gate"] is None or 0.0 <= t["gate"] <= 1.0
    ref = _forward(pathlib.Path(r["model"]), "ith", r, ith_smoke, "features")
    if ref is None:
      continue
    logits, gate, fused, _, tokenizer = ref
    on = [t["index"] for t in r["tokens"] if t["gate"] is not None]
    assert sorted(np.flatnonzero(fused).tolist()) == on
    np.testing.assert_allclose([t["gate"] for t in r["tokens"] if t["gate"] is not None],
                               gate[on], atol=1e-5)
    fused_checked += len(on)
    if r["task"] == "pitch":
      ids = [enc.answer_pieces(tokenizer, w)[0] for w in ("higher", "lower")]
      z = logits[0, ids] - logits[0, ids].max()
      p = np.exp(z) / np.exp(z).sum()
      np.testing.assert_allclose([r["answer"]["probabilities"][w] for w in ("higher", "lower")],
                                 p, atol=1e-5)
  assert fused_checked > 0, "no sentence exercised the fusion"


def test_predict_audiobert_reports_retrieved_clips_and_the_lora_gate(ith_smoke, audiobert_smoke,
                                                                     tmp_path):
  sentences = _sentences(ith_smoke, "features_retrieval")
  records = _predict(audiobert_smoke[1], sentences, tmp_path / "ab.jsonl")
  with_audio = 0
  for sentence, r in zip(sentences, records):
    _check_record(r, sentence, ith_smoke, "features_retrieval")
    assert r["method"] == "audiobert"
    assert all(t["gate"] is None for t in r["tokens"])
    has_audio = any(s["accepted"] for s in r["spans"])
    assert r["lora_gate"] == float(has_audio)
    ref = _forward(pathlib.Path(r["model"]), "audiobert", r, ith_smoke, "features_retrieval")
    if ref is not None:
      assert ref[3] == r["lora_gate"]
    with_audio += has_audio
  assert with_audio > 0


def test_predict_refuses_bad_sentences_and_folders_in_one_line(ith_smoke, tmp_path):
  for args, words in ((["--text=No mask here."], "has no [MASK]"),
                      (["--text=A [MASK] and a [MASK]."], "2 [MASK]s"),
                      (["--text=  "], "empty"),
                      ([f"--model={tmp_path}", "--text=A [MASK]."], "not a masked-word run")):
    model = [] if any(a.startswith("--model") for a in args) else [f"--model={ith_smoke}"]
    proc = subprocess.run([sys.executable, "-m", "axk.predict", *model, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], lines


# -- the browser checks --------------------------------------------------------------------------
def assert_nothing_fetched(driver) -> None:
  """Every request the page made (Chromium's performance log) was for a file or data URL."""
  requests = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
  urls = {m["params"]["request"]["url"] for m in requests
          if m["method"] == "Network.requestWillBeSent"}
  assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls


def _screenshots(tmp_path_factory) -> pathlib.Path:
  """Where screenshots go: `$AXK_SCREENSHOTS`, else a temporary folder."""
  folder = pathlib.Path(os.environ.get("AXK_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
  folder.mkdir(parents=True, exist_ok=True)
  return folder


def _chrome(extra=()):
  """Headless Chromium from the OS packages through its own chromedriver (never a
  download); the performance log records every request."""
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  options = webdriver.ChromeOptions()
  for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,1600", *extra):
    options.add_argument(a)
  binary, driver = chromium()  # Found, or the test was skipped (conftest.py).
  options.binary_location = binary
  options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
  return webdriver.Chrome(service=Service(driver), options=options)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.browser
@pytest.mark.slow  # The demo server's start, then three answers in the page.
def test_demo_in_a_browser_answers_plays_and_says_what_is_wrong(ith_smoke, tmp_path_factory):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support import expected_conditions as ec
  from selenium.webdriver.support.ui import WebDriverWait
  sentence = _sentences(ith_smoke, "features")[-1]
  port = _free_port()
  not_a_run = tmp_path_factory.mktemp("not_a_run")  # Listed, so a visitor may choose it.
  env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
  server = subprocess.Popen([sys.executable, "-m", "axk.demo", f"--model={ith_smoke}",
                             f"--allow_model={not_a_run}", f"--port={port}"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  driver = None
  try:
    deadline = time.time() + 240
    while time.time() < deadline:
      assert server.poll() is None, server.stdout.read()[-3000:]
      try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
      except OSError:
        time.sleep(1)
    driver = _chrome()
    driver.get(f"http://127.0.0.1:{port}/")
    wait = WebDriverWait(driver, 300)

    def submit(text):
      box = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#axk-sentence textarea")))
      box.clear()
      box.send_keys(text)
      driver.find_element(By.CSS_SELECTOR, "#axk-submit").click()

    submit(sentence)
    answer = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#axk-answer")))
    assert "with audio" in answer.text and "without audio" in answer.text
    predicted = driver.find_elements(By.CSS_SELECTOR, ".axk-predicted")
    assert len(predicted) == 2 and all(p.text for p in predicted)
    spans = driver.find_element(By.CSS_SELECTOR, "#axk-spans").text
    detected = _detector_spans(ith_smoke / "stages" / "span" / "export", sentence)
    assert detected and all(text in spans for _, _, text in detected)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[id^=axk-audio-] audio, "
                                                          "[id^=axk-audio-] .waveform-container"))
    assert driver.find_elements(By.CSS_SELECTOR, ".axk-fused")  # The gate heatmap.
    shots = _screenshots(tmp_path_factory)
    driver.save_screenshot(str(shots / "demo_answer.png"))
    submit("A sentence without a mask.")
    error = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#axk-error")))
    assert "has no [MASK]" in error.text and error.text.count(".") == 1, error.text
    assert not driver.find_elements(By.CSS_SELECTOR, "#axk-answer")
    driver.save_screenshot(str(shots / "demo_error.png"))
    driver.find_element(By.CSS_SELECTOR, "#axk-model input").click()  # The runs' list.
    wait.until(ec.element_to_be_clickable(
        (By.CSS_SELECTOR, f"#axk-model li[aria-label='{not_a_run}']"))).click()
    submit(sentence)
    wait.until(lambda d: "not a masked-word run" in d.find_element(
        By.CSS_SELECTOR, "#axk-error").text)
    print(f"screenshots: {shots / 'demo_answer.png'} {shots / 'demo_error.png'}")
    assert server.poll() is None  # Still serving after the error.
  finally:
    if driver is not None:
      driver.quit()
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.browser
def test_report_opens_from_disk_without_network(ith_smoke, tmp_path_factory):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import Select
  report = ith_smoke / "report.html"
  assert report.is_file()
  driver = _chrome(["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"])
  try:
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["http://*", "https://*"]})
    driver.get(report.as_uri())
    table = driver.find_element(By.CSS_SELECTOR, "#results")
    results = json.loads((ith_smoke / "results.json").read_text())
    assert f"{results['pitch']['test']['accuracy']:.2f}" in table.text
    assert "ITH (paper)" in table.text and "78.96" in table.text
    for plot in ("#plot-curves svg", "#plot-splits svg"):
      assert driver.find_element(By.CSS_SELECTOR, plot).size["height"] > 100
    # Every evaluated example is in the browser, a page of them in the document.
    n = sum(len((ith_smoke / t / "predictions" / f"{t}_{s}.jsonl").read_text().splitlines())
            for t in ("animal", "pitch") for s in ("dev", "test", "wiki"))
    assert driver.find_element(By.ID, "shown").text == str(n)
    assert len(driver.find_elements(By.CSS_SELECTOR, ".example")) == min(n, 50)
    assert driver.find_elements(By.CSS_SELECTOR, ".example audio")
    assert driver.find_elements(By.CSS_SELECTOR, ".example .gate")
    Select(driver.find_element(By.ID, "f-task")).select_by_value("pitch")
    shown = driver.find_elements(By.CSS_SELECTOR, ".example")
    assert shown and all(e.get_attribute("data-task") == "pitch" for e in shown)
    Select(driver.find_element(By.ID, "f-task")).select_by_value("")
    shots = _screenshots(tmp_path_factory)
    driver.save_screenshot(str(shots / "report.png"))
    gated = driver.find_element(By.CSS_SELECTOR, ".example .gate")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", gated)
    driver.save_screenshot(str(shots / "report_examples.png"))
    print(f"screenshots: {shots / 'report.png'} {shots / 'report_examples.png'}")
    assert_nothing_fetched(driver)
  finally:
    driver.quit()
