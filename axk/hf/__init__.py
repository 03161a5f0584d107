"""Hugging Face checkpoints in and out of axk: `load`, `save`, `Pretrained`.

The name table lives in `axk/hf/convert.py`, the file handling in `axk/hf/io.py`.
"""

from axk.hf.io import CheckpointError, Pretrained, load, load_params, resolve, save

__all__ = ["CheckpointError", "Pretrained", "load", "load_params", "resolve", "save"]
