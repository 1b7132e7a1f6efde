"""Causal streaming convolutions.

Offline is streaming with a fresh state in one call, so the two agree by construction.

- `StreamingConv1d`: all padding on the left, k_eff - stride samples, kept between calls in a
  per-slot buffer (zeros, or the first sample repeated for `pad_mode="replicate"`).
- `StreamingConvTranspose1d`: the full transposed conv; the last K - S outputs (minus the bias)
  are held back and added to the start of the next call's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from antiphon.kernels import layout
from antiphon.quantize import QuantizedWeight
from antiphon.stateful import Stateful

# A conv runs as one matmul over its unfolded input (im2col) when that input is cheap to build: a 1x1 or
# strided conv, or a short output (weight-bound); otherwise (a long output of an overlapping kernel)
# as torch's convolution.
UNFOLD_MAX_STEPS = 128


class StreamingConv1d(Stateful):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, groups: int = 1, bias: bool = True, pad_mode: str = "constant"):
        super().__init__()
        if pad_mode not in ("constant", "replicate"):
            raise ValueError(f"pad_mode must be 'constant' or 'replicate', got {pad_mode!r}")
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride,
                              dilation=dilation, groups=groups, bias=bias)
        if groups == 1:
            self.conv.weight = layout.small_batch_layout(self.conv.weight)
        self.stride = stride
        self.pad_mode = pad_mode
        self.history = (kernel_size - 1) * dilation + 1 - stride  # samples carried between calls

    def quantize(self) -> int:
        """Weight-only int8 (antiphon/quantize.py): the conv then always runs as a matmul over its
        unfolded input."""
        if self.conv.groups != 1:
            raise ValueError("only a dense conv (groups=1) quantizes")
        weight = self.conv.weight
        del self.conv.weight
        self.conv.weight = QuantizedWeight(weight.flatten(1), "int8")  # [C_out, C_in * kernel]
        return 1

    def init_state(self, batch_size: int) -> dict:
        w = self.conv.weight
        return {
            "previous": torch.zeros(batch_size, self.conv.in_channels, self.history, device=w.device, dtype=w.dtype),
            "first": torch.ones(batch_size, dtype=torch.bool, device=w.device),
        }

    def reset_state(self, state: dict, mask: torch.Tensor) -> None:
        state["previous"].masked_fill_(mask[:, None, None], 0.0)
        state["first"].logical_or_(mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, T] with T a multiple of the stride -> [B, C_out, T // stride]."""
        if self.history == 0:
            return self._conv(x)
        state = self.state
        if state is None:
            previous = self._initial_history(x)
        else:
            previous = state["previous"]
            if self.pad_mode == "replicate":
                first = state["first"][:, None, None]
                previous = torch.where(first, x[..., :1].expand_as(previous), previous)
                state["first"].zero_()
        x = torch.cat([previous, x], dim=-1)
        if state is not None:
            state["previous"].copy_(x[..., -self.history:])
        return self._conv(x)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """The unpadded conv: [B, C_in, T] -> [B, C_out, (T - k_eff) // stride + 1]."""
        conv = self.conv
        kernel, dilation = conv.kernel_size[0], conv.dilation[0]
        span = (kernel - 1) * dilation + 1
        steps = (x.shape[-1] - span) // self.stride + 1
        im2col = kernel == 1 or self.stride > 1 or steps <= UNFOLD_MAX_STEPS or isinstance(conv.weight, nn.Module)
        if not im2col or conv.groups != 1:
            return F.conv1d(x, conv.weight.contiguous(), conv.bias, self.stride, 0, dilation, conv.groups)
        patches = x.unfold(-1, span, self.stride)[..., ::dilation]  # [B, C_in, steps, kernel]
        patches = patches.permute(0, 2, 1, 3).flatten(2)  # [B, steps, C_in * kernel]
        y = layout.linear(patches, conv.weight, conv.bias)  # [B, steps, C_out]
        return y.transpose(1, 2)

    def _initial_history(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0], x.shape[1], self.history)
        if self.pad_mode == "replicate":
            return x[..., :1].expand(shape)
        return x.new_zeros(shape)


class StreamingConvTranspose1d(Stateful):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = True):
        super().__init__()
        self.convtr = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride=stride,
                                         groups=groups, bias=bias)
        self.overlap = kernel_size - stride  # outputs carried between calls

    def quantize(self) -> int:
        """Weight-only int8 (antiphon/quantize.py) of the weight as the matmul reads it, [C_out * K, C_in]:
        the transposed conv then always runs as a matmul and an overlap-add."""
        convtr = self.convtr
        if convtr.groups != 1:
            raise ValueError("only a dense transposed conv (groups=1) quantizes")
        weight = convtr.weight  # [C_in, C_out, K]
        del convtr.weight
        convtr.weight = QuantizedWeight(weight.flatten(1).t(), "int8")
        return 1

    def init_state(self, batch_size: int) -> dict:
        w = self.convtr.weight
        return {"partial": torch.zeros(batch_size, self.convtr.out_channels, self.overlap,
                                       device=w.device, dtype=w.dtype)}

    def reset_state(self, state: dict, mask: torch.Tensor) -> None:
        state["partial"].masked_fill_(mask[:, None, None], 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, T] -> [B, C_out, T * stride]."""
        y = _conv_transpose1d(x, self.convtr)  # [B, C_out, (T - 1) * stride + kernel]
        if self.overlap == 0:
            return y
        if self.state is None:
            return y[..., :-self.overlap]
        partial = self.state["partial"]
        y[..., :self.overlap] += partial
        tail = y[..., -self.overlap:]
        if self.convtr.bias is not None:
            tail = tail - self.convtr.bias[:, None]
        partial.copy_(tail)
        return y[..., :-self.overlap]


def _conv_transpose1d(x: torch.Tensor, convtr: nn.ConvTranspose1d) -> torch.Tensor:
    """For the short inputs of streaming (T * stride <= K), the transposed conv as one matmul and an
    overlap-add (F.fold): several times faster on CPU than torch's transposed-conv kernel there. A
    quantized weight (a module, [C_out * K, C_in]) takes that path at any length."""
    w = convtr.weight  # [C_in, C_out / groups, K]
    c_in, c_out_g, k = convtr.in_channels, convtr.out_channels // convtr.groups, convtr.kernel_size[0]
    stride = convtr.stride[0]
    steps = x.shape[-1]
    if isinstance(w, nn.Module):
        z = layout.linear(x.transpose(1, 2), w).transpose(1, 2)  # [B, C_out * K, T]
    elif steps * stride > k:
        return convtr(x)
    elif convtr.groups == 1:
        z = layout.matmul(x.transpose(1, 2), w.reshape(c_in, c_out_g * k)).transpose(1, 2)  # [B, C_out * K, T]
    elif convtr.groups == c_in and c_out_g == 1:  # depthwise
        z = (x[:, :, None, :] * w[None, :, :, None].reshape(1, c_in, k, 1)).flatten(1, 2)
    else:
        return convtr(x)
    y = F.fold(z, output_size=(1, (steps - 1) * stride + k), kernel_size=(1, k), stride=(1, stride))[:, :, 0]
    if convtr.bias is not None:
        y = y + convtr.bias[:, None]
    return y
