"""Tiny random-weight CLAP, AST and generator models, saved with `save_pretrained`.

The smoke config, the tests and the benchmark build these on the fly so that the whole
feature pipeline runs offline through the same loading code as the real checkpoints
(`from_pretrained` on a local directory). Weights are random; only shapes and plumbing are
meaningful. Tokenizers are built from a character vocabulary, so no file is downloaded.
"""

from __future__ import annotations

import os
import string

import tokenizers
import torch
import transformers

from axk.utils import files

# Bump when the tiny architectures change, so stale directories are rebuilt.
TINY_VERSION = "1"

_WORDS = ("sound", "dog", "cat", "bird", "bark", "meow", "chirp", "low", "high", "pitch",
          "quality", "engine", "rain", "bell", "water", "the", "of", "a")


def _byte_level_alphabet() -> list[str]:
  """The 256 printable characters that GPT-2 style byte-level BPE maps bytes to."""
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1)))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return [chr(c) for c in cs]


def roberta_tokenizer(words=("sound", "the", "of")) -> transformers.PreTrainedTokenizerBase:
  """A byte-level RoBERTa tokenizer with single-character tokens and merges that make each of
  `words` after a space one token (`Ġsound`)."""
  vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
  for ch in _byte_level_alphabet():
    vocab.setdefault(ch, len(vocab))
  # A handful of merges keeps sequences short without a training step.
  merges = []
  for word in (f"Ġ{w}" for w in words):
    prefix = word[0]
    for ch in word[1:]:
      if (prefix, ch) not in merges:
        merges.append((prefix, ch))
      prefix += ch
      vocab.setdefault(prefix, len(vocab))
  # RoBERTa's own `<mask>` takes the space before it (roberta-base's tokenizer files).
  mask = tokenizers.AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False,
                               special=True)
  return transformers.RobertaTokenizer(vocab=vocab, merges=merges, mask_token=mask,
                                       model_max_length=64)


def clap_tokenizer() -> transformers.PreTrainedTokenizerBase:
  """CLAP's text tokenizer: a byte-level RoBERTa one (`roberta_tokenizer`)."""
  return roberta_tokenizer()


ROBERTA_WORDS = _WORDS + ("higher", "lower", "is", "than", "sounds", "like", "makes", "cow",
                          "lion", "horse")


def write_roberta_tokenizer(path: str) -> str:
  """Saves a tiny RoBERTa's tokenizer and `config.json` (no weights) to `path`: what a run
  with `model.tiny` reads from `model.init` (axk's sample folder `tiny_roberta` is this)."""
  tokenizer = roberta_tokenizer(ROBERTA_WORDS)
  tokenizer.model_max_length = 128
  tokenizer.save_pretrained(path)
  _roberta_config(len(tokenizer)).save_pretrained(path)
  return path


def _roberta_config(vocab_size: int) -> transformers.RobertaConfig:
  return transformers.RobertaConfig(
      vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=64, max_position_embeddings=130, type_vocab_size=1, pad_token_id=1,
      bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)


def build_roberta(path: str, *, seed: int = 0) -> str:
  """Saves a tiny random `RobertaForMaskedLM` with a byte-level tokenizer whose merges make
  AuditoryBench's answer words one token each (`Ġhigher`, `Ġdog`)."""
  torch.manual_seed(seed)
  write_roberta_tokenizer(path)
  config = transformers.AutoConfig.from_pretrained(path)
  transformers.RobertaForMaskedLM(config).eval().save_pretrained(path)
  return path


def t5_tokenizer() -> transformers.PreTrainedTokenizerBase:
  """A unigram T5 tokenizer over characters and a few whole words."""
  pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
  pieces += [(f"▁{w}", -1.0) for w in _WORDS]
  pieces += [(c, -3.0) for c in string.ascii_lowercase + string.digits + string.punctuation]
  pieces += [(f"▁{c}", -3.5) for c in string.ascii_lowercase]
  return transformers.T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=16)


def bert_tokenizer() -> transformers.PreTrainedTokenizerBase:
  """A WordPiece BERT tokenizer over characters and a few whole words (span detector)."""
  vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
  for w in _WORDS:
    vocab.setdefault(w, len(vocab))
  for c in string.ascii_lowercase + string.digits + string.punctuation:
    vocab.setdefault(c, len(vocab))
    vocab.setdefault(f"##{c}", len(vocab))
  return transformers.BertTokenizer(vocab=vocab)


def build_clap(path: str, *, seed: int = 0, sampling_rate: int = 48_000,
               max_length_s: int = 1) -> str:
  """Saves a tiny fused `ClapModel` + `ClapProcessor` to `path`."""
  torch.manual_seed(seed)
  text_config = dict(vocab_size=len(clap_tokenizer()), hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=70,
                     projection_dim=16)
  # 64 mel bins as in the real extractor (its fusion code assumes 64); spec_size 128 with
  # freq_ratio 2 fits 101 frames (1 s at hop 480) into a 256-wide input.
  audio_config = dict(spec_size=128, num_mel_bins=64, patch_size=8, patch_stride=(8, 8),
                      window_size=4, depths=[1, 1], num_attention_heads=[2, 2],
                      patch_embeds_hidden_size=16, hidden_size=32, projection_dim=16,
                      enable_fusion=True, fusion_type="aff_2d", num_classes=4)
  config = transformers.ClapConfig(text_config=text_config, audio_config=audio_config,
                                   projection_dim=16)
  model = transformers.ClapModel(config).eval()
  extractor = transformers.ClapFeatureExtractor(sampling_rate=sampling_rate,
                                                max_length_s=max_length_s)
  processor = transformers.ClapProcessor(feature_extractor=extractor,
                                         tokenizer=clap_tokenizer())
  model.save_pretrained(path)
  processor.save_pretrained(path)
  return path


def build_ast(path: str, *, seed: int = 0) -> str:
  """Saves a tiny `ASTModel` + `ASTFeatureExtractor` (0.64 s input, 2x4 patches)."""
  torch.manual_seed(seed)
  config = transformers.ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_length=64, num_mel_bins=32,
                                  patch_size=16, frequency_stride=16, time_stride=16)
  model = transformers.ASTModel(config).eval()
  extractor = transformers.ASTFeatureExtractor(num_mel_bins=32, max_length=64)
  model.save_pretrained(path)
  extractor.save_pretrained(path)
  return path


def build_stable_audio(path: str, *, seed: int = 0, sampling_rate: int = 16_000,
                       seconds: float = 0.5) -> str:
  """Saves a tiny `StableAudioPipeline` producing `seconds` of stereo audio."""
  import diffusers  # pylint: disable=g-import-not-at-top

  hop = 2 * 4 * 8
  sample_size = int(round(seconds * sampling_rate / hop))
  torch.manual_seed(seed)
  transformer = diffusers.StableAudioDiTModel(
      sample_size=sample_size, in_channels=4, num_layers=1, attention_head_dim=4,
      num_attention_heads=2, num_key_value_attention_heads=1, out_channels=4,
      cross_attention_dim=8, time_proj_dim=8, global_states_input_dim=16,
      cross_attention_input_dim=8)
  vae = diffusers.AutoencoderOobleck(
      encoder_hidden_size=4, downsampling_ratios=[2, 4, 8], channel_multiples=[1, 2, 2],
      decoder_channels=4, decoder_input_channels=4, audio_channels=2,
      sampling_rate=sampling_rate)
  tokenizer = t5_tokenizer()
  text_encoder = transformers.T5EncoderModel(transformers.T5Config(
      vocab_size=len(tokenizer), d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2,
      relative_attention_num_buckets=8, decoder_start_token_id=0))
  projection = diffusers.pipelines.stable_audio.StableAudioProjectionModel(
      text_encoder_dim=8, conditioning_dim=8, min_value=0, max_value=8)
  scheduler = diffusers.CosineDPMSolverMultistepScheduler(
      solver_order=2, prediction_type="v_prediction", sigma_data=1.0,
      sigma_schedule="exponential")
  pipe = diffusers.StableAudioPipeline(vae=vae, text_encoder=text_encoder,
                                       projection_model=projection, tokenizer=tokenizer,
                                       transformer=transformer, scheduler=scheduler)
  pipe.save_pretrained(path)
  return path


def build_audioldm2(path: str, *, seed: int = 0, sampling_rate: int = 16_000) -> str:
  """Saves a tiny `AudioLDM2Pipeline` (components sized after diffusers' own fast tests).

  Its language model is a bare `GPT2Model`, as in the published `cvssp/audioldm2`
  checkpoint. The vocoder upsamples 64x, so 0.25 s is 62 mel frames.
  """
  import diffusers  # pylint: disable=g-import-not-at-top

  torch.manual_seed(seed)
  unet = diffusers.AudioLDM2UNet2DConditionModel(
      block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
      out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
      cross_attention_dim=([None, 16, 32], [None, 16, 32]), norm_num_groups=4,
      attention_head_dim=2)
  scheduler = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012,
                                      beta_schedule="scaled_linear", clip_sample=False,
                                      set_alpha_to_one=False)
  vae = diffusers.AutoencoderKL(
      block_out_channels=[8, 16], in_channels=1, out_channels=1, latent_channels=4,
      down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
      norm_num_groups=4, layers_per_block=1)
  tokenizer = clap_tokenizer()
  text_config = transformers.ClapTextConfig(
      vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_attention_heads=2,
      num_hidden_layers=1, projection_dim=16, max_position_embeddings=80, pad_token_id=1,
      bos_token_id=0, eos_token_id=2)
  audio_config = transformers.ClapAudioConfig(
      spec_size=64, window_size=4, num_mel_bins=64, intermediate_size=32, depths=[1, 1],
      num_attention_heads=[2, 2], hidden_size=32, projection_dim=16, patch_size=2,
      patch_stride=2, patch_embed_input_channels=4)
  text_encoder = transformers.ClapModel(transformers.ClapConfig(
      text_config=text_config.to_dict(), audio_config=audio_config.to_dict(),
      projection_dim=16))
  tokenizer_2 = t5_tokenizer()
  text_encoder_2 = transformers.T5EncoderModel(transformers.T5Config(
      vocab_size=len(tokenizer_2), d_model=32, d_ff=32, d_kv=8, num_heads=2, num_layers=1,
      relative_attention_num_buckets=8))
  language_model = transformers.GPT2Model(transformers.GPT2Config(
      n_embd=16, n_head=2, n_layer=1, vocab_size=100, n_ctx=99, n_positions=99))
  language_model.config.max_new_tokens = 4
  projection = diffusers.AudioLDM2ProjectionModel(text_encoder_dim=16, text_encoder_1_dim=32,
                                                  langauge_model_dim=16)
  vocoder = transformers.SpeechT5HifiGan(transformers.SpeechT5HifiGanConfig(
      model_in_dim=8, sampling_rate=sampling_rate, upsample_initial_channel=16,
      upsample_rates=[8, 8], upsample_kernel_sizes=[16, 16], resblock_kernel_sizes=[3],
      resblock_dilation_sizes=[[1, 3]], normalize_before=False))
  with torch.no_grad():  # Random weights give ~1e-7 amplitudes, silence once 16-bit: louder.
    vocoder.conv_post.weight.mul_(3e5)
  pipe = diffusers.AudioLDM2Pipeline(
      vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
      projection_model=projection, language_model=language_model, tokenizer=tokenizer,
      tokenizer_2=tokenizer_2, feature_extractor=transformers.ClapFeatureExtractor(),
      unet=unet, scheduler=scheduler, vocoder=vocoder)
  pipe.save_pretrained(path)
  return path


def build_musicgen(path: str, *, seed: int = 0, sampling_rate: int = 16_000) -> str:
  """Saves a tiny `MusicgenForConditionalGeneration` + `MusicgenProcessor` (3 codebooks)."""
  torch.manual_seed(seed)
  tokenizer = t5_tokenizer()
  text = transformers.T5Config(vocab_size=len(tokenizer), d_model=8, d_kv=4, d_ff=16,
                               num_layers=1, num_heads=2, relative_attention_num_buckets=8)
  # Hop 256 at 16 kHz: 62.5 frames per second keeps sampling loops short.
  audio = transformers.EncodecConfig(target_bandwidths=[1.0], sampling_rate=sampling_rate,
                                     audio_channels=1, hidden_size=8, num_filters=4,
                                     num_residual_layers=1, upsampling_ratios=[8, 8, 4],
                                     codebook_size=16, codebook_dim=8, num_lstm_layers=1)
  codebook = audio.codebook_size  # MusicGen pads and starts with id == codebook size
  decoder = transformers.MusicgenDecoderConfig(
      vocab_size=codebook, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
      ffn_dim=32, num_codebooks=audio.num_quantizers, max_position_embeddings=512,
      pad_token_id=codebook, bos_token_id=codebook)
  config = transformers.MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder,
                                       decoder_start_token_id=codebook,
                                       pad_token_id=codebook)
  model = transformers.MusicgenForConditionalGeneration(config).eval()
  extractor = transformers.EncodecFeatureExtractor(sampling_rate=sampling_rate, feature_size=1)
  processor = transformers.MusicgenProcessor(feature_extractor=extractor, tokenizer=tokenizer)
  model.save_pretrained(path)
  processor.save_pretrained(path)
  return path


def build_detector(path: str, *, seed: int = 0, positive_bias: float | None = None,
                   max_positions: int = 512) -> str:
  """Saves a tiny `BertForTokenClassification` span detector (2 labels).

  Args:
    path: output directory.
    seed: weight seed.
    positive_bias: when set, zeroes the classifier weights and sets the bias so that every
      token is labelled inside (> 0) or outside (< 0) a span, for deterministic tests.
    max_positions: its position embeddings (the longest input it reads).
  """
  torch.manual_seed(seed)
  tokenizer = bert_tokenizer()
  config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=16,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, num_labels=2,
                                   max_position_embeddings=max_positions)
  model = transformers.BertForTokenClassification(config).eval()
  if positive_bias is not None:
    with torch.no_grad():
      model.classifier.weight.zero_()
      model.classifier.bias.copy_(torch.tensor([0.0, positive_bias]))
  model.save_pretrained(path)
  tokenizer.save_pretrained(path)
  return path


def word_tokenizer(words) -> transformers.PreTrainedTokenizerBase:
  """A lower-casing word-level tokenizer over `words`, punctuation and a few common words
  (others read as `<unk>`), which prepends `<s>` as Llama's does."""
  from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
  vocab = {"<pad>": 0, "<s>": 1, "<unk>": 2}
  for w in (*_WORDS, *string.punctuation, *sorted({w.lower() for w in words})):
    vocab.setdefault(w, len(vocab))
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                     special_tokens=[("<s>", 1)])
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>",
                                              pad_token="<pad>", unk_token="<unk>")


def build_decoder(path: str, words=(), *, family: str = "llama", seed: int = 0) -> str:
  """Saves a tiny random causal LM of `family` ("llama": `LlamaForCausalLM`, 2 layers;
  "gemma2": `Gemma2ForCausalLM`, 3 layers with a sliding window of 4 and soft-caps), width
  32, with a `word_tokenizer` over `words`."""
  torch.manual_seed(seed)
  tokenizer = word_tokenizer(words)
  sizes = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48,
               num_attention_heads=4, num_key_value_heads=2, head_dim=8,
               max_position_embeddings=256, initializer_range=0.2, bos_token_id=1,
               pad_token_id=0, eos_token_id=None)
  if family == "llama":
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(num_hidden_layers=2, **sizes))
  elif family == "gemma2":
    model = transformers.Gemma2ForCausalLM(transformers.Gemma2Config(
        num_hidden_layers=3, sliding_window=4, query_pre_attn_scalar=12,
        attn_logit_softcapping=20.0, final_logit_softcapping=10.0, **sizes))
  else:
    raise ValueError(f"family {family!r}: llama or gemma2")
  model.eval().save_pretrained(path)
  tokenizer.save_pretrained(path)
  return path


# `generation.pipeline_class` -> the tiny generator `build_all` builds for it.
GENERATORS = {"StableAudioPipeline": "stable_audio", "AudioLDM2Pipeline": "audioldm2",
              "MusicgenForConditionalGeneration": "musicgen"}


def build_all(root: str, *, generator: str = "stable_audio") -> dict[str, str]:
  """Builds (or reuses) the tiny CLAP, AST and generator (`stable_audio`, `audioldm2` or
  `musicgen`) under `root`."""
  builders = {"clap": build_clap, "ast": build_ast,
              generator: {"stable_audio": build_stable_audio, "audioldm2": build_audioldm2,
                          "musicgen": build_musicgen}[generator]}
  paths = {}
  for name, build in builders.items():
    path = os.path.join(root, f"{name}-v{TINY_VERSION}")
    done = os.path.join(path, ".complete")
    if not os.path.exists(done):
      with files.atomic_dir(path) as tmp:
        build(tmp)
        files.write_text(os.path.join(tmp, ".complete"), "")
    paths[name] = path
  return paths


def write_synthetic_database(folder: str, num_clips: int, *, seed: int = 0) -> str:
  """Writes `num_clips` short synthetic clips plus one corrupt file into `folder`.

  Tones, chirps and noise bursts of 0.3-1.2 s, at 16, 22.05, 44.1 and 48 kHz, mono and
  stereo, as WAV, FLAC and OGG, so that decoding, channel mixing and resampling are all
  exercised; `broken.wav` holds bytes that are not audio and must be skipped. Reused when
  already written with the same arguments.
  """
  import json  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top
  import soundfile as sf  # pylint: disable=g-import-not-at-top

  marker = os.path.join(folder, ".complete")
  stamp = json.dumps({"num_clips": num_clips, "seed": seed, "version": TINY_VERSION})
  if os.path.exists(marker):
    with open(marker, encoding="utf-8") as f:
      if f.read() == stamp:
        return folder
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  rates = (16_000, 22_050, 44_100, 48_000)
  formats = (("wav", "WAV", "PCM_16"), ("flac", "FLAC", "PCM_16"), ("ogg", "OGG", "VORBIS"))
  for i in range(num_clips):
    rate = rates[i % len(rates)]
    seconds = float(rng.uniform(0.3, 1.2))
    t = np.arange(int(seconds * rate)) / rate
    kind = i % 3
    if kind == 0:
      wave = np.sin(2 * np.pi * rng.uniform(100, 4000) * t)
    elif kind == 1:
      f0, f1 = rng.uniform(100, 6000, size=2)
      wave = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds)))
    else:
      wave = rng.standard_normal(t.size) * np.exp(-t * rng.uniform(1, 8))
    wave = 0.5 * wave / max(1e-6, float(np.abs(wave).max()))
    if i % 4 == 3:
      wave = np.stack([wave, 0.5 * wave], axis=1)
    ext, fmt, subtype = formats[i % len(formats)]
    with files.atomic_path(os.path.join(folder, f"clip{i:04d}.{ext}")) as tmp:
      sf.write(tmp, wave.astype(np.float32), rate, format=fmt, subtype=subtype)
  files.write_bytes(os.path.join(folder, "broken.wav"),
                    b"RIFF\x00\x00\x00\x00WAVEnot really audio" + bytes(range(64)))
  files.write_text(marker, stamp)
  return folder
