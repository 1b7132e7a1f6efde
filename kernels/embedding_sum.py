"""Summed multi-stream embedding lookup (reference §2.2): h0 = sum_s table_s[token_s], token -1 = zero.

The S tables live in one flat table [R, D] (R = the sum of the tables' rows) with the first row of each
stream at offsets[s]: tables of different sizes (text 32001 rows, audio 2049) fit, and a stacked
[S, V + 1, D] tensor is `table.flatten(0, 1)` with offsets `arange(S) * (V + 1)` (`stack_tables` builds
both from a list). The sum runs in float32 and rounds once to the table's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from antiphon.kernels._triton import jit, tl

BLOCK_D = 512


def stack_tables(tables) -> tuple[torch.Tensor, torch.Tensor]:
    """A list of S tables [R_s, D] (or a stacked [S, R, D]) -> (flat table [sum R_s, D], offsets [S] int64)."""
    if isinstance(tables, torch.Tensor):
        s, r, _ = tables.shape
        return tables.flatten(0, 1), torch.arange(s, device=tables.device) * r
    sizes = torch.tensor([0] + [t.shape[0] for t in tables[:-1]], device=tables[0].device)
    return torch.cat(list(tables)), sizes.cumsum(0)


def _check(tokens: torch.Tensor, table: torch.Tensor, offsets: torch.Tensor) -> None:
    if tokens.dim() != 3 or table.dim() != 2 or offsets.shape != (tokens.shape[1],):
        raise ValueError(f"embedding_sum: tokens {tuple(tokens.shape)} must be [B, S, T], table "
                         f"{tuple(table.shape)} [R, D] and offsets {tuple(offsets.shape)} [S]")


def embedding_sum_reference(tokens: torch.Tensor, table: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """tokens [B, S, T] (integer, -1 = zero vector), table [R, D], offsets [S] -> [B, T, D] in table's dtype."""
    _check(tokens, table, offsets)
    rows = tokens + offsets.to(tokens.device)[None, :, None]
    vectors = F.embedding(torch.where(tokens >= 0, rows, 0), table).float()  # [B, S, T, D]
    return vectors.masked_fill(tokens[..., None] < 0, 0.0).sum(1).to(table.dtype)


@jit
def _embedding_sum_kernel(tok_ptr, table_ptr, off_ptr, out_ptr, S, T, D, stb, sts, stt,
                          BLOCK: tl.constexpr):
    # program (b * T + t, block of D)
    bt = tl.program_id(0)
    b = (bt // T).to(tl.int64)
    t = (bt % T).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < D
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(0, S):
        tok = tl.load(tok_ptr + b * stb + s * sts + t * stt).to(tl.int64)
        row = tl.load(off_ptr + s).to(tl.int64) + tok
        valid = (tl.zeros([BLOCK], tl.int64) + tok) >= 0  # token -1: the zero vector, nothing read
        vec = tl.load(table_ptr + row * D + cols, mask=mask & valid, other=0.0)
        acc += vec.to(tl.float32)
    tl.store(out_ptr + (b * T + t) * D + cols, acc.to(out_ptr.dtype.element_ty), mask=mask)


def embedding_sum_triton(tokens: torch.Tensor, table: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Same contract as embedding_sum_reference (token ids are not range-checked: no host sync)."""
    _check(tokens, table, offsets)
    b, s, t = tokens.shape
    d = table.shape[1]
    table = table.contiguous()
    out = torch.empty(b, t, d, dtype=table.dtype, device=table.device)
    if out.numel():
        block = min(BLOCK_D, 1 << (d - 1).bit_length())
        _embedding_sum_kernel[(b * t, (d + block - 1) // block)](
            tokens, table, offsets.contiguous(), out, s, t, d, *tokens.stride(), BLOCK=block)
    return out
