"""GLUE span labels from a decoder LLM (`axk.label_spans`): greedy decoding against
transformers' `generate` on tiny random Llama 3 and Gemma 2 models (float32, a left-padded
batch), the reply parser and span locator against hand-written replies and hand-counted
offsets, and the command on the shipped sample GLUE data."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers

from axk import hf
from axk import label_spans
from axk.data import spans as spans_lib
from axk.features import tiny
from axk.models.generate import greedy_generate

pytestmark = pytest.mark.usefixtures("torch_one_thread")

VOCAB = 64


def llama(seed=0):
  config = transformers.LlamaConfig(
      vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
      initializer_range=0.2, rope_scaling={"rope_type": "llama3", "rope_theta": 500000.0,
                                           "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 16},
      attn_implementation="eager")
  torch.manual_seed(seed)
  return transformers.LlamaForCausalLM(config)


def gemma2(seed=0):
  # Untied embeddings: a tied tiny Gemma 2 repeats its last token whatever it reads. A
  # window of 4, shorter than the longest prompt, so the local layer masks.
  config = transformers.Gemma2Config(
      vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
      initializer_range=0.2, sliding_window=4, query_pre_attn_scalar=12,
      attn_logit_softcapping=20.0, final_logit_softcapping=10.0, tie_word_embeddings=False,
      attn_implementation="eager")
  torch.manual_seed(seed)
  return transformers.Gemma2ForCausalLM(config)


@pytest.fixture(scope="module", params=["llama", "gemma2"])
def decoder(request, tmp_path_factory):
  """(PyTorch model, axk model loaded from its save_pretrained directory)."""
  pt = {"llama": llama, "gemma2": gemma2}[request.param]().eval()
  with torch.no_grad():  # Norm weights away from their identity start, so they count.
    for name, p in pt.named_parameters():
      if name.endswith("norm.weight"):
        p.add_(0.3 * torch.randn_like(p))
  path = tmp_path_factory.mktemp(request.param)
  pt.save_pretrained(path)
  return pt, hf.load_decoder(str(path))


def left_padded(lengths, seed=0):
  rng = np.random.default_rng(seed)
  width = max(lengths)
  ids = np.zeros((len(lengths), width), np.int64)
  mask = np.zeros_like(ids)
  for r, n in enumerate(lengths):
    ids[r, width - n:] = rng.integers(3, VOCAB, n)
    mask[r, width - n:] = 1
  return ids, mask


def hf_generate(pt, ids, mask, eos=None, new=6):
  with torch.no_grad():
    out = pt.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                      do_sample=False, max_new_tokens=new, eos_token_id=eos, pad_token_id=0)
  return out.numpy()[:, ids.shape[1]:]


def test_greedy_generate_equals_transformers_generate(decoder):
  """Three prompts of 9, 3 and 6 tokens, left-padded, 6 new tokens: without an EOS id, and
  with one that ends row 1 early (a token of row 1 before its last that row 0 never emits)
  so that transformers pads it with 0 while row 0 goes on."""
  pt, model = decoder
  ids, mask = left_padded([9, 3, 6], seed=2)
  want = hf_generate(pt, ids, mask)
  assert want.shape == (3, 6)
  got = greedy_generate(model.module, model.params, ids, mask, max_new_tokens=6)
  np.testing.assert_array_equal(got, want)

  at = next(k for k in range(1, 5) if want[1, k] not in want[0] and want[1, k] != 0)
  eos = int(want[1, at])
  want = hf_generate(pt, ids, mask, eos=eos)
  assert (want[1, at + 1:] == 0).all() and want.shape == (3, 6)
  got = greedy_generate(model.module, model.params, ids, mask, max_new_tokens=6,
                        eos_token_ids=[eos], pad_token_id=0)
  np.testing.assert_array_equal(got, want)


def test_generation_stops_when_every_row_has_finished(decoder):
  pt, model = decoder
  ids, mask = left_padded([4, 7], seed=1)
  first = hf_generate(pt, ids, mask)[:, 0]
  want = hf_generate(pt, ids, mask, eos=[int(t) for t in first])
  assert want.shape == (2, 1)
  got = greedy_generate(model.module, model.params, ids, mask, max_new_tokens=6,
                        eos_token_ids=first.tolist())
  np.testing.assert_array_equal(got, want)


# -- Replies and spans, against hand-written replies and hand-counted offsets.

@pytest.mark.parametrize("reply,phrases", [
    ('Sure! The phrases are ["barking dog", "Church Bell"]. Hope this helps.',
     ["barking dog", "Church Bell"]),
    ('```json\n[" rain ", ""]\n```', ["rain"]),
    ("[]", []),
    ("Phrases: ['owl', \"hoot\"]", ["owl", "hoot"]),
    ('Rule [1] first, then ["bell"]', ["bell"]),
    ("There is no sound in this sentence.", None),
    ('["unfinished', None),
])
def test_parse_reply(reply, phrases):
  assert label_spans.parse_reply(reply) == phrases


SENTENCE = "A dog barked, then the DOG howled; concatenate the cat's meow."


def test_locate_case_repeats_word_boundaries_and_misses():
  # "dog" 2-5; "Dog" again: 2-5 is taken, so "DOG" 23-26; "cat" not inside "concatenate"
  # (38-41) but in "cat's" 51-54; "meow" 57-61; "dog barked" (2-12) overlaps 2-5 and occurs
  # nowhere else; "bird" is not there.
  spans, missing = label_spans.locate(
      SENTENCE, ["dog", "Dog", "cat", "bird", "dog barked", "meow"])
  assert spans == [(2, 5), (23, 26), (51, 54), (57, 61)]
  assert missing == ["bird", "dog barked"]
  assert label_spans.locate("concatenate", ["cat"]) == ([], ["cat"])
  assert label_spans.locate("the church  bell rang", ["Church bell"]) == ([(4, 16)], [])


def test_label_rows_count_replies_without_a_list():
  rows = [{"id": "a#0", "sentence": SENTENCE, "split": "train"},
          {"id": "b#0", "sentence": SENTENCE, "split": "dev"}]
  out = label_spans.label_rows(rows, ['I see ["Meow", "horse"]', "no idea"])
  assert out[0]["spans"] == [[57, 61]] and out[0]["not_found"] == ["horse"]
  assert out[0]["phrases"] == ["Meow", "horse"]
  assert out[1]["spans"] == [] and out[1]["phrases"] is None and out[1]["not_found"] == []


def test_prompt_templates():
  assert label_spans.check_template(label_spans.DEFAULT_PROMPT)
  assert "Sentence: a bell" in label_spans.DEFAULT_PROMPT.format(sentence="a bell")
  for bad, message in (("Find the sounds: {text}", "no {sentence} field"),
                       ('{sentence} as {"spans": []}', "literal braces"),
                       ("{sentence} {", "not a str.format template")):
    with pytest.raises(ValueError, match=message):
      label_spans.check_template(bad)


# -- The labeller and the command, with a tiny random Llama and a word-level tokenizer.

WORDS = ("user", "assistant", "hello", "church", "drum", "roof")


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory):
  return tiny.build_decoder(str(tmp_path_factory.mktemp("tiny") / "llama"), WORDS)


def test_labeller_replies_equal_transformers_generate_one_prompt_at_a_time(tiny_decoder):
  """Sorted by length, batched two at a time (the last batch filled up), left-padded to a
  multiple of 16: each reply is what transformers generates for its prompt alone."""
  prompts = ["hello dog , the church bell .", "a drum", "rain on the roof of the old "
             "church , a bell , a dog and a bird , the sound of water"]
  labeller = label_spans.Labeller(tiny_decoder, max_new_tokens=5, batch_size=2)
  assert not labeller.chat and labeller.eos == set()
  pt = transformers.AutoModelForCausalLM.from_pretrained(tiny_decoder).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_decoder)
  want = []
  for p in prompts:
    ids = tokenizer(p, return_tensors="pt")["input_ids"]
    with torch.no_grad():
      out = pt.generate(input_ids=ids, do_sample=False, max_new_tokens=5, pad_token_id=0)
    want.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
  seen = []
  assert labeller(prompts, seen.append) == want
  assert seen == [2, 1]


def test_the_chat_template_wraps_the_prompt(tiny_decoder, tmp_path):
  tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_decoder)
  vocab = tokenizer.get_vocab()
  # Without a template: `<s>` and the prompt's words.
  plain = label_spans.Labeller(tiny_decoder)
  assert plain.encode("Hello dog") == [1, vocab["hello"], vocab["dog"]]
  tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
                             "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
  tokenizer.save_pretrained(str(tmp_path))
  for name in ("config.json", "model.safetensors"):
    shutil.copy(os.path.join(tiny_decoder, name), tmp_path / name)
  chat = label_spans.Labeller(str(tmp_path))
  assert chat.chat
  assert chat.encode("Hello dog") == [vocab[w] for w in
                                      ("user", ":", "hello", "dog", "assistant", ":")]


def read(path):
  return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_command_with_the_tiny_decoder_writes_labels_and_continues(tiny_decoder, tmp_path,
                                                                   monkeypatch):
  out = tmp_path / "w"
  args = [f"--model={tiny_decoder}", "--data=sample", f"--out={out}", "--tasks=sst2,stsb",
          "--limit=2", "--max_new_tokens=4", "--batch_size=4"]
  assert label_spans.main(args) == 0
  names = sorted(p.name for p in (out / "labels").iterdir())
  assert names == ["sst2_dev.jsonl", "sst2_train.jsonl", "stsb_dev.jsonl", "stsb_train.jsonl"]
  rows = spans_lib.read_labels(str(out / "labels" / "stsb_dev.jsonl"))
  assert [r.id for r in rows] == ["stsb/dev/0#0", "stsb/dev/0#1", "stsb/dev/1#0",
                                  "stsb/dev/1#1"]
  assert {r.split for r in rows} == {"dev"}
  assert rows[0].sentence == "The kettle's whistle echoed behind the school."
  every = spans_lib.read_labels(str(out / "labels.jsonl"))
  assert len(every) == 2 + 2 + 4 + 4
  assert [e.split for e in every].count("train") == 6
  summary = json.loads((out / "label_summary.json").read_text())
  assert {t: {s: v["texts"] for s, v in splits.items()} for t, splits in summary.items()} == {
      "sst2": {"train": 2, "dev": 2}, "stsb": {"train": 4, "dev": 4}}
  assert all(isinstance(r["reply"], str) for r in read(out / "labels" / "sst2_train.jsonl"))
  record = json.loads((out / "prompt.json").read_text())
  assert record["default_prompt"] and record["prompt"] == label_spans.DEFAULT_PROMPT

  # A rerun loads no model; with one split's file gone, it labels that split alone.
  before = {p.name: p.read_bytes() for p in (out / "labels").iterdir()}

  class Refused:
    def __init__(self, *args, **kwargs):
      raise AssertionError("the model was loaded although every split is done")

  monkeypatch.setattr(label_spans, "Labeller", Refused)
  assert label_spans.main(args) == 0
  assert {p.name: p.read_bytes() for p in (out / "labels").iterdir()} == before

  asked = []

  class Counting:
    def __init__(self, *args, **kwargs):
      pass

    def __call__(self, prompts, progress):
      asked.extend(prompts)
      return ["[]"] * len(prompts)

  (out / "labels" / "sst2_dev.jsonl").unlink()
  monkeypatch.setattr(label_spans, "Labeller", Counting)
  assert label_spans.main(args) == 0
  assert len(asked) == 2 and "a drum solo in this film was delightful" in asked[0]
  assert {p.name: p.read_bytes() for p in (out / "labels").iterdir()
          if p.name != "sst2_dev.jsonl"} == {k: v for k, v in before.items()
                                             if k != "sst2_dev.jsonl"}


class FixedReply:
  """Answers every prompt with the same list, and a sentence about an owl with none."""

  def __init__(self, model, *, max_new_tokens, batch_size, dtype):
    assert (max_new_tokens, batch_size, dtype) == (64, 8, "float32")  # The defaults.

  def __call__(self, prompts, progress):
    progress(len(prompts))
    return ["I cannot tell." if "owl" in p else
            'Here you go: ["Church Bell", "rain on the roof", "drum"]' for p in prompts]


def test_command_spans_and_summary_from_a_fixed_reply(tmp_path, monkeypatch, capsys):
  """Three rows per split. Counted by hand from the sample files: SST-2 train: "a baby's
  laugh ..." 3 phrases not found, "the owl's hoot ..." no list, "the church bell in ..." the
  bell at 4-15 and 2 not found; SST-2 dev: "a drum solo ..." drum at 2-6 and 2 not found,
  two rows of "ocean waves" 3 each not found; STS-B train: both texts of row 0 "The rain on
  the roof ..." 4-20 and 2 not found each, row 1 (a lion's roar) 3 + 3 not found, row 2
  "A drum solo ..." 2-6 and 2 not found, "A sound echoed somewhere." 3; STS-B dev: kettle
  3 + 3, owl twice no list, violin 3, "A sound ..." 3."""
  monkeypatch.setattr(label_spans, "Labeller", FixedReply)
  out = tmp_path / "w"
  assert label_spans.main([f"--model={tmp_path}/unused", "--data=sample", f"--out={out}",
                           "--tasks=sst2,stsb", "--limit=3"]) == 0
  summary = json.loads((out / "label_summary.json").read_text())
  counts = lambda texts, with_spans, no_list, found, missing: dict(
      texts=texts, texts_with_spans=with_spans, replies_without_list=no_list,
      spans_found=found, spans_not_found=missing)
  assert summary == {"sst2": {"train": counts(3, 1, 1, 1, 5), "dev": counts(3, 1, 0, 1, 8)},
                     "stsb": {"train": counts(6, 3, 0, 3, 15), "dev": counts(6, 0, 2, 0, 12)}}
  spans = {e.id: [(s.start, s.end, s.text) for s in e.spans]
           for e in spans_lib.read_labels(str(out / "labels.jsonl"))}
  assert spans["sst2/train/2#0"] == [(4, 15, "church bell")]
  assert spans["sst2/dev/0#0"] == [(2, 6, "drum")]
  assert spans["stsb/train/0#0"] == spans["stsb/train/0#1"] == [
      (4, 20, "rain on the roof")]
  assert spans["stsb/train/2#0"] == [(2, 6, "drum")]
  assert spans["stsb/train/2#1"] == [] and spans["stsb/dev/1#0"] == []
  table = capsys.readouterr().out
  assert "| stsb | train | 6 | 3 | 0 | 3 | 15 |" in table

  # Another prompt into the same folder is refused in one line.
  prompt = tmp_path / "prompt.txt"
  prompt.write_text("Sounds in {sentence}?\n")
  assert label_spans.main([f"--model={tmp_path}/unused", "--data=sample", f"--out={out}",
                           "--tasks=sst2", f"--prompt_file={prompt}"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1 and "another prompt" in err


def test_one_line_errors(tiny_decoder, tmp_path, capsys):
  prompt = tmp_path / "prompt.txt"
  prompt.write_text("List the sounds in: {text}\n")
  base = ["--data=sample", f"--out={tmp_path}/w", "--tasks=sst2", "--limit=1"]
  cases = [([f"--model={tiny_decoder}", f"--prompt_file={prompt}"], "no {sentence} field"),
           ([f"--model={tmp_path}/no_such_model"], "--model="),
           ([f"--model={tiny_decoder}", f"--data={tmp_path}/no_glue"], "SST-2")]
  for extra, message in cases:
    assert label_spans.main(base + extra) == 2, extra
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
  assert not (tmp_path / "w" / "labels").exists()
