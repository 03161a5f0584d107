"""Generation window benchmark: Stable Audio denoising its full latent window vs the clip's.

    python -m axk.bench.generation_window --out bench_generation_window.json   # full size
    python -m axk.bench.generation_window --scale tiny --out bench_generation_window.json

`generation.window="full"` (published) denoises Stable Audio's whole latent window
(`transformer.config.sample_size` frames: 1024, 47.55 s at 44.1 kHz) and trims the decoded
waveform to the clip; `"clip"` denoises and decodes only the frames the clip needs
(`generation.clip_latent_frames`: 108 for 5 s). Models have random weights built from
configs, nothing is downloaded: `--scale full` is Stable Audio Open's published sizes as
`axk.bench.generation` builds them (diffusers' defaults of `StableAudioDiTModel` and
`AutoencoderOobleck`, T5-base as the text encoder), `--scale tiny` the test pipeline of
`axk.features.tiny`. One prompt, `--steps` diffusion steps (default 2: the per-step cost is
what differs, and 50 steps of the full window take far too long on a CPU), `--seconds` clips.

Measured, per window:
  1. the denoiser's (DiT's) FLOPs per step, counted with `torch.utils.flop_counter
     .FlopCounterMode` over a whole generation call, with PyTorch's math attention (the
     counter has no formula for the fused CPU attention kernel, which it would count as 0),
     divided by the DiT's calls (one per step; classifier-free guidance makes each a batch of
     2); checked against a count by hand from the DiT's config and the shapes it was called
     with (`dit_flops`). The VAE decoder's FLOPs of the call are reported too;
  2. the wall time of a generation call (`AudioGenerator.__call__`: text encoder, denoising,
     decoding, trimming), after one untimed call of each (the counted one), in interleaved
     rounds (full, clip, full, clip, ...); the ratio full/clip of the medians, with the
     per-round range.
"""

from __future__ import annotations

import argparse
import time

from axk.bench import common

WINDOWS = ("full", "clip")


def dit_flops(config, batch: int, frames: int, encoder_length: int) -> int:
  """FLOPs of one `StableAudioDiTModel` call by hand (matrix products and 1x1 convolutions,
  2 per multiply-add, as `FlopCounterMode` counts them), on `batch` latents of `frames`
  frames cross-attending to `encoder_length` tokens (the text tokens and the 2 duration
  tokens).

  The blocks run over S = frames + 1 tokens (the global token is prepended). Per block:
  self-attention q, k, v, out (D x D each, D = heads * head_dim) and its scores and values
  (2 S^2 D each); cross-attention q and out (D x D), k and v from the encoder (X x KV, X the
  cross-attention width, KV = kv_heads * head_dim) and its scores and values (2 S E D each);
  the SwiGLU feed-forward (D -> 2F, F -> D with F = 4D, diffusers' `FeedForward` default).
  Around them: the cross-attention projection (two layers over E tokens), the global
  projection (one token), the 1x1 convolutions and in/out projections over the frames, and
  the timestep's Fourier features and projection (once, its batch is 1).
  """
  c = config
  d = c.num_attention_heads * c.attention_head_dim
  kv = c.num_key_value_attention_heads * c.attention_head_dim
  x, f = c.cross_attention_dim, 4 * d
  s, e = frames + 1, encoder_length
  mm = lambda m, k, n: 2 * m * k * n  # pylint: disable=unnecessary-lambda-assignment
  block = (4 * mm(s, d, d) + 2 * mm(s, d, s)  # self-attention
           + 2 * mm(s, d, d) + 2 * mm(e, x, kv) + 2 * mm(s, d, e)  # cross-attention
           + mm(s, d, 2 * f) + mm(s, f, d))  # feed-forward
  per_sample = (c.num_layers * block
                + mm(e, c.cross_attention_input_dim, x) + mm(e, x, x)
                + mm(1, c.global_states_input_dim, d) + mm(1, d, d)
                + mm(frames, c.in_channels, c.in_channels) + mm(frames, c.in_channels, d)
                + mm(s, d, c.out_channels) + mm(frames, c.out_channels, c.out_channels))
  timestep = mm(1, 1, c.time_proj_dim // 2) + mm(1, c.time_proj_dim, d) + mm(1, d, d)
  return batch * per_sample + timestep


def _counted_call(gen, prompt: str, seed: int, params) -> dict:
  """One generation call under `FlopCounterMode` (math attention): the DiT's FLOPs per call
  (counted and by hand), its calls and shapes, the VAE decoder's FLOPs."""
  from torch.nn.attention import SDPBackend  # pylint: disable=g-import-not-at-top
  from torch.nn.attention import sdpa_kernel  # pylint: disable=g-import-not-at-top
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top

  shapes = []

  def record(module, args, kwargs):
    del module
    shapes.append((tuple(args[0].shape), tuple(kwargs["encoder_hidden_states"].shape)))

  transformer = gen.pipe.transformer
  hook = transformer.register_forward_pre_hook(record, with_kwargs=True)
  try:
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
      wave = gen([prompt], [seed], params)[0]
  finally:
    hook.remove()
  totals = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
  dit = totals.get(type(transformer).__name__, 0)
  (batch, _, frames), (_, encoder_length, _) = shapes[0]
  if any(s != shapes[0] for s in shapes):
    raise RuntimeError(f"the DiT was called on changing shapes: {sorted(set(shapes))}")
  return {"dit_calls": len(shapes), "dit_batch": batch, "latent_frames": frames,
          "dit_sequence": frames + 1, "encoder_length": encoder_length,
          "denoiser_flops_per_step": dit / len(shapes),
          "denoiser_flops_per_step_by_hand": dit_flops(transformer.config, batch, frames,
                                                       encoder_length),
          "decoder_flops": totals.get(type(gen.pipe.vae.decoder).__name__, 0),
          "call_flops": totals.get("Global", 0), "samples": int(wave.shape[-1])}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", help="JSON output file")
  parser.add_argument("--scale", default="full", choices=("full", "tiny"))
  parser.add_argument("--device", default="auto")
  parser.add_argument("--dtype", default="auto", help="generator dtype")
  parser.add_argument("--steps", type=int, default=2, help="diffusion steps")
  parser.add_argument("--seconds", type=float, default=5.0,
                      help="clip length, cut to the model's window (47.55 s at full "
                           "scale, 0.5 s at tiny scale: use 0.25 there)")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--torch-threads", type=int, default=0)
  common.quiet_args(parser)
  args = parser.parse_args(argv)
  common.require_quiet(args)

  import tempfile  # pylint: disable=g-import-not-at-top

  import torch  # pylint: disable=g-import-not-at-top

  from axk.bench import generation as generation_bench  # pylint: disable=g-import-not-at-top
  from axk.features import generation  # pylint: disable=g-import-not-at-top
  from axk.features import pipeline  # pylint: disable=g-import-not-at-top
  pipeline._quiet_libraries()  # pylint: disable=protected-access
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  prompt, seed = "dog barking sound", generation.candidate_seed(0, "dog barking", 0)
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    # The generation benchmark's models (CLAP and AST are built with them and dropped).
    gen, _, _ = generation_bench.build_models(args.scale, tmp, args.device, args.dtype)
    build_s = time.perf_counter() - t0
    cfg = gen.pipe.transformer.config
    window_s = cfg.sample_size * gen.pipe.vae.hop_length / gen.sampling_rate
    seconds = min(args.seconds, window_s)
    params = {w: generation.GenerationParams(steps=args.steps, seconds=seconds, window=w)
              for w in WINDOWS}
    counted = {}
    for w in WINDOWS:  # Also each window's untimed first call.
      counted[w] = _counted_call(gen, prompt, seed, params[w])
      print(f"  {w}: counted {counted[w]['denoiser_flops_per_step'] / 1e9:.1f} GFLOP per "
            f"step over {counted[w]['dit_calls']} steps", flush=True)

    def timer(window):
      def run() -> float:
        t = time.perf_counter()
        gen([prompt], [seed], params[window])
        seconds_ = time.perf_counter() - t
        print(f"  {window}: {seconds_:.2f} s", flush=True)
        return seconds_
      return run

    watch = common.Watch()
    timing = common.interleaved({w: timer(w) for w in WINDOWS}, args.rounds)
    watched = watch.stop(args.max_other_cores)
  rows = []
  for w in WINDOWS:
    c, t = counted[w], timing[w]
    rows.append({"window": w, **c,
                 "hand_vs_counted": (c["denoiser_flops_per_step_by_hand"]
                                     / c["denoiser_flops_per_step"]),
                 "denoiser_gflops_per_step": c["denoiser_flops_per_step"] / 1e9,
                 "decoder_gflops": c["decoder_flops"] / 1e9,
                 "call_s": t["median_s"], "call_min_s": t["min_s"], "call_max_s": t["max_s"],
                 "call_timing": t})
  common.mark(rows, watched)
  flops_ratio = rows[0]["denoiser_flops_per_step"] / rows[1]["denoiser_flops_per_step"]
  decoder_ratio = rows[0]["decoder_flops"] / rows[1]["decoder_flops"]
  wall = common.ratio(timing, "clip", "full")
  result = {
      "benchmark": "generation_window", "machine": common.machine(), "scale": args.scale,
      "device": str(gen.device), "dtype": str(gen.dtype), "build_s": build_s,
      "steps": args.steps, "seconds": seconds, "prompts": 1, "rounds": args.rounds,
      "sampling_rate": gen.sampling_rate, "hop_length": gen.pipe.vae.hop_length,
      "sample_size": cfg.sample_size, "window_s": window_s,
      "flops_method": ("torch.utils.flop_counter.FlopCounterMode over one generation call "
                       "with math attention (SDPBackend.MATH), the DiT module's total over "
                       "its calls (one per step, a batch of 2 with classifier-free "
                       "guidance); checked against a count by hand from the DiT config "
                       "(dit_flops: matrix products and 1x1 convolutions)"),
      "rows": rows, "denoiser_flops_ratio_full_over_clip": flops_ratio,
      "decoder_flops_ratio_full_over_clip": decoder_ratio,
      "wall_ratio_full_over_clip": wall["ratio"],
      "wall_ratio_rounds": [wall["round_min"], wall["round_max"]]}
  print(f"{args.scale} Stable Audio on {gen.device} ({gen.dtype}), {args.steps} steps, "
        f"{seconds:g} s clip of a {window_s:.2f} s window, 1 prompt, {args.rounds} rounds")
  print(common.table(rows, ["window", "latent_frames", "dit_sequence",
                            "denoiser_gflops_per_step", "hand_vs_counted", "decoder_gflops",
                            "call_s", "call_min_s", "call_max_s", "busy"]))
  print(f"full/clip: denoiser FLOPs per step {flops_ratio:.2f}x, decoder FLOPs "
        f"{decoder_ratio:.2f}x, wall time of a call {wall['ratio']:.2f}x (per round "
        f"{wall['round_min']:.2f}-{wall['round_max']:.2f}x)")
  print(common.busy_note(rows))
  common.write(args.out, result)


if __name__ == "__main__":
  main()
