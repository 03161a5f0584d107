"""Zero-shot AuditoryBench scoring of decoder LMs against transformers' own log-likelihoods:
tiny random Llama and Gemma 2 models and a word-level tokenizer saved with
`save_pretrained`, the shipped AuditoryBench sample as data."""

import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from axk import hf
from axk.data import auditorybench
from axk.features import tiny
from axk.runs import zero_shot

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _sample_dir():
  import os
  return os.path.join(os.path.dirname(auditorybench.__file__), "sample")


def _words(data_dir):
  words = set()
  for task in ("animal", "pitch"):
    for ex in auditorybench.load_split(data_dir, task, "test", keep_missing_spans=True).examples:
      for text in [ex.sentence, *ex.options]:
        words.update(re.findall(r"\w+|[^\w\s]", text.lower()))
  return sorted(words)


@pytest.fixture(scope="module", params=["llama", "gemma2"])
def saved(request, tmp_path_factory):
  """(folder with a tiny random model of the family and its word-level tokenizer, the same
  model loaded by transformers, attention written out)."""
  path = str(tmp_path_factory.mktemp(request.param))
  tiny.build_decoder(path, _words(_sample_dir()), family=request.param)
  pt = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
  return path, pt.eval()


def _torch_log_likelihood(model, tokenizer, text):
  """transformers' own: its mean causal-LM loss over the tokens after the first, times their
  count."""
  ids = torch.tensor([tokenizer(text)["input_ids"]])
  with torch.no_grad():
    loss = model(input_ids=ids, labels=ids).loss
  return -float(loss) * (ids.shape[1] - 1)


def test_scores_equal_transformers_log_likelihoods_in_padded_batches(saved):
  path, pt = saved
  tokenizer = transformers.AutoTokenizer.from_pretrained(path)
  texts = ["The sound of a dog has a higher pitch than the sound of a cow.",
           "A lion roars.", "The sound of birds singing is lower than the sound of a drum .",
           "Rain"]
  model = hf.load_decoder(path, dtype="float32")
  # Batches of 3: rows of several lengths padded together, and a partly empty batch.
  ours = zero_shot.score_texts(model, tokenizer, texts, batch_size=3)
  theirs = [_torch_log_likelihood(pt, tokenizer, t) for t in texts]
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def _config(path, **fields):
  from configs import zero_shot as zero_shot_config
  c = zero_shot_config.get_config()
  c.model.init, c.model.dtype, c.data.dir = path, "float32", _sample_dir()
  c.data.tasks, c.data.splits, c.batch_size = ("pitch", "animal"), ("test",), 8
  c.update(fields)
  return c


def test_run_answers_with_the_best_scoring_option(saved, tmp_path):
  """The run on the sample's test splits: its accuracy and every prediction are those of the
  options' transformers log-likelihoods."""
  path, pt = saved
  out = tmp_path / "zs"
  assert zero_shot.run(_config(path), str(out))
  results = json.loads((out / "results.json").read_text())
  predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
  tokenizer = transformers.AutoTokenizer.from_pretrained(path)
  for task in ("pitch", "animal"):
    examples = auditorybench.load_split(_sample_dir(), task, "test",
                                        keep_missing_spans=True).examples
    # Unseen: the sentence, lower-cased with whitespace collapsed, is no train sentence.
    seen = {" ".join(e.sentence.lower().split()) for e in auditorybench.load_split(
        _sample_dir(), task, "train", keep_missing_spans=True).examples}
    right, right_unseen, unseen = 0, 0, 0
    mine = [p for p in predictions if p["id"].startswith(f"{task}/")]
    assert [p["id"] for p in mine] == [e.id for e in examples if e.options]
    for ex, pred in zip([e for e in examples if e.options], mine):
      scores = [_torch_log_likelihood(pt, tokenizer, ex.sentence.replace("[MASK]", o))
                for o in ex.options]
      np.testing.assert_allclose(pred["scores"], scores, rtol=1e-4, atol=1e-4)
      best = ex.options[int(np.argmax(scores))]
      assert pred["prediction"] == best
      right += best == ex.answer
      new = " ".join(ex.sentence.lower().split()) not in seen
      unseen += new
      right_unseen += new and best == ex.answer
    m = results[task]["test"]
    assert m["accuracy"] == pytest.approx(100 * right / len(mine))
    assert m["examples"] == len(mine) and m["examples_unseen"] == unseen
    if unseen:
      assert m["accuracy_unseen"] == pytest.approx(100 * right_unseen / unseen)
  assert "| pitch | test |" in (out / "results.md").read_text()


def test_unseen_accuracy_leaves_out_the_rows_train_holds(saved):
  """With a 'train' that holds three of the test sentences (one with other case and spacing),
  `accuracy_unseen` is over the other rows, computed here from the predictions."""
  path, _ = saved
  model = hf.load_decoder(path, dtype="float32")
  tokenizer = transformers.AutoTokenizer.from_pretrained(path)
  examples = auditorybench.load_split(_sample_dir(), "pitch", "test",
                                      keep_missing_spans=True).examples
  import dataclasses
  train = [examples[0], examples[5],
           dataclasses.replace(examples[9], sentence="  " + examples[9].sentence.upper())]
  metrics, predictions = zero_shot.evaluate_split(model, tokenizer, examples, 8, train=train)
  rest = [p for i, p in enumerate(predictions) if i not in (0, 5, 9)]
  assert metrics["examples_unseen"] == len(examples) - 3 == len(rest)
  assert metrics["accuracy_unseen"] == pytest.approx(
      100 * sum(p["prediction"] == p["answer"] for p in rest) / len(rest))


def test_bad_fields_are_one_line_before_loading_a_model(tmp_path):
  with pytest.raises(zero_shot.common.ConfigError, match="sirens"):
    zero_shot.validate(_config("/nonexistent", data=dict(tasks=("pitch", "sirens"))))
  with pytest.raises(zero_shot.common.ConfigError, match="model.dtype"):
    zero_shot.validate(_config("/nonexistent", model=dict(dtype="int8")))
  # Through axk.main: the preflight names the missing checkpoint in one line, exit 3, and
  # no workdir is made.
  work = tmp_path / "w"
  out = subprocess.run([sys.executable, "-m", "axk.main", "--config=configs/zero_shot.py:smoke",
                        f"--workdir={work}", "--config.model.tiny=",
                        "--config.model.init=/nonexistent/model"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert out.returncode == 3 and len(errors) == 1 and "/nonexistent/model" in errors[0]
  assert not work.exists()
