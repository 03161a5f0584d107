"""Tokenisation of AuditoryBench examples for masked-LM models.

Every sentence is tokenised as written, with character offsets, so that span masks are
exact and predictions can be traced back to characters. Two answer protocols fill the
`[MASK]`:

* `encode(protocol="paper")`: the published one. `[MASK]` becomes as many mask tokens as
  the gold answer has word pieces, and a prediction is right when every piece is.
  The gold answer's length leaks into the input.
* `encode_candidates`: the leak-free one. Every candidate answer gets its own input, with
  as many mask tokens as it has pieces, and is scored by the log-probability of its pieces.

Arrays are int32 and padded to a multiple of `BUCKET`, so that a jitted step sees only a
few shapes.

A sentence longer than `max_length` tokens is cut around its `[MASK]` (`mask_window`): the
special tokens stay, and so does the window of `max_length` tokens centred on the mask; the
tokens outside it are dropped, with a warning naming the example and how many were dropped.
The span detector applies the same rule (`axk.features.detector`), so both read the same
words of an overlong sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import logging
import os
import pathlib
import weakref

import numpy as np
import transformers

from axk.data.types import Example
from axk.data.types import MASK
from axk.data.types import Span

logger = logging.getLogger(__name__)
# Sentences are tokenised whole and their length checked here (`max_length`, one line naming
# the row); transformers' own "Token indices sequence length is longer than ..." warning
# about the same thing is silenced at its source.
logging.getLogger(transformers.tokenization_utils_base.__name__).setLevel(logging.ERROR)

# Row lengths are rounded up to a multiple of this.
BUCKET = 16
# Label value ignored by the losses (the PyTorch/HF convention).
IGNORE = -100
PROTOCOLS = ("paper", "single")


def load_tokenizer(model_dir_or_id: str | os.PathLike[str]) -> transformers.PreTrainedTokenizerBase:
  """Loads the fast tokenizer of a model folder (or hub id).

  Args:
    model_dir_or_id: a local model folder, or a hub id such as "bert-base-uncased".
      Anything that looks like a path (absolute, or starting with "." or "~") or exists
      locally is treated as a folder.

  Returns:
    The tokenizer; it is fast (offsets are needed) and turns the string "[MASK]" into
    its single mask token.

  Raises:
    FileNotFoundError: a local folder that does not exist.
    ValueError: the tokenizer is not fast or has no `[MASK]` token.
  """
  name = os.fspath(model_dir_or_id)
  local = pathlib.Path(name).expanduser()
  looks_local = local.is_absolute() or name.startswith((".", "~")) or local.exists()
  if looks_local:
    if not local.is_dir():
      raise FileNotFoundError(f"tokenizer folder {local} does not exist")
    name = str(local)
  tokenizer = transformers.AutoTokenizer.from_pretrained(name, use_fast=True)
  if not tokenizer.is_fast:
    raise ValueError(f"{name}: no fast tokenizer; character offsets need one")
  text, _ = model_text(MASK, tokenizer)
  pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
  if tokenizer.mask_token_id is None or pieces != [tokenizer.mask_token_id]:
    raise ValueError(f"{name}: its mask token {tokenizer.mask_token!r} does not tokenize to "
                     f"one mask token (got {pieces})")
  return tokenizer


def model_text(sentence: str, tokenizer: transformers.PreTrainedTokenizerBase):
  """`sentence` as `tokenizer` reads it, and the map of its character offsets back.

  The data writes the mask as BERT's `[MASK]`; a tokenizer with another mask token (RoBERTa's
  `<mask>`) reads the sentence with its own mask token in its place. `back((start, end))`
  maps an offset of the returned text to `sentence`: the mask token covers `[MASK]` (RoBERTa's
  also takes the space before it), characters after it move by the difference in length.

  Returns:
    (text, back).
  """
  token = tokenizer.mask_token
  at = sentence.find(MASK)
  if token is None or token == MASK or at < 0:
    return sentence, lambda offset: tuple(offset)
  delta = len(token) - len(MASK)
  after = at + len(token)

  def back(offset):
    start, end = offset
    if end <= at:
      return (start, end)
    if start >= after:
      return (start - delta, end - delta)
    return (at, at + len(MASK))

  return sentence[:at] + token + sentence[at + len(MASK):], back


def mask_window(length: int, mask_at: int, max_length: int, *, head: int = 1,
                tail: int = 1, extra: int = 0) -> tuple[int, int]:
  """The token positions `[start, end)` an overlong sentence keeps around its `[MASK]`.

  A tokenised sentence has `length` tokens: `head` special tokens, its words, `tail` special
  tokens. Its row also gets `extra` tokens (the mask repeated for an answer of several
  pieces). When `length + extra <= max_length` everything is kept: `(head, length - tail)`.
  Otherwise the special tokens stay and the words keep a window of `max_length - head - tail
  - extra` tokens around the mask: `(budget - 1) // 2` before it, the rest from it on, moved
  inwards where the sentence ends first. The tokens outside the window are dropped.

  Raises:
    ValueError: `max_length` leaves no room for a word.
  """
  if length + extra <= max_length:
    return head, length - tail
  budget = max_length - head - tail - extra
  if budget < 1:
    raise ValueError(f"max_length={max_length} leaves no room for the sentence "
                     f"({head + tail} special tokens, {extra} more mask tokens)")
  start = max(head, mask_at - (budget - 1) // 2)
  end = min(start + budget, length - tail)
  return end - budget, end


def cut_note(where: str, length: int, window: tuple[int, int], max_length: int, *,
             head: int = 1, tail: int = 1, reader: str = "the model") -> str:
  """The warning for a sentence cut by `mask_window`: where, its size, what was dropped."""
  start, end = window
  before, after = start - head, length - tail - end
  return (f"{where}: {length} tokens, more than {reader}'s max_length={max_length}; it "
          f"reads the {end - start} around [MASK] and drops {before + after} "
          f"({before} before, {after} after)")


def after_space(sentence: str) -> bool:
  """Whether the sentence's `[MASK]` follows a space (`answer_pieces`' `after_space`)."""
  at = sentence.find(MASK)
  return at > 0 and sentence[at - 1].isspace()


_TAKES_SPACE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def mask_takes_space(tokenizer: transformers.PreTrainedTokenizerBase) -> bool:
  """Whether the mask token takes the space before it (RoBERTa's `<mask>`, `lstrip`), so
  that the word it stands for is the word after a space (`Ġhigher`); BERT's `[MASK]` too,
  where a space makes no token."""
  if tokenizer not in _TAKES_SPACE:
    with_space, without = (tokenizer(f"a{space}{tokenizer.mask_token}", add_special_tokens=False
                                     )["input_ids"] for space in (" ", ""))
    _TAKES_SPACE[tokenizer] = len(with_space) == len(without)
  return _TAKES_SPACE[tokenizer]


def answer_pieces(tokenizer: transformers.PreTrainedTokenizerBase, text: str, *,
                  after_space: bool = True) -> list[int]:
  """Word-piece ids of an answer, without special tokens, as the tokenizer writes it at a
  mask after a space (`after_space`, where the data's masks are) or not. WordPiece (BERT)
  writes a word the same either way; byte-level BPE (RoBERTa) writes the space into the
  word's first token (`Ġhigher`) where its mask token takes the space (`mask_takes_space`)."""
  space = " " if after_space and mask_takes_space(tokenizer) else ""
  pieces = tokenizer(space + text, add_special_tokens=False)["input_ids"]
  if not pieces:
    raise ValueError(f"answer {text!r} has no word pieces")
  return pieces


@dataclasses.dataclass(frozen=True)
class _Tokenised:
  """One sentence, tokenised as written, with its `[MASK]` located."""

  ids: list[int]
  type_ids: list[int]
  offsets: list[tuple[int, int]]
  special: list[bool]
  mask_at: int


def _tokenise(
    examples: Sequence[Example],
    tokenizer: transformers.PreTrainedTokenizerBase,
    masked: bool = True,
) -> list[_Tokenised]:
  """Each sentence tokenised with offsets; `masked`: it must have one mask token (else the
  first word stands in for it, where an overlong sentence's window starts)."""
  if not examples:
    return []
  texts = [model_text(e.sentence, tokenizer) for e in examples]
  batch = tokenizer(
      [text for text, _ in texts],
      add_special_tokens=True,
      return_offsets_mapping=True,
      return_special_tokens_mask=True,
      return_token_type_ids=True,
      verbose=False,  # Overlong sentences are cut around the mask, and said so, by `_fit`.
  )
  out = []
  for i, example in enumerate(examples):
    ids = list(batch["input_ids"][i])
    at = [j for j, t in enumerate(ids) if t == tokenizer.mask_token_id]
    if not masked:
      special = batch["special_tokens_mask"][i]
      at = at[:1] or [next((j for j, s in enumerate(special) if not s), 0)]
    if len(at) != 1:
      raise ValueError(f"{example.id}: expected one mask token, found {len(at)} in "
                       f"{tokenizer.convert_ids_to_tokens(ids)}")
    out.append(_Tokenised(
        ids=ids,
        type_ids=list(batch["token_type_ids"][i]),
        offsets=[texts[i][1](o) for o in batch["offset_mapping"][i]],
        special=[bool(s) for s in batch["special_tokens_mask"][i]],
        mask_at=at[0],
    ))
  return out


def _fit(example: Example, tok: _Tokenised, extra: int, max_length: int, warn
         ) -> _Tokenised:
  """`tok` cut to `max_length` tokens around its mask (`mask_window`), `extra` more mask
  tokens to come; `warn` is called with a line when tokens are dropped."""
  length = len(tok.ids)
  head = next((i for i, s in enumerate(tok.special) if not s), length)
  tail = length - max((i + 1 for i, s in enumerate(tok.special) if not s), default=head)
  start, end = mask_window(length, tok.mask_at, max_length, head=head, tail=tail, extra=extra)
  if (start, end) == (head, length - tail):
    return tok
  if warn is not None:
    warn(cut_note(example.id, length, (start, end), max_length, head=head, tail=tail))
  keep = [*range(head), *range(start, end), *range(length - tail, length)]
  return _Tokenised(ids=[tok.ids[i] for i in keep], type_ids=[tok.type_ids[i] for i in keep],
                    offsets=[tok.offsets[i] for i in keep],
                    special=[tok.special[i] for i in keep],
                    mask_at=tok.mask_at - start + head)


def kept_words(example: Example, tokenizer: transformers.PreTrainedTokenizerBase, *,
               max_length: int, extra: int = 0, warn=None) -> list[tuple[int, int]]:
  """The character ranges of the tokens (special tokens left out) that a row of `example`
  keeps, `extra` more mask tokens to come: all of them, unless the sentence is cut
  (`mask_window`; `warn` as in `encode`)."""
  tok = _fit(example, _tokenise([example], tokenizer)[0], extra, max_length, warn)
  return [o for o, special in zip(tok.offsets, tok.special) if not special]


def _span_tags(tok: _Tokenised, spans: Sequence[Span]) -> tuple[list[int], list[int]]:
  """Per token: the 1-based index of the first span it overlaps (0: none), and the
  token-classification label (1 in a span, 0 outside, `IGNORE` on special tokens)."""
  ids, labels = [], []
  for (start, end), special in zip(tok.offsets, tok.special):
    if special:
      ids.append(0)
      labels.append(IGNORE)
      continue
    k = next((k for k, s in enumerate(spans, 1) if start < s.end and s.start < end), 0)
    ids.append(k)
    labels.append(int(k > 0))
  return ids, labels


def _row(
    example: Example,
    tok: _Tokenised,
    spans: Sequence[Span],
    targets: Sequence[int],
    max_length: int,
) -> dict[str, list]:
  """One input row: the `[MASK]` replaced by `len(targets)` mask tokens labelled `targets`."""
  for span in spans:
    if not 0 <= span.start <= span.end <= len(example.sentence):
      raise ValueError(f"{example.id}: span {span} lies outside the sentence")
  span_ids, span_labels = _span_tags(tok, spans)
  at, n = tok.mask_at, len(targets)

  def expand(values: list, inserted) -> list:
    # The first mask token keeps its own value; the inserted ones get `inserted`
    # (None: copy the first), so that a span covering the mask covers all its copies.
    first = values[at]
    extra = [first if inserted is None else inserted] * (n - 1)
    return values[:at + 1] + extra + values[at + 1:]

  row = {
      "input_ids": expand(tok.ids, None),
      "token_type_ids": expand(tok.type_ids, None),
      "span_ids": expand(span_ids, None),
      "span_labels": expand(span_labels, None),
      "offsets": expand(tok.offsets, (0, 0)),
  }
  mlm = [IGNORE] * len(row["input_ids"])
  mlm[at:at + n] = targets
  row["mlm_labels"] = mlm
  row["mask_positions"] = list(range(at, at + n))
  if len(row["input_ids"]) > max_length:  # `_fit` made room; a bug if not.
    raise AssertionError(f"{example.id}: {len(row['input_ids'])} tokens after cutting to "
                         f"max_length={max_length}")
  return row


def _stack(
    rows: list[dict[str, list]],
    tokenizer: transformers.PreTrainedTokenizerBase,
    max_length: int,
    pad_to: int | None,
) -> dict[str, np.ndarray]:
  """Pads the rows to one length and stacks them into int32 arrays."""
  longest = max((len(r["input_ids"]) for r in rows), default=0)
  if pad_to is not None:
    if pad_to < longest:
      raise ValueError(f"pad_to={pad_to} is shorter than the longest row ({longest} tokens)")
    length = pad_to
  else:
    length = min(-(-longest // BUCKET) * BUCKET, max_length)
  num_masks = max((len(r["mask_positions"]) for r in rows), default=1)
  n = len(rows)
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  out = {
      "input_ids": np.full((n, length), pad_id, np.int32),
      "attention_mask": np.zeros((n, length), np.int32),
      "token_type_ids": np.zeros((n, length), np.int32),
      "span_ids": np.zeros((n, length), np.int32),
      "span_labels": np.full((n, length), IGNORE, np.int32),
      "mlm_labels": np.full((n, length), IGNORE, np.int32),
      "mask_positions": np.zeros((n, num_masks), np.int32),
      "mask_count": np.zeros((n,), np.int32),
      "offsets": np.zeros((n, length, 2), np.int32),
  }
  for i, r in enumerate(rows):
    t = len(r["input_ids"])
    for key in ("input_ids", "token_type_ids", "span_ids", "span_labels", "mlm_labels",
                "offsets"):
      out[key][i, :t] = r[key]
    out["attention_mask"][i, :t] = 1
    m = len(r["mask_positions"])
    out["mask_positions"][i, :m] = r["mask_positions"]
    out["mask_count"][i] = m
  return out


def _example_spans(
    examples: Sequence[Example],
    spans: Sequence[Sequence[Span]] | None,
) -> Sequence[Sequence[Span]]:
  if spans is None:
    return [e.spans for e in examples]
  if len(spans) != len(examples):
    raise ValueError(f"{len(spans)} span lists for {len(examples)} examples")
  return spans


def encode(
    examples: Sequence[Example],
    tokenizer: transformers.PreTrainedTokenizerBase,
    *,
    max_length: int,
    protocol: str = "paper",
    spans: Sequence[Sequence[Span]] | None = None,
    pad_to: int | None = None,
    warn=logger.warning,
) -> dict[str, np.ndarray]:
  """Tokenises examples, one row each, with the gold answer as masked-LM target.

  The sentence is tokenised as written, with character offsets; a token belongs to a span
  when its character range overlaps the span's. Then:

  * protocol "paper" (the published AuditoryBench protocol): the `[MASK]` token becomes
    n mask tokens, n being the number of word pieces of the gold answer, labelled with
    those pieces. The gold answer's length thus leaks into the input; use it to compare
    with the papers, and `encode_candidates` for a leak-free score.
  * protocol "single": one mask token, labelled with the answer's first piece. Meant for
    pitch, whose answers "higher" and "lower" are single pieces in the uncased BERT
    vocabulary (an answer of several pieces is logged).

  Args:
    examples: the examples.
    tokenizer: from `load_tokenizer`.
    max_length: longest row allowed, special and expanded mask tokens included. A longer
      sentence is cut around its `[MASK]` (`mask_window`); a span with no token left
      marks none.
    protocol: "paper" or "single".
    spans: per example, the spans to mark, e.g. a span detector's predictions; None for
      the examples' gold spans.
    pad_to: row length; default: the longest row rounded up to a multiple of `BUCKET`
      (at most `max_length`).
    warn: called with one line per cut sentence (None: silent).

  Returns:
    int32 arrays, N rows of length L, M the most mask tokens in a row:
      input_ids, attention_mask, token_type_ids [N, L];
      span_ids [N, L]: k in 1..S on tokens of the k-th span (a token in two spans gets the
        first), 0 elsewhere;
      span_labels [N, L]: 1 on span tokens, 0 on other tokens, -100 on special and
        padding tokens (token-classification targets);
      mlm_labels [N, L]: answer piece ids at the mask tokens, -100 elsewhere;
      mask_positions [N, M]: positions of the mask tokens, padded with 0;
      mask_count [N]: number of mask tokens;
      offsets [N, L, 2]: character range of each token in the original sentence; (0, 0)
        for special, padding and inserted mask tokens;
      example_index [N]: row -> index into `examples`.
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
  spans = _example_spans(examples, spans)
  rows, multi_piece = [], 0
  for example, tok, example_spans in zip(examples, _tokenise(examples, tokenizer), spans):
    pieces = answer_pieces(tokenizer, example.answer, after_space=after_space(example.sentence))
    if protocol == "single":
      multi_piece += len(pieces) > 1
      pieces = pieces[:1]
    tok = _fit(example, tok, len(pieces) - 1, max_length, warn)
    rows.append(_row(example, tok, example_spans, pieces, max_length))
  if multi_piece:
    logger.warning("protocol 'single': %d of %d answers have several word pieces; only "
                   "the first is a target", multi_piece, len(examples))
  out = _stack(rows, tokenizer, max_length, pad_to)
  out["example_index"] = np.arange(len(examples), dtype=np.int32)
  return out


def encode_spans(
    examples: Sequence[Example],
    tokenizer: transformers.PreTrainedTokenizerBase,
    *,
    max_length: int,
    warn=logger.warning,
) -> dict[str, np.ndarray]:
  """Tokenises sentences with or without a `[MASK]` (span labels, `axk.data.spans.
  read_labels`) for the span detector: the arrays of `encode` with no mask targets
  (`mask_positions` [N, 0]). An overlong sentence keeps its first `max_length` tokens, or
  the window around its `[MASK]` when it has one."""
  rows = []
  for example, tok in zip(examples, _tokenise(examples, tokenizer, masked=False)):
    tok = _fit(example, tok, 0, max_length, warn)
    rows.append(_row(example, tok, example.spans, [], max_length))
  out = _stack(rows, tokenizer, max_length, None)
  out["example_index"] = np.arange(len(examples), dtype=np.int32)
  return out


def encode_candidates(
    examples: Sequence[Example],
    tokenizer: transformers.PreTrainedTokenizerBase,
    *,
    max_length: int,
    spans: Sequence[Sequence[Span]] | None = None,
    pad_to: int | None = None,
    warn=logger.warning,
) -> dict[str, np.ndarray]:
  """Tokenises every (example, option) pair: axk's leak-free answer protocol.

  Each option of each example gets its own row, whose `[MASK]` is expanded to that
  option's number of word pieces and labelled with them. The score of an option is the
  sum of the log-probabilities of its pieces at its mask positions (`mlm_labels` !=
  -100), and the prediction is the best-scoring option. Since every option has its own
  input, the input tells nothing about which option is gold.

  Args:
    examples: the examples; their `options` are the candidates.
    tokenizer: from `load_tokenizer`.
    max_length: as in `encode`.
    spans: as in `encode`, per example.
    pad_to: as in `encode`.
    warn: as in `encode`. An overlong sentence is cut once for all its options, with room
      for the longest.

  Returns:
    The arrays of `encode`, one row per (example, option), plus option_index [R] (into
    `examples[example_index].options`) and example_index [R]. Rows are grouped by
    example, options in order.
  """
  spans = _example_spans(examples, spans)
  pieces_of: dict[tuple[str, bool], list[int]] = {}
  rows, option_index, example_index = [], [], []
  for i, (example, tok, example_spans) in enumerate(
      zip(examples, _tokenise(examples, tokenizer), spans)):
    space = after_space(example.sentence)
    for option in example.options:
      if (option, space) not in pieces_of:
        pieces_of[option, space] = answer_pieces(tokenizer, option, after_space=space)
    extra = max((len(pieces_of[o, space]) for o in example.options), default=1) - 1
    tok = _fit(example, tok, extra, max_length, warn)
    for j, option in enumerate(example.options):
      rows.append(_row(example, tok, example_spans, pieces_of[option, space], max_length))
      option_index.append(j)
      example_index.append(i)
  out = _stack(rows, tokenizer, max_length, pad_to)
  out["option_index"] = np.asarray(option_index, np.int32)
  out["example_index"] = np.asarray(example_index, np.int32)
  return out
