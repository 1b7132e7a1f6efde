"""Weight layouts and matmuls for small-batch inference on the CPU.

A matmul with a few rows is bound by reading its weight, and BLAS runs it on one core at well below
the memory bandwidth. Two things help, measured on 2-core x86 (AVX2, MKL):
- split the matmul into one batched matmul per thread, along the reduction dimension K for a weight
  stored input-major ([K, N] row-major) or along the output dimension N for a weight stored
  output-major ([N, K], torch's usual layout);
- store a weight that widens (K < N) input-major and one that narrows (K >= N) output-major: each
  then streams at 1.5-2x the speed of the other layout.
An input-major weight keeps its usual shape through a transposed view of its storage: state dicts,
`load_state_dict` (which copies into the existing strides) and `.to()` (which preserves strides)
are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

SMALL_ROWS = 16  # at most this many rows: the split matmul


def small_batch_layout(weight: torch.Tensor) -> nn.Parameter:
    """[out, in, *k] weight -> a Parameter of the same shape and values, stored input-major
    ([in * k, out] row-major) when it widens, output-major (contiguous) otherwise."""
    n = weight.shape[0]
    k = weight.numel() // max(n, 1)
    data = weight.detach()
    if k < n:
        data = data.reshape(n, k).t().contiguous().t().view(weight.shape)
    else:
        data = data.contiguous()
    trainable = weight.requires_grad if isinstance(weight, nn.Parameter) else True  # a new weight trains
    return nn.Parameter(data, requires_grad=trainable)


def matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ w [K, N] -> [..., N]. With few rows on several CPU threads, one batched matmul
    splits the work along K (w row-major) or along N (w column-major)."""
    k, n = w.shape
    rows = x.numel() // k
    splits = torch.get_num_threads()
    if rows > SMALL_ROWS or splits < 2 or x.device.type != "cpu":
        return x @ w
    if w.is_contiguous() and k % splits == 0:
        parts = x.reshape(rows, splits, k // splits).transpose(0, 1)  # [splits, rows, K / splits]
        out = torch.bmm(parts, w.view(splits, k // splits, n)).sum(0)
    elif w.t().is_contiguous() and n % splits == 0:
        blocks = w.t().reshape(splits, n // splits, k).transpose(1, 2)  # [splits, K, N / splits]
        out = torch.bmm(x.reshape(1, rows, k).expand(splits, rows, k), blocks)  # [splits, rows, N / splits]
        out = out.transpose(0, 1).reshape(rows, n)
    else:
        return x @ w
    return out.view(*x.shape[:-1], n)


def linear(x: torch.Tensor, weight: torch.Tensor | nn.Module, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear for a weight [out, in, *k] in either layout, or a quantized weight (a module:
    antiphon/quantize.QuantizedWeight); x [..., in * k]."""
    y = weight(x) if isinstance(weight, nn.Module) else matmul(x, weight.flatten(1).t())
    return y if bias is None else y + bias
