"""Tiny codecs for the tests: the Mimi architecture at a small size, codebooks fitted to its own
latents so that codes vary (random codebooks would give one code everywhere)."""

from __future__ import annotations

import torch

from antiphon.codec import Codec, CodecConfig

TINY = CodecConfig(dimension=32, n_filters=4, num_heads=2, num_layers=2, dim_feedforward=64, context=10,
                   codebook_dim=16, codebook_size=64, n_q=32)


def chirp_audio(batch: int, frames: int, seed: int = 0, frame_size: int = 1920) -> torch.Tensor:
    """Noisy chirps, [batch, 1, frames * frame_size]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames * frame_size) / 24000
    f0 = 100 + 400 * torch.rand(batch, 1, 1, generator=g)
    wav = 0.3 * torch.sin(2 * torch.pi * f0 * t * (1 + t))
    return wav + 0.05 * torch.randn(batch, 1, t.numel(), generator=g)


def fit_codebooks(codec: Codec, wav: torch.Tensor, seed: int = 0, iterations: int = 4) -> None:
    """k-means each RVQ layer on the residuals of the codec's own latents (wav: many more frames
    than codebook entries, so that the layers do not memorize the data)."""
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        latent = codec.encode_to_latent(wav).transpose(1, 2).flatten(0, 1)  # [N, D]
        for rvq in (codec.quantizer.rvq_first, codec.quantizer.rvq_rest):
            residual = rvq.input_proj(latent)
            tables = []
            for _ in range(rvq.n_q):
                table = residual[torch.randperm(residual.shape[0], generator=g)[: rvq.codebooks.shape[1]]]
                for _ in range(iterations):
                    assign = torch.cdist(residual, table).argmin(-1)
                    sums = torch.zeros_like(table).index_add_(0, assign, residual)
                    counts = torch.bincount(assign, minlength=table.shape[0])[:, None]
                    table = torch.where(counts > 0, sums / counts.clamp(min=1), table)
                tables.append(table)
                residual = residual - table[torch.cdist(residual, table).argmin(-1)]
            rvq.codebooks.copy_(torch.stack(tables))
            rvq.refresh_search_tables()


def make_tiny_codec(seed: int = 0, num_codebooks: int = 8, config: CodecConfig = TINY) -> Codec:
    torch.manual_seed(seed)
    codec = Codec(config, num_codebooks=num_codebooks)
    with torch.no_grad():
        for name, p in codec.named_parameters():
            if p.dim() == 1:  # biases, norms and layer scales: random, not 0 / 1 / 0.01
                p.add_(0.1 * torch.randn_like(p))
    fit_codebooks(codec, chirp_audio(8, 60, seed=seed + 100), seed)
    return codec
