"""Runs: what `python -m axk.main` starts (`config.entry`), each a model trained by the loop.

  span.py         the auditory span detector
  masked_word.py  AudioBERT and ITH (and any model file of `axk/models/` with the same
                  declarations): masked-word prediction on AuditoryBench with span audio
  inputs.py       plain functions building a masked-word model's inputs (spans, encoding,
                  audio, gate), for training, evaluation and single sentences alike
  stages.py       the span detector and feature pipeline, run on demand before a model
  common.py       config checks and setup shared by the runs
"""
