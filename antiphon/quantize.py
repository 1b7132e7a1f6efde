"""Weight-only quantized linear weights (kernels/quant_matmul.py), shared by the LM and the codec.

`QuantizedWeight` holds a linear weight [out, in] as int8 rows with one scale each, or as int4 groups of
`group_size` input columns with one scale each, and is called on x [..., in]. `quantize_weights`
replaces chosen attributes of a model by them. Exported state dicts hold `<name>.q` / `<name>.scale`
(int8) or `<name>.packed` / `<name>.scales` (int4).
"""

from __future__ import annotations

import torch
from torch import nn

from antiphon.errors import InputError
from antiphon.kernels import dispatch

MODES = ("int8", "int4")


class QuantizedWeight(nn.Module):
    """A linear weight [out, in], quantized: called on x [..., in] -> [..., out] in x's dtype."""

    def __init__(self, weight: torch.Tensor, mode: str, group_size: int = 128):
        from antiphon.kernels.quant_matmul import quantize_int4, quantize_int8  # imports triton: only when used

        super().__init__()
        self.mode, self.group_size = mode, group_size
        self.shape = tuple(weight.shape)
        self.dtype = weight.dtype  # the model dtype, which activations keep
        w = weight.detach().float()
        if mode == "int8":
            q, scale = quantize_int8(w)
            self.register_buffer("q", q)
            self.register_buffer("scale", scale)
        elif mode == "int4":
            packed, scales = quantize_int4(w, group_size)
            self.register_buffer("packed", packed)
            self.register_buffer("scales", scales)
        else:
            raise InputError(f"unknown quantization {mode!r}: expected one of {', '.join(MODES)}")

    @property
    def device(self) -> torch.device:
        return self.scale.device if self.mode == "int8" else self.scales.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "int8":
            return dispatch.int8_matmul(x, self.q, self.scale)
        return dispatch.int4_matmul(x, self.packed, self.scales, self.group_size)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.mode == "int4" else ""
        return f"{self.shape[0]}x{self.shape[1]}, {self.mode}{group}"


def quantize_weights(targets: list[tuple[nn.Module, str]], mode: str, group_size: int = 128) -> int:
    """Replace `getattr(module, name)` (a weight [out, in]) by a QuantizedWeight for every target;
    returns how many. InputError for an unknown mode, or for int4 when group_size does not divide a
    weight's input width."""
    if mode not in MODES:
        raise InputError(f"unknown quantization {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "int4":
        widths = sorted({getattr(m, name).shape[1] for m, name in targets})
        if group_size < 2 or group_size % 2 or any(w % group_size for w in widths):
            raise InputError(f"int4 group size {group_size} must be even and divide every input width "
                             f"({', '.join(map(str, widths))})")
    for module, name in targets:
        quantized = QuantizedWeight(getattr(module, name), mode, group_size)
        delattr(module, name)
        setattr(module, name, quantized)
    return len(targets)
