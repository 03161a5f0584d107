r"""Auditory span labels for GLUE's sentences from a decoder LLM (Llama 3, Gemma 2), to train
a span detector on (ITH labelled GLUE with an LLM, then trained its detector on the labels).

    python -m axk.label_spans --model=DECODER_DIR --data=/data/glue --out=W
    python -m axk.label_spans --model=D --data=sample --tasks=sst2,stsb --limit=20 --out=W
    python -m axk.main --config=configs/span.py --workdir=S --config.train.labels=W/labels.jsonl

Every text of the train and dev splits (MNLI: dev_matched and dev_mismatched) is put into
the prompt, whose `{sentence}` it fills; test splits are not labelled (the detector is
selected on the dev rows). A tokenizer with a chat template gets the prompt as a user message
(`add_generation_prompt=True`), others the prompt as it is. The decoder's greedy reply
(`axk.models.generate.greedy_generate`, up to `--max_new_tokens`) is read as a JSON list of
phrases (text around the list is ignored; a reply without one gives no spans and is
counted), and each phrase is located in its text: case-insensitively, on word boundaries, at
its first occurrence that overlaps no phrase located before it; a phrase not found is
dropped and counted.

The default prompt is axk's own, not the paper's: ITH's prompt is in its appendix, which axk
does not have. Pass that one (or any other) with `--prompt_file`, a `str.format` template
with one field, `{sentence}` (literal braces written `{{` and `}}`).

Outputs in `--out`:
  * `labels/<task>_<split>.jsonl`: a line per text, `{"id": "<row id>#0" (#1 for a
    pair's second), "sentence", "spans": [[start, end], ...], "split": "train" | "dev"}`, the
    format of `axk.data.spans.read_labels`, plus the reply (`reply`), the phrases read from
    it (`phrases`, null without a list) and those not found (`not_found`);
  * `labels.jsonl`: every split's lines of the tasks asked for, the file to pass as
    `--config.train.labels` of `configs/span.py`;
  * `label_summary.json`: per task and split, texts, texts with spans, replies without a
    list, spans found and phrases not found in their sentence;
  * `prompt.json`: the prompt and the model the labels came from.
A split whose labels file exists is not labelled again (`--limit` included): an interrupted
command continues. A folder labelled with another prompt is refused.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import re
import string
import sys
import textwrap
from collections.abc import Callable, Sequence

import numpy as np

from axk import hub
from axk.data import glue as glue_data
from axk.tasks import glue as glue_tasks
from axk.utils import files

NOTE = ("axk's own prompt, not the paper's (ITH's is in its appendix; pass it with "
        "--prompt_file)")

DEFAULT_PROMPT = (
    "List every phrase in the sentence below that describes a sound or names something "
    "that makes a sound (for example an animal, a musical instrument, a machine, a vehicle, "
    "a voice or the weather). Copy each phrase exactly as it is written in the sentence. "
    "Answer with a JSON list of strings and nothing else, for example [\"barking dog\", "
    "\"church bell\"], or [] if there is none.\n\nSentence: {sentence}")

LENGTH_BUCKET = 16  # Prompts are left-padded to a multiple of it: few shapes to compile.


def label_split_of(split: str) -> str:
  """The labels file's split ("train" or "dev") of a GLUE split."""
  return "train" if split == "train" else "dev"


def plan(tasks: Sequence[str]) -> list[tuple[str, str]]:
  """(task, split) of every train and dev split of `tasks`, in their specs' order."""
  return [(t, s) for t in tasks for s in glue_data.spec_of(t).splits
          if not s.startswith("test")]


def check_template(template: str, where: str = "the prompt") -> str:
  """`template` if it is a `str.format` template whose only field is `{sentence}`; else a
  ValueError of one line."""
  try:
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
  except ValueError as e:
    raise ValueError(f"{where}: not a str.format template ({e}); write literal braces as "
                     "{{ and }}") from None
  if "sentence" not in fields:
    raise ValueError(f"{where}: no {{sentence}} field to put the sentence in")
  other = sorted(set(fields) - {"sentence"})
  if other:
    raise ValueError(f"{where}: fields other than {{sentence}}: "
                     f"{', '.join('{' + f + '}' for f in other)}; write literal braces as "
                     "{{ and }}")
  return template


def parse_reply(reply: str) -> list[str] | None:
  """The phrases of the first list of strings in `reply` (JSON, or a Python literal with
  quotes of either kind; `[]` too), text around it ignored, each phrase stripped and blank
  ones dropped. None when `reply` holds no such list."""
  for start in (m.start() for m in re.finditer(r"\[", reply)):
    value = None
    try:
      value, _ = json.JSONDecoder().raw_decode(reply, start)
    except ValueError:
      for end in (m.end() for m in re.finditer(r"\]", reply[start:])):
        try:
          value = ast.literal_eval(reply[start:start + end])
          break
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
          continue
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
      return [v.strip() for v in value if v.strip()]
  return None


def _phrase_pattern(phrase: str) -> re.Pattern:
  """`phrase` case-insensitively, any run of whitespace for its own, with word boundaries at
  edges that are word characters."""
  body = r"\s+".join(re.escape(w) for w in phrase.split())
  head = r"(?<!\w)" if re.match(r"\w", phrase) else ""
  tail = r"(?!\w)" if re.search(r"\w$", phrase) else ""
  return re.compile(head + body + tail, re.IGNORECASE)


def locate(sentence: str, phrases: Sequence[str]
           ) -> tuple[list[tuple[int, int]], list[str]]:
  """(spans [(start, end)] sorted by start, phrases not found) of `phrases` in `sentence`:
  each at its first case-insensitive, whole-word occurrence that overlaps no span located
  before it."""
  spans, missing = [], []
  for phrase in phrases:
    pattern, at, found = _phrase_pattern(phrase), 0, None
    while (m := pattern.search(sentence, at)) is not None:
      if not any(m.start() < e and s < m.end() for s, e in spans):
        found = m.span()
        break
      at = m.start() + 1
    if found is None:
      missing.append(phrase)
    else:
      spans.append(found)
  return sorted(spans), missing


def text_rows(examples, task: str, split: str) -> list[dict]:
  """The texts of a split's rows: {"id", "sentence", "split"}, a pair's second after its
  first."""
  rows = []
  for e in examples:
    for k, text in enumerate((e.text_a, e.text_b) if e.text_b else (e.text_a,)):
      rows.append({"id": glue_data.text_id(e.id, k), "sentence": text,
                   "split": label_split_of(split)})
  return rows


def label_rows(rows: Sequence[dict], replies: Sequence[str]) -> list[dict]:
  """Each text row with its reply, the phrases read from it and the spans they give."""
  out = []
  for row, reply in zip(rows, replies, strict=True):
    phrases = parse_reply(reply)
    spans, missing = locate(row["sentence"], phrases or [])
    out.append({**row, "spans": [list(s) for s in spans], "reply": reply,
                "phrases": phrases, "not_found": missing})
  return out


def split_summary(path: str) -> dict:
  """A labels file's counts (`label_summary.json`'s entry of its split)."""
  summary = {"texts": 0, "texts_with_spans": 0, "replies_without_list": 0, "spans_found": 0,
             "spans_not_found": 0}
  for _, row in files.json_lines(path):
    summary["texts"] += 1
    summary["texts_with_spans"] += bool(row["spans"])
    summary["replies_without_list"] += row.get("phrases") is None
    summary["spans_found"] += len(row["spans"])
    summary["spans_not_found"] += len(row.get("not_found", ()))
  return summary


class Labeller:
  """A decoder and its tokenizer answering prompts greedily: `labeller(prompts)` -> the
  reply to each (special tokens dropped)."""

  def __init__(self, model: str, *, max_new_tokens: int = 64, batch_size: int = 8,
               dtype: str = "float32"):
    import transformers  # pylint: disable=g-import-not-at-top
    from axk import hf  # pylint: disable=g-import-not-at-top
    self.decoder = hf.load_decoder(model, dtype=dtype, param_dtype=dtype)
    self.path = self.decoder.path
    self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path)
    self.chat = bool(getattr(self.tokenizer, "chat_template", None))
    self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
    self.eos = self._eos_ids()
    t = self.tokenizer
    self.pad = next((i for i in (t.pad_token_id, *sorted(self.eos)) if i is not None), 0)

  def _eos_ids(self) -> set[int]:
    """Ids that end a reply: those of `generation_config.json`, `config.json` and the
    tokenizer's EOS token."""
    ids = set()
    for name in ("generation_config.json", "config.json"):
      value = (files.read_json(os.path.join(self.path, name)) or {}).get("eos_token_id")
      ids.update(value if isinstance(value, list) else [] if value is None else [value])
    if self.tokenizer.eos_token_id is not None:
      ids.add(self.tokenizer.eos_token_id)
    return {int(i) for i in ids}

  def encode(self, prompt: str) -> list[int]:
    """The token ids the decoder reads for `prompt` (through the chat template if any)."""
    if self.chat:
      text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                add_generation_prompt=True, tokenize=False)
      return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(self.tokenizer(prompt)["input_ids"])

  def generate(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """New tokens of a left-padded batch (`greedy_generate`)."""
    from axk.models.generate import greedy_generate  # pylint: disable=g-import-not-at-top
    return greedy_generate(self.decoder.module, self.decoder.params, ids, mask,
                           max_new_tokens=self.max_new_tokens, eos_token_ids=self.eos,
                           pad_token_id=self.pad)

  def __call__(self, prompts: Sequence[str], progress: Callable[[int], None] = lambda n: None
               ) -> list[str]:
    """The reply to each prompt, in order: prompts sorted by length, `batch_size` at a time
    (the last batch filled up), left-padded to a multiple of `LENGTH_BUCKET`; `progress`
    gets the number of prompts each batch answered."""
    encoded = [self.encode(p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    replies = [""] * len(prompts)
    for lo in range(0, len(order), self.batch_size):
      rows = order[lo:lo + self.batch_size]
      # The filler rows repeat the last one.
      taken = rows + [rows[-1]] * (self.batch_size - len(rows))
      width = -(-max(len(encoded[i]) for i in taken) // LENGTH_BUCKET) * LENGTH_BUCKET
      ids = np.full((len(taken), width), self.pad, np.int32)
      mask = np.zeros((len(taken), width), np.int32)
      for r, i in enumerate(taken):
        ids[r, width - len(encoded[i]):] = encoded[i]
        mask[r, width - len(encoded[i]):] = 1
      tokens = self.generate(ids, mask)
      for r, i in enumerate(rows):
        row = tokens[r].tolist()
        stop = next((k for k, t in enumerate(row) if t in self.eos), len(row))
        replies[i] = self.tokenizer.decode(row[:stop], skip_special_tokens=True)
      progress(len(rows))
    return replies


def _prompt_record(prompt: str, model: str) -> dict:
  return {"prompt": prompt, "default_prompt": prompt == DEFAULT_PROMPT, "model": model}


def run(model: str, data: str, out: str, tasks: Sequence[str] = glue_tasks.NAMES,
        prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 64, batch_size: int = 8,
        limit: int | None = None, layout: str = "auto", dtype: str = "float32",
        labeller: Callable[..., Labeller] | None = None) -> dict:
  """Labels the train and dev texts of `tasks` (see the module docstring); returns the
  summary. `labeller(model, max_new_tokens=, batch_size=, dtype=)` builds what answers the
  prompts (default: `Labeller`)."""
  check_template(prompt)
  if max_new_tokens < 1 or batch_size < 1 or (limit is not None and limit < 1):
    raise ValueError("--max_new_tokens, --batch_size and --limit must be at least 1")
  root = glue_data.resolve_dir(data)
  todo = plan(tasks)
  for task, split in todo:  # Every file is checked before the model loads.
    glue_data.split_files(root, task, split, layout)
  record_path = os.path.join(out, "prompt.json")
  record = files.read_json(record_path)
  if record is not None and record.get("prompt") != prompt:
    raise ValueError(f"{out} holds labels from another prompt ({record_path}); label into a "
                     "new --out, or pass the same prompt")
  path_of = lambda t, s: os.path.join(out, "labels", f"{t}_{s}.jsonl")
  pending = []
  for task, split in todo:
    if not os.path.exists(path_of(task, split)):
      examples = glue_data.read_split(root, task, split, layout)[:limit]
      pending.append((task, split, text_rows(examples, task, split)))
  if pending:
    import tqdm  # pylint: disable=g-import-not-at-top
    from tqdm.contrib.logging import logging_redirect_tqdm  # pylint: disable=g-import-not-at-top
    answer = (labeller or Labeller)(model, max_new_tokens=max_new_tokens,
                                    batch_size=batch_size, dtype=dtype)
    files.write_json(record_path, _prompt_record(prompt, model))
    total = sum(len(rows) for *_, rows in pending)
    with tqdm.tqdm(total=total, desc="labelling", unit="text") as bar, logging_redirect_tqdm():
      for task, split, rows in pending:
        bar.set_postfix_str(f"{task}/{split}")
        replies = answer([prompt.format(sentence=r["sentence"]) for r in rows], bar.update)
        labelled = label_rows(rows, replies)
        files.write_text(path_of(task, split), "".join(
            json.dumps(r, ensure_ascii=False) + "\n" for r in labelled))
        logging.info("%s/%s: %d texts, %d spans in %s", task, split, len(labelled),
                     sum(len(r["spans"]) for r in labelled), path_of(task, split))
  summary = {}
  for task, split in todo:
    summary.setdefault(task, {})[split] = split_summary(path_of(task, split))
  parts = []
  for task, split in todo:
    with open(path_of(task, split), encoding="utf-8") as f:
      parts.append(f.read())
  files.write_text(os.path.join(out, "labels.jsonl"), "".join(parts))
  files.write_json(os.path.join(out, "label_summary.json"), summary)
  return summary


def summary_markdown(summary: dict) -> str:
  lines = ["| task | split | texts | texts with spans | replies without a list | spans | "
           "phrases not found |", "| --- | --- | --- | --- | --- | --- | --- |"]
  for task, splits in summary.items():
    for split, s in splits.items():
      lines.append(f"| {task} | {split} | {s['texts']} | {s['texts_with_spans']} | "
                   f"{s['replies_without_list']} | {s['spans_found']} | "
                   f"{s['spans_not_found']} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  shown = "\n".join(textwrap.fill(p, 88, initial_indent="  ", subsequent_indent="  ")
                    for p in DEFAULT_PROMPT.split("\n"))
  parser = argparse.ArgumentParser(
      description=textwrap.fill(" ".join(__doc__.split("\n\n")[0].split()), 88),
      epilog=f"The default prompt is {NOTE}:\n\n{shown}",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", required=True,
                      help="Llama 3 or Gemma 2 checkpoint folder (or hub id)")
  parser.add_argument("--data", required=True, help="GLUE folder, or `sample`")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--tasks", default=",".join(glue_tasks.NAMES))
  parser.add_argument("--prompt_file", default="",
                      help="a str.format template with {sentence}; default: " + NOTE)
  parser.add_argument("--max_new_tokens", type=int, default=64)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--limit", type=int, default=None,
                      help="label only the first N rows of each split")
  parser.add_argument("--layout", default="auto", choices=glue_data.LAYOUTS)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="the decoder's parameters and matmuls")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  tasks = tuple(t for t in args.tasks.split(",") if t)
  try:
    prompt = DEFAULT_PROMPT
    if args.prompt_file:
      with open(args.prompt_file, encoding="utf-8") as f:
        prompt = check_template(f.read(), f"--prompt_file={args.prompt_file}")
    summary = run(args.model, args.data, args.out, tasks, prompt, args.max_new_tokens,
                  args.batch_size, args.limit, args.layout, args.dtype)
  except (glue_data.GlueDataError, hub.ModelNotAvailable, ValueError, OSError) as e:
    # The model is named `model.init` in the run configs; here it is a flag.
    message = " ".join(str(e).replace("--config.model.init", "--model").split())
    print(f"error: {message}", file=sys.stderr)
    return 2
  print(summary_markdown(summary), end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
