"""Reference LMs built with `moshi` 0.2.13 (the oracle), saved under the released legacy names."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from antiphon.lm import LMConfig

from .tiny import randomize_

_REPOSITORY_KEYS = ("moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name", "model_type",
                    "lm_gen_config", "tts_config", "stt_config")


def reference_kwargs(config: LMConfig) -> dict:
    """The keyword arguments of the reference's loader (`loaders.get_moshi_lm(lm_kwargs=...)`): conditioners
    and fuser, when present, as config dicts."""
    kwargs = {k: v for k, v in config.to_kyutai().items() if k not in _REPOSITORY_KEYS}
    kwargs["demux_second_text_stream"] = kwargs.pop("demux_second_stream")
    return kwargs


def legacy_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The reference's state dict under the released names: per-step attention weights fused."""
    out, stacks = {}, {}
    for key, tensor in model.state_dict().items():
        match = re.match(r"^(.*\.(?:self_attn|cross_attention))\.(in_projs|out_projs)\.(\d+)\.weight$", key)
        if match:
            name = match.group(1) + (".in_proj_weight" if match.group(2) == "in_projs" else ".out_proj.weight")
            stacks.setdefault(name, {})[int(match.group(3))] = tensor
        else:
            out[key] = tensor.contiguous()
    for name, steps in stacks.items():
        out[name] = torch.cat([steps[i] for i in range(len(steps))]).contiguous()
    return out


def make_reference_lm(config: LMConfig, seed: int = 0):
    """A random reference LMModel; conditioners and fuser built by the reference's loader functions."""
    from moshi.models.lm import LMModel
    from moshi.models.loaders import get_condition_fuser, get_conditioner_provider

    torch.manual_seed(seed)
    kwargs = reference_kwargs(config)
    if "conditioners" in kwargs:
        raw = copy.deepcopy({"conditioners": kwargs.pop("conditioners"), "fuser": kwargs.pop("fuser")})
        kwargs["condition_provider"] = get_conditioner_provider(config.dim, "cpu", raw)
        kwargs["fuser"] = get_condition_fuser(raw)
    model = LMModel(**kwargs).eval()
    return randomize_(model, seed)


def reference_conditions(model, labels: dict[str, list], tensors: dict[str, tuple] | None = None):
    """The reference's condition tensors for B rows: labels name -> B values (None: dropped), tensors
    name -> (tensor [B, S, C], mask [B, S])."""
    from moshi.conditioners import ConditionAttributes, TensorCondition

    tensors = tensors or {}
    batch = len(next(iter(labels.values())))
    attributes = [ConditionAttributes(text={k: v[b] for k, v in labels.items()},
                                      tensor={k: TensorCondition(t[b: b + 1], m[b: b + 1]) for k, (t, m) in tensors.items()})
                  for b in range(batch)]
    return model.condition_provider.prepare_and_provide(attributes)


def save_reference_checkpoint(model, config: LMConfig, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(legacy_state_dict(model), str(directory / config.moshi_name))
    raw = config.to_kyutai()
    (directory / "config.json").write_text(json.dumps(raw, indent=2))
    return directory
