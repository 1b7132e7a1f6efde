"""Building blocks of the LM's transformers: norms, linears, feed-forwards, positional embeddings,
token embeddings. Module and parameter names follow the released checkpoints (reference §2.6-2.7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from antiphon.kernels import dispatch, layout

ACTIVATIONS = {
    "silu": F.silu, "gelu": F.gelu, "relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
    "elu": F.elu, "leaky_relu": F.leaky_relu, "mish": F.mish, "softsign": F.softsign,
}


def small_batch_weight(out_features: int, in_features: int) -> nn.Parameter:
    """An uninitialized [out, in] weight in the storage layout that few-row CPU matmuls read fastest
    (kernels.layout); `layout.linear` applies it."""
    return layout.small_batch_layout(torch.empty(out_features, in_features))


class Linear(nn.Module):
    """A bias-free linear layer, weight [out, in] in the small-batch storage layout (or quantized)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = small_batch_weight(out_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layout.linear(x, self.weight)


class RMSNorm(nn.Module):
    """y = x * alpha / sqrt(eps + mean(x^2)); in float32 when `f32` (kernels.dispatch.rmsnorm), else in
    x's dtype. alpha [1, 1, D]."""

    def __init__(self, dim: int, eps: float, f32: bool):
        super().__init__()
        self.eps = eps
        self.f32 = f32
        self.alpha = nn.Parameter(torch.ones(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.f32:
            return dispatch.rmsnorm(x, None, self.alpha, self.eps)[0]
        var = self.eps + x.pow(2).mean(-1, keepdim=True)
        return x * (self.alpha.to(var.dtype) * torch.rsqrt(var))


def add_and_norm(norm: nn.Module, update: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(residual + update), residual + update): one fused kernel for a float32 RMSNorm."""
    if isinstance(norm, RMSNorm) and norm.f32:
        return dispatch.rmsnorm(update, residual, norm.alpha, norm.eps)
    h = residual + update
    return norm(h), h


class LayerNormF32(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "rms_norm_f32":
        return RMSNorm(dim, 1e-8, f32=True)
    if kind == "rms_norm":
        return RMSNorm(dim, 1e-5, f32=False)
    if kind == "layer_norm_f32":
        return LayerNormF32(dim, eps=1e-8)
    if kind == "layer_norm":
        return nn.LayerNorm(dim, eps=1e-5)
    raise ValueError(f"unknown norm {kind!r}")


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def gated_hidden(dim: int, dim_feedforward: int) -> int:
    """Hidden width of the gated FFN (reference §2.6): 21 D / 8 when dim_ff = 4 D, else 2 dim_ff / 3."""
    return (21 * dim) // 8 if dim_feedforward == 4 * dim else (2 * dim_feedforward) // 3


class GatedFFN(nn.Module):
    """linear_in [2H, D] (first H rows: the gate), linear_out [D, H]: out = W_out (act(gate) * value)."""

    def __init__(self, dim: int, dim_feedforward: int, activation: str):
        super().__init__()
        hidden = gated_hidden(dim, dim_feedforward)
        self.activation = ACTIVATIONS[activation]
        self.linear_in = Linear(dim, 2 * hidden)
        self.linear_out = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.linear_in(x)
        if self.activation is F.silu:
            return self.linear_out(dispatch.swiglu(u))
        u = u.unflatten(-1, (2, -1))
        return self.linear_out(self.activation(u[..., 0, :]) * u[..., 1, :])


class FeedForwardLayer(nn.Module):
    """Base of a pre-norm layer whose feed-forward half sits on the layer under the released names:
    `gating` (one GatedFFN, or a list of them, one per weight set) or `linear1` / `linear2` (GELU MLP)
    when gating is "none"."""

    def build_ffn(self, dim: int, dim_feedforwards: tuple[int, ...], gating: str, per_step: bool) -> None:
        self.per_step = per_step and gating != "none"
        if gating == "none":
            self.linear1 = Linear(dim, dim_feedforwards[0])
            self.linear2 = Linear(dim_feedforwards[0], dim)
        elif per_step:
            self.gating = nn.ModuleList([GatedFFN(dim, ff, gating) for ff in dim_feedforwards])
        else:
            self.gating = GatedFFN(dim, dim_feedforwards[0], gating)

    def ffn(self, x: torch.Tensor, schedule: tuple[int, ...] | None = None) -> torch.Tensor:
        """x [B, T, D]; schedule: the weight set of each of the T positions (per-step weights only)."""
        if not hasattr(self, "gating"):
            return self.linear2(F.gelu(self.linear1(x)))
        if not self.per_step:
            return self.gating(x)
        return torch.cat([self.gating[s](x[:, t: t + 1]) for t, s in enumerate(schedule)], dim=1)


def sin_embedding(positions: torch.Tensor, dim: int, max_period: float) -> torch.Tensor:
    """positions [B or 1, T] -> [B or 1, T, dim]: cos then sin of positions / max_period^(i / (dim/2 - 1))."""
    half = dim // 2
    i = torch.arange(half, device=positions.device, dtype=torch.float32)
    phase = positions.to(torch.float32)[..., None] / (max_period ** (i / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


class Embedding(nn.Module):
    """Token embedding with the zero token: id -1 gives an exact zero vector.

    `weight` [N, D] (or [N, r] with `low_rank` [D, r] projecting up). With `demux`, an id packs two
    tokens, id = (second + 1) * N + first (second = -1: none), embedded as out1(E first) + out2(E second).
    """

    ZERO = -1

    def __init__(self, num_embeddings: int, dim: int, low_rank: int | None = None, demux: bool = False):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.weight = nn.Parameter(torch.empty(num_embeddings, low_rank or dim))
        self.low_rank = Linear(low_rank, dim) if low_rank else None
        self.demux = demux
        if demux:
            self.out1 = Linear(low_rank or dim, dim)
            self.out2 = Linear(low_rank or dim, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [...] (int) -> [..., D]."""
        is_zero = (ids == self.ZERO)[..., None]
        ids = ids.clamp(min=0)
        if self.demux:
            first, second = ids % self.num_embeddings, ids // self.num_embeddings - 1
            y = self.out1(F.embedding(first, self.weight))
            y2 = self.out2(F.embedding(second.clamp(min=0), self.weight))
            y = y + torch.where((second < 0)[..., None], 0.0, y2)
            return torch.where(is_zero, 0.0, y)
        y = torch.where(is_zero, 0.0, F.embedding(ids, self.weight))
        return y if self.low_rank is None else self.low_rank(y)

    @property
    def max_id(self) -> int:
        n = self.num_embeddings
        return n * (n + 1) - 1 if self.demux else n - 1


def causal_window_mask(q_positions: torch.Tensor, k_positions: torch.Tensor, context: int | None) -> torch.Tensor:
    """q_positions [B or 1, T], k_positions [B or 1, S] -> bool [B or 1, 1, T, S]: attend where the key is
    valid (>= 0), not in the future, and fewer than `context` steps back (None: unlimited)."""
    delta = q_positions[:, :, None] - k_positions[:, None, :]
    mask = (k_positions[:, None, :] >= 0) & (delta >= 0)
    if context is not None:
        mask = mask & (delta < context)
    return mask[:, None]


def split_heads(proj: torch.Tensor, num_heads: int, kv_heads: int) -> tuple[torch.Tensor, ...]:
    """proj [B, T, (H + 2 KH) hd] (rows q, k, v, head-major) -> q [B, T, H, hd], k, v [B, T, KH, hd]."""
    head_dim = proj.shape[-1] // (num_heads + 2 * kv_heads)
    q = proj[..., : num_heads * head_dim].unflatten(-1, (num_heads, head_dim))
    k, v = proj[..., num_heads * head_dim:].unflatten(-1, (2, kv_heads, head_dim)).unbind(-3)
    return q, k, v


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, kv_repeat: int) -> torch.Tensor:
    """q [B, H, T, hd], k, v [B, KH, S, hd], mask [B or 1, 1, T, S] -> [B, T, H * hd]."""
    if kv_repeat > 1:
        k = k.repeat_interleave(kv_repeat, dim=1)
        v = v.repeat_interleave(kv_repeat, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).flatten(2)
