"""PPL for weakly-supervised audio-visual video parsing: pure PyTorch + NumPy.

Tensor layout used throughout: ``frame_prob: (B, T, M, C)`` with M = 2 modalities,
audio first (index 0), visual second (index 1), as in HAN.
"""
AUDIO, VISUAL = 0, 1
