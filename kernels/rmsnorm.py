"""Fused residual add + RMSNorm (reference §2.6): h = x + residual; y = h * alpha / sqrt(eps + mean(h^2)).

The add rounds to x's dtype (the residual stream is stored in the model dtype); the norm runs in float32
on the rounded sum and rounds once to x's dtype. alpha [D] (or [1, 1, D], as stored) is used in float32.
"""

from __future__ import annotations

import torch

from antiphon.kernels._triton import jit, next_power_of_2, tl


def rmsnorm_reference(x: torch.Tensor, residual: torch.Tensor | None, alpha: torch.Tensor,
                      eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D], residual [..., D] or None, alpha [D] -> (normed [..., D], new residual x + residual),
    both in x's dtype (without a residual the new residual is x itself)."""
    h = x if residual is None else x + residual
    y = h.float()
    var = eps + y.pow(2).mean(-1, keepdim=True)
    return (y * (alpha.reshape(-1).float() * torch.rsqrt(var))).to(x.dtype), h


@jit
def _rmsnorm_kernel(x_ptr, r_ptr, alpha_ptr, out_ptr, h_ptr, D, eps,
                    HAS_RESIDUAL: tl.constexpr, BLOCK_D: tl.constexpr):
    # one program per row of D values
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    h = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        h = h + tl.load(r_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        h = h.to(h_ptr.dtype.element_ty)  # the residual stream keeps the model dtype
        tl.store(h_ptr + row * D + cols, h, mask=mask)
        h = h.to(tl.float32)
    var = tl.sum(h * h, axis=0) / D + eps
    alpha = tl.load(alpha_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = h * (alpha * (1.0 / tl.sqrt(var)))
    tl.store(out_ptr + row * D + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def rmsnorm_triton(x: torch.Tensor, residual: torch.Tensor | None, alpha: torch.Tensor,
                   eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as rmsnorm_reference; one program per row (D up to a few thousand)."""
    d = x.shape[-1]
    if alpha.numel() != d:
        raise ValueError(f"rmsnorm: alpha has {alpha.numel()} values for rows of {d}; pass alpha [D]")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(f"rmsnorm: residual {tuple(residual.shape)} {residual.dtype} must match x "
                         f"{tuple(x.shape)} {x.dtype}")
    xs = x.contiguous()
    rs = residual.contiguous() if residual is not None else xs
    out = torch.empty_like(xs)
    h = torch.empty_like(xs) if residual is not None else x
    rows = xs.numel() // max(d, 1)
    if rows:
        _rmsnorm_kernel[(rows,)](xs, rs, alpha.reshape(-1).contiguous(), out, h if residual is not None else out,
                                 d, float(eps), HAS_RESIDUAL=residual is not None, BLOCK_D=next_power_of_2(d))
    return out, h
