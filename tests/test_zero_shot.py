"""Zero-shot AuditoryBench scoring of decoder LMs against transformers' own log-likelihoods:
tiny random Llama and Gemma 2 models and a word-level tokenizer saved with
`save_pretrained`, the shipped AuditoryBench sample as data."""

import json
import re

import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from axk import hf
from axk.data import auditorybench
from axk.runs import zero_shot



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


def _config(family, vocab):
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
  model = cls(_config(family, len(vocab))).eval()
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


def test_run_answers_with_the_best_scoring_option(saved, tmp_path):
  """The command on the sample's test splits: its accuracy and every prediction are those of
  the options' transformers log-likelihoods."""
  path, pt = saved
  out = tmp_path / "zs"
  zero_shot.main([f"--model={path}", f"--data={_sample_dir()}", "--tasks=pitch,animal",
                  "--splits=test", "--dtype=float32", "--batch=8", f"--out={out}"])
  results = json.loads((out / "results.json").read_text())["results"]
  predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
  tokenizer = transformers.AutoTokenizer.from_pretrained(path)
  for task in ("pitch", "animal"):
    examples = auditorybench.load_split(_sample_dir(), task, "test",
                                        keep_missing_spans=True).examples
    right = 0
    mine = [p for p in predictions if p["id"].startswith(f"{task}/")]
    assert [p["id"] for p in mine] == [e.id for e in examples if e.options]
    for ex, pred in zip([e for e in examples if e.options], mine):
      scores = [_torch_log_likelihood(pt, tokenizer, ex.sentence.replace("[MASK]", o))
                for o in ex.options]
      np.testing.assert_allclose(pred["scores"], scores, rtol=1e-4, atol=1e-4)
      best = ex.options[int(np.argmax(scores))]
      assert pred["prediction"] == best
      right += best == ex.answer
    assert results[f"{task}/test"]["accuracy"] == pytest.approx(100 * right / len(mine))
    assert results[f"{task}/test"]["rows"] == len(mine)
  assert "| pitch | test |" in (out / "results.md").read_text()


def test_bad_arguments_are_one_line_before_loading_a_model(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    zero_shot.main(["--model=/nonexistent", "--tasks=pitch,sirens", f"--out={tmp_path}"])
  assert e.value.code == 2 and "no task sirens" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    zero_shot.main(["--model=/nonexistent", f"--data={tmp_path}", f"--out={tmp_path}"])
  assert str(e.value).startswith("error: ") and "\n" not in str(e.value)
  with pytest.raises(SystemExit) as e:
    zero_shot.main(["--model=/nonexistent/model", f"--data={_sample_dir()}", "--tasks=pitch",
                    "--splits=test", f"--out={tmp_path}"])
  assert str(e.value).startswith("error: ") and "/nonexistent/model" in str(e.value)
