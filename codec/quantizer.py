"""Split residual vector quantizer: one semantic RVQ and one acoustic RVQ over the same latent.

Each half projects the latent (D -> codebook_dim), then each layer picks the nearest centroid
(Euclidean) and subtracts it from the residual. Decoding sums the chosen centroids of each half and
projects back (codebook_dim -> D); the two halves' outputs are added. The search runs in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from antiphon.kernels import dispatch, layout


class ResidualVQ(nn.Module):
    def __init__(self, dim: int, codebook_dim: int, codebook_size: int, n_q: int):
        super().__init__()
        self.input_proj = nn.Linear(dim, codebook_dim, bias=False)
        self.output_proj = nn.Linear(codebook_dim, dim, bias=False)
        self.register_buffer("codebooks", torch.randn(n_q, codebook_size, codebook_dim))
        # derived search tables, float32: |c|^2, the codebooks (the Triton search reads them [size, dim]) and
        # the codebooks input-major ([dim, size], for the torch search, see kernels/layout.py)
        self.register_buffer("codebook_norms", torch.empty(n_q, codebook_size), persistent=False)
        self.register_buffer("codebooks_f32", torch.empty(n_q, codebook_size, codebook_dim), persistent=False)
        self.register_buffer("codebooks_t", torch.empty(n_q, codebook_dim, codebook_size), persistent=False)
        self.refresh_search_tables()
        self.register_load_state_dict_post_hook(lambda module, _: module.refresh_search_tables())

    @property
    def n_q(self) -> int:
        return self.codebooks.shape[0]

    def refresh_search_tables(self) -> None:
        """Recompute the search tables after the codebooks change (done by `load_state_dict` and `.to()`;
        training's codebook updates call it)."""
        codebooks = self.codebooks.float()
        self.codebooks_f32 = codebooks
        self.codebook_norms = codebooks.pow(2).sum(-1)
        self.codebooks_t = codebooks.transpose(1, 2).contiguous()

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.refresh_search_tables()
        return self

    def encode(self, latent: torch.Tensor, n_q: int) -> torch.Tensor:
        """latent [B, F, D] -> codes [B, n_q, F]."""
        residual = self.input_proj(latent).float()
        if dispatch.use_triton(residual):
            codes = dispatch.rvq_encode(residual.flatten(0, 1), self.codebooks_f32[:n_q], self.codebook_norms[:n_q])
            return codes.view(*residual.shape[:2], n_q).permute(0, 2, 1)
        codes = []
        for codebook_t, norms in zip(self.codebooks_t[:n_q], self.codebook_norms[:n_q]):
            # argmin |r - c|^2 = argmin (|c|^2 - 2 r.c)
            index = (norms - 2 * layout.matmul(residual.flatten(0, 1), codebook_t)).argmin(-1)
            index = index.view(residual.shape[:2])
            residual = residual - F.embedding(index, codebook_t.t())
            codes.append(index)
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, n, F] (n <= n_q) -> [B, F, D]."""
        n = codes.shape[1]
        size = self.codebooks.shape[1]
        flat = codes + torch.arange(n, device=codes.device)[:, None] * size  # index into the stacked table
        centroids = F.embedding(flat, self.codebooks[:n].flatten(0, 1)).sum(1)  # [B, F, codebook_dim]
        return self.output_proj(centroids.to(self.output_proj.weight.dtype))


class SplitResidualVQ(nn.Module):
    """codes row 0 = semantic (rvq_first), rows 1.. = acoustic (rvq_rest layers 0..)."""

    def __init__(self, dim: int, codebook_dim: int, codebook_size: int, n_q: int, n_q_semantic: int = 1):
        super().__init__()
        self.n_q_semantic = n_q_semantic
        self.codebook_size = codebook_size
        self.rvq_first = ResidualVQ(dim, codebook_dim, codebook_size, n_q_semantic)
        self.rvq_rest = ResidualVQ(dim, codebook_dim, codebook_size, n_q - n_q_semantic)

    def encode(self, latent: torch.Tensor, n_q: int) -> torch.Tensor:
        """latent [B, D, F] -> codes [B, n_q, F] (int64)."""
        latent = latent.transpose(1, 2)
        codes = self.rvq_first.encode(latent, min(n_q, self.n_q_semantic))
        if n_q > self.n_q_semantic:
            codes = torch.cat([codes, self.rvq_rest.encode(latent, n_q - self.n_q_semantic)], dim=1)
        return codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, F] -> latent [B, D, F]."""
        out = self.rvq_first.decode(codes[:, :self.n_q_semantic])
        if codes.shape[1] > self.n_q_semantic:
            out = out + self.rvq_rest.decode(codes[:, self.n_q_semantic:])
        return out.transpose(1, 2)
