"""Audio decoding and resampling: any file or array to mono float32 at a target rate.

CLAP wants 48 kHz and AST 16 kHz, both mono. Files are decoded with soundfile (wav, flac,
ogg, mp3 through libsndfile), falling back to librosa for anything else; resampling uses
soxr (high quality), with librosa as a fallback. A file that cannot be decoded raises
`DecodeError`, which callers count and skip: one bad file never stops a run.
"""

from __future__ import annotations

import io
import logging
import os
import warnings

import numpy as np

from axk.utils import files

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


class DecodeError(RuntimeError):
  """An audio file or buffer that cannot be decoded into a usable waveform."""


def to_mono(wave: np.ndarray, channels_last: bool = True) -> np.ndarray:
  """Averages channels: `[T]`, `[T, C]` (channels_last) or `[C, T]` -> `[T]` float32."""
  wave = np.asarray(wave)
  if wave.ndim == 2:
    wave = wave.mean(axis=1 if channels_last else 0)
  elif wave.ndim != 1:
    raise DecodeError(f"expected a 1-d or 2-d waveform, got shape {wave.shape}")
  return wave.astype(np.float32, copy=False)


def resample(wave: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
  """Resamples a mono waveform from `rate` to `target_rate` (float32)."""
  wave = np.asarray(wave, dtype=np.float32)
  if rate == target_rate or wave.size == 0:
    return wave
  try:
    import soxr  # pylint: disable=g-import-not-at-top
    return soxr.resample(wave, rate, target_rate, quality="HQ").astype(np.float32, copy=False)
  except ImportError:
    import librosa  # pylint: disable=g-import-not-at-top
    return librosa.resample(wave, orig_sr=rate, target_sr=target_rate).astype(np.float32)


def _int_to_float(wave: np.ndarray) -> np.ndarray:
  """Integer PCM to float32 in [-1, 1]; float input passes through."""
  if np.issubdtype(wave.dtype, np.integer):
    info = np.iinfo(wave.dtype)
    scale = float(max(abs(info.min), info.max))
    return (wave.astype(np.float32) / scale).astype(np.float32)
  return wave.astype(np.float32, copy=False)


def decode(source: str | os.PathLike[str] | bytes, *,
           max_seconds: float | None = None) -> tuple[np.ndarray, int]:
  """Decodes a file path or encoded bytes into a mono float32 waveform.

  Args:
    source: a path or the bytes of an encoded file.
    max_seconds: read at most this much from the start (bounds the cost of very long
      files; CLAP and AST look at 10 s at most).

  Returns:
    (wave [T] float32, sampling rate).

  Raises:
    DecodeError: unreadable, empty, or non-finite audio.
  """
  import soundfile as sf  # pylint: disable=g-import-not-at-top

  name = "<bytes>" if isinstance(source, bytes) else str(source)
  try:
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    with sf.SoundFile(handle) as f:
      rate = f.samplerate
      frames = -1 if max_seconds is None else int(max_seconds * rate)
      wave = f.read(frames=frames, dtype="float32", always_2d=True)
  except Exception as e:  # pylint: disable=broad-except
    # libsndfile lacks some codecs; librosa (audioread) may still read them.
    wave, rate = _decode_librosa(source, max_seconds, first_error=e, name=name)
  wave = to_mono(wave)
  if wave.size == 0:
    raise DecodeError(f"{name}: no samples")
  if not np.all(np.isfinite(wave)):
    raise DecodeError(f"{name}: non-finite samples")
  return wave, int(rate)


def _decode_librosa(source, max_seconds, *, first_error: Exception,
                    name: str) -> tuple[np.ndarray, int]:
  if isinstance(source, bytes):
    raise DecodeError(f"{name}: {first_error}") from first_error
  try:
    import librosa  # pylint: disable=g-import-not-at-top
    with warnings.catch_warnings():
      # librosa announces its audioread fallback; a failure is reported below anyway.
      warnings.simplefilter("ignore")
      wave, rate = librosa.load(str(source), sr=None, mono=True, duration=max_seconds)
  except Exception as e:  # pylint: disable=broad-except
    raise DecodeError(f"{name}: {first_error}; librosa: {e}") from e
  return np.asarray(wave, dtype=np.float32)[:, None], int(rate)


def load(source: str | os.PathLike[str] | bytes, target_rate: int, *,
         max_seconds: float | None = None) -> np.ndarray:
  """Decodes `source` and resamples it to `target_rate` (mono float32)."""
  wave, rate = decode(source, max_seconds=max_seconds)
  return resample(wave, rate, target_rate)


def from_array(wave: np.ndarray, rate: int, target_rate: int,
               channels_last: bool = True) -> np.ndarray:
  """Integer or float array (any channel layout) to mono float32 at `target_rate`."""
  wave = np.asarray(wave)
  if wave.size == 0:
    raise DecodeError("no samples")
  return resample(to_mono(_int_to_float(wave), channels_last), rate, target_rate)


def write_flac(path: str, wave: np.ndarray, rate: int) -> None:
  """Writes `[T]` or `[C, T]` float audio as 16-bit FLAC, atomically.

  Samples are clipped to [-1, 1] first: soundfile does not clip when converting floats to
  integers, so a louder sample would wrap around.
  """
  import soundfile as sf  # pylint: disable=g-import-not-at-top

  wave = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)
  if wave.ndim == 2:
    wave = wave.T  # soundfile wants [T, C]
  with files.atomic_path(path) as tmp:
    sf.write(tmp, wave, rate, format="FLAC", subtype="PCM_16")
