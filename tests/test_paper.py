"""configs/paper.py and axk/runs/paper.py: rows, checks, resumption, and the tables' cells
against rows' results written by hand (and, for a subset, trained here)."""

import json
import os
import re
import subprocess
import sys

import pytest

from axk.runs import common
from axk.runs import paper
from configs import paper as paper_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, payload):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f)


def _results(values, std=None):
  """results.json of a row: {task: {split: {"accuracy": v}}} from (animal dev, test, wiki,
  pitch dev, test, wiki); with `std`, `accuracy_std` as well (a row over several seeds)."""
  out = {}
  for i, (task, split) in enumerate(paper.COLUMNS):
    m = {"accuracy": values[i], "examples": 16}
    if std is not None:
      m["accuracy_std"] = std[i]
    out.setdefault(task, {})[split] = m
  return out


def _table(text, title):
  """The rows of the markdown table under `## <title>...`: {label: [cells]}."""
  block = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
  rows = {}
  for line in block.splitlines():
    if line.startswith("| ") and not line.startswith("| ---"):
      cells = [c.strip() for c in line.strip("|").split("|")]
      rows.setdefault(cells[0], cells[1:])
  return rows


def test_variants_pick_tables_and_their_rows():
  c = paper_config.get_config("smoke,table2")
  assert c.base == "smoke" and c.tables == ("table2",) and c.seeds == (0,)
  assert set(c.rows) == {"ith", "no_gate", "sentence_audio", "no_rejection"}
  assert c.layouts.table2 == ("ith", "no_gate", "sentence_audio", "no_rejection")
  assert c.rows.no_gate.variant == "no_gate" and c.rows.sentence_audio.variant == \
      "sentence_audio"
  every = paper_config.get_config("all")
  assert every.seeds == (0, 1, 2, 3, 4) and every.tables == paper_config.TABLES
  assert set(paper_config.get_config("smoke").rows) == set(every.rows)
  fig = paper_config.get_config("figure2")
  assert [fig.rows[r].tau for r in fig.layouts.figure2.tau] == [0.0, 0.2, 0.4, 0.6, 0.8]
  assert [fig.rows[r].tries or fig.default_tries for r in fig.layouts.figure2.tries] == \
      [1, 2, 3, 4, 5]
  assert dict(fig.rows.pitch_n_2.features) == {"generation.tau.pitch": 0.6,
                                               "generation.n": 2}
  with pytest.raises(SystemExit, match="unknown config variant 'table9'"):
    paper_config.get_config("smoke,table9")


@pytest.mark.e2e
def test_a_row_whose_variant_does_not_exist_is_one_line_before_any_work(tmp_path):
  workdir = tmp_path / "w"
  proc = subprocess.run([sys.executable, "-m", "axk.main", "--config=configs/paper.py:smoke,table2",
                         f"--workdir={workdir}", "--config.rows.no_gate.variant=no_such"], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 3
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: row 'no_gate' (w/o FG, configs/ith.py:smoke,no_such): ")
  assert "--config.missing=skip" in last
  assert not any(os.path.isdir(workdir / r) for r in ("ith", "no_gate", "stages"))
  # With missing=skip the other rows stay, the missing ones say why.
  c = paper_config.get_config("smoke,table2")
  c.rows.no_gate.variant = "no_such"
  c.missing = "skip"
  rows = {r.name: r for r in paper.validate(c, str(tmp_path / "s"))}
  assert rows["ith"].config is not None and not rows["ith"].missing
  assert rows["no_gate"].config is None and "unknown config variant 'no_such'" in \
      rows["no_gate"].missing
  # A feature field that does not exist names the row and the field.
  c = paper_config.get_config("smoke,figure2")
  c.rows.tau_0_2.features = (("generation.no_such_field", 0.2),)
  c.only = ("tau_0_2",)
  with pytest.raises(common.ConfigError, match=r"row 'tau_0_2'.*generation.no_such_field"):
    paper.validate(c, str(tmp_path / "v"))


def test_tables_from_hand_written_results(tmp_path):
  """Every row 'finished' by a hand-written results.json: nothing runs, and every cell is
  the value (or the difference) computed here by hand."""
  workdir = str(tmp_path)
  c = paper_config.get_config("smoke")
  c.seeds = (0, 1)
  base = [40.0, 42.0, 20.0, 80.0, 79.0, 76.0]
  rows = {
      "bert": ([10.0, 12.5, 3.0, 55.0, 60.0, 48.0], None),
      "text_only": ([30.0, 31.0, 10.0, 70.0, 71.0, 60.0], [1.0, 2.0, 0.5, 1.5, 0.25, 3.0]),
      "audiobert": ([35.0, 36.0, 12.0, 72.0, 73.0, 55.0], [0.5] * 6),
      "ith": (base, [1.0] * 6),
      "no_gate": ([38.0, 42.5, 20.0, 75.5, 79.0, 70.0], [1.0] * 6),
      "sentence_audio": ([39.0, 40.0, 21.25, 80.0, 78.0, 76.0], [1.0] * 6),
      "no_rejection": ([41.0, 41.0, 19.0, 79.0, 80.0, 75.0], [1.0] * 6),
      "audioldm2": ([33.0, 34.0, 15.0, 70.0, 71.0, 72.0], [2.0] * 6),
      "musicgen": ([30.0, 31.0, 14.0, 69.0, 70.0, 68.0], [2.0] * 6),
      "audiobert_text_only": ([20.0, 21.0, 5.0, 65.0, 66.0, 50.0], [1.0] * 6),
  }
  for i, tau in enumerate(paper_config.FIGURE2_TAUS):
    rows[f"tau_{tau:.1f}".replace(".", "_")] = ([30.0 + i, 30.0 + 2 * i, 5.0, 70.0 - i,
                                                 70.0 + i, 50.0], [0.5] * 6)
  for n in (1, 2, 3, 4):
    rows[f"pitch_n_{n}"] = ([0.0] * 3 + [60.0, 60.0 + n, 50.0], [0.5] * 6)
  assert set(rows) == set(c.rows)
  for name, (values, std) in rows.items():
    _write(os.path.join(workdir, name, "results.json"), _results(values, std))
  # Figure 2's share of spans without audio comes from the features each row trained on.
  for i, name in enumerate(c.layouts.figure2.tau):
    features = os.path.join(workdir, "features", name)
    _write(os.path.join(workdir, name, "config.json"), {"features": {"dir": features}})
    _write(os.path.join(features, "manifest.json"), {"counts": {"by_split": {
        "animal/test": {"examples": 16, "spans": 20, "spans_with_audio": 20 - i},
        "pitch/test": {"examples": 16, "spans": 32, "spans_with_audio": 32 - 8 * i}}}})

  out = paper.run(c, workdir)
  assert not os.path.exists(os.path.join(workdir, "stages", "span"))  # Nothing ran.
  text = open(os.path.join(workdir, "paper_table.md")).read()

  t1 = _table(text, "Table 1")
  assert t1["BERT-base, no training"] == ["10.00 (15.51)", "12.50 (13.46)", "3.00 (3.05)",
                                          "55.00 (59.42)", "60.00 (60.41)", "48.00 (48.06)"]
  assert t1["BERT-base, text-only fine-tuned"] == ["30.00 ± 1.00", "31.00 ± 2.00",
                                                   "10.00 ± 0.50", "70.00 ± 1.50",
                                                   "71.00 ± 0.25", "60.00 ± 3.00"]
  assert t1["Imagine to Hear"][1] == "42.00 ± 1.00 (41.55)"
  assert t1["AudioBERT"][5] == "55.00 ± 0.50 (55.31)"
  assert t1["LLaMA3.1-8B, no training (published only)"][0] == "(23.10)"

  t2 = _table(text, "Table 2")
  assert t2["Imagine to Hear"][0] == "40.00 ± 1.00"
  assert t2["w/o FG"] == ["-2.00", "+0.50", "+0.00", "-4.50", "+0.00", "-6.00"]
  assert t2["w/o DKI"] == ["-1.00", "-2.00", "+1.25", "+0.00", "-1.00", "+0.00"]
  assert t2["w/o rejection"] == ["+1.00", "-1.00", "-1.00", "-1.00", "+1.00", "-1.00"]

  t3 = _table(text, "Table 3")
  assert t3["AudioLDM 2"][3] == "70.00 ± 2.00" and t3["MusicGen"][5] == "68.00 ± 2.00"

  fig = text.split("## Figure 2", 1)[1].split("\n## ", 1)[0]
  # tau 0.4 (i = 2): animal test 34, 10% of 20 spans without audio; pitch 72, 50% of 32.
  assert "| 0.4 | 34.00 ± 0.50 | 10.0 | 72.00 ± 0.50 | 50.0 |" in fig
  assert "| 2 | 62.00 ± 0.50 | — |" in fig
  assert "| 5 | 73.00 ± 0.50 | 75.0 |" in fig  # The tau sweep's 0.6 row (i = 3) is n = 5.
  assert out["tables"]["accuracy"]["figure2"]["tries"][-1] == {
      "row": "tau_0_6", "n": 5, "pitch": 73.0, "pitch_no_audio": 75.0}
  assert os.path.getsize(os.path.join(workdir, "figure2.png")) > 1000

  t4 = _table(text, "AudioBERT")
  assert t4["AudioBERT, text-only (LoRA)"][0] == "20.00 ± 1.00"
  saved = json.load(open(os.path.join(workdir, "results.json")))
  assert saved["tables"]["accuracy"]["table2"]["no_gate"]["pitch/wiki"] == 70.0
  assert saved["rows"]["ith"]["results"]["animal"]["dev"]["accuracy"] == 40.0


@pytest.mark.e2e  # The paper command end to end: three rows trained, tables, a rerun.
@pytest.mark.slow
def test_a_subset_trains_once_resumes_and_tables_its_rows(tmp_path, caplog):
  """Real rows on the tiny models (pitch, text only, so no stage runs): Table 1's untrained
  and text-only rows and Table 2 with a stand-in ablation (text-only at another seed: the
  same programs, from the compilation cache); the cells equal the rows' own results.json; a
  second run trains nothing."""
  workdir = str(tmp_path)
  c = paper_config.get_config("smoke,table1,table2")
  c.only = ("bert", "text_only", "no_gate")
  c.layouts.table2 = ("text_only", "no_gate")  # Deltas from text-only.
  c.rows.no_gate.variant, c.rows.no_gate.seeds = "no_audio", (1,)
  c.overrides = (("spans.predictions", ""), ("features.dir", ""), ("data.tasks", ("pitch",)))
  c.jax_cache_dir = str(tmp_path / "jax_cache")
  caplog.set_level("INFO")
  paper.run(c, workdir)
  assert "Row 3/3 'no_gate' done" in caplog.text and "min left" in caplog.text
  text = open(os.path.join(workdir, "paper_table.md")).read()
  own = {r: json.load(open(os.path.join(workdir, r, "results.json"))) for r in c.only}
  t1, t2 = _table(text, "Table 1"), _table(text, "Table 2")
  for j, (task, split) in enumerate(paper.COLUMNS):
    if task == "animal":  # Not trained here.
      assert t1["BERT-base, text-only fine-tuned"][j] == "—"
      continue
    acc = {r: own[r][task][split]["accuracy"] for r in c.only}
    published = paper.PUBLISHED["bert"][j]
    assert t1["BERT-base, no training"][j] == f"{acc['bert']:.2f} ({published:.2f})"
    assert t1["BERT-base, text-only fine-tuned"][j] == f"{acc['text_only']:.2f}"
    assert t2["w/o FG"][j] == f"{acc['no_gate'] - acc['text_only']:+.2f}"
    assert t1["AudioBERT (not run)"][j] == f"— ({paper.PUBLISHED['audiobert'][j]:.2f})"
  assert "row 'audiobert': not in --config.only" in text
  assert re.search(r"configs/ith.py:smoke,no_audio", json.load(open(
      os.path.join(workdir, "no_gate", paper.ROW_RECORD)))["config"])
  caplog.clear()
  paper.run(c, workdir)
  assert "0 to run" in caplog.text and "Row 1/" not in caplog.text
  # A finished row is reused only as it was defined.
  c.rows.no_gate.variant = "lora"
  with pytest.raises(common.ConfigError, match="row 'no_gate'.*another definition"):
    paper.validate(c, workdir)
