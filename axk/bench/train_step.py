"""Train steps per second: axk's jitted step vs the same model in PyTorch (eager and
`torch.compile`d), in the same dtype, same machine, same run.

    python -m axk.bench.train_step --model=ith --out bench_ith.json
    python -m axk.bench.train_step --model=audiobert --out bench_audiobert.json
    python -m axk.bench.train_step --model=ith --size=minilm --configs=paper,throughput

Configurations (`--configs`): `paper` (batch 32, length 64, the papers' batch) and
`throughput` (batch 256, length 128). Both sides: random weights of `--size` (BERT-base by
default), one `[MASK]` per row, masked-LM loss at the mask positions only, AdamW, gradient
clipping at 1.
  ith: everything trained; 2 spans per row with 16 audio tokens each; the fusion in PyTorch is
    the batched (all spans at once) form of `axk.pt.ith.Fusion`.
  audiobert: base BERT and MLM head frozen; LoRA (rank 64 on query/key/value, PyTorch: peft)
    and the audio projection trained; the adapter is on for every row (PyTorch cannot gate
    LoRA per row in one pass), audio added at the first token of 2 spans per row.
Dtype (`--dtype`): axk computes in it (parameters float32); PyTorch runs under
`torch.autocast` in the same dtype when it is not float32 (bfloat16 on a GPU is the setting
to compare). axk runs the production train step (`axk.train.loop.Trainer`) on one device.

The FLOP count of a step is XLA's for axk's lowered step (`common.flops`), and both sides'
model FLOPs utilisation (MFU) divide that same count by their own step time and the device's
dense peak (`--peak-tflops`, known for H100/H200: 989 TFLOP/s bf16).

Each side runs in its own process (`common.compare`): in one process, the JAX step timed
after PyTorch's ran up to a third slower on a 2-core CPU (1.29 against 1.74 s for ITH at
MiniLM size). With the sides in processes, ITH's axk turns still vary the most there
(docs/results.md, "Measured"); the waiting sides' CPU is measured at every turn. The sides
take turns, `--rounds` of them (3 by default), and their medians are compared; the JSON keeps
every value, each side's spread and the per-round ratios. The benchmark refuses to start on a
busy machine and marks a row measured while other processes used the CPU
(`common.require_quiet`, `--allow-busy`). axk's row also records the time to trace and compile
its train step and its evaluation step.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import numpy as np

from axk.bench import common
from axk.bench import synthetic
from axk.train import checkpoint as ckpt_lib
from axk.train import loop
from axk.train import sharding

CONFIGS = {"paper": (32, 64), "throughput": (256, 128)}


def axk_side(model, size, rows, args, keep_compiled: bool = False):
  """(a function timing `args.steps` production train steps, info): XLA's FLOPs per step and
  the seconds to trace and compile the train step and the evaluation step (the one every
  evaluation pass and the run-end predictions use). `keep_compiled` adds the compiled train
  step as a third element."""
  config_bert = synthetic.bert_config(size, args.dtype,
                                       attention=getattr(args, "attention", "auto"))
  task = synthetic.SyntheticTask(model, config_bert, rows)
  batch = len(rows["input_ids"])
  config = synthetic.trainer_config(task, batch_size=batch, steps=args.steps + 2, rows=batch)
  workdir = tempfile.mkdtemp()
  trainer = loop.Trainer(config, workdir, task, devices=jax.devices()[:1])
  state, _ = trainer.init_state(ckpt_lib.Checkpoints(os.path.join(workdir, "ckpt")))
  info = {}
  with sharding.activate(trainer.mesh, trainer.rules):
    device_batch = sharding.global_batch(trainer.batches[0], trainer.batch_sharding)
    t0 = time.perf_counter()
    lowered = trainer.train_step.lower(state, device_batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    trainer.predict_step.lower(state["params"], device_batch).compile()
    t3 = time.perf_counter()
  info.update(flops=common.flops(lowered) or common.flops(compiled), trace_train_s=t1 - t0,
              compile_train_s=t2 - t1, compile_eval_s=t3 - t2)
  holder = {"state": state}

  def run() -> float:
    t0 = time.perf_counter()
    for _ in range(args.steps):
      holder["state"], scalars = compiled(holder["state"], device_batch, trainer.rng)
    jax.block_until_ready(scalars)
    return (time.perf_counter() - t0) / args.steps

  run()  # warm-up
  return (run, info, compiled) if keep_compiled else (run, info)


def torch_side(model_name, size, rows, args, compile_step: bool):
  """(a function timing `args.steps` PyTorch train steps of the same model, info): the
  seconds of the first step (with `torch.compile`'s compilation)."""
  # Inductor compiles in this process: its worker pool would otherwise keep busy after the
  # first step, while the other sides are timed.
  os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
  import torch
  import transformers
  from axk.pt.audiobert import first_token_onehot
  from axk.pt.ith import AudioMLP, Fusion
  torch.manual_seed(0)
  dims = synthetic.SIZES[size]
  width = dims["hidden_size"]
  cfg = transformers.BertConfig(**dims, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0)
  model = transformers.BertForMaskedLM(cfg)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  tb = {k: torch.tensor(v).to(device) for k, v in rows.items()}
  extra = torch.nn.ModuleDict()
  if model_name == "audiobert":
    import peft
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=64, lora_alpha=128, lora_dropout=0.0, target_modules=["query", "key", "value"]))
    extra["audio_proj"] = torch.nn.Linear(768, width)
    base = model.get_base_model()
  else:
    extra["audio_mlp"] = AudioMLP(768, width)
    extra["fusion"] = Fusion(width, dims["num_attention_heads"], 1e-12)
    base = model
  model.to(device)
  extra.to(device)
  model.train()
  params = [p for p in list(model.parameters()) + list(extra.parameters()) if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
  labels = tb["mlm_labels"].gather(1, tb["mask_positions"]).long()
  ids, mask, tt = tb["input_ids"].long(), tb["attention_mask"].long(), tb["token_type_ids"].long()
  positions = tb["mask_positions"].long()[..., None].expand(-1, -1, width)

  def embed_hook(module, inputs, output):
    if model_name == "audiobert":
      first = first_token_onehot(tb["span_ids"], tb["span_audio"].shape[1]).to(output.dtype)
      audio = extra["audio_proj"](tb["span_audio"].float())
      return output + torch.einsum("bsl,bse->ble", first, audio.to(output.dtype))
    audio = extra["audio_mlp"](tb["span_audio_tokens"].float())
    return extra["fusion"].forward_batched(output, tb["span_ids"], audio, tb["span_has_audio"])

  base.bert.embeddings.register_forward_hook(embed_hook)
  autocast = args.dtype != "float32"
  dtype = getattr(torch, args.dtype)

  def forward_loss():
    with torch.autocast(device, dtype=dtype, enabled=autocast):
      hidden = base.bert(input_ids=ids, attention_mask=mask,
                         token_type_ids=tt).last_hidden_state
      logits = base.cls(hidden.gather(1, positions))
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())

  loss_fn = torch.compile(forward_loss) if compile_step else forward_loss

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss

  def run() -> float:
    t0 = time.perf_counter()
    for _ in range(args.steps):
      loss = step()
    loss.item()
    if device == "cuda":
      torch.cuda.synchronize()
    return (time.perf_counter() - t0) / args.steps

  t0 = time.perf_counter()
  step()  # warm-up (and compilation)
  info = {"first_step_s": time.perf_counter() - t0}
  run()
  return run, info


def bench_config(name, args) -> dict:
  batch, length = CONFIGS[name]
  rows = synthetic.rows(batch, length, vocab=synthetic.SIZES[args.size]["vocab_size"],
                        audio_tokens=args.audio_tokens)
  print(f"{name}: batch {batch}, length {length}, {args.size}, {args.dtype}", flush=True)
  sides = {"axk": (axk_side, (args.model, args.size, rows, args)),
           "torch_eager": (torch_side, (args.model, args.size, rows, args, False))}
  if not args.no_compile:
    sides["torch_compiled"] = (torch_side, (args.model, args.size, rows, args, True))
  watch = common.Watch()
  timing, infos = common.compare(sides, args.rounds, max_other_cores=args.max_other_cores)
  flops = infos["axk"].get("flops")
  device = jax.devices()[0]
  peak = common.peak_tflops(device.device_kind, args.peak_tflops)
  row = {"config": name, "model": args.model, "size": args.size, "dtype": args.dtype,
         "attention": args.attention,
         "device": device.device_kind, "batch": batch, "length": length,
         "steps": args.steps, "rounds": args.rounds, "flops_per_step": flops,
         "peak_tflops": peak or None}
  for key in ("trace_train_s", "compile_train_s", "compile_eval_s"):
    row[f"axk_{key}"] = infos["axk"][key]
  for side in timing:
    if side != "axk":
      row[f"{side}_first_step_s"] = infos[side]["first_step_s"]
  common.add_sides(row, timing, rate="steps_per_s", flops=flops, peak=peak)
  common.mark([row], watch.stop(args.max_other_cores), timing)
  print("  " + ", ".join(f"{s}: {row[f'{s}_steps_per_s']:.3f} steps/s "
                         f"(spread {row[f'{s}_spread']:.1%})" for s in timing), flush=True)
  return row


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=("audiobert", "ith"), required=True)
  parser.add_argument("--out", help="JSON output file")
  parser.add_argument("--configs", default="paper,throughput")
  parser.add_argument("--size", default="base", choices=tuple(synthetic.SIZES))
  parser.add_argument("--audio-tokens", type=int, default=16)
  parser.add_argument("--steps", type=int, default=3, help="timed steps per side and round")
  parser.add_argument("--rounds", type=int, default=3, help="alternations of the sides")
  parser.add_argument("--dtype", default="float32", help="compute dtype of both sides")
  parser.add_argument("--attention", default="auto",
                      help="axk's attention kernel (BertConfig.attention: auto, xla, cudnn, "
                           "einsum); auto takes cuDNN's on a GPU in half precision")
  parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
  parser.add_argument("--peak-tflops", type=float, default=0.0,
                      help="device dense peak for MFU (default: known GPUs' bf16 peak)")
  parser.add_argument("--glibc-tunables", default="",
                      help="GLIBC_TUNABLES for every side's process ('keep': "
                           "common.KEEP_MEMORY_TUNABLES; default: the environment's)")
  common.quiet_args(parser)
  args = parser.parse_args(argv)
  if args.glibc_tunables:
    # Every side's process starts with it (spawned processes inherit the environment).
    os.environ["GLIBC_TUNABLES"] = (common.KEEP_MEMORY_TUNABLES if args.glibc_tunables == "keep"
                                    else args.glibc_tunables)
  common.require_quiet(args)
  rows = [bench_config(name, args) for name in args.configs.split(",")]
  for row in rows:
    row["glibc_tunables"] = os.environ.get("GLIBC_TUNABLES", "")
  cols = ["config", "model", "size", "dtype", "batch", "length", "axk_steps_per_s",
          "torch_eager_steps_per_s", "torch_compiled_steps_per_s", "ratio_vs_torch_eager",
          "ratio_vs_torch_compiled", "axk_spread", "torch_eager_spread", "axk_tflops",
          "torch_eager_tflops", "torch_compiled_tflops", "axk_mfu", "torch_eager_mfu",
          "torch_compiled_mfu", "axk_compile_train_s", "axk_compile_eval_s", "busy"]
  print(common.table(rows, [c for c in cols if any(c in r for r in rows)]))
  print("ratio_vs_X = axk steps/s / X steps/s (same model, batch and dtype; medians of "
        f"{args.rounds} rounds, each side in its own process); spread = (max - min) / median; "
        "TFLOP/s and MFU from XLA's FLOP count of the step, the same for every side")
  print(common.busy_note(rows))
  common.write(args.out, {"benchmark": "train_step", "machine": common.machine(),
                          "rows": rows})


if __name__ == "__main__":
  main()
