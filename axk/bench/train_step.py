"""Train steps per second: axk's jitted step vs the same model in PyTorch, same machine.

    python -m axk.bench.train_step --model=audiobert --out bench_audiobert.json
    python -m axk.bench.train_step --model=ith --out bench_ith.json

Both sides: BERT-base size (random weights), batch 32, length 64, one `[MASK]` per row,
masked-LM loss at the mask positions only, AdamW, gradient clipping.
  audiobert: base BERT and MLM head frozen; LoRA (rank 64 on query/key/value, PyTorch: peft)
    and the audio projection trained; the adapter is on for every row (PyTorch cannot gate
    LoRA per row in one pass), audio added at the first token of 2 spans per row.
  ith: everything trained; 2 spans per row with 16 audio tokens each; the fusion in PyTorch is
    the batched (all spans at once) form of `axk.pt.ith.Fusion`.
axk runs the production train step (`axk.train.loop.Trainer`) on one device. On a GPU the
table also gives axk's model FLOPs utilisation (XLA's FLOP count / time / `--peak-tflops`).
"""

from __future__ import annotations

import argparse
import tempfile

import jax
import numpy as np

from axk.bench import common
from axk.models import audiobert as audiobert_lib
from axk.models import bert as bert_lib
from axk.models import ith as ith_lib
from axk.tasks import audiobert as audiobert_task
from axk.tasks import ith as ith_task
from axk.train import loop
from axk.utils.tree import flatten

BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            intermediate_size=3072)


def synthetic_batch(n, length, spans, audio_dim, audio_tokens, seed=0):
  r = np.random.default_rng(seed)
  ids = r.integers(1000, 30000, (n, length)).astype(np.int32)
  span_ids = np.zeros((n, length), np.int32)
  span_ids[:, 3:6] = 1
  if spans > 1:
    span_ids[:, 20:24] = 2
  mask_pos = np.full((n, 1), 10, np.int32)
  mlm = np.full((n, length), -100, np.int32)
  mlm[:, 10] = r.integers(1000, 30000, n)
  return {"input_ids": ids, "attention_mask": np.ones_like(ids),
          "token_type_ids": np.zeros_like(ids), "span_ids": span_ids,
          "span_has_audio": np.ones((n, spans), np.int32),
          "span_audio": r.standard_normal((n, spans, audio_dim)).astype(np.float16),
          "span_audio_tokens": r.standard_normal(
              (n, spans, audio_tokens, audio_dim)).astype(np.float16),
          "lora_gate": np.ones(n, np.float32), "mlm_labels": mlm, "mask_positions": mask_pos,
          "mask_count": np.ones(n, np.int32), "example_index": np.arange(n, dtype=np.int32)}


def axk_step(model_name, batch, args):
  """The production train step on a task whose data is the synthetic batch."""
  from configs import audiobert as audiobert_config
  from configs import ith as ith_config
  cfg_mod = audiobert_config if model_name == "audiobert" else ith_config
  config = cfg_mod.get_config()
  config.train.epochs = args.steps + 2
  config.train.batch_size = args.batch
  config.model.dropout = 0.0
  config.model.lora_dropout = 0.0
  config.model.dtype = args.dtype
  config.mesh.shape = (("data", 1), ("model", 1))
  bert_config = bert_lib.BertConfig(**BASE, hidden_dropout_prob=0.0,
                                    attention_probs_dropout_prob=0.0, dtype=args.dtype)
  task_cls = audiobert_task.AudioBertTask if model_name == "audiobert" else ith_task.IthTask
  task = object.__new__(task_cls)  # The task's model and loss, without loading any data.
  task.config, task.bert_config = config, bert_config
  task.audio_dim, task.audio_tokens = 768, args.audio_tokens
  task.module = task.build_module()
  task.train_arrays, task.eval_arrays = batch, {}
  with tempfile.TemporaryDirectory() as workdir:
    trainer = loop.Trainer(config, workdir, task, devices=jax.devices()[:1])
    state = jax.jit(lambda k: {"step": jax.numpy.zeros((), jax.numpy.int32),
                               "params": task.init_params(k)})(jax.random.key(0))
    flat = {k: v for k, v in flatten(state["params"]).items() if k in trainer.trainable}
    state["opt"] = jax.jit(trainer.tx.init)(flat)
    local = trainer.batches[0]
    device_batch = jax.device_put(local, trainer.batch_sharding)
    compiled = trainer.train_step.lower(state, device_batch).compile()
    flops = _flops(compiled)
    holder = {"state": state}

    def step():
      holder["state"], scalars = compiled(holder["state"], device_batch)
      return scalars["loss"]

    timing = common.timeit(step, warmup=2, repeats=args.steps, sync=jax.block_until_ready)
  return timing, flops


def _flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops")) if cost and cost.get("flops") else None
  except Exception:  # Cost analysis is not available on every backend.
    return None


def torch_step(model_name, batch, args):
  import torch
  import transformers
  from axk.pt.audiobert import first_token_onehot
  from axk.pt.ith import AudioMLP, Fusion
  torch.manual_seed(0)
  cfg = transformers.BertConfig(**BASE, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0)
  model = transformers.BertForMaskedLM(cfg)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  tb = {k: torch.tensor(v).to(device) for k, v in batch.items()}
  extra = torch.nn.ModuleDict()
  if model_name == "audiobert":
    import peft
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=64, lora_alpha=128, lora_dropout=0.0, target_modules=["query", "key", "value"]))
    extra["audio_proj"] = torch.nn.Linear(768, 768)
    base = model.get_base_model()
  else:
    extra["audio_mlp"] = AudioMLP(768, 768)
    extra["fusion"] = Fusion(768, 12, 1e-12)
    base = model
  model.to(device)
  extra.to(device)
  model.train()
  params = [p for p in list(model.parameters()) + list(extra.parameters()) if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=1e-4)
  labels = tb["mlm_labels"].gather(1, tb["mask_positions"]).long()
  ids, mask, tt = tb["input_ids"].long(), tb["attention_mask"].long(), tb["token_type_ids"].long()

  def embed_hook(module, inputs, output):
    if model_name == "audiobert":
      first = first_token_onehot(tb["span_ids"], tb["span_audio"].shape[1]).float()
      audio = extra["audio_proj"](tb["span_audio"].float())
      return output + torch.einsum("bsl,bse->ble", first, audio)
    audio = extra["audio_mlp"](tb["span_audio_tokens"].float())
    return extra["fusion"].forward_batched(output, tb["span_ids"], audio, tb["span_has_audio"])

  base.bert.embeddings.register_forward_hook(embed_hook)

  def step():
    opt.zero_grad(set_to_none=True)
    hidden = base.bert(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
    at_mask = hidden.gather(1, tb["mask_positions"].long()[..., None].expand(-1, -1, 768))
    logits = base.cls(at_mask)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    if device == "cuda":
      torch.cuda.synchronize()
    return loss

  return common.timeit(step, warmup=2, repeats=args.steps)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=("audiobert", "ith"), required=True)
  parser.add_argument("--out", help="JSON output file")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument("--spans", type=int, default=2)
  parser.add_argument("--audio-tokens", type=int, default=16)
  parser.add_argument("--steps", type=int, default=3, help="timed steps per side")
  parser.add_argument("--dtype", default="float32", help="axk compute dtype")
  parser.add_argument("--peak-tflops", type=float, default=0.0,
                      help="device peak for MFU (default: 989 on H100/H200 bf16, else none)")
  args = parser.parse_args(argv)
  batch = synthetic_batch(args.batch, args.length, args.spans, 768, args.audio_tokens)
  ours, flops = axk_step(args.model, batch, args)
  print(f"  axk: {1 / ours['median_s']:.3f} steps/s", flush=True)
  theirs = torch_step(args.model, batch, args)
  print(f"  torch: {1 / theirs['median_s']:.3f} steps/s", flush=True)
  device = jax.devices()[0]
  peak = args.peak_tflops or (989.0 if "H100" in device.device_kind or
                              "H200" in device.device_kind else 0.0)
  row = {"model": args.model, "device": device.device_kind, "batch": args.batch,
         "length": args.length, "axk_steps_per_s": 1 / ours["median_s"],
         "torch_steps_per_s": 1 / theirs["median_s"],
         "ratio": theirs["median_s"] / ours["median_s"], "axk": ours, "torch": theirs,
         "axk_flops_per_step": flops}
  if flops and peak:
    row["axk_mfu"] = flops / ours["median_s"] / (peak * 1e12)
  print(common.table([row], ["model", "device", "batch", "length", "axk_steps_per_s",
                             "torch_steps_per_s", "ratio", "axk_mfu"]))
  print("ratio = axk steps/s / PyTorch steps/s (same model, same batch)")
  common.write(args.out, {"benchmark": "train_step", "machine": common.machine(),
                          "rows": [row]})


if __name__ == "__main__":
  main()
