"""The LM's two transformers.

`TemporalTransformer`: over time steps; pre-norm layers, interleaved RoPE, causal attention over a
sliding window of `context` steps, gated FFN, no biases. It is `Stateful`: streaming keeps the keys
and values of every slot in a KVRing (antiphon/kv_ring.py), with a position counter per slot, so a
slot can be reset alone.

`DepthTransformer` (the depformer): over the dep_q codebooks of one time step, causal, no window,
weights chosen per codebook step (stacked attention projections [S, out, in], one FFN per weight set),
norms shared. Generation runs it one codebook at a time (`step`) over a KV cache of dep_q positions
per row (`init_cache`); step k writes position k and reads positions 0..k, so the cache needs no
reset between time steps.
"""

from __future__ import annotations

import torch
from torch import nn

from antiphon.kernels import dispatch, layout
from antiphon.kernels.rope import apply_rope, rope_rotation
from antiphon.lm.config import LMConfig
from antiphon.lm.layers import (FeedForwardLayer, LayerScale, Linear, add_and_norm, attend, causal_window_mask,
                                make_norm, sin_embedding, small_batch_weight, split_heads)
from antiphon.kv_ring import PIECE, KVRing, Step
from antiphon.stateful import Stateful


class Rope:
    """The rotation of one call's positions [B or 1, T], applied to queries and keys: the fused kernel
    where kernels.dispatch picks Triton (interleaved pairs), else one complex product with a rotation
    table computed once per call and shared by the layers."""

    def __init__(self, positions: torch.Tensor, head_dim: int, max_period: float, interleaved: bool):
        self.positions, self.head_dim, self.max_period, self.interleaved = positions, head_dim, max_period, interleaved
        self._rotation = None  # complex [B or 1, T, hd / 2]

    def __call__(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q [B, T, H, hd], k [B, T, KH, hd] -> both rotated."""
        if self.interleaved and dispatch.use_triton(q):
            return dispatch.rope(q, k, self.positions, self.max_period)
        if self._rotation is None:
            self._rotation = rope_rotation(self.positions, self.head_dim, self.max_period)
        return apply_rope(q, self._rotation, self.interleaved), apply_rope(k, self._rotation, self.interleaved)


class Positions:
    """How a transformer encodes positions: "rope" (interleaved pairs), "rope_concat" (pairs i and
    i + hd/2), "sin", "sin_rope" or "none"."""

    def __init__(self, kind: str, head_dim: int, max_period: float, scale: float):
        self.rope = kind in ("rope", "rope_concat", "sin_rope")
        self.interleaved = kind != "rope_concat"
        self.sin = kind in ("sin", "sin_rope")
        self.head_dim, self.max_period, self.scale = head_dim, max_period, scale

    def add_sin(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if not self.sin:
            return x
        return x + (self.scale * sin_embedding(positions, x.shape[-1], self.max_period)).to(x.dtype)

    def tables(self, positions: torch.Tensor) -> Rope | None:
        return Rope(positions, self.head_dim, self.max_period, self.interleaved) if self.rope else None


def _rope(q: torch.Tensor, k: torch.Tensor, rope: Rope | None) -> tuple[torch.Tensor, torch.Tensor]:
    return (q, k) if rope is None else rope(q, k)


# ---------------------------------------------------------------------------------------- temporal
class SelfAttention(nn.Module):
    """Fused `in_proj_weight` [(H + 2 KH) hd, D] (rows q, k, v) and `out_proj.weight` [D, D]."""

    def __init__(self, dim: int, num_heads: int, kv_repeat: int):
        super().__init__()
        self.num_heads, self.kv_repeat = num_heads, kv_repeat
        kv_dim = dim // kv_repeat
        self.in_proj_weight = small_batch_weight(dim + 2 * kv_dim, dim)
        self.out_proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor, tables, mask: torch.Tensor,
                ring: tuple[KVRing, int, Step] | None = None) -> torch.Tensor:
        """x [B, T, D]; mask [B or 1, 1, T, S]. Offline: S = T; streaming: (the ring, this layer's index,
        this call's Step), S = the ring's live window; the keys are written first. A one-step call where
        kernels.dispatch picks Triton attends with the decode kernel over the whole ring (it masks by key
        position itself, the same rule as the mask)."""
        proj = layout.linear(x, self.in_proj_weight)
        q, k, v = split_heads(proj, self.num_heads, self.num_heads // self.kv_repeat)
        q, k = _rope(q, k, tables)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if ring is None:
            return self.out_proj(attend(q, k, v, mask, self.kv_repeat))
        cache, layer, step = ring
        if q.shape[2] == 1 and dispatch.use_triton(q):
            cache.store(layer, step.index, k, v)
            keys, values, k_scale, v_scale = cache.stored(layer)
            out = dispatch.decode_attention(q[:, :, 0], keys, values, cache.key_positions, step.positions[:, 0],
                                            cache.context, k_scale, v_scale)
            return self.out_proj(out.flatten(1)[:, None])
        k, v = cache.write(layer, step.index, k, v)
        return self.out_proj(attend(q, k, v, mask, self.kv_repeat))


class CrossAttention(nn.Module):
    """Attention from the steps to a fixed source (the fused "cross" conditions), no mask, no positions
    (the source carries its own). `in_proj_weight` [3D, D] (rows q, k, v), `out_proj.weight` [D, D]."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = small_batch_weight(3 * dim, dim)
        self.out_proj = Linear(dim, dim)

    def keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """source [B, S, D] -> keys, values [B, H, S, hd]; computed once per source, not per step."""
        dim = self.in_proj_weight.shape[1]
        kv = layout.linear(source.to(self.in_proj_weight.dtype), self.in_proj_weight[dim:])
        k, v = kv.unflatten(-1, (2, self.num_heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
        return k, v

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x [B, T, D], kv from `keys_values` -> [B, T, D]."""
        dim = x.shape[-1]
        q = layout.linear(x, self.in_proj_weight[:dim]).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(q, *kv)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class TemporalLayer(FeedForwardLayer):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.norm1 = make_norm(cfg.norm, cfg.dim)
        self.self_attn = SelfAttention(cfg.dim, cfg.num_heads, cfg.kv_repeat)
        self.norm2 = make_norm(cfg.norm, cfg.dim)
        self.build_ffn(cfg.dim, (cfg.dim_feedforward,), cfg.gating, per_step=False)
        scaled = cfg.layer_scale is not None
        self.layer_scale_1 = LayerScale(cfg.dim, cfg.layer_scale) if scaled else nn.Identity()
        self.layer_scale_2 = LayerScale(cfg.dim, cfg.layer_scale) if scaled else nn.Identity()
        if cfg.cross_attention:  # its norm is always a LayerNorm (eps 1e-5), as in the reference
            self.cross_attention = CrossAttention(cfg.dim, cfg.num_heads)
            self.norm_cross = nn.LayerNorm(cfg.dim, eps=1e-5)
            self.layer_scale_cross = LayerScale(cfg.dim, cfg.layer_scale) if scaled else nn.Identity()

    def forward(self, x, tables, mask, ring=None, cross=None):
        """cross: this layer's cross-attention keys and values (CrossAttention.keys_values)."""
        update = self.layer_scale_1(self.self_attn(self.norm1(x), tables, mask, ring))
        if cross is not None:
            x = x + update
            update = self.layer_scale_cross(self.cross_attention(self.norm_cross(x), cross))
        normed, x = add_and_norm(self.norm2, update, x)
        return x + self.layer_scale_2(self.ffn(normed))


class TemporalTransformer(Stateful):
    """[B, T, D] -> [B, T, D]. Offline, or streaming inside `start_streaming(model, batch_size)`. With
    cross-attention, `forward` takes `cross`: the per-layer keys and values of `cross_keys_values(source)`."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.context = cfg.context
        self.num_kv_heads = cfg.num_heads // cfg.kv_repeat
        self.head_dim = cfg.dim // cfg.num_heads
        self.positions = Positions(cfg.positional_embedding, self.head_dim, cfg.max_period, cfg.positional_scale)
        self.layers = nn.ModuleList([TemporalLayer(cfg) for _ in range(cfg.num_layers)])
        self.kv_dtype: str | None = None  # how streaming stores keys and values (KVRing kv_dtype): None, bfloat16, int8

    def init_state(self, batch_size: int) -> KVRing:
        if self.context is None:
            raise RuntimeError("streaming needs a finite attention context (the config has context=null)")
        w = self.layers[0].self_attn.in_proj_weight
        return KVRing(len(self.layers), batch_size, self.num_kv_heads, self.head_dim, self.context, w.device, w.dtype,
                      kv_dtype=self.kv_dtype)

    def reset_state(self, state: KVRing, mask: torch.Tensor) -> None:
        state.reset(mask)

    def hold(self, state: KVRing, active: torch.Tensor):
        """Paused slots keep their offset; the ring columns written for them are masked (KVRing.hold)."""
        return state.hold(active)

    @property
    def has_cross_attention(self) -> bool:
        return hasattr(self.layers[0], "cross_attention") if len(self.layers) else False

    def cross_keys_values(self, source: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """source [B, S, D] (Condition.cross) -> each layer's cross-attention keys and values."""
        return [layer.cross_attention.keys_values(source) for layer in self.layers]

    def forward(self, x: torch.Tensor, cross: list | None = None) -> torch.Tensor:
        if self.has_cross_attention != (cross is not None):
            raise ValueError("cross-attention keys and values must be given exactly when the layers have cross-attention")
        cross = cross or [None] * len(self.layers)
        if self.state is None:
            return self._offline(x, cross)
        return torch.cat([self._streaming(piece, cross) for piece in x.split(PIECE, dim=1)], dim=1)

    def _offline(self, x: torch.Tensor, cross: list) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)[None]
        mask = causal_window_mask(positions, positions, self.context)
        x = self.positions.add_sin(x, positions)
        tables = self.positions.tables(positions)
        for layer, kv in zip(self.layers, cross):
            x = layer(x, tables, mask, cross=kv)
        return x

    def _streaming(self, x: torch.Tensor, cross: list) -> torch.Tensor:
        ring, steps = self.state, x.shape[1]
        step = ring.begin(steps)
        x = self.positions.add_sin(x, step.positions)
        tables = self.positions.tables(step.positions)
        for i, (layer, kv) in enumerate(zip(self.layers, cross)):
            x = layer(x, tables, step.mask, (ring, i, step), kv)
        ring.end(steps)
        return x


# ---------------------------------------------------------------------------------------- depth
def stacked_linear(x: torch.Tensor, weight: torch.Tensor, schedule: tuple[int, ...]) -> torch.Tensor:
    """x [N, T, in], weight [S, out, in] (S weight sets) -> [N, T, out]; position t uses set schedule[t]."""
    if len(set(schedule)) == 1:
        return x @ weight[schedule[0]].t()
    return torch.einsum("nti,toi->nto", x, weight[list(schedule)])


class StackedLinear(nn.Module):
    def __init__(self, sets: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(sets, out_features, in_features))

    def forward(self, x: torch.Tensor, schedule: tuple[int, ...]) -> torch.Tensor:
        return stacked_linear(x, self.weight, schedule)


class DepthAttention(nn.Module):
    """S weight sets: `in_proj_weight` [S, (H + 2 KH) hd, D] (rows q, k, v) and `out_proj.weight` [S, D, D]."""

    def __init__(self, sets: int, dim: int, num_heads: int, kv_repeat: int):
        super().__init__()
        self.num_heads, self.kv_repeat = num_heads, kv_repeat
        self.in_proj_weight = nn.Parameter(torch.empty(sets, dim + 2 * (dim // kv_repeat), dim))
        self.out_proj = StackedLinear(sets, dim, dim)

    def forward(self, x: torch.Tensor, schedule, tables, mask, cache=None) -> torch.Tensor:
        """x [N, T, D], schedule: the weight set of each position; mask [1, 1, T, T]. With cache
        (keys, values [N, KH, dep_q, hd], position k): T = 1, written at k, attends to 0..k (mask unused)."""
        proj = stacked_linear(x, self.in_proj_weight, schedule)
        q, k, v = split_heads(proj, self.num_heads, self.num_heads // self.kv_repeat)
        q, k = _rope(q, k, tables)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            keys, values, position = cache
            keys[:, :, position: position + 1] = k
            values[:, :, position: position + 1] = v
            k, v, mask = keys[:, :, : position + 1], values[:, :, : position + 1], None
        return self.out_proj(attend(q, k, v, mask, self.kv_repeat), schedule)


class DepthLayer(FeedForwardLayer):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        dim = cfg.depformer_dim
        self.norm1 = make_norm(cfg.norm, dim)
        self.self_attn = DepthAttention(cfg.depformer_weight_sets, dim, cfg.depformer_num_heads, cfg.depformer_kv_repeat)
        self.norm2 = make_norm(cfg.norm, dim)
        self.build_ffn(dim, cfg.depformer_feedforwards, cfg.depformer_gating, cfg.depformer_weights_per_step)
        scaled = cfg.depformer_layer_scale is not None
        self.layer_scale_1 = LayerScale(dim, cfg.depformer_layer_scale) if scaled else nn.Identity()
        self.layer_scale_2 = LayerScale(dim, cfg.depformer_layer_scale) if scaled else nn.Identity()

    def forward(self, x, schedule, tables, mask, cache=None):
        x = x + self.layer_scale_1(self.self_attn(self.norm1(x), schedule, tables, mask, cache))
        return x + self.layer_scale_2(self.ffn(self.norm2(x), schedule))


class DepthTransformer(nn.Module):
    """[N, K, Dd] (one row per time step, one position per codebook) -> [N, K, Dd]."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.schedule = cfg.depformer_schedule
        self.num_kv_heads = cfg.depformer_num_heads // cfg.depformer_kv_repeat
        self.head_dim = head_dim = cfg.depformer_dim // cfg.depformer_num_heads
        self.positions = Positions(cfg.depformer_pos_emb, head_dim, cfg.depformer_max_period, cfg.positional_scale)
        self.layers = nn.ModuleList([DepthLayer(cfg) for _ in range(cfg.depformer_num_layers)])

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Positions start .. start + K - 1 (codebook steps), each with its own weight set."""
        steps = x.shape[1]
        schedule = self.schedule[start: start + steps]
        positions = torch.arange(start, start + steps, device=x.device)[None]
        mask = causal_window_mask(positions, positions, None)
        x = self.positions.add_sin(x, positions)
        tables = self.positions.tables(positions)
        for layer in self.layers:
            x = layer(x, schedule, tables, mask)
        return x

    def init_cache(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one time step, each [layers, rows, KH, dep_q, hd], for `step`."""
        w = self.layers[0].self_attn.in_proj_weight
        shape = (len(self.layers), rows, self.num_kv_heads, len(self.schedule), self.head_dim)
        return torch.zeros(shape, device=w.device, dtype=w.dtype), torch.zeros(shape, device=w.device, dtype=w.dtype)

    def step(self, x: torch.Tensor, k: int, cache: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x [N, 1, Dd], the input of codebook k -> [N, 1, Dd]; attends to codebooks 0..k of this time
        step through `cache` (from `init_cache`), where positions 0..k-1 were written by the steps before."""
        positions = torch.full((1, 1), k, device=x.device, dtype=torch.long)
        x = self.positions.add_sin(x, positions)
        tables = self.positions.tables(positions)
        for layer, keys, values in zip(self.layers, *cache):
            x = layer(x, (self.schedule[k],), tables, None, (keys, values, k))
        return x
