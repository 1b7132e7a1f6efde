"""SiLU-gated product of the gated FFN (reference §2.6): u = linear_in(x) [..., 2H], the first H values
are the gate: out = silu(u[..., :H]) * u[..., H:]. Math in float32, one rounding to u's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from antiphon.kernels._triton import jit, tl

BLOCK_H = 1024


def swiglu_reference(u: torch.Tensor) -> torch.Tensor:
    """u [..., 2H] -> [..., H] in u's dtype."""
    gate, value = u.float().chunk(2, dim=-1)
    return (F.silu(gate) * value).to(u.dtype)


@jit
def _swiglu_kernel(u_ptr, out_ptr, H, BLOCK: tl.constexpr):
    # program (row, block of H)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < H
    gate = tl.load(u_ptr + row * 2 * H + cols, mask=mask, other=0.0).to(tl.float32)
    value = tl.load(u_ptr + row * 2 * H + H + cols, mask=mask, other=0.0).to(tl.float32)
    out = gate / (1.0 + tl.exp(-gate)) * value
    tl.store(out_ptr + row * H + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def swiglu_triton(u: torch.Tensor) -> torch.Tensor:
    """Same contract as swiglu_reference."""
    if u.shape[-1] % 2:
        raise ValueError(f"swiglu: the last dimension ({u.shape[-1]}) must be even: [gate; value]")
    h = u.shape[-1] // 2
    us = u.contiguous()
    out = torch.empty(u.shape[:-1] + (h,), dtype=u.dtype, device=u.device)
    rows = out.numel() // max(h, 1)
    if rows and h:
        block = min(BLOCK_H, 1 << (h - 1).bit_length())
        _swiglu_kernel[(rows, (h + block - 1) // block)](us, out, h, BLOCK=block)
    return out
