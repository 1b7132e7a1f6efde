"""Kernels: each plain-torch reference (the one that runs without a GPU) beside its Triton kernel,
and the CPU weight layouts for small-batch inference (layout.py)."""
