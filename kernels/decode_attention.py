"""Single-query attention over a per-slot ring KV cache, split along the cache (flash-decoding).

Each slot b has one query per head at position q_positions[b]; the cache holds S keys and values per KV
head with their absolute positions key_positions[b, s] (-1 = empty). A key is attended when it is valid,
not in the future and fewer than `context` steps back (reference §2.6 and §3.2: 0 <= q - k < context;
None = unlimited). Heads share KV heads in groups (H = KH * g, head h reads KV head h // g, as
repeat_interleave). Scale 1/sqrt(hd), softmax in float32, output in q's dtype; a slot with no valid
key gets zeros. Keys and values are float (any dtype, bfloat16 included), or int8 with a float32 scale
per position and KV head (`k_scale`, `v_scale` [B, KH, S]: `quantize_kv`), dequantized as they are read.
The kernel splits S into `splits` parts, one program per (slot, head, part) keeps a running max, sum
and weighted sum; a second kernel combines the parts.
"""

from __future__ import annotations

import math

import torch

from antiphon.kernels._triton import jit, next_power_of_2, tl

BLOCK_S = 32


def quantize_kv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., hd] float -> int8 [..., hd], float32 scale [...]: symmetric, one scale per vector, its
    absmax / 127 (a zero vector gets the smallest normal float32, so its scale stays finite and nonzero).
    Each element is off by at most scale / 2."""
    x = x.float()
    scale = (x.abs().amax(-1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    return (x / scale[..., None]).round().clamp_(-127, 127).to(torch.int8), scale


def dequantize_kv(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """int8 [..., hd], scale [...] -> [..., hd] in `dtype` (the product in float32)."""
    return (q.float() * scale[..., None]).to(dtype)


def _check(q, keys, values, key_positions, q_positions, k_scale=None, v_scale=None):
    b, h, hd = q.shape
    if keys.dim() != 4 or keys.shape != values.shape or keys.shape[0] != b or keys.shape[3] != hd \
            or h % keys.shape[1] or key_positions.shape != (b, keys.shape[2]) or q_positions.shape != (b,):
        raise ValueError(f"decode_attention: q {tuple(q.shape)} must be [B, H, hd], keys/values "
                         f"{tuple(keys.shape)}/{tuple(values.shape)} [B, KH, S, hd] with KH dividing H, "
                         f"key_positions {tuple(key_positions.shape)} [B, S], "
                         f"q_positions {tuple(q_positions.shape)} [B]")
    int8 = keys.dtype == torch.int8
    if (values.dtype == torch.int8, k_scale is not None, v_scale is not None) != (int8,) * 3:
        raise ValueError(f"decode_attention: int8 keys and values take k_scale and v_scale, float ones neither; got "
                         f"{keys.dtype} keys, {values.dtype} values, k_scale {'given' if k_scale is not None else 'None'}, "
                         f"v_scale {'given' if v_scale is not None else 'None'}")
    if int8 and not k_scale.shape == v_scale.shape == keys.shape[:3]:
        raise ValueError(f"decode_attention: k_scale/v_scale {tuple(k_scale.shape)}/{tuple(v_scale.shape)} "
                         f"must be [B, KH, S] = {tuple(keys.shape[:3])}")


def attend_mask(key_positions: torch.Tensor, q_positions: torch.Tensor, context: int | None) -> torch.Tensor:
    """[B, S], [B] -> bool [B, S]: the keys each slot's query attends."""
    delta = q_positions[:, None] - key_positions
    mask = (key_positions >= 0) & (delta >= 0)
    return mask if context is None else mask & (delta < context)


def decode_attention_reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                               key_positions: torch.Tensor, q_positions: torch.Tensor,
                               context: int | None = None, *, k_scale: torch.Tensor | None = None,
                               v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """q [B, H, hd], keys, values [B, KH, S, hd], key_positions [B, S], q_positions [B] -> [B, H, hd].
    int8 keys and values come with k_scale, v_scale [B, KH, S] (float32; module docstring)."""
    _check(q, keys, values, key_positions, q_positions, k_scale, v_scale)
    if k_scale is not None:
        keys, values = dequantize_kv(keys, k_scale, torch.float32), dequantize_kv(values, v_scale, torch.float32)
    group = q.shape[1] // keys.shape[1]
    k = keys.float().repeat_interleave(group, dim=1)
    v = values.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("bhd,bhsd->bhs", q.float(), k) / math.sqrt(q.shape[-1])
    mask = attend_mask(key_positions, q_positions, context)[:, None]  # [B, 1, S]
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)
    return torch.einsum("bhs,bhsd->bhd", probs, v).to(q.dtype)


@jit
def _partial_kernel(q_ptr, k_ptr, v_ptr, ks_ptr, vs_ptr, kpos_ptr, qpos_ptr, m_ptr, l_ptr, acc_ptr,
                    H, KH, S, HD, per_split, context, scale, HAS_CONTEXT: tl.constexpr, INT8: tl.constexpr,
                    SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    # program (b * H + h, split); q [B, H, hd], k/v [B, KH, S, hd], with INT8 scales ks/vs [B, KH, S], contiguous
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    kvh = ((bh % H) // (H // KH)).to(tl.int64)
    dims = tl.arange(0, BLOCK_D)
    dmask = dims < HD
    q = tl.load(q_ptr + bh.to(tl.int64) * HD + dims, mask=dmask, other=0.0).to(tl.float32) * scale
    qpos = tl.load(qpos_ptr + b)
    m = tl.full([], float("-inf"), tl.float32)
    l = tl.zeros([], tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    row = (b * KH + kvh) * S  # this KV head's position 0 in the scales; times HD in k/v
    kv_base = row * HD
    start = split * per_split
    for s0 in range(0, per_split, BLOCK_S):
        slots = start + s0 + tl.arange(0, BLOCK_S)
        smask = (slots < S) & (s0 + tl.arange(0, BLOCK_S) < per_split)
        kpos = tl.load(kpos_ptr + b * S + slots, mask=smask, other=-1)
        delta = qpos - kpos
        ok = smask & (kpos >= 0) & (delta >= 0)
        if HAS_CONTEXT:
            ok = ok & (delta < context)
        offs = kv_base + slots[:, None].to(tl.int64) * HD + dims[None, :]
        kmask = ok[:, None] & dmask[None, :]
        k = tl.load(k_ptr + offs, mask=kmask, other=0.0).to(tl.float32)
        if INT8:
            k = k * tl.load(ks_ptr + row + slots, mask=ok, other=0.0)[:, None]
        scores = tl.where(ok, tl.sum(k * q[None, :], axis=1), float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing valid yet: keep zeros
        p = tl.exp(scores - m_safe)
        alpha = tl.exp(m - m_safe)
        v = tl.load(v_ptr + offs, mask=kmask, other=0.0).to(tl.float32)
        if INT8:
            v = v * tl.load(vs_ptr + row + slots, mask=ok, other=0.0)[:, None]
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        l = l * alpha + tl.sum(p, axis=0)
        m = m_new
    part = bh.to(tl.int64) * SPLITS + split
    tl.store(m_ptr + part, m)
    tl.store(l_ptr + part, l)
    tl.store(acc_ptr + part * HD + dims, acc, mask=dmask)


@jit
def _combine_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, HD, SPLITS: tl.constexpr, BLOCK_D: tl.constexpr):
    # program b * H + h: out = sum_j e^(m_j - M) acc_j / sum_j e^(m_j - M) l_j
    bh = tl.program_id(0).to(tl.int64)
    parts = tl.arange(0, SPLITS)
    dims = tl.arange(0, BLOCK_D)
    dmask = dims < HD
    m = tl.load(m_ptr + bh * SPLITS + parts)
    l = tl.load(l_ptr + bh * SPLITS + parts)
    top = tl.max(m, axis=0)
    top = tl.where(top == float("-inf"), 0.0, top)
    w = tl.exp(m - top)  # empty parts (m = -inf) weigh 0
    acc = tl.load(acc_ptr + (bh * SPLITS + parts)[:, None] * HD + dims[None, :], mask=dmask[None, :], other=0.0)
    total = tl.sum(w * l, axis=0)
    out = tl.sum(w[:, None] * acc, axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + bh * HD + dims, out.to(out_ptr.dtype.element_ty), mask=dmask)


def decode_attention_triton(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                            key_positions: torch.Tensor, q_positions: torch.Tensor,
                            context: int | None = None, splits: int | None = None, *,
                            k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Same contract as decode_attention_reference. `splits` (a power of two) defaults to enough parts
    of at least 256 keys, at most 16."""
    _check(q, keys, values, key_positions, q_positions, k_scale, v_scale)
    b, h, hd = q.shape
    kh, s = keys.shape[1], keys.shape[2]
    if splits is None:
        splits = min(16, next_power_of_2(max(1, s // 256)))
    if splits & (splits - 1):
        raise ValueError(f"decode_attention: splits ({splits}) must be a power of two")
    per_split = -(-s // splits)
    q, keys, values, key_positions = q.contiguous(), keys.contiguous(), values.contiguous(), key_positions.contiguous()
    int8 = k_scale is not None
    k_scale, v_scale = (k_scale.float().contiguous(), v_scale.float().contiguous()) if int8 else (key_positions,) * 2
    m = torch.empty(b * h * splits, dtype=torch.float32, device=q.device)
    l = torch.empty_like(m)
    acc = torch.empty(b * h * splits, hd, dtype=torch.float32, device=q.device)
    out = torch.empty_like(q)
    if b * h == 0:
        return out
    block_d = next_power_of_2(hd)
    _partial_kernel[(b * h, splits)](q, keys, values, k_scale, v_scale, key_positions, q_positions.contiguous(),
                                     m, l, acc, h, kh, s, hd, per_split, context or 0, 1.0 / math.sqrt(hd),
                                     HAS_CONTEXT=context is not None, INT8=int8, SPLITS=splits, BLOCK_S=BLOCK_S,
                                     BLOCK_D=block_d)
    _combine_kernel[(b * h,)](m, l, acc, out, hd, SPLITS=splits, BLOCK_D=block_d)
    return out
