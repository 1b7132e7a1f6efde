"""Fused temperature + top-k + exponential-race sampling (reference §2.6), without a host sync.

For a row of logits x [V] with temperature t > 0 and top-k k: keep the ids whose logit is at least the
k-th largest logit (every id when k <= 0 or k >= V; ids tied with the k-th are all kept), and return
argmax over kept ids of softmax(x / t)_i / E_i, E_i ~ Exp(1) i.i.d., which draws id i with probability
softmax restricted to the kept ids. t <= 0 returns argmax(x). Ties go to the lowest id.

The noise is one E per (row, id) [B, V], indexed by vocabulary id, so the reference and the kernel pick
the same token from the same noise. lm/sampling.py draws its noise over the k kept ids instead: the same
law, different draws. The kernel races in the log domain, argmax(x_i / t - log E_i), which is the same
order (softmax_i / E_i is monotone in it) without the softmax's max and sum; only float near-ties can
differ from the reference.
"""

from __future__ import annotations

import torch

from antiphon.kernels._triton import jit, tl

BLOCK_V = 1024


def _per_row(value, rows: int, dtype: torch.dtype, device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.numel() != rows:
            raise ValueError(f"sample: a per-row value needs {rows} entries [B], got {tuple(value.shape)}")
        return value.reshape(rows).to(device=device, dtype=dtype)
    return torch.full((rows,), value, dtype=dtype, device=device)


def draw_noise(logits: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
    """Exp(1) noise [B, V] float32 on the logits' device."""
    return torch.empty(logits.shape, dtype=torch.float32, device=logits.device).exponential_(generator=rng)


def _check(logits: torch.Tensor, noise: torch.Tensor | None) -> None:
    if logits.dim() != 2:
        raise ValueError(f"sample: logits must be [B, V], got {tuple(logits.shape)}; flatten the leading dims")
    if noise is not None and noise.shape != logits.shape:
        raise ValueError(f"sample: noise {tuple(noise.shape)} must have the logits' shape {tuple(logits.shape)}")


def sample_reference(logits: torch.Tensor, temp, top_k=0, noise: torch.Tensor | None = None,
                     rng: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V]; temp float or [B]; top_k int or [B]; noise [B, V] (Exp(1)) or None to draw it from
    rng -> token ids [B] (int64)."""
    _check(logits, noise)
    b, v = logits.shape
    x = logits.float()
    temps = _per_row(temp, b, torch.float32, x.device)
    ks = _per_row(top_k, b, torch.int64, x.device)
    noise = draw_noise(logits, rng) if noise is None else noise.float()
    if isinstance(top_k, int):
        kth = x.topk(min(max(top_k, 1), v), dim=-1).values[:, -1:]
    else:  # per-row k, without reading it on the host
        kth = x.sort(dim=-1, descending=True).values.gather(-1, (ks.clamp(1, v) - 1)[:, None])
    keep = (x >= kth) | ~((ks > 0) & (ks < v))[:, None]
    probs = torch.softmax(x / torch.where(temps > 0, temps, 1.0)[:, None], dim=-1)
    sampled = torch.where(keep, probs / noise, -1.0).argmax(-1)
    return torch.where(temps > 0, sampled, x.argmax(-1))


@jit
def _key(x):
    # float32 -> int32 with the same order (-0.0 and 0.0 equal)
    bits = x.to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return tl.where(x == 0.0, 0, key)


@jit
def _sample_kernel(x_ptr, noise_ptr, temp_ptr, k_ptr, out_ptr, V, sx, sn, BLOCK: tl.constexpr):
    # one program per row
    row = tl.program_id(0).to(tl.int64)
    temp = tl.load(temp_ptr + row)
    k = tl.load(k_ptr + row).to(tl.int32)
    top_k = (k > 0) & (k < V)
    cols = tl.arange(0, BLOCK)
    # the k-th largest key by bisection: the largest key t with count(key >= t) >= k (32 passes)
    lo = tl.full([], -2147483648, tl.int64)
    hi = tl.full([], 2147483647, tl.int64)
    if top_k:
        for _ in range(32):
            mid = lo + (hi - lo + 1) // 2
            count = tl.zeros([], tl.int32)
            for start in range(0, V, BLOCK):
                m = start + cols < V
                x = tl.load(x_ptr + row * sx + start + cols, mask=m, other=0.0).to(tl.float32)
                count += tl.sum((m & (_key(x).to(tl.int64) >= mid)).to(tl.int32), axis=0)
            enough = count >= k
            lo = tl.where(enough, mid, lo)
            hi = tl.where(enough, hi, mid - 1)
    # the race: argmax over kept ids of x / t - log E (t <= 0: argmax x), first id on ties
    best = tl.full([], float("-inf"), tl.float32)
    best_id = tl.zeros([], tl.int32)
    for start in range(0, V, BLOCK):
        m = start + cols < V
        x = tl.load(x_ptr + row * sx + start + cols, mask=m, other=0.0).to(tl.float32)
        e = tl.load(noise_ptr + row * sn + start + cols, mask=m, other=1.0)
        score = tl.where(temp > 0, x / tl.where(temp > 0, temp, 1.0) - tl.log(e), x)
        keep = m & (_key(x).to(tl.int64) >= lo)
        score = tl.where(keep, score, float("-inf"))
        tile_best = tl.max(score, axis=0)
        tile_id = tl.argmax(score, axis=0)
        better = tile_best > best
        best_id = tl.where(better, start + tile_id, best_id)
        best = tl.where(better, tile_best, best)
    tl.store(out_ptr + row, best_id.to(tl.int64))


def sample_triton(logits: torch.Tensor, temp, top_k=0, noise: torch.Tensor | None = None,
                  rng: torch.Generator | None = None) -> torch.Tensor:
    """Same contract as sample_reference. Top-k finds the k-th largest logit by a 32-step bisection over
    the float order (32 reads of the row), then one pass races; one program per row."""
    _check(logits, noise)
    b, v = logits.shape
    x = logits if logits.stride(-1) == 1 else logits.contiguous()
    noise = draw_noise(logits, rng) if noise is None else noise
    noise = noise.float()
    noise = noise if noise.stride(-1) == 1 else noise.contiguous()
    temps = _per_row(temp, b, torch.float32, x.device)
    ks = _per_row(top_k, b, torch.int32, x.device)
    out = torch.empty(b, dtype=torch.int64, device=x.device)
    if b:
        _sample_kernel[(b,)](x, noise, temps, ks, out, v, x.stride(0), noise.stride(0), BLOCK=BLOCK_V)
    return out
