"""Interleaved rotary position embedding (torch reference).

Pairs (x[2i], x[2i+1]) of each head are rotated by the angle t * w_i, w_i = max_period^(-2i/head_dim),
with t the absolute position of the token in its own stream. Math in float32, result in x's dtype.
"""

from __future__ import annotations

import math

import torch


def rope_tables(positions: torch.Tensor, head_dim: int, max_period: float) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [..., T] (integer) -> cos, sin [..., T, head_dim // 2] in float32."""
    i = torch.arange(head_dim // 2, device=positions.device, dtype=torch.float32)
    freqs = torch.exp(i * (-math.log(max_period) * 2.0 / head_dim))
    angles = positions.to(torch.float32)[..., None] * freqs
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D]; cos, sin [B or 1, T, D // 2] -> x rotated, same shape and dtype."""
    xf = x.float().unflatten(-1, (-1, 2))  # [B, T, H, D/2, 2]
    real, imag = xf[..., 0], xf[..., 1]
    cos = cos[:, :, None, :]
    sin = sin[:, :, None, :]
    out = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)
