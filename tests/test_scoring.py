"""Scoring against hand-computed values on made-up rows: the masked-LM loss at `[MASK]`, both
answer protocols (paper exact match over every word piece; candidates scored as whole
words), the pitch decision, the span detector's loss and its token/span precision, recall
and F1, and the "unseen" accuracy over rows whose sentence is not in train.

No model is built: the model's logits are fixed arrays given to the run's own `loss` and
`predict`, and every expected number is worked out by hand in the comments (probabilities
chosen so that each log-softmax is a plain log of a fraction).
"""

import json
import math

import jax
import numpy as np
import pytest

from axk import tasks
from axk.data import benchmark
from axk.data import spans as spans_lib
from axk.data.types import Example
from axk.data.types import Span
from axk.runs import masked_word
from axk.runs import span as span_run
from axk.train import loop
from configs import audiobert as audiobert_config
from configs import ith as ith_config

IGNORE = -100


def _logits(probabilities):
  """Logits whose softmax is `probabilities` (normalised to sum 1)."""
  p = np.asarray(probabilities, np.float64)
  return np.log(p / p.sum()).astype(np.float32)


def _fixed_masked_word(logits, choice_ids=()):
  """A `MaskedWord` whose model returns `logits` [rows, masks, vocab] for any batch."""
  fake = object.__new__(masked_word.MaskedWord)
  fake.config = ith_config.get_config("smoke")
  fake.choice_ids = list(choice_ids)
  fake.apply = lambda params, batch, *, deterministic, rngs=None: jax.numpy.asarray(logits)
  return fake


def _batch(mask_positions, mask_count, labels, length=6):
  """A masked-word batch: `labels[i]` are row i's answer pieces at its mask positions."""
  rows = len(mask_count)
  mlm = np.full((rows, length), IGNORE, np.int32)
  for i, (positions, pieces) in enumerate(zip(mask_positions, labels)):
    for p, t in zip(positions, pieces):
      mlm[i, p] = t
  return {"mlm_labels": mlm, "mask_positions": np.asarray(mask_positions, np.int32),
          "mask_count": np.asarray(mask_count, np.int32),
          "span_has_audio": np.zeros((rows, 1), np.int32)}


# -- the masked-LM loss -----------------------------------------------------------------------
def test_loss_is_the_mean_cross_entropy_of_the_answer_pieces_at_the_masks():
  # Row 0: one mask at position 2, answer piece 3; its second mask slot is padding (logits
  # that would dominate any loss that read them). Row 1: two masks at 1 and 2, pieces 1, 0.
  logits = np.stack([
      np.stack([_logits([1, 1, 2, 4]), np.array([100, -100, 0, 0], np.float32)]),
      np.stack([_logits([1, 1, 1, 1]), _logits([3, 1, 0.5, 0.5])]),
  ])
  batch = _batch([[2, 0], [1, 2]], [1, 2], [[3], [1, 0]])
  loss, aux = masked_word.MaskedWord.loss(_fixed_masked_word(logits), None, batch,
                                          jax.random.key(0))
  # -log p of each piece: 4/8 -> ln 2; 1/4 -> ln 4; 3/5 -> ln 5/3; mean over the 3 pieces.
  expected = (math.log(2) + math.log(4) + math.log(5 / 3)) / 3
  assert float(loss) == pytest.approx(expected, rel=1e-6)
  assert float(aux["audio_spans"]) == 0.0


# -- the paper protocol: exact match of every word piece over the full vocabulary --------------
VOCAB = ["[PAD]", "eagle", "owl", "cat", "dog", "bird"]


def _decode(ids):
  return " ".join(VOCAB[i] for i in ids)


def _animal(i, answer, sentence="The [MASK] hoots.", options=(), label=-1, split="dev"):
  return Example(f"animal/{split}/{i}", "animal", split, sentence, answer, (), options, label)


def test_paper_protocol_needs_every_piece_right_over_the_whole_vocabulary():
  # Answers: "eagle owl" (pieces 1, 2), "eagle owl" again, "cat" (3). The model's argmax over
  # the whole vocabulary at each mask (the largest probability of each row below):
  #   row 0: eagle, owl       -> both pieces right                  -> right
  #   row 1: eagle, bird      -> first piece right, second wrong    -> wrong
  #   row 2: dog (not "cat"), and a padding slot it must not read   -> wrong
  logits = np.stack([
      np.stack([_logits([1, 5, 1, 1, 1, 1]), _logits([1, 1, 5, 1, 1, 1])]),
      np.stack([_logits([1, 5, 1, 1, 1, 1]), _logits([1, 1, 2, 1, 1, 3])]),
      np.stack([_logits([1, 1, 1, 2, 3, 1]), _logits([1, 1, 1, 9, 1, 1])]),
  ])
  batch = _batch([[1, 2], [1, 2], [3, 0]], [2, 2, 1], [[1, 2], [1, 2], [3]])
  outputs = jax.device_get(masked_word.MaskedWord.predict(_fixed_masked_word(logits), None,
                                                          batch))
  np.testing.assert_array_equal(outputs["argmax"], [[1, 2], [1, 5], [4, -1]])
  np.testing.assert_array_equal(outputs["labels"], [[1, 2], [1, 2], [3, -1]])
  examples = [_animal(1, "eagle owl"), _animal(2, "eagle owl"), _animal(3, "cat")]
  predicted, correct = tasks.get("animal").paper_answers(examples, outputs, (), _decode)
  assert predicted == ["eagle owl", "eagle bird", "dog"]
  assert correct == [True, False, False]


def test_paper_protocol_counts_a_multi_piece_answer_right_only_when_all_pieces_are():
  # Given outputs directly: padding columns hold -1 in both arrays.
  outputs = {"argmax": np.array([[1, 2], [1, 4], [3, -1], [5, 2]]),
             "labels": np.array([[1, 2], [1, 2], [3, -1], [1, 2]])}
  examples = [_animal(i, a) for i, a in enumerate(["eagle owl", "eagle owl", "cat",
                                                   "eagle owl"])]
  _, correct = tasks.get("animal").paper_answers(examples, outputs, (), _decode)
  assert correct == [True, False, True, False]  # 2 of 4 right, not 4 of 4 (`any`)


# -- the pitch decision ---------------------------------------------------------------------
def _pitch(i, answer):
  return Example(f"pitch/dev/{i}", "pitch", "dev", "A bell is [MASK] than a drum.", answer, (),
                 ("higher", "lower"), ("higher", "lower").index(answer))


@pytest.mark.parametrize("words", [("higher", "lower"), ("lower", "higher")])
def test_pitch_is_the_larger_of_the_higher_and_lower_logits(words):
  # The logits at the mask of token ids 4 ("higher") and 2 ("lower"); column order of
  # `choice_logits` follows `words`, whatever it is.
  ids = {"higher": 4, "lower": 2}
  at_mask = {"higher": [2.0, 0.1, -1.0], "lower": [1.0, 0.3, 3.0]}  # per row
  logits = np.zeros((3, 1, 6), np.float32)
  for w in ids:
    logits[:, 0, ids[w]] = at_mask[w]
  logits[:, 0, 5] = 10.0  # The vocabulary's argmax is another word: pitch never reads it.
  fake = _fixed_masked_word(logits, choice_ids=[ids[w] for w in words])
  batch = _batch([[1], [1], [1]], [1, 1, 1], [[4], [2], [2]])
  outputs = jax.device_get(masked_word.MaskedWord.predict(fake, None, batch))
  examples = [_pitch(0, "higher"), _pitch(1, "higher"), _pitch(2, "lower")]
  predicted, correct = tasks.get("pitch").paper_answers(examples, outputs, words, _decode)
  assert predicted == ["higher", "lower", "lower"]  # 2 > 1; 0.1 < 0.3; -1 < 3
  assert correct == [True, False, True]


# -- the candidate protocol: every option, multi-piece names as whole words --------------------
def test_candidates_are_scored_by_the_sum_of_their_pieces_log_probabilities():
  # Example 0, options ("cat", "eagle owl"), one input row each:
  #   "cat" (piece 3): p = 0.3                     -> ln 0.3  = -1.204
  #   "eagle owl" (1, 2): p = 0.5 then 0.5         -> ln 0.25 = -1.386
  # so "cat" wins as whole words, though "eagle" alone (0.5) or the mean of the pieces'
  # log-probabilities (ln 0.5) would beat it.
  # Example 1, options ("dog", "bird"): 0.2 vs 0.6 -> "bird".
  pad = [1, 1, 1, 1, 1, 1]
  logits = np.stack([
      np.stack([_logits([0.1, 0.1, 0.2, 0.3, 0.2, 0.1]), _logits(pad)]),
      np.stack([_logits([0.1, 0.5, 0.1, 0.1, 0.1, 0.1]),
                _logits([0.1, 0.1, 0.5, 0.1, 0.1, 0.1])]),
      np.stack([_logits([0.1, 0.1, 0.1, 0.3, 0.2, 0.2]), _logits(pad)]),
      np.stack([_logits([0.08, 0.08, 0.08, 0.08, 0.08, 0.6]), _logits(pad)]),
  ])
  batch = _batch([[2, 0], [2, 3], [2, 0], [2, 0]], [1, 2, 1, 1], [[3], [1, 2], [4], [5]])
  outputs = jax.device_get(masked_word.MaskedWord.predict(_fixed_masked_word(logits), None,
                                                          batch))
  np.testing.assert_allclose(outputs["label_logprob"],
                             np.log([0.3, 0.25, 0.2, 0.6]), rtol=1e-5)
  best = benchmark.candidate_answers(2, np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]),
                                     outputs["label_logprob"])
  assert best == [0, 1]  # "cat", "bird"


def test_candidate_ties_take_the_first_option_and_missing_rows_are_refused():
  assert benchmark.candidate_answers(1, [0, 0, 0], [0, 1, 2], [-1.0, -0.5, -0.5]) == [1]
  assert benchmark.candidate_answers(2, [1, 1], [0, 1], [-2.0, -1.0],
                                     without_options=[0]) == [None, 1]
  with pytest.raises(ValueError, match=r"examples without candidate rows: \[0\]"):
    benchmark.candidate_answers(2, [1], [0], [-1.0])


# -- "unseen": rows whose sentence is not in train ------------------------------------------
def test_unseen_rows_compare_sentences_lower_cased_with_whitespace_collapsed():
  train = [_animal(1, "cat", "Meow is the sound a [MASK] makes.", split="train")]
  dev = [_animal(1, "cat", "meow  is the SOUND a [MASK] makes. "),  # the train sentence
         _animal(2, "cat", "Meow is the sound of a [MASK]."),  # another sentence
         _animal(3, "dog", "Meow is the sound a [MASK] makes")]  # no full stop: another
  assert benchmark.unseen_in_train(dev, train) == [False, True, True]


def _answers(rights, candidate_rights):
  return [{"id": str(i), "answer": "x", "predicted": "x", "correct": r,
           "predicted_candidate": "x", "correct_candidate": c}
          for i, (r, c) in enumerate(zip(rights, candidate_rights))]


def test_evaluate_reports_accuracy_on_the_unseen_rows_with_their_count():
  # Five rows; rows 0 and 1 are seen in train (and right), rows 2-4 unseen: 1 of 3 right by
  # the paper protocol, 2 of 3 by the candidates (row 4 has no options).
  fake = object.__new__(masked_word.MaskedWord)
  answers = _answers([True, True, True, False, False], [True, True, False, True, None])
  fake.answers = lambda key, views, outputs: answers
  fake.unseen = {"animal/dev": [False, False, True, True, True]}
  fake.majority = {"animal/dev": 40.0}
  views = {"paper": {"span_has_audio": np.array([[1, 0], [0, 0], [0, 0], [0, 1], [0, 0]])}}
  metrics = masked_word.MaskedWord.evaluate(fake, "animal/dev", views, {})
  assert metrics == {
      "accuracy": 60.0, "accuracy_candidates": 75.0, "majority": 40.0, "examples": 5,
      "accuracy_unseen": pytest.approx(100 / 3), "accuracy_candidates_unseen": 50.0,
      "examples_unseen": 3, "with_audio": 40.0}
  fake.unseen = {"animal/dev": [False] * 5}  # Every sentence seen: nothing to average.
  metrics = masked_word.MaskedWord.evaluate(fake, "animal/dev", views, {})
  assert metrics["examples_unseen"] == 0 and math.isnan(metrics["accuracy_unseen"])


def test_merged_seeds_carry_unseen_accuracy_with_a_population_std(tmp_path, monkeypatch):
  per_seed = {0: (40.0, 20.0), 1: (50.0, 30.0), 2: (60.0, 70.0)}  # (accuracy, unseen)

  def fake_train(config, workdir, experiment, record=None, stamp=None):
    acc, unseen = per_seed[config.seed]
    return {"animal": {"dev": {"accuracy": acc, "examples": 10, "accuracy_unseen": unseen,
                               "examples_unseen": 7}}}

  monkeypatch.setattr(loop, "train_and_evaluate", fake_train)
  config = audiobert_config.get_config("smoke,no_audio")
  config.seeds = (0, 1, 2)
  merged = masked_word.run_seeds(config, str(tmp_path), lambda c, w: None)
  dev = merged["animal"]["dev"]
  # Unseen: mean 40, deviations -20, -10, 30 -> population variance 1400 / 3.
  assert dev["accuracy_unseen"] == 40.0
  assert dev["accuracy_unseen_std"] == pytest.approx(math.sqrt(1400 / 3))
  assert dev["examples_unseen"] == 7 and "examples_unseen_std" not in dev
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["animal"]["dev"] == dev
  md = (tmp_path / "results.md").read_text()
  assert "accuracy_unseen" in md and "population standard deviation" in md
  assert "does not occur in the task's train split" in md


# -- the span detector: masked loss, token F1, span exact match --------------------------------
def test_span_loss_ignores_special_and_padding_tokens():
  # Tokens: [CLS] a b [SEP] [PAD], labels -100 0 1 -100 -100. Probabilities of "inside":
  # a: 1/4 (label 0 -> -ln 3/4), b: 1/2 (label 1 -> -ln 1/2); the ignored positions are
  # confidently wrong and would dominate a loss that counted them.
  logits = np.stack([_logits([1, 99]), _logits([3, 1]), _logits([1, 1]), _logits([1, 99]),
                     _logits([1, 99])])[None]

  class Module:
    def apply(self, variables, *args, **kwargs):
      return {"logits": jax.numpy.asarray(logits)}

  fake = object.__new__(span_run.SpanTask)
  fake.module = Module()
  ones = np.ones((1, 5), np.int32)
  batch = {"input_ids": ones, "attention_mask": ones, "token_type_ids": ones,
           "span_labels": np.array([[IGNORE, 0, 1, IGNORE, IGNORE]], np.int32)}
  loss, aux = span_run.SpanTask.loss(fake, None, batch, jax.random.key(0))
  assert float(loss) == pytest.approx((math.log(4 / 3) + math.log(2)) / 2, rel=1e-6)
  assert float(aux["token_accuracy"]) == 0.5  # a: argmax 0, right; b: a tie, argmax 0


def test_runs_are_maximal_and_inclusive():
  assert span_run.runs(np.array([0, 1, 1, 0, 1, 0, 1, 1])) == [(1, 2), (4, 4), (6, 7)]
  assert span_run.runs(np.array([1, 1, 1])) == [(0, 2)]
  assert span_run.runs(np.array([0, 0])) == []
  # Two gold spans that touch are two spans, not one.
  assert span_run.gold_runs(np.array([0, 1, 1, 2, 2, 0])) == [(1, 2), (3, 4)]


def _span_arrays():
  """Two sentences. Tokens 0 and the last are [CLS]/[SEP] (-100), then padding (-100).
  Row 0: one gold span, tokens 2-3. Row 1: two gold spans, tokens 1-2 and 4."""
  labels = np.array([[IGNORE, 0, 1, 1, 0, IGNORE, IGNORE],
                     [IGNORE, 1, 1, 0, 1, 0, IGNORE]], np.int32)
  span_ids = np.array([[0, 0, 1, 1, 0, 0, 0],
                       [0, 1, 1, 0, 2, 0, 0]], np.int32)
  return {"span_labels": labels, "span_ids": span_ids}


def test_span_metrics_of_exact_predictions():
  pred = np.array([[1, 0, 1, 1, 0, 1, 1],  # predictions on [CLS]/[SEP]/padding are ignored
                   [0, 1, 1, 0, 1, 0, 0]])
  m = span_run.span_metrics(pred, _span_arrays())
  for name in ("token_f1", "token_precision", "token_recall", "span_precision",
               "span_recall", "span_f1"):
    assert m[name] == pytest.approx(100.0), name
  assert m["examples"] == 2


def test_a_span_boundary_one_token_off_is_a_span_miss_and_a_token_error():
  # Row 0: the gold span 2-3 predicted as 2-4 (its end one token late). Row 1: the first span
  # 1-2 predicted as 2 alone (its start one token late); the second, token 4, exactly.
  pred = np.array([[0, 0, 1, 1, 1, 0, 0],
                   [0, 0, 1, 0, 1, 0, 0]])
  m = span_run.span_metrics(pred, _span_arrays())
  # Tokens: tp = 2 + 2 = 4, fp = 1 (row 0, token 4), fn = 1 (row 1, token 1).
  # P = 4/5, R = 4/5, F1 = 4/5.
  assert m["token_precision"] == pytest.approx(80.0)
  assert m["token_recall"] == pytest.approx(80.0)
  assert m["token_f1"] == pytest.approx(80.0)
  # Spans: predicted (2,4), (2,2), (4,4); gold (2,3), (1,2), (4,4); one exact match.
  # P = 1/3, R = 1/3, F1 = 1/3.
  assert m["span_precision"] == pytest.approx(100 / 3)
  assert m["span_recall"] == pytest.approx(100 / 3)
  assert m["span_f1"] == pytest.approx(100 / 3)


def test_predicted_span_text_is_cut_by_character_offsets():
  sentence = "The dog's bark is [MASK] than a mew."
  # Tokens: [CLS] the dog ' s bark is [MASK] than a mew . [SEP]
  offsets = [(0, 0), (0, 3), (4, 7), (7, 8), (8, 9), (10, 14), (15, 17), (18, 24),
             (25, 29), (30, 31), (32, 35), (35, 36), (0, 0)]
  labels = [1, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1]  # [CLS]/[SEP] labels never count
  assert spans_lib.spans_from_labels(sentence, offsets, labels) == (
      Span(4, 14, "dog's bark"), Span(32, 35, "mew"))


def test_span_metrics_leave_out_rows_missing_a_gold_span():
  # Row 1 has a gold span that is not in its sentence (kept for predictions only): its
  # labels are incomplete, so the detector's metrics read row 0 alone.
  fake = object.__new__(span_run.SpanTask)
  fake.scored = {"pitch/dev": np.array([0])}
  pred = np.array([[0, 0, 1, 1, 0, 0, 0],
                   [0, 0, 0, 1, 1, 1, 0]])
  m = span_run.SpanTask.evaluate(fake, "pitch/dev", {"all": _span_arrays()},
                                 {"all": {"pred": pred}})
  assert m["span_f1"] == pytest.approx(100.0) and m["token_f1"] == pytest.approx(100.0)
  assert m["examples"] == 1


@pytest.mark.parametrize("sentence,offsets,labels,expected", [
    # A span starting inside a word ("Cl|ucking") widens to the word.
    ("Clucking is the sound a [MASK] makes.", [(0, 2), (2, 8), (9, 11)], [0, 1, 0],
     ((0, 8, "Clucking"),)),
    # Starting and ending inside words: "Ho|ot is" -> "Hoot is"; "hig|h-pitched" keeps the
    # hyphenated word whole.
    ("Hoot is a high-pitched call.", [(0, 2), (2, 4), (5, 7), (10, 13), (13, 14)],
     [0, 1, 1, 0, 1], ((0, 7, "Hoot is"), (10, 22, "high-pitched"))),
    # Two runs inside one word merge into that word; punctuation stays outside.
    ("A squeaky, shrill noise.", [(2, 5), (5, 7), (7, 9), (9, 10)], [1, 0, 1, 0],
     ((2, 9, "squeaky"),)),
])
def test_detected_spans_are_widened_to_whole_words(sentence, offsets, labels, expected):
  found = spans_lib.spans_from_labels(sentence, offsets, labels)
  assert [(s.start, s.end, s.text) for s in found] == list(expected)
  for s in found:  # A span never cuts a word.
    assert s.start == 0 or not (sentence[s.start - 1].isalnum() and sentence[s.start].isalnum())
    assert s.end == len(sentence) or not (sentence[s.end - 1].isalnum()
                                          and sentence[s.end].isalnum())
