"""PyTorch inference of exported axk models (AudioBERT, ITH), for users outside JAX.

Imported only by code that asks for it; nothing in training imports torch.
"""
