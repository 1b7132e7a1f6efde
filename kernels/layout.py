"""Weight layouts and matmuls for small-batch inference on the CPU.

A matmul with a few rows is bound by reading the weights. BLAS reads an [in, out] row-major weight
at close to twice the speed of an [out, in] one, so the layers that run at small batch keep their
weights in input-major storage, seen through a transposed view of the usual shape: state dicts,
`load_state_dict` (which copies into the existing strides) and `.to()` (which preserves strides)
are unchanged. BLAS also runs a few-row matmul on one core; splitting the reduction dimension
into one batched matmul per thread lets every core stream its share of the weights.
"""

from __future__ import annotations

import torch
from torch import nn

SMALL_ROWS = 16  # at most this many rows: the split-reduction matmul


def input_major(weight: torch.Tensor) -> nn.Parameter:
    """[out, in, *k] weight -> a Parameter of the same shape and values whose storage is [in * k, out]."""
    out_features = weight.shape[0]
    storage = weight.detach().reshape(out_features, -1).t().contiguous()  # [in * k, out]
    return nn.Parameter(storage.t().view(weight.shape), requires_grad=weight.requires_grad)


def input_major_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The [in * k, out] matrix of an `input_major` weight (a view, no copy)."""
    return weight.flatten(1).t()


def matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ w [K, N] (w contiguous) -> [..., N]; few rows on several threads split K."""
    rows = x.numel() // x.shape[-1]
    splits = torch.get_num_threads()
    k, n = w.shape
    if rows > SMALL_ROWS or splits < 2 or k % splits or x.device.type != "cpu" or not w.is_contiguous():
        return x @ w
    parts = x.reshape(rows, splits, k // splits).transpose(0, 1)  # [splits, rows, K / splits]
    out = torch.bmm(parts, w.view(splits, k // splits, n)).sum(0)  # [rows, N]
    return out.view(*x.shape[:-1], n)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear for an `input_major` weight [out, in]."""
    y = matmul(x, input_major_matrix(weight))
    return y if bias is None else y + bias
