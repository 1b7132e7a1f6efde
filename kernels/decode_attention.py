"""Single-query attention over a per-slot ring KV cache, split along the cache (flash-decoding).

Each slot b has one query per head at position q_positions[b]; the cache holds S keys and values per KV
head with their absolute positions key_positions[b, s] (-1 = empty). A key is attended when it is valid,
not in the future and fewer than `context` steps back (reference §2.6 and §3.2: 0 <= q - k < context;
None = unlimited). Heads share KV heads in groups (H = KH * g, head h reads KV head h // g, as
repeat_interleave). Scale 1/sqrt(hd), softmax in float32, output in q's dtype; a slot with no valid
key gets zeros. The kernel splits S into `splits` parts, one program per (slot, head, part) keeps a
running max, sum and weighted sum; a second kernel combines the parts.
"""

from __future__ import annotations

import math

import torch

from antiphon.kernels._triton import jit, next_power_of_2, tl

BLOCK_S = 32


def _check(q, keys, values, key_positions, q_positions):
    b, h, hd = q.shape
    if keys.dim() != 4 or keys.shape != values.shape or keys.shape[0] != b or keys.shape[3] != hd \
            or h % keys.shape[1] or key_positions.shape != (b, keys.shape[2]) or q_positions.shape != (b,):
        raise ValueError(f"decode_attention: q {tuple(q.shape)} must be [B, H, hd], keys/values "
                         f"{tuple(keys.shape)}/{tuple(values.shape)} [B, KH, S, hd] with KH dividing H, "
                         f"key_positions {tuple(key_positions.shape)} [B, S], "
                         f"q_positions {tuple(q_positions.shape)} [B]")


def attend_mask(key_positions: torch.Tensor, q_positions: torch.Tensor, context: int | None) -> torch.Tensor:
    """[B, S], [B] -> bool [B, S]: the keys each slot's query attends."""
    delta = q_positions[:, None] - key_positions
    mask = (key_positions >= 0) & (delta >= 0)
    return mask if context is None else mask & (delta < context)


def decode_attention_reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                               key_positions: torch.Tensor, q_positions: torch.Tensor,
                               context: int | None = None) -> torch.Tensor:
    """q [B, H, hd], keys, values [B, KH, S, hd], key_positions [B, S], q_positions [B] -> [B, H, hd]."""
    _check(q, keys, values, key_positions, q_positions)
    group = q.shape[1] // keys.shape[1]
    k = keys.float().repeat_interleave(group, dim=1)
    v = values.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("bhd,bhsd->bhs", q.float(), k) / math.sqrt(q.shape[-1])
    mask = attend_mask(key_positions, q_positions, context)[:, None]  # [B, 1, S]
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)
    return torch.einsum("bhs,bhsd->bhd", probs, v).to(q.dtype)


@jit
def _partial_kernel(q_ptr, k_ptr, v_ptr, kpos_ptr, qpos_ptr, m_ptr, l_ptr, acc_ptr,
                    H, KH, S, HD, per_split, context, scale, HAS_CONTEXT: tl.constexpr,
                    SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    # program (b * H + h, split); q [B, H, hd], k/v [B, KH, S, hd] contiguous
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
    kv_base = (b * KH + kvh) * S * HD
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
        scores = tl.where(ok, tl.sum(k * q[None, :], axis=1), float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing valid yet: keep zeros
        p = tl.exp(scores - m_safe)
        alpha = tl.exp(m - m_safe)
        v = tl.load(v_ptr + offs, mask=kmask, other=0.0).to(tl.float32)
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
                            context: int | None = None, splits: int | None = None) -> torch.Tensor:
    """Same contract as decode_attention_reference. `splits` (a power of two) defaults to enough parts
    of at least 256 keys, at most 16."""
    _check(q, keys, values, key_positions, q_positions)
    b, h, hd = q.shape
    kh, s = keys.shape[1], keys.shape[2]
    if splits is None:
        splits = min(16, next_power_of_2(max(1, s // 256)))
    if splits & (splits - 1):
        raise ValueError(f"decode_attention: splits ({splits}) must be a power of two")
    per_split = -(-s // splits)
    q, keys, values = q.contiguous(), keys.contiguous(), values.contiguous()
    m = torch.empty(b * h * splits, dtype=torch.float32, device=q.device)
    l = torch.empty_like(m)
    acc = torch.empty(b * h * splits, hd, dtype=torch.float32, device=q.device)
    out = torch.empty_like(q)
    if b * h == 0:
        return out
    block_d = next_power_of_2(hd)
    _partial_kernel[(b * h, splits)](q, keys, values, key_positions.contiguous(), q_positions.contiguous(),
                                     m, l, acc, h, kh, s, hd, per_split, context or 0, 1.0 / math.sqrt(hd),
                                     HAS_CONTEXT=context is not None, SPLITS=splits, BLOCK_S=BLOCK_S,
                                     BLOCK_D=block_d)
    _combine_kernel[(b * h,)](m, l, acc, out, hd, SPLITS=splits, BLOCK_D=block_d)
    return out
