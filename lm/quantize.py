"""Weight-only int8 / int4 quantization of a loaded LM (kernels/quant_matmul.py), for serving on a GPU.

`quantize_lm(lm, "int8")` replaces the linear weights of the temporal transformer (self-attention
`in_proj_weight` and `out_proj`, the feed-forward, cross-attention's `out_proj`) by `QuantizedWeight`s:
int8 rows with one scale each, or int4 groups of `group_size` input columns with one scale each. These
are 6.6 of Moshi-7B's 7.7 B parameters; the depformer, the embeddings and the output heads stay in the
model dtype. The step then streams 1 byte (int8) or ~0.56 byte (int4, group 128) per weight instead of 2
(bf16). On CUDA the Triton kernels do the matmul; elsewhere the torch reference (dequantize, then a
float32 matmul) gives the same numbers, slowly: quantization is for GPU memory and bandwidth.

Quantizing changes the model's numbers: int8 by about 0.4 % of a weight's row range, int4 more (see the
tests for the measured logit error). Exported state dicts hold `<name>.q` / `<name>.scale` (int8) or
`<name>.packed` / `<name>.scales` (int4).
"""

from __future__ import annotations

import torch
from torch import nn

from antiphon.errors import InputError
from antiphon.kernels import dispatch
from antiphon.kernels.quant_matmul import quantize_int4, quantize_int8

MODES = ("int8", "int4")


class QuantizedWeight(nn.Module):
    """A linear weight [out, in], quantized: called on x [..., in] -> [..., out] in x's dtype."""

    def __init__(self, weight: torch.Tensor, mode: str, group_size: int = 128):
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


def _targets(lm) -> list[tuple[nn.Module, str]]:
    """(module, attribute) of every weight `quantize_lm` replaces."""
    found = []
    for layer in lm.transformer.layers:
        found.append((layer.self_attn, "in_proj_weight"))
        found.append((layer.self_attn.out_proj, "weight"))
        ffn = [layer.gating.linear_in, layer.gating.linear_out] if hasattr(layer, "gating") else [layer.linear1, layer.linear2]
        found += [(linear, "weight") for linear in ffn]
        if hasattr(layer, "cross_attention"):
            found.append((layer.cross_attention.out_proj, "weight"))
    return found


def quantize_lm(lm, mode: str, group_size: int = 128) -> int:
    """Quantize the temporal transformer's linear weights in place (module docstring); returns how many.
    InputError for an unknown mode, or for int4 when group_size does not divide a weight's input width."""
    if mode not in MODES:
        raise InputError(f"unknown quantization {mode!r}: expected one of {', '.join(MODES)}")
    targets = _targets(lm)
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
