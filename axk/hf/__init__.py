"""Hugging Face checkpoints in and out of axk: `load`, `save`, `Pretrained` (BERT, RoBERTa);
`load_decoder`, `save_decoder`, `PretrainedDecoder` (Llama, Gemma 2).

The name table lives in `axk/hf/convert.py`, the file handling in `axk/hf/io.py`.
"""

from axk.hf.io import (CheckpointError, Pretrained, PretrainedDecoder, load, load_decoder,
                       load_params, resolve, save, save_decoder)

__all__ = ["CheckpointError", "Pretrained", "PretrainedDecoder", "load", "load_decoder",
           "load_params", "resolve", "save", "save_decoder"]
