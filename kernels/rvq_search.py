"""Nearest-centroid search of residual vector quantization (reference §1.7).

index[n] = argmin_c |r_n - c|^2 = argmin_c (|c|^2 - 2 r_n . c), lowest index on ties, float32, the same
expression as codec/quantizer.py. With `update` the chosen centroid is also subtracted from the residual
in place, so `rvq_encode` is K launches of one kernel with no other work between them.
"""

from __future__ import annotations

import torch

from antiphon.kernels._triton import jit, tl

BLOCK_N, BLOCK_C, BLOCK_D = 16, 64, 32  # tl.dot needs every block dimension >= 16


def _check(residual: torch.Tensor, codebook: torch.Tensor, norms: torch.Tensor) -> None:
    if residual.dim() != 2 or codebook.dim() != 2 or residual.shape[1] != codebook.shape[1] \
            or norms.shape != codebook.shape[:1]:
        raise ValueError(f"rvq_search: residual {tuple(residual.shape)} must be [N, d], codebook "
                         f"{tuple(codebook.shape)} [C, d] and norms {tuple(norms.shape)} [C]")
    if residual.dtype != torch.float32:
        raise ValueError(f"rvq_search: the residual must be float32 (got {residual.dtype}); the search runs in float32")


def rvq_search_reference(residual: torch.Tensor, codebook: torch.Tensor, norms: torch.Tensor,
                         update: bool = False) -> torch.Tensor:
    """residual [N, d] float32, codebook [C, d], norms [C] = |c|^2 -> indices [N] (int64). With update,
    residual -= codebook[indices] in place."""
    _check(residual, codebook, norms)
    codebook = codebook.float()
    index = (norms.float() - 2 * (residual @ codebook.t())).argmin(-1)
    if update:
        residual -= codebook[index]
    return index


@jit
def _rvq_search_kernel(r_ptr, c_ptr, norms_ptr, idx_ptr, N, C, D, UPDATE: tl.constexpr,
                       BN: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr):
    # one program per block of BN rows; loops over the codebook in tiles of BC centroids
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    best = tl.full([BN], float("inf"), tl.float32)
    best_id = tl.zeros([BN], tl.int32)
    dims = tl.arange(0, BD)
    for c0 in range(0, C, BC):
        cents = c0 + tl.arange(0, BC)
        cmask = cents < C
        acc = tl.zeros([BN, BC], tl.float32)
        for d0 in range(0, D, BD):
            dmask = d0 + dims < D
            r = tl.load(r_ptr + rows64[:, None] * D + d0 + dims[None, :],
                        mask=rmask[:, None] & dmask[None, :], other=0.0)
            ct = tl.load(c_ptr + cents[None, :].to(tl.int64) * D + d0 + dims[:, None],
                         mask=dmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)  # [BD, BC]
            acc += tl.dot(r, ct, input_precision="ieee")
        norms = tl.load(norms_ptr + cents, mask=cmask, other=0.0).to(tl.float32)
        score = tl.where(cmask[None, :], norms[None, :] - 2.0 * acc, float("inf"))
        tile_best = tl.min(score, axis=1)
        tile_id = tl.argmin(score, axis=1)
        better = tile_best < best
        best_id = tl.where(better, c0 + tile_id, best_id)
        best = tl.where(better, tile_best, best)
    tl.store(idx_ptr + rows64, best_id.to(tl.int64), mask=rmask)
    if UPDATE:
        for d0 in range(0, D, BD):
            dmask = rmask[:, None] & (d0 + dims < D)[None, :]
            ptrs = r_ptr + rows64[:, None] * D + d0 + dims[None, :]
            r = tl.load(ptrs, mask=dmask, other=0.0)
            c = tl.load(c_ptr + best_id[:, None].to(tl.int64) * D + d0 + dims[None, :], mask=dmask, other=0.0)
            tl.store(ptrs, r - c.to(tl.float32), mask=dmask)


def rvq_search_triton(residual: torch.Tensor, codebook: torch.Tensor, norms: torch.Tensor,
                      update: bool = False) -> torch.Tensor:
    """Same contract as rvq_search_reference; the residual must be contiguous when updated."""
    _check(residual, codebook, norms)
    if update and not residual.is_contiguous():
        raise ValueError("rvq_search: update=True needs a contiguous residual (it is written in place)")
    n, d = residual.shape
    r = residual.contiguous()
    out = torch.empty(n, dtype=torch.int64, device=residual.device)
    if n:
        _rvq_search_kernel[((n + BLOCK_N - 1) // BLOCK_N,)](
            r, codebook.contiguous(), norms.contiguous(), out, n, codebook.shape[0], d, UPDATE=update,
            BN=BLOCK_N, BC=BLOCK_C, BD=BLOCK_D)
    return out


def rvq_encode(x: torch.Tensor, codebooks: torch.Tensor, norms: torch.Tensor,
               search=rvq_search_reference) -> torch.Tensor:
    """x [N, d] (the projected latent), codebooks [K, C, d], norms [K, C] -> codes [N, K] (int64): layer k
    picks the nearest centroid of the residual left by layers 0..k-1."""
    residual = x.float().clone()
    return torch.stack([search(residual, codebooks[k], norms[k], True) for k in range(codebooks.shape[0])], 1)
