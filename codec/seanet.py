"""SEANet encoder and decoder: causal strided convolutions with residual blocks.

Module indices follow the released checkpoint (`encoder.model.{i}`, `decoder.model.{i}`), so that
state-dict keys map one to one.
"""

from __future__ import annotations

import torch
from torch import nn

from antiphon.codec.config import CodecConfig
from antiphon.codec.conv import StreamingConv1d, StreamingConvTranspose1d


class ResidualBlock(nn.Module):
    """x + conv1x1(ELU(conv_k(ELU(x)))); entries 1 and 3 of `block` hold the weights."""

    def __init__(self, dim: int, kernel_size: int, dilation: int, compress: int):
        super().__init__()
        hidden = dim // compress
        self.block = nn.ModuleList([
            nn.ELU(),
            StreamingConv1d(dim, hidden, kernel_size, dilation=dilation),
            nn.ELU(),
            StreamingConv1d(hidden, dim, 1),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for layer in self.block:
            y = layer(y)
        return x + y


def _residual_blocks(cfg: CodecConfig, dim: int) -> list[nn.Module]:
    return [ResidualBlock(dim, cfg.residual_kernel_size, cfg.dilation_base ** j, cfg.compress)
            for j in range(cfg.n_residual_layers)]


class SEANetEncoder(nn.Module):
    """[B, 1, T] -> [B, dimension, T / hop_length]."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        width = cfg.n_filters
        layers: list[nn.Module] = [StreamingConv1d(cfg.channels, width, cfg.kernel_size)]
        for ratio in reversed(cfg.ratios):
            layers += _residual_blocks(cfg, width)
            layers += [nn.ELU(), StreamingConv1d(width, 2 * width, 2 * ratio, stride=ratio)]
            width *= 2
        layers += [nn.ELU(), StreamingConv1d(width, cfg.dimension, cfg.last_kernel_size)]
        self.model = nn.ModuleList(layers)

    def latent_rate_convs(self) -> list[nn.Module]:
        """The convs whose output is at the latent rate: the last downsampling one and the final one
        (the largest weights, read for a few output steps per frame)."""
        return [self.model[-3], self.model[-1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.model:
            x = layer(x)
        return x


class SEANetDecoder(nn.Module):
    """[B, dimension, F] -> [B, 1, F * hop_length]."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        width = cfg.n_filters * 2 ** len(cfg.ratios)
        layers: list[nn.Module] = [StreamingConv1d(cfg.dimension, width, cfg.kernel_size)]
        for ratio in cfg.ratios:
            layers += [nn.ELU(), StreamingConvTranspose1d(width, width // 2, 2 * ratio, stride=ratio)]
            width //= 2
            layers += _residual_blocks(cfg, width)
        layers += [nn.ELU(), StreamingConv1d(width, cfg.channels, cfg.last_kernel_size)]
        self.model = nn.ModuleList(layers)

    def latent_rate_convs(self) -> list[nn.Module]:
        """The convs whose input is at the latent rate: the first one and the first upsampling one."""
        return [self.model[0], self.model[2]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.model:
            x = layer(x)
        return x
