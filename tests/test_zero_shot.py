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
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from axk import hf
from axk.data import auditorybench
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


def _hf_config(family, vocab):
  common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                initializer_range=0.2, attn_implementation="eager", bos_token_id=1,
                pad_token_id=0)
  if family == "llama":
    return transformers.LlamaConfig(num_hidden_layers=2, rms_norm_eps=1e-5,
                                    tie_word_embeddings=False, **common)
  return transformers.Gemma2Config(num_hidden_layers=3, rms_norm_eps=1e-6, sliding_window=4,
                                   query_pre_attn_scalar=12, attn_logit_softcapping=20.0,
                                   final_logit_softcapping=10.0, **common)


@pytest.fixture(scope="module", params=["llama", "gemma2"])
def saved(request, tmp_path_factory):
  """(folder with a model and its tokenizer, the PyTorch model)."""
  data_dir = _sample_dir()
  vocab = {"<pad>": 0, "<s>": 1, "<unk>": 2}
  for w in _words(data_dir):
    vocab.setdefault(w, len(vocab))
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
  tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>",
                                                   pad_token="<pad>", unk_token="<unk>")
  torch.manual_seed(0)
  family = request.param
  cls = transformers.LlamaForCausalLM if family == "llama" else transformers.Gemma2ForCausalLM
  model = cls(_hf_config(family, len(vocab))).eval()
  path = tmp_path_factory.mktemp(family)
  model.save_pretrained(path)
  tokenizer.save_pretrained(path)
  return str(path), model


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
