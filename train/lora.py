"""Low-rank adapters on any weight matrix, by parametrization: W -> W + (alpha / r) * B @ A, with W
frozen, A random and B zero (the adapted model starts as the base model). `merge` folds the adapters
into the weights, so the exported checkpoint is a plain one of the base architecture; `adapters` gives
them as moshi-finetune stores them, for a checkpoint that is the base weights plus an adapters file."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from antiphon.lm.weight_formats import reference_linears


class LowRankDelta(nn.Module):
    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float):
        super().__init__()
        self.down = nn.Parameter(torch.randn(rank, in_features) / in_features ** 0.5)  # A
        self.up = nn.Parameter(torch.zeros(out_features, rank))  # B
        self.scale = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scale * (self.up @ self.down).to(weight.dtype)


def targets(model: nn.Module, prefix: str = "transformer.") -> list[tuple[nn.Module, str]]:
    """The 2-D weights of the temporal transformer's attention and feed-forward blocks."""
    out = []
    for module_name, module in model.named_modules():
        if not f"{module_name}.".startswith(prefix):
            continue
        for name, param in module.named_parameters(recurse=False):
            if param.dim() == 2 and name in ("weight", "in_proj_weight"):
                out.append((module, name))
    return out


def add_lora(model: nn.Module, rank: int, alpha: float | None = None) -> int:
    """Freeze `model` and put adapters on its `targets`; returns the number of trainable parameters."""
    model.requires_grad_(False)
    for module, name in targets(model):
        out_features, in_features = getattr(module, name).shape
        parametrize.register_parametrization(module, name, LowRankDelta(out_features, in_features, rank,
                                                                        alpha if alpha is not None else 2.0 * rank))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def adapters(model: nn.Module) -> tuple[dict[str, torch.Tensor], float]:
    """The adapters under the reference's Linear names, as moshi-finetune stores them -> ({`<linear>.lora_A.weight`
    [r, in], `<linear>.lora_B.weight` [out, r]}, scaling). The reference's attention has one Linear per weight
    set: `<attn>.in_proj_weight` is `<attn>.in_projs.0`, `<attn>.out_proj.weight` is `<attn>.out_projs.0`."""
    out, scales = {}, set()
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for name, chain in module.parametrizations.items():
            delta = chain[0]
            [(linear, _)] = reference_linears(f"{module_name}.{name}", (delta.up.shape[0], delta.down.shape[1]), 1)
            out[f"{linear}.lora_A.weight"] = delta.down.detach().clone()
            out[f"{linear}.lora_B.weight"] = delta.up.detach().clone()
            scales.add(delta.scale)
    if len(scales) > 1:
        raise ValueError(f"adapters of different scalings: {sorted(scales)}")
    return out, scales.pop() if scales else 1.0


def merge(model: nn.Module) -> None:
    """Fold every adapter into its weight and remove it."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
