"""The codec's 25 Hz transformers: pre-LayerNorm, interleaved RoPE, causal attention over a sliding
window of `context` steps, exact-GELU MLP, layer scale, no biases. Streaming keeps the keys and
values of every slot in a KVRing (antiphon/kv_ring.py); streaming equals offline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from antiphon.codec.config import CodecConfig
from antiphon.kernels import layout
from antiphon.kernels.rope import apply_rope, rope_rotation
from antiphon.kv_ring import PIECE, KVRing, Step, additive_mask
from antiphon.quantize import quantize_weights
from antiphon.stateful import Stateful


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), 0.01))

    def residual(self, x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        """x + scale * update, in one op."""
        return torch.addcmul(x, update, self.scale)


class NoScale(nn.Module):
    def residual(self, x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        return x + update


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = layout.small_batch_layout(nn.init.xavier_uniform_(torch.empty(3 * dim, dim)))  # rows: q, k, v
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.out_proj.weight = layout.small_batch_layout(self.out_proj.weight)

    def forward(self, x: torch.Tensor, rotation: torch.Tensor, context: int,
                ring: tuple[KVRing, int, Step] | None = None) -> torch.Tensor:
        """x [B, T, D]; rotation: RoPE [B or 1, T, hd / 2]. Offline (no ring): steps 0..T-1, each
        attending to the last `context` ones. Streaming: (the ring, this layer's index, the step)."""
        qkv = layout.linear(x, self.in_proj_weight).unflatten(-1, (3, self.num_heads, -1))  # [B, T, 3, H, hd]
        q, k = apply_rope(qkv[:, :, :2], rotation).permute(2, 0, 3, 1, 4)  # each [B, H, T, hd]
        v = qkv[:, :, 2].transpose(1, 2)
        if ring is None:
            out = _windowed_attention(q, k, v, context)
        else:
            cache, layer, step = ring
            keys, values = cache.write(layer, step.index, k, v)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=step.mask)  # [B, H, T, hd]
        return layout.linear(out.transpose(1, 2).flatten(2), self.out_proj.weight)


class TransformerLayer(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        dim = cfg.dimension
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.self_attn = SelfAttention(dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.linear1 = nn.Linear(dim, cfg.dim_feedforward, bias=False)
        self.linear2 = nn.Linear(cfg.dim_feedforward, dim, bias=False)
        for linear in (self.linear1, self.linear2):
            linear.weight = layout.small_batch_layout(linear.weight)
        self.context = cfg.context
        scaled = cfg.layer_scale is not None
        self.layer_scale_1 = LayerScale(dim) if scaled else NoScale()
        self.layer_scale_2 = LayerScale(dim) if scaled else NoScale()

    def forward(self, x, rotation, ring=None):
        x = self.layer_scale_1.residual(x, self.self_attn(self.norm1(x), rotation, self.context, ring))
        update = layout.linear(F.gelu(layout.linear(self.norm2(x), self.linear1.weight)), self.linear2.weight)
        return self.layer_scale_2.residual(x, update)


class CodecTransformer(Stateful):
    """[B, D, T] -> [B, D, T] (conv layout in and out)."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.context = cfg.context
        self.max_period = cfg.max_period
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.dimension // cfg.num_heads
        self.layers = nn.ModuleList([TransformerLayer(cfg) for _ in range(cfg.num_layers)])

    def quantize(self) -> int:
        """Weight-only int8 of every linear weight (antiphon/quantize.py); returns how many."""
        return quantize_weights([target for layer in self.layers for target in (
            (layer.self_attn, "in_proj_weight"), (layer.self_attn.out_proj, "weight"),
            (layer.linear1, "weight"), (layer.linear2, "weight"))], "int8")

    def init_state(self, batch_size: int) -> KVRing:
        w = self.layers[0].self_attn.in_proj_weight
        # the whole ring: a 10 s context would save only a session's first seconds, and a shorter read
        # changes float rounding, so near-tie codes (codec parity) would move
        return KVRing(len(self.layers), batch_size, self.num_heads, self.head_dim, self.context, w.device, w.dtype,
                      live_window=False)

    def reset_state(self, state: KVRing, mask: torch.Tensor) -> None:
        state.reset(mask)

    def hold(self, state: KVRing, active: torch.Tensor):
        """Paused slots keep their offset; the ring columns written for them are masked (KVRing.hold)."""
        return state.hold(active)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # [B, T, D]
        if self.state is None:
            x = self._offline(x)
        else:
            x = torch.cat([self._streaming(piece) for piece in x.split(PIECE, dim=1)], dim=1)
        return x.transpose(1, 2)

    def _offline(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        rotation = rope_rotation(positions[None], self.head_dim, self.max_period)
        for layer in self.layers:
            x = layer(x, rotation)
        return x

    def _streaming(self, x: torch.Tensor) -> torch.Tensor:
        ring, steps = self.state, x.shape[1]
        step = ring.begin(steps)
        rotation = rope_rotation(step.positions, self.head_dim, self.max_period)
        for i, layer in enumerate(self.layers):
            x = layer(x, rotation, (ring, i, step))
        ring.end(steps)
        return x


def _windowed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, context: int) -> torch.Tensor:
    """Causal attention over the last `context` steps for q, k, v [B, H, T, hd] at positions 0..T-1,
    in blocks of `context` queries so that memory grows with T * context, not T^2."""
    steps = q.shape[2]
    out = []
    for start in range(0, steps, context):
        end, first_key = min(start + context, steps), max(0, start - context + 1)
        delta = torch.arange(start, end, device=q.device)[:, None] - torch.arange(first_key, end, device=q.device)
        mask = additive_mask((delta >= 0) & (delta < context), q.dtype)
        out.append(F.scaled_dot_product_attention(q[:, :, start:end], k[:, :, first_key:end],
                                                  v[:, :, first_key:end], attn_mask=mask))
    return torch.cat(out, dim=2)

