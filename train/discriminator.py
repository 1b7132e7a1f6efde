"""A multi-scale STFT discriminator (the kind EnCodec and Mimi train against) for the codec's
adversarial and feature-matching losses (train/losses.py).

Each sub-discriminator reads the complex STFT of the waveform at one window (hop = window / 4), its
real and imaginary parts as two channels over a (time, frequency) plane, through a few weight-normalised
2-D convolutions, dilated along time and strided by 2 along frequency, to a map of logits; the maps
after each convolution are the features that feature matching compares.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

WINDOWS = (2048, 1024, 512, 256, 128)


def _conv(cin: int, cout: int, kernel: tuple[int, int], dilation: tuple[int, int] = (1, 1),
          stride: tuple[int, int] = (1, 1)) -> nn.Conv2d:
    """A weight-normalised 2-D convolution padded to keep each axis' length (divided by its stride)."""
    padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    return weight_norm(nn.Conv2d(cin, cout, kernel, stride=stride, dilation=dilation, padding=padding))


class STFTDiscriminator(nn.Module):
    """One scale: the STFT at `window`, `channels` wide."""

    def __init__(self, window: int, channels: int = 32, dilations: tuple[int, ...] = (1, 2, 4)):
        super().__init__()
        self.window = window
        self.register_buffer("hann", torch.hann_window(window), persistent=False)
        self.convs = nn.ModuleList([
            _conv(2, channels, (3, 9)),
            *(_conv(channels, channels, (3, 9), dilation=(d, 1), stride=(1, 2)) for d in dilations),
            _conv(channels, channels, (3, 3)),
        ])
        self.logits = _conv(channels, 1, (3, 3))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """wav [B, 1, T] -> logits [B, 1, frames, bins / 8] and the features after each conv, [B, C, frames,
        bins / 2^k] after k strided ones; frames = T // (window / 4) + 1, bins = window / 2 + 1 (divisions
        rounded up)."""
        spec = torch.stft(wav.flatten(0, 1).float(), n_fft=self.window, hop_length=self.window // 4,
                          window=self.hann, normalized=True, return_complex=True)  # [B, bins, frames]
        x = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # [B, 2, frames, bins]
        x = x.contiguous(memory_format=torch.channels_last)  # oneDNN CPU convs: ~2x faster in this layout
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            features.append(x)
        return self.logits(x), features


class MultiScaleSTFTDiscriminator(nn.Module):
    """One `STFTDiscriminator` per window of `windows`."""

    def __init__(self, channels: int = 32, windows: tuple[int, ...] = WINDOWS):
        super().__init__()
        self.discriminators = nn.ModuleList(STFTDiscriminator(w, channels) for w in windows)

    def forward(self, wav: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        """wav [B, 1, T] -> (logits, features) of each sub-discriminator, in the order of `windows`."""
        return [d(wav) for d in self.discriminators]
