"""Decoder scoring throughput: axk's jitted Llama / Gemma 2 forward pass with per-row
log-likelihoods (what zero-shot scoring runs) vs transformers' `*ForCausalLM` in PyTorch doing
the same work, same dtype, same machine, same run.

    python -m axk.bench.decoder --out bench_decoder.json                      # small, CPU
    python -m axk.bench.decoder --models llama3-8b,gemma2-2b --dtype bfloat16 --batch 32 \\
        --length 128 --out bench_decoder_gpu.json                             # a GPU

Models (`--models`): `llama3-8b` and `gemma2-2b` are the architectures of the papers' LLM
rows (LLaMA 3.1 8B, Gemma 2 2B: every dimension, RoPE, soft-caps and windows as their
`config.json`), `llama-small` and `gemma2-small` the same families at a width a 2-core CPU
measures in seconds, `tiny` for the tests. Weights are random (no download): both sides build
their own, and time does not depend on the values.

Work per call, both sides: a batch of `--batch` rows of `--length` token ids, every token
attended; the forward pass; float32 log-softmax of the logits; the summed log-probability of
each row's tokens after the first (`axk.models.decoder.log_likelihood`). Parameters are held
in `--dtype` on both sides (bfloat16 on an accelerator is the setting to compare). PyTorch
runs under `torch.inference_mode()` with transformers' `sdpa` attention for Llama and its
`eager` attention for Gemma 2 (transformers' SDPA path cannot apply Gemma 2's attention
soft-cap, so it would compute another function); `torch.compile` of the same function is a
third side unless `--no-compile`.

Tokens/s = batch x length / seconds per call. The FLOP count is XLA's for axk's lowered
function (`common.flops`), the same for every side; MFU divides it by each side's time and
the device's dense peak (`--peak-tflops`; known for H100/H200). Each side runs in its own
process, the sides take turns `--rounds` times, and the benchmark refuses a busy machine
(`common.compare`, `common.require_quiet`).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from axk.bench import common


def _llama3_rope(original: int) -> dict:
  return {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": original}


# HF `config.json` fields of each benchmarked architecture.
MODELS = {
    "llama3-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096,
                      intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
                      max_position_embeddings=131072, tie_word_embeddings=False,
                      hidden_act="silu", rope_scaling=_llama3_rope(8192)),
    "gemma2-2b": dict(model_type="gemma2", vocab_size=256000, hidden_size=2304,
                      intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                      num_key_value_heads=4, head_dim=256, rms_norm_eps=1e-6,
                      max_position_embeddings=8192, tie_word_embeddings=True,
                      hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=256,
                      attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                      sliding_window=4096),
    "llama-small": dict(model_type="llama", vocab_size=32000, hidden_size=512,
                        intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                        num_key_value_heads=4, head_dim=64, rms_norm_eps=1e-5,
                        max_position_embeddings=2048, tie_word_embeddings=False,
                        hidden_act="silu", rope_scaling=_llama3_rope(256)),
    "gemma2-small": dict(model_type="gemma2", vocab_size=32000, hidden_size=512,
                         intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                         num_key_value_heads=4, head_dim=64, rms_norm_eps=1e-6,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=64,
                         attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                         sliding_window=32),
    "tiny": dict(model_type="llama", vocab_size=256, hidden_size=32, intermediate_size=64,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=8, rms_norm_eps=1e-5, max_position_embeddings=128,
                 tie_word_embeddings=False, hidden_act="silu", rope_scaling=_llama3_rope(16)),
}


def token_ids(name: str, batch: int, length: int, seed: int = 0) -> np.ndarray:
  vocab = MODELS[name]["vocab_size"]
  return np.random.default_rng(seed).integers(1, vocab, (batch, length)).astype(np.int32)


def _run_fn(fn, steps: int, sync):
  def run() -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
      out = fn()
    sync(out)
    return (time.perf_counter() - t0) / steps
  return run


def axk_side(name: str, ids: np.ndarray, dtype: str, steps: int):
  """(run, info): `run()` times `steps` calls of the jitted scoring function; info holds
  XLA's FLOPs per call and the compile seconds."""
  import jax
  import jax.numpy as jnp
  from axk.models import decoder as decoder_lib
  config = decoder_lib.DecoderConfig.from_hf(MODELS[name], dtype=dtype, param_dtype=dtype)
  module = decoder_lib.Decoder(config)
  params = jax.jit(lambda key: decoder_lib.init_params(module, key))(jax.random.key(0))

  @jax.jit
  def score(params, ids):
    logits = module.apply({"params": params}, ids)["logits"]
    return decoder_lib.log_likelihood(logits, ids)[0]

  device_ids = jnp.asarray(ids)
  lowered = score.lower(params, device_ids)
  t0 = time.perf_counter()
  compiled = lowered.compile()
  info = {"compile_s": time.perf_counter() - t0,
          "flops": common.flops(lowered) or common.flops(compiled)}
  run = _run_fn(lambda: compiled(params, device_ids), steps, jax.block_until_ready)
  t0 = time.perf_counter()
  run()
  info["first_call_s"] = time.perf_counter() - t0
  return run, info


def torch_side(name: str, ids: np.ndarray, dtype: str, steps: int, compile_fn: bool):
  """(run, info) for transformers' model of the same architecture in PyTorch."""
  import torch
  import transformers
  if not torch.cuda.is_available():  # Inductor's worker pool would run beside the timed sides.
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
  hf = dict(MODELS[name])
  model_type = hf.pop("model_type")
  attention = "eager" if model_type == "gemma2" else "sdpa"
  config = transformers.AutoConfig.for_model(model_type, attn_implementation=attention, **hf)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  previous = torch.get_default_dtype()
  torch.set_default_dtype(getattr(torch, dtype))  # Built in the dtype: no float32 copy.
  try:
    with torch.device(device):
      model = transformers.AutoModelForCausalLM.from_config(config).eval()
  finally:
    torch.set_default_dtype(previous)
  tokens = torch.tensor(ids, dtype=torch.long, device=device)

  def score():
    logits = model(input_ids=tokens).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, tokens[:, 1:, None])[..., 0].sum(-1)

  fn = torch.compile(score) if compile_fn else score

  def call():
    with torch.inference_mode():
      return fn()

  def sync(out):
    out.cpu()
    if device == "cuda":
      torch.cuda.synchronize()

  run = _run_fn(call, steps, sync)
  t0 = time.perf_counter()
  sync(call())  # Warm-up (and compilation).
  info = {"first_call_s": time.perf_counter() - t0, "attention": attention}
  run()
  return run, info


def bench_model(name: str, args) -> dict:
  import jax
  ids = token_ids(name, args.batch, args.length)
  print(f"{name}: batch {args.batch}, length {args.length}, {args.dtype}", flush=True)
  sides = {"axk": (axk_side, (name, ids, args.dtype, args.steps)),
           "torch_eager": (torch_side, (name, ids, args.dtype, args.steps, False))}
  if not args.no_compile:
    sides["torch_compiled"] = (torch_side, (name, ids, args.dtype, args.steps, True))
  watch = common.Watch()
  timing, infos = common.compare(sides, args.rounds, max_other_cores=args.max_other_cores)
  flops = infos["axk"]["flops"]
  device = jax.devices()[0].device_kind
  peak = common.peak_tflops(device, args.peak_tflops)
  tokens = args.batch * args.length
  row = {"model": name, "dtype": args.dtype, "device": device, "batch": args.batch,
         "length": args.length, "steps": args.steps, "rounds": args.rounds,
         "flops_per_call": flops, "peak_tflops": peak or None,
         "axk_compile_s": infos["axk"]["compile_s"],
         "torch_attention": infos["torch_eager"]["attention"]}
  for side in timing:
    row[f"{side}_first_call_s"] = infos[side]["first_call_s"]
  common.add_sides(row, timing, rate="tokens_per_s", units=tokens, flops=flops, peak=peak)
  common.mark([row], watch.stop(args.max_other_cores), timing)
  print("  " + ", ".join(f"{s}: {row[f'{s}_tokens_per_s']:.1f} tokens/s" for s in timing),
        flush=True)
  return row


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", help="JSON output file")
  parser.add_argument("--models", default="llama-small,gemma2-small",
                      help=f"comma-separated, of {', '.join(MODELS)}")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument("--dtype", default="float32", help="parameter and compute dtype")
  parser.add_argument("--steps", type=int, default=3, help="timed calls per side and round")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
  parser.add_argument("--peak-tflops", type=float, default=0.0,
                      help="device dense peak for MFU (default: known GPUs' bf16 peak)")
  common.quiet_args(parser)
  args = parser.parse_args(argv)
  names = args.models.split(",")
  unknown = [n for n in names if n not in MODELS]
  if unknown:
    parser.error(f"--models: no model {', '.join(unknown)}; known: {', '.join(MODELS)}")
  common.require_quiet(args)
  rows = [bench_model(name, args) for name in names]
  cols = ["model", "dtype", "batch", "length", "axk_tokens_per_s", "torch_eager_tokens_per_s",
          "torch_compiled_tokens_per_s", "ratio_vs_torch_eager", "ratio_vs_torch_compiled",
          "axk_spread", "torch_eager_spread", "axk_tflops", "axk_mfu", "torch_eager_mfu",
          "torch_compiled_mfu", "axk_compile_s", "busy"]
  print(common.table(rows, [c for c in cols if any(c in r for r in rows)]))
  print("ratio_vs_X = axk tokens/s / X tokens/s (same architecture, batch and dtype; medians "
        f"of {args.rounds} rounds, each side in its own process); spread = (max - min) / "
        "median; TFLOP/s and MFU from XLA's FLOP count of the call, the same for every side")
  print(common.busy_note(rows))
  common.write(args.out, {"benchmark": "decoder", "machine": common.machine(), "rows": rows})


if __name__ == "__main__":
  main()
