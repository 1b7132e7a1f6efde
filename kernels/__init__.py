"""Triton kernels, each beside its plain-torch reference, and the one place that picks which runs."""
