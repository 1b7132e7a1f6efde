"""Training the codec's residual quantizers: nearest-centroid codes with a straight-through gradient,
a commitment loss, and codebooks learned by exponential moving averages (k-means online), as Mimi's
are; the EMA statistics are the released checkpoint's `embedding_sum` and `cluster_usage`.

The codec's `ResidualVQ` holds only the centroids (`codebooks`); `EmaQuantizer` keeps the
statistics beside it and writes new centroids into it after every training batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from antiphon.codec.quantizer import ResidualVQ, SplitResidualVQ


class EmaResidualVQ:
    def __init__(self, rvq: ResidualVQ, decay: float = 0.99, dead_usage: float = 1.0):
        self.rvq = rvq
        self.decay = decay
        self.dead_usage = dead_usage  # a centroid used less than this (EMA count) is re-seeded
        n_q, size, _ = rvq.codebooks.shape
        device = rvq.codebooks.device
        self.usage = torch.zeros(n_q, size, device=device)
        self.sums = torch.zeros_like(rvq.codebooks, dtype=torch.float32)
        self.initialized = torch.zeros(n_q, dtype=torch.bool)  # host: read every step

    def state_dict(self) -> dict:
        return {"usage": self.usage, "sums": self.sums, "initialized": self.initialized}

    def load_state_dict(self, state: dict) -> None:
        device = self.rvq.codebooks.device
        self.usage, self.sums = state["usage"].to(device), state["sums"].to(device)
        self.initialized = state["initialized"].cpu()

    def __call__(self, latent: torch.Tensor, n: int, update: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """latent [B, F, D] -> (quantized latent [B, F, D] with a straight-through gradient to the
        input projection, commitment loss). `update`: move the codebooks towards this batch."""
        projected = self.rvq.input_proj(latent).float()  # [B, F, C]
        residual = projected.detach()
        total = torch.zeros_like(residual)
        commitment = projected.new_zeros(())
        for i in range(n):
            flat = residual.flatten(0, 1)
            if update and not self.initialized[i]:
                self._seed(i, flat)
            codebook = self.rvq.codebooks[i].float()
            index = (codebook.pow(2).sum(-1) - 2 * flat @ codebook.t()).argmin(-1)
            chosen = codebook[index].view_as(residual)
            commitment = commitment + F.mse_loss(projected - total, chosen)
            if update:
                self._update(i, flat, index)
            total = total + chosen
            residual = residual - chosen
        if update:  # the codec's own search (encode) reads tables derived from the codebooks
            self.rvq.refresh_search_tables()
        quantized = projected + (total - projected).detach()
        return self.rvq.output_proj(quantized.to(self.rvq.output_proj.weight.dtype)), commitment / max(n, 1)

    def adopt(self) -> None:
        """Start the statistics from the codebooks as they are (a trained codec's): each centroid
        counted once, none re-seeded from the first batch."""
        self.sums = self.rvq.codebooks.detach().float().clone()
        self.usage = torch.ones_like(self.usage)
        self.initialized = torch.ones_like(self.initialized)

    @torch.no_grad()
    def _seed(self, i: int, flat: torch.Tensor) -> None:
        """Start codebook i from random vectors of the first batch."""
        size = self.usage.shape[1]
        picks = flat[torch.randint(len(flat), (size,)).to(flat.device)]  # drawn on the CPU: the same on any device
        self.sums[i] = picks
        self.usage[i] = 1.0
        self.initialized[i] = True
        self.rvq.codebooks[i] = picks.to(self.rvq.codebooks.dtype)

    @torch.no_grad()
    def _update(self, i: int, flat: torch.Tensor, index: torch.Tensor) -> None:
        size = self.usage.shape[1]
        counts = torch.bincount(index, minlength=size).float()
        sums = torch.zeros_like(self.sums[i]).index_add_(0, index, flat)
        self.usage[i].mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.sums[i].mul_(self.decay).add_(sums, alpha=1 - self.decay)
        dead = self.usage[i] < self.dead_usage * (1 - self.decay)
        if dead.any():  # re-seed unused centroids on vectors of this batch
            picks = flat[torch.randint(len(flat), (int(dead.sum()),)).to(flat.device)]
            self.sums[i][dead] = picks
            self.usage[i][dead] = 1.0
        self.rvq.codebooks[i] = (self.sums[i] / self.usage[i].clamp(min=1e-5)[:, None]).to(self.rvq.codebooks.dtype)


class EmaSplitVQ:
    """`SplitResidualVQ` in training: the semantic and the acoustic halves over the same latent."""

    def __init__(self, quantizer: SplitResidualVQ, decay: float = 0.99):
        self.quantizer = quantizer
        self.halves = (EmaResidualVQ(quantizer.rvq_first, decay), EmaResidualVQ(quantizer.rvq_rest, decay))

    def state_dict(self) -> dict:
        return {"first": self.halves[0].state_dict(), "rest": self.halves[1].state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.halves[0].load_state_dict(state["first"])
        self.halves[1].load_state_dict(state["rest"])

    def adopt(self) -> None:
        for half in self.halves:
            half.adopt()

    def __call__(self, latent: torch.Tensor, n_q: int, update: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """latent [B, D, F] -> (quantized [B, D, F], commitment loss), with the first `n_q` codebooks."""
        latent = latent.transpose(1, 2)
        semantic = self.quantizer.n_q_semantic
        out, loss = self.halves[0](latent, min(n_q, semantic), update)
        if n_q > semantic:
            rest, rest_loss = self.halves[1](latent, n_q - semantic, update)
            out, loss = out + rest, loss + rest_loss
        return out.transpose(1, 2), loss
