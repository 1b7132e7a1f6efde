"""Interleaved RoPE on queries and keys at per-row integer positions (reference §2.6), fused.

The torch reference is kernels/rope.py (`apply_rope(x, rope_rotation(positions, head_dim, max_period))`);
this kernel must equal it. The pair (x[2i], x[2i+1]) is rotated by t * w_i, w_i = max_period^(-2i/hd),
math in float32, result in x's dtype. The frequencies come from the same torch expression as the
reference and the angle t * w_i is the same float32 product; the kernel reduces it modulo 2 pi in float64
before cos/sin, so positions far beyond 2 pi (t grows without bound) keep float32 accuracy.
"""

from __future__ import annotations

import math

import torch

from antiphon.kernels._triton import jit, next_power_of_2, tl
from antiphon.kernels.rope import apply_rope, rope_rotation


def rope_frequencies(head_dim: int, max_period: float, device) -> torch.Tensor:
    """[head_dim // 2] float32, the same values as inside rope_rotation."""
    i = torch.arange(head_dim // 2, device=device, dtype=torch.float32)
    return torch.exp(i * (-math.log(max_period) * 2.0 / head_dim))


def rope_reference(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                   max_period: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, T, H, hd], k [B, T, KH, hd], positions [B or 1, T] (integer) -> rotated (q, k), same dtypes."""
    rotation = rope_rotation(positions, q.shape[-1], max_period)
    return apply_rope(q, rotation), apply_rope(k, rotation)


@jit
def _rope_kernel(x_ptr, out_ptr, pos_ptr, freq_ptr, T, H, sxb, sxt, sxh, spb, spt,
                 HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr):
    # one program per (b, t): all heads of that token; out is contiguous [B, T, H, hd]
    bt = tl.program_id(0)
    b = (bt // T).to(tl.int64)
    t = (bt % T).to(tl.int64)
    heads = tl.arange(0, BLOCK_H)
    pairs = tl.arange(0, BLOCK_P)
    pmask = pairs < HALF
    pos = tl.load(pos_ptr + b * spb + t * spt).to(tl.float32)
    angle = pos * tl.load(freq_ptr + pairs, mask=pmask, other=0.0)  # the reference's float32 angle
    # angle - 2 pi round(angle / 2 pi) in float64; 2 pi = f32(2 pi) + a small float32 correction, as a
    # float literal in a kernel is float32
    a64 = angle.to(tl.float64)
    turns = tl.floor(a64 * 0.15915494309189535 + 0.5)
    reduced = ((a64 - turns * 6.2831854820251465) - turns * -1.7484556000744883e-07).to(tl.float32)
    cos = tl.cos(reduced)[None, :]
    sin = tl.sin(reduced)[None, :]
    mask = (heads[:, None] < H) & pmask[None, :]
    src = x_ptr + b * sxb + t * sxt + heads[:, None].to(tl.int64) * sxh + 2 * pairs[None, :]
    even = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    odd = tl.load(src + 1, mask=mask, other=0.0).to(tl.float32)
    dst = out_ptr + (b * T + t) * H * 2 * HALF + heads[:, None] * 2 * HALF + 2 * pairs[None, :]
    tl.store(dst, (even * cos - odd * sin).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + 1, (even * sin + odd * cos).to(out_ptr.dtype.element_ty), mask=mask)


def _rope_one(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    b, t, h, hd = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty((b, t, h, hd), dtype=x.dtype, device=x.device)
    if x.numel():
        spb = positions.stride(0) if positions.shape[0] > 1 else 0
        _rope_kernel[(b * t,)](x, out, positions, freqs, t, h, x.stride(0), x.stride(1), x.stride(2), spb,
                               positions.stride(1), HALF=hd // 2, BLOCK_H=next_power_of_2(h),
                               BLOCK_P=next_power_of_2(hd // 2))
    return out


def rope_triton(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                max_period: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as rope_reference. q and k may be strided views (e.g. of a fused qkv projection)
    as long as the head dimension is contiguous; outputs are new contiguous tensors."""
    if q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"rope: q {tuple(q.shape)} and k {tuple(k.shape)} must be [B, T, heads, hd] with "
                         "the same B, T and hd")
    b, t, _, hd = q.shape
    if hd % 2 or positions.dim() != 2 or positions.shape[1] != t or positions.shape[0] not in (1, b):
        raise ValueError(f"rope: positions {tuple(positions.shape)} must be [B or 1, T] = [{b} or 1, {t}] "
                         f"and head_dim ({hd}) even")
    freqs = rope_frequencies(hd, max_period, q.device)
    return _rope_one(q, positions, freqs), _rope_one(k, positions, freqs)
