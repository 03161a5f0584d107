"""`report.html` of a run, on a small workdir written here (no training): the curves end with
the final evaluation, examples in numeric id order, the legend of protocols and colours, and
an example browser that pages through a real-sized split.

References are independent of the code under test: the workdir's own `metrics.jsonl` (its
`final/` line read here), ids ordered by their number, and the page itself read back with
`html.parser` or opened in headless Chromium.
"""

import html
import html.parser
import json
import pathlib
import re

import pytest

from axk import report

ANIMAL_ROWS, PITCH_ROWS = 120, 30


def _write_jsonl(path: pathlib.Path, rows) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _answers(task: str, n: int) -> list[dict]:
  """`predictions/<task>_dev.jsonl` rows as a masked-word run writes them, in file order
  1..n; audio never changes the answer, so the page orders them by id alone."""
  rows = []
  for i in range(1, n + 1):
    gold = "dog" if task == "animal" else "higher"
    predicted = gold if i % 3 else ("cat" if task == "animal" else "lower")
    rows.append({"id": f"{task}/dev/{i}", "answer": gold, "predicted": predicted,
                 "correct": predicted == gold, "predicted_candidate": gold,
                 "correct_candidate": True, "sentence": f"Sentence {i} of {task}: a [MASK].",
                 "with_audio": False, "predicted_without_audio": predicted,
                 "correct_without_audio": predicted == gold, "gate": []})
  return rows


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> pathlib.Path:
  """An ITH run over animal and pitch as the run leaves it: config, results, and per task its
  results, `metrics.jsonl` (evaluations at steps 10 and 20, the final one at step 30 of the
  parameters of step 20) and dev answers."""
  root = tmp_path_factory.mktemp("report") / "run"
  root.mkdir()
  metrics = {"accuracy": 200 / 3, "accuracy_candidates": 100.0, "majority": 20.0,
             "examples": ANIMAL_ROWS, "with_audio": 0.0}
  results = {"animal": {"dev": dict(metrics)},
             "pitch": {"dev": {**metrics, "examples": PITCH_ROWS}}}
  (root / "config.json").write_text(json.dumps({
      "name": "ith", "model": {"name": "ith", "init": "bert-base-uncased"},
      "data": {"tasks": ["animal", "pitch"]}, "seeds": [0], "resolved": {}}))
  (root / "results.json").write_text(json.dumps(results))
  for task, n in (("animal", ANIMAL_ROWS), ("pitch", PITCH_ROWS)):
    sub = root / task
    sub.mkdir()
    (sub / "results.json").write_text(json.dumps({
        task: results[task], "selection": {"step": 20, "total_steps": 30,
                                           "metric": "mean/dev/accuracy", "value": 41.0,
                                           "select_best": True}}))
    _write_jsonl(sub / "metrics.jsonl", [
        {"step": 10, "train/loss": 3.0},
        {"step": 10, f"{task}/dev/accuracy": 30.0, f"{task}/dev/accuracy_candidates": 50.0},
        {"step": 20, "train/loss": 2.0},
        {"step": 20, f"{task}/dev/accuracy": 41.0, f"{task}/dev/accuracy_candidates": 55.0},
        {"step": 30, "train/loss": 1.5},
        {"step": 30, f"final/{task}/dev/accuracy": 41.25,
         f"final/{task}/dev/accuracy_candidates": 57.5, f"final/{task}/dev/majority": 20.0}])
    _write_jsonl(sub / "predictions" / f"{task}_dev.jsonl", _answers(task, n))
  report.write(str(root))
  return root


class _Page(html.parser.HTMLParser):
  """The ids of the `.example` elements in the document (script text is not markup)."""

  def __init__(self):
    super().__init__()
    self.ids, self.scripts, self._in_script = [], {}, None

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "div" and "example" in (attrs.get("class") or "").split():
      self.ids.append(attrs["data-id"])
    if tag == "script":
      self._in_script = attrs.get("id", "")

  def handle_endtag(self, tag):
    if tag == "script":
      self._in_script = None

  def handle_data(self, data):
    if self._in_script is not None:
      self.scripts[self._in_script] = self.scripts.get(self._in_script, "") + data


def _page(workdir) -> _Page:
  page = _Page()
  page.feed((workdir / "report.html").read_text(encoding="utf-8"))
  return page


def _expected_order() -> list[str]:
  """Task by task, ids by their number."""
  return ([f"animal/dev/{i}" for i in range(1, ANIMAL_ROWS + 1)]
          + [f"pitch/dev/{i}" for i in range(1, PITCH_ROWS + 1)])


def test_curves_end_with_the_final_evaluation(workdir):
  for task in ("animal", "pitch"):
    rows = [json.loads(l) for l in (workdir / task / "metrics.jsonl").read_text().splitlines()]
    final = next(r for r in rows if any(k.startswith("final/") for k in r))
    expected = {k.removeprefix("final/"): (final["step"], v) for k, v in final.items()
                if k.endswith(("/dev/accuracy", "/dev/accuracy_candidates"))}
    assert expected == {f"{task}/dev/accuracy": (30, 41.25),
                        f"{task}/dev/accuracy_candidates": (30, 57.5)}
    series = report.curve_series(report.collect(str(workdir))["curves"][task])
    assert series["final"] == expected
    assert series["dev"][f"{task}/dev/accuracy"] == [(10, 30.0), (20, 41.0)]
  # The plot names the final points, and whose parameters they are (results.json's
  # selection: step 20 of 30).
  text = (workdir / "report.html").read_text(encoding="utf-8")
  svg = text[text.index("id='plot-curves'"):text.index("id='plot-splits'")]
  for task in ("animal", "pitch"):
    assert f"{task}/dev/accuracy: final (step 30, parameters of step 20)" in svg


def test_examples_in_numeric_id_order(workdir):
  page = _page(workdir)
  rows = json.loads(page.scripts["example-data"])
  ids = [re.search(r"data-id='([^']*)'", r["html"]).group(1) for r in rows]
  assert ids == _expected_order()  # "animal/dev/2" before "animal/dev/10".
  assert report.natural_key("animal/dev/2") < report.natural_key("animal/dev/10")


def test_legend_explains_each_protocol_and_colour(workdir):
  text = (workdir / "report.html").read_text(encoding="utf-8")
  legend = text[text.index("<div id='legend'>"):text.index("<h2>Training</h2>")]
  plain = html.unescape(re.sub(r"<[^>]+>", "", legend))
  # The protocols as docs/methods.md#metrics defines them.
  assert "accuracy" in plain and "the papers' protocol" in plain
  assert "accuracy_candidates" in plain and "axk's leak-free protocol" in plain
  assert "repeated to the answer's piece count" in plain  # animal, paper: the leak
  assert "its own input" in plain  # animal, candidates
  assert "higher / lower" in plain  # pitch
  # Each colour of the example browser.
  assert "#2a2" in legend and "right by the papers' protocol" in plain
  assert "#c22" in legend and "wrong by the papers' protocol" in plain
  assert "blue keeps the text, red takes the audio" in plain
  assert "span detector found" in plain


def test_browser_holds_one_page_of_a_real_sized_split(workdir):
  page = _page(workdir)
  assert len(json.loads(page.scripts["example-data"])) == ANIMAL_ROWS + PITCH_ROWS
  assert page.ids == _expected_order()[:report.PAGE_SIZE] and report.PAGE_SIZE == 50
  text = (workdir / "report.html").read_text(encoding="utf-8")
  assert "page 1 of 3" in text and "1–50 of 150" in text  # Before the script runs too.


@pytest.mark.browser
def test_browser_pages_and_filters_in_chromium(workdir, tmp_path_factory):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import Select
  from test_use import _chrome, _screenshots, assert_nothing_fetched
  driver = _chrome(["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"])
  shown = lambda: [e.get_attribute("data-id")
                   for e in driver.find_elements(By.CSS_SELECTOR, "#examples .example")]
  order = _expected_order()
  shots = _screenshots(tmp_path_factory)
  try:
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["http://*", "https://*"]})
    driver.get((workdir / "report.html").as_uri())
    assert shown() == order[:50]
    top = driver.find_element(By.ID, "pager-top")
    assert "1–50 of 150" in top.text and "page 1 of 3" in top.text
    assert not top.find_element(By.CSS_SELECTOR, ".prev").is_enabled()
    driver.save_screenshot(str(shots / "report_synthetic.png"))
    top.find_element(By.CSS_SELECTOR, ".next").click()
    assert shown() == order[50:100]
    assert "51–100 of 150" in top.text
    driver.find_element(By.CSS_SELECTOR, "#pager-bottom .next").click()
    assert shown() == order[100:]
    assert not top.find_element(By.CSS_SELECTOR, ".next").is_enabled()
    # Filters select among every example, then the page starts again at 1.
    Select(driver.find_element(By.ID, "f-task")).select_by_value("pitch")
    assert shown() == order[ANIMAL_ROWS:] and "page 1 of 1" in top.text
    assert driver.find_element(By.ID, "shown").text == str(PITCH_ROWS)
    Select(driver.find_element(By.ID, "f-task")).select_by_value("")
    Select(driver.find_element(By.ID, "f-correct")).select_by_value("0")
    wrong = [i for i in order if int(i.rsplit("/", 1)[1]) % 3 == 0]
    assert shown() == wrong[:50] and f"1–50 of {len(wrong)}" in top.text
    driver.execute_script("document.getElementById('legend').scrollIntoView();")
    driver.save_screenshot(str(shots / "report_legend.png"))
    print(f"screenshots: {shots / 'report_synthetic.png'} {shots / 'report_legend.png'}")
    assert_nothing_fetched(driver)
  finally:
    driver.quit()
