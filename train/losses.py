"""The codec's losses: multi-scale mel spectrogram distances (reconstruction), and the hinge and
feature-matching losses against a discriminator (train/discriminator.py), each averaged over its
sub-discriminators."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.nn import functional as F

SCALES = ((2048, 80), (1024, 80), (512, 64), (256, 32), (128, 16))  # (window, mel bands)


@functools.lru_cache(maxsize=None)
def mel_filters(n_fft: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Triangular filters on the HTK mel scale, [n_mels, n_fft // 2 + 1]."""
    def mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)

    def hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    edges = torch.tensor([hz(m) for m in torch.linspace(mel(0.0), mel(sample_rate / 2), n_mels + 2).tolist()])
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    low, mid, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - low) / (mid - low)
    falling = (high - freqs) / (high - mid)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


class MultiScaleMelLoss(nn.Module):
    """Sum over `SCALES` of L1(mel) + L1(log mel) between two waveforms [B, 1, T]."""

    def __init__(self, sample_rate: int, scales=SCALES):
        super().__init__()
        self.sample_rate = sample_rate
        self.scales = scales

    def forward(self, out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        total = out.new_zeros(())
        for window, bands in self.scales:
            a, b = self._mel(out, window, bands), self._mel(ref, window, bands)
            total = total + (a - b).abs().mean() + (a.clamp(min=1e-5).log() - b.clamp(min=1e-5).log()).abs().mean()
        return total / len(self.scales)

    def _mel(self, wav: torch.Tensor, window: int, bands: int) -> torch.Tensor:
        spec = torch.stft(wav.flatten(0, 1).float(), n_fft=window, hop_length=window // 4,
                          window=torch.hann_window(window, device=wav.device), return_complex=True)
        filters = mel_filters(window, bands, self.sample_rate).to(wav.device)
        return filters @ spec.abs()  # [B, bands, frames]


def discriminator_hinge_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """mean relu(1 - D(real)) + mean relu(1 + D(fake)), from each sub-discriminator's logits."""
    return torch.stack([F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake)]).mean()


def generator_hinge_loss(fake: list[torch.Tensor]) -> torch.Tensor:
    """mean relu(1 - D(fake)), from each sub-discriminator's logits on decoded audio."""
    return torch.stack([F.relu(1 - f).mean() for f in fake]).mean()


def feature_matching_loss(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """EnCodec's relative form: per sub-discriminator, the mean over its feature maps of
    mean |fake - real| / mean |real|; `real` is the target (no gradient)."""
    def relative(r: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        r = r.detach()
        return (f - r).abs().mean() / r.abs().mean().clamp(min=1e-8)

    return torch.stack([torch.stack([relative(r, f) for r, f in zip(rs, fs)]).mean() for rs, fs in zip(real, fake)]).mean()
