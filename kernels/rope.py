"""Rotary position embedding (torch reference).

Pairs of each head's channels are rotated by the angle t * w_i, w_i = max_period^(-2i/head_dim), with t
the absolute position of the token in its own stream. Interleaved (Kyutai's "rope", every model here)
the pair i is (x[2i], x[2i+1]); not interleaved ("rope_concat") it is (x[i], x[i + head_dim/2]). A pair
is a complex number and the rotation a product with e^(i t w_i); math in float32, result in x's dtype.
"""

from __future__ import annotations

import math

import torch


def rope_rotation(positions: torch.Tensor, head_dim: int, max_period: float) -> torch.Tensor:
    """positions [..., T] (integer) -> e^(i t w) as complex64 [..., T, head_dim // 2]."""
    i = torch.arange(head_dim // 2, device=positions.device, dtype=torch.float32)
    freqs = torch.exp(i * (-math.log(max_period) * 2.0 / head_dim))
    angles = positions.to(torch.float32)[..., None] * freqs
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, rotation: torch.Tensor, interleaved: bool = True) -> torch.Tensor:
    """x [B, T, *heads, D]; rotation [B or 1, T, D // 2] -> x rotated, same shape and dtype."""
    if interleaved:
        pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # [B, T, *heads, D / 2]
    else:
        pairs = torch.complex(*x.float().chunk(2, dim=-1))
    rotation = rotation.view(rotation.shape[:2] + (1,) * (x.dim() - 3) + rotation.shape[2:])
    rotated = pairs * rotation
    if interleaved:
        return torch.view_as_real(rotated).flatten(-2).to(x.dtype)
    return torch.cat([rotated.real, rotated.imag], dim=-1).to(x.dtype)
