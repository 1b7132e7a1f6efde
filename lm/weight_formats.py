"""The two published ways of storing LM weights other than plain ones. Both are turned into plain
weights at load time, so the loaded model is an ordinary one (its speed and memory are those of the
model's dtype, not of int8 or of separate adapters).

q8 (Kyutai's `*-pytorch-q8` repositories: `"quantize": true`, `model.q8.safetensors`; reference §2.7):
every Linear weight `<name>` of the reference (attention, feed-forward, text_linear, depformer_in,
linears, extra heads, the Linears inside embeddings) is int8 [out, in], with its float32 row scale
`<name>_scb` [out] beside it: bitsandbytes' vector-wise format, q = round(127 * W / absmax_row) and
scb = absmax_row. So the fused legacy attention weight `in_proj_weight` has `in_proj_weight_scb`,
`out_proj.weight` has `out_proj.weight_scb`, per-step `in_projs.{i}.weight` has
`in_projs.{i}.weight_scb`. Embedding tables and norms stay bf16. Dequantized as W = q * scb / 127.

LoRA (moshi-finetune outputs: `"lora": true`, `lora_rank`, `lora_scaling`, adapters in `lora_name`):
every Linear `<m>` of the reference has `<m>.lora_A.weight` [r, in] and `<m>.lora_B.weight` [out, r],
under the reference's module names: attention `self_attn.in_projs.{i}` / `out_projs.{i}` (one per
depformer weight set; also the legacy `self_attn.in_proj` for the whole fused weight), the others as
released (`gating.linear_in`, `text_linear`, ...). Merged as W' = W + lora_scaling * B @ A. Other
tensors of the file (moshi-finetune's `ft_embed`: whole trained embeddings; `<m>.frozen_W.weight`
for `<m>.weight`) replace the base tensor of that name.
"""

from __future__ import annotations

import re
from typing import Callable

import torch

from antiphon.errors import CheckpointError

SCALE = "_scb"  # suffix of an int8 weight's row scales
_ADAPTER = re.compile(r"^(.*)\.lora_([AB])\.weight$")
_ATTENTION_STEP = re.compile(r"^(.*\.(?:self_attn|cross_attention))\.(in|out)_projs\.(\d+)$")
_ATTENTION_IN = re.compile(r"^(.*\.(?:self_attn|cross_attention))\.in_proj$")


# ---------------------------------------------------------------------- q8
def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W [out, in] -> (int8 [out, in], float32 row scales [out]): q = round(127 W / absmax_row), scb = absmax_row
    (an all-zero row gets scale 1)."""
    scb = w.float().abs().amax(dim=1)
    scb = torch.where(scb > 0, scb, torch.ones_like(scb))
    return torch.round(w.float() * 127 / scb[:, None]).to(torch.int8), scb


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 [out, in], row scales [out] -> float32 [out, in]."""
    return q.float() * scale.float()[:, None] / 127


def dequantize_int8(state: dict[str, torch.Tensor], quantize: bool, dtype_of: Callable[[str], torch.dtype],
                    origin: str) -> dict[str, torch.Tensor]:
    """A released state dict with int8 weights and their `_scb` scales -> float weights, each in
    `dtype_of(name)` (the model's dtype), the scales gone. `quantize` is the config's flag: a q8 file
    must hold int8 weights, and any other file none."""
    int8 = sorted(k for k, v in state.items() if v.dtype == torch.int8)
    scales = sorted(k for k in state if k.endswith(SCALE))
    if not quantize:
        if int8 or scales:
            raise CheckpointError(f"{origin} holds int8 weights or scales ({(int8 + scales)[0]}, ...) but its "
                                  f"config.json does not say \"quantize\": true")
        return state
    if not int8:
        raise CheckpointError(f"config.json says \"quantize\": true but {origin} holds no int8 tensors")
    for key in scales:
        weight = state.get(key.removesuffix(SCALE))
        if weight is None or weight.dtype != torch.int8:
            what = "no such tensor" if weight is None else f"a {weight.dtype} tensor"
            raise CheckpointError(f"{origin}: the scale {key} belongs to no int8 weight "
                                  f"({key.removesuffix(SCALE)}: {what})")
    out = {k: v for k, v in state.items() if not k.endswith(SCALE)}
    for key in int8:
        q, scale = state[key], state.get(key + SCALE)
        if scale is None:
            raise CheckpointError(f"{origin}: the int8 weight {key} has no scale {key + SCALE}")
        if q.dim() != 2 or scale.shape != q.shape[:1] or not scale.is_floating_point():
            raise CheckpointError(f"{origin}: {key + SCALE} is {scale.dtype} {list(scale.shape)}, expected one "
                                  f"float per row of the int8 weight {key} {list(q.shape)}")
        out[key] = dequantize(q, scale).to(dtype_of(key))
    return out


# ---------------------------------------------------------------------- LoRA
def merge_lora(state: dict[str, torch.Tensor], adapters: dict[str, torch.Tensor], rank: int, scaling: float,
               linears: dict[str, torch.dtype], origin: str) -> dict[str, torch.Tensor]:
    """Base weights under the model's names and shapes (depformer attention [S, out, in]) + LoRA
    adapters (moshi-finetune's file) -> the merged weights, W + scaling * B @ A computed in float32 and
    stored in the model's dtype. `linears`: the model's Linear weights -> their dtype."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in adapters.items():
        match = _ADAPTER.match(key)
        if match:
            pairs.setdefault(match.group(1), {})[match.group(2)] = tensor
            continue
        name = key.replace(".frozen_W.", ".")
        if name not in state or state[name].shape != tensor.shape:
            base = list(state[name].shape) if name in state else "no such tensor"
            raise CheckpointError(f"{origin}: {key} {list(tensor.shape)} replaces no base tensor ({name}: {base})")
        state[name] = tensor
    updates: dict[str, list] = {}  # base weight -> [(module name, weight set or None, A, B)]
    for module, pair in sorted(pairs.items()):
        if len(pair) != 2:
            have = next(iter(pair))
            raise CheckpointError(f"{origin}: {module} has lora_{have} without lora_{'B' if have == 'A' else 'A'}")
        a, b = pair["A"], pair["B"]  # [r, in], [out, r]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise CheckpointError(f"{origin}: {module}.lora_A {list(a.shape)} and lora_B {list(b.shape)} do not "
                                  f"have the config's lora_rank {rank}")
        name, step = _base_weight(module)
        if name not in linears:
            raise CheckpointError(f"{origin}: the adapter {module} has no base Linear ({name} is not a Linear "
                                  f"weight of the model)")
        updates.setdefault(name, []).append((module, step, a, b))
    for name, items in updates.items():
        weight = state[name].to(torch.float32, copy=True)  # [out, in] or [S, out, in]
        for module, step, a, b in items:
            if step is None:
                part = weight.view(-1, weight.shape[-1])
            elif step < (weight.shape[0] if weight.dim() == 3 else 1):
                part = weight[step] if weight.dim() == 3 else weight
            else:
                raise CheckpointError(f"{origin}: the adapter {module} names a weight set the base {name} "
                                      f"{list(weight.shape)} does not have")
            delta = b.float() @ a.float()
            if delta.shape != part.shape:
                raise CheckpointError(f"{origin}: the adapter {module} makes a {list(delta.shape)} update, its base "
                                      f"weight {name} is {list(part.shape)}")
            part += scaling * delta
        state[name] = weight.to(linears[name])
    return state


_TABLE = re.compile(r"^(emb\.\d+|text_emb|depformer_emb\.\d+|depformer_text_emb)\.weight$")
_FUSED = re.compile(r"^(.*\.(?:self_attn|cross_attention))\.(in_proj_weight|out_proj\.weight)$")


def reference_linears(key: str, shape, depformer_sets: int) -> list[tuple[str, slice]]:
    """A released weight (name, shape) -> the reference's Linears over it, the modules moshi-finetune puts
    adapters on: (module name, its rows); none for an embedding table, a norm or a vector. An attention
    weight is one Linear per weight set: `<attn>.in_projs.{i}`, `<attn>.out_projs.{i}`."""
    if not key.endswith("weight") or len(shape) != 2 or _TABLE.match(key):
        return []
    match = _FUSED.match(key)
    if match is None:
        return [(key.removesuffix(".weight"), slice(None))]
    sets = depformer_sets if key.startswith("depformer.") else 1
    rows = shape[0] // sets
    kind = "in_projs" if match.group(2) == "in_proj_weight" else "out_projs"
    return [(f"{match.group(1)}.{kind}.{i}", slice(i * rows, (i + 1) * rows)) for i in range(sets)]


def _base_weight(module: str) -> tuple[str, int | None]:
    """A reference Linear's name -> (the model weight it adapts, its weight set; None: all of it)."""
    match = _ATTENTION_STEP.match(module)
    if match:
        attention, kind, step = match.groups()
        return (f"{attention}.in_proj_weight" if kind == "in" else f"{attention}.out_proj.weight"), int(step)
    match = _ATTENTION_IN.match(module)
    if match:
        return f"{match.group(1)}.in_proj_weight", None
    return f"{module}.weight", None
