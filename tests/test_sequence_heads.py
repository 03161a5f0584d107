"""BERT's sequence classification and regression head against transformers'
`BertForSequenceClassification` (float32, tiny random models saved with `save_pretrained`):
logits and loss of single sentences and pairs with padding, and the export back."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from axk import hf
from axk.models import bert as bert_lib

TOL = 1e-5


def _torch_model(num_labels, family="bert", seed=0):
  """A tiny random transformers `*ForSequenceClassification` of BERT or RoBERTa."""
  torch.manual_seed(seed if family == "bert" else seed + 1)
  sizes = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=37, num_labels=num_labels)
  if family == "roberta":  # Positions after its padding id 1, one token type.
    config = transformers.RobertaConfig(**sizes, max_position_embeddings=66,
                                        type_vocab_size=1, pad_token_id=1)
    return transformers.RobertaForSequenceClassification(config).eval()
  config = transformers.BertConfig(**sizes, max_position_embeddings=64)
  return transformers.BertForSequenceClassification(config).eval()


def _pairs(seed=0):
  """Two sentence pairs and a single sentence, right-padded: ids, mask, token types."""
  r = np.random.default_rng(seed)
  ids = r.integers(5, 99, (3, 12)).astype(np.int64)
  mask = np.ones_like(ids)
  types = np.zeros_like(ids)
  types[0, 6:] = 1  # Pair: sentence B from token 6.
  types[1, 4:9] = 1
  mask[1, 9:] = 0  # Padding after the pair.
  mask[2, 7:] = 0  # A single padded sentence.
  ids[mask == 0] = 0
  return ids, mask, types


def _torch(model, ids, mask, types, labels):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                token_type_ids=torch.tensor(types), labels=torch.tensor(labels))
  return out.logits.numpy(), float(out.loss)


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("num_labels, labels", [(3, np.array([2, 0, 1])),
                                                (1, np.array([0.5, -1.25, 3.0], np.float32))])
def test_logits_and_loss_equal_transformers_and_the_export_loads_back(tmp_path, num_labels,
                                                                       labels, family):
  pt = _torch_model(num_labels, family)
  pt.save_pretrained(tmp_path / "pt")
  model = hf.load(str(tmp_path / "pt"), head="sequence_classification")
  ids, mask, types = _pairs()
  if family == "roberta":
    ids[mask == 0] = 1  # RoBERTa's padding id: its position ids skip it.
    types = np.zeros_like(ids)  # One token type.
  want_logits, want_loss = _torch(pt, ids, mask, types, labels)
  assert pt.config.problem_type == ("regression" if num_labels == 1
                                    else "single_label_classification")
  logits = np.asarray(model(ids, mask, types)["logits"])
  assert logits.shape == (3, num_labels)
  np.testing.assert_allclose(logits, want_logits, atol=TOL, rtol=0)
  loss = float(bert_lib.sequence_loss(jnp.asarray(logits), jnp.asarray(labels)))
  assert loss == pytest.approx(want_loss, abs=TOL)

  out = hf.save(model.params, model.config, str(tmp_path / "export"),
                head="sequence_classification")
  back, info = transformers.AutoModelForSequenceClassification.from_pretrained(
      out, local_files_only=True, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert type(back).__name__ == type(pt).__name__
  again_logits, again_loss = _torch(back.eval(), ids, mask, types, labels)
  np.testing.assert_allclose(again_logits, logits, atol=TOL, rtol=0)
  assert again_loss == pytest.approx(want_loss, abs=TOL)
