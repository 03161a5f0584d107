"""BERT forward and forward+backward: axk (jitted JAX) vs transformers (PyTorch), same machine.

    python -m axk.bench.bert --out bench_bert.json [--sizes minilm,base] [--batch 32 --length 64]

Both sides run the same masked-LM model (vocabulary logits at every position) on the same
random token ids and weights (axk's weights are converted from the PyTorch model, so the work
is identical): forward is inference, forward+backward is the mean cross-entropy over all
positions and the gradient of every parameter. Prints a table and writes JSON with examples
per second and the ratio axk / PyTorch (above 1: axk is faster).
"""

from __future__ import annotations

import argparse
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax

from axk import hf
from axk.bench import common

SIZES = {
    # all-MiniLM-L6-v2's architecture.
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072),
}


def bench_size(name, batch, length, repeats):
  import torch
  import transformers
  cfg = transformers.BertConfig(vocab_size=30522, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0, **SIZES[name])
  torch.manual_seed(0)
  pt = transformers.BertForMaskedLM(cfg)
  rng = np.random.default_rng(0)
  ids = rng.integers(1000, 30000, (batch, length)).astype(np.int32)
  labels = rng.integers(1000, 30000, (batch, length)).astype(np.int32)
  mask = np.ones_like(ids)
  with tempfile.TemporaryDirectory() as d:
    pt.save_pretrained(d)
    model = hf.load(d, head="mlm")
  params, module = model.params, model.module
  j_ids, j_mask, j_tt, j_labels = map(jnp.asarray, (ids, mask, np.zeros_like(ids), labels))

  @jax.jit
  def fwd(p):
    return module.apply({"params": p}, j_ids, j_mask, j_tt)["logits"]

  @jax.jit
  def fwd_bwd(p):
    def loss(p):
      logits = module.apply({"params": p}, j_ids, j_mask, j_tt)["logits"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, j_labels).mean()
    return jax.value_and_grad(loss)(p)

  t_ids, t_mask, t_labels = (torch.tensor(x, dtype=torch.long) for x in (ids, mask, labels))

  def pt_fwd():
    pt.eval()
    with torch.inference_mode():
      return pt(input_ids=t_ids, attention_mask=t_mask).logits

  def pt_fwd_bwd():
    pt.train()
    pt.zero_grad(set_to_none=True)
    out = pt(input_ids=t_ids, attention_mask=t_mask, labels=t_labels)
    out.loss.backward()
    return out.loss

  rows = []
  for kind, jfn, tfn in (("forward", lambda: fwd(params), pt_fwd),
                         ("forward+backward", lambda: fwd_bwd(params), pt_fwd_bwd)):
    ja = common.timeit(jfn, repeats=repeats, sync=jax.block_until_ready)
    to = common.timeit(tfn, repeats=repeats)
    rows.append({
        "size": name, "pass": kind, "batch": batch, "length": length,
        "axk_ex_per_s": batch / ja["median_s"], "torch_ex_per_s": batch / to["median_s"],
        "ratio": to["median_s"] / ja["median_s"], "axk": ja, "torch": to})
    print(f"  {name} {kind}: axk {rows[-1]['axk_ex_per_s']:.1f} ex/s, "
          f"torch {rows[-1]['torch_ex_per_s']:.1f} ex/s", flush=True)
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", help="JSON output file")
  parser.add_argument("--sizes", default="minilm,base")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  rows = []
  for name in args.sizes.split(","):
    rows += bench_size(name, args.batch, args.length, args.repeats)
  print(common.table(rows, ["size", "pass", "batch", "length", "axk_ex_per_s",
                            "torch_ex_per_s", "ratio"]))
  print("ratio = axk examples/s / PyTorch examples/s (same weights, same inputs)")
  common.write(args.out, {"benchmark": "bert", "machine": common.machine(), "rows": rows})


if __name__ == "__main__":
  main()
