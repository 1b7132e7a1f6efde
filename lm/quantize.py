"""Weight-only int8 / int4 quantization of a loaded LM (kernels/quant_matmul.py), for serving on a GPU.

`quantize_lm(lm, "int8")` replaces the linear weights of the temporal transformer (self-attention
`in_proj_weight` and `out_proj`, the feed-forward, cross-attention's `out_proj`) by `QuantizedWeight`s:
int8 rows with one scale each, or int4 groups of `group_size` input columns with one scale each. These
are 6.6 of Moshi-7B's 7.7 B parameters; the depformer, the embeddings and the output heads stay in the
model dtype. The step then streams 1 byte (int8) or ~0.56 byte (int4, group 128) per weight instead of 2
(bf16). On CUDA the Triton kernels do the matmul; on the CPU torch's weight-only int8 kernel for a few
rows (bf16 activations), otherwise the torch reference (kernels/dispatch.py picks).

Quantizing changes the model's numbers: int8 by about 0.4 % of a weight's row range, int4 more (see the
tests for the measured logit error). The weights themselves: antiphon/quantize.py.
"""

from __future__ import annotations

from antiphon.quantize import quantize_weights


def _targets(lm) -> list:
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
    return quantize_weights(_targets(lm), mode, group_size)
