"""Weight layouts for small-batch inference on the CPU.

A matmul with a few rows is bound by reading the weights. BLAS reads an [in, out] row-major weight
at close to the memory bandwidth but an [out, in] one at about half of it, so the layers that run
at small batch keep their weights in input-major storage, seen through a transposed view of the
usual shape: state dicts, `load_state_dict` (which copies into the existing strides) and `.to()`
(which preserves strides) are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def input_major(weight: torch.Tensor) -> nn.Parameter:
    """[out, in, *k] weight -> a Parameter of the same shape and values whose storage is [in * k, out]."""
    out_features = weight.shape[0]
    storage = weight.detach().reshape(out_features, -1).t().contiguous()  # [in * k, out]
    return nn.Parameter(storage.t().view(weight.shape), requires_grad=weight.requires_grad)


def input_major_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The [in * k, out] matrix of an `input_major` weight (a view, no copy)."""
    return weight.flatten(1).t()
