"""Offline audio features (PyTorch) for AudioBERT and ITH.

Only `shards` (the reader the JAX side uses) is meant to be imported by training code; it
never imports torch. Everything else runs in the feature commands
(`python -m axk.main --config=configs/features.py:...`), see `pipeline`.
"""
