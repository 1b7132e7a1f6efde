"""Token sampling without a host sync (reference §2.6): temperature, top-k, then the exponential race.

argmax_i(p_i / E_i) with E_i ~ Exp(1) i.i.d. picks i with probability p_i / sum(p), the same law as
torch.multinomial, but with fixed shapes and no data-dependent control flow, so a step that samples can
be captured whole (one CUDA graph). Temperature <= 0 means greedy (argmax of the logits).

Temperature and top-k are numbers (one for all rows) or tensors (one per row): the per-row path sorts
each row once and keeps ranks < top_k[row]; it draws noise over all N ids, so its random stream differs
from the one-for-all path's (same law).
"""

from __future__ import annotations

import torch

from antiphon.kernels import dispatch


def sample(logits: torch.Tensor, temp: float | torch.Tensor, top_k: int | torch.Tensor = 0,
           rng: torch.Generator | None = None) -> torch.Tensor:
    """logits [..., N] -> token ids [...] (long).

    temp <= 0: argmax. Otherwise softmax(logits / temp), restricted to the top_k most likely ids when
    0 < top_k < N, sampled by the exponential race with noise from `rng` (on the logits' device).
    temp float [...] and top_k int [...] (tensors) set them per row. Where kernels.dispatch picks Triton,
    the fused kernel samples (the same law; its noise is drawn per vocabulary id, so other draws)."""
    if dispatch.use_triton(logits):
        ids = dispatch.sample(logits.flatten(0, -2), _flat(temp), _flat(top_k), rng=rng)
        return ids.view(logits.shape[:-1])
    if isinstance(temp, torch.Tensor) or isinstance(top_k, torch.Tensor):
        return sample_rows(logits, temp, top_k, rng)
    if temp <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temp, dim=-1)
    if 0 < top_k < probs.shape[-1]:
        probs, ids = probs.topk(top_k, dim=-1)  # [..., k]; renormalising is not needed by the race
        return ids.gather(-1, exponential_race(probs, rng)[..., None])[..., 0]
    return exponential_race(probs, rng)


def _flat(value: float | torch.Tensor) -> float | torch.Tensor:
    return value.reshape(-1) if isinstance(value, torch.Tensor) else value


def sample_rows(logits: torch.Tensor, temp: float | torch.Tensor, top_k: int | torch.Tensor,
                rng: torch.Generator | None = None) -> torch.Tensor:
    """`sample` with per-row parameters: logits [..., N], temp [...] (or a number), top_k [...] (or a
    number; <= 0 or >= N: no limit) -> ids [...]. Rows with temp <= 0 take the argmax."""
    rows = logits.shape[:-1]
    temp = torch.as_tensor(temp, device=logits.device, dtype=torch.float32).expand(rows)
    top_k = torch.as_tensor(top_k, device=logits.device).expand(rows)
    greedy = temp <= 0
    scale = torch.where(greedy, torch.ones_like(temp), temp)
    probs = torch.softmax(logits.float() / scale[..., None], dim=-1)
    probs, ids = probs.sort(dim=-1, descending=True)  # [..., N]
    rank = torch.arange(probs.shape[-1], device=logits.device)
    cut = (top_k[..., None] > 0) & (rank >= top_k[..., None])
    drawn = ids.gather(-1, exponential_race(probs.masked_fill(cut, 0.0), rng)[..., None])[..., 0]
    return torch.where(greedy, logits.argmax(dim=-1), drawn)


def exponential_race(probs: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
    """probs [..., N] (>= 0, not necessarily normalised) -> ids [...] drawn with probability probs / sum."""
    noise = torch.empty_like(probs).exponential_(generator=rng)
    return (probs / noise).argmax(dim=-1)


def cfg_mix(logits: torch.Tensor, coef: float) -> torch.Tensor:
    """Classifier-free guidance. logits [2B, ...] (rows 0..B-1 conditioned, B..2B-1 null) ->
    [B, ...] = null + (conditioned - null) * coef."""
    conditioned, null = logits.chunk(2)
    return null + (conditioned - null) * coef
