"""Reference LMs built with `moshi` 0.2.13 (the oracle), saved under the released legacy names."""

from __future__ import annotations

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
    kwargs = {k: v for k, v in config.to_kyutai().items() if k not in _REPOSITORY_KEYS}
    kwargs["demux_second_text_stream"] = kwargs.pop("demux_second_stream")
    return kwargs


def legacy_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The reference's state dict under the released names: per-step attention weights fused."""
    out, stacks = {}, {}
    for key, tensor in model.state_dict().items():
        match = re.match(r"^(.*\.self_attn)\.(in_projs|out_projs)\.(\d+)\.weight$", key)
        if match:
            name = match.group(1) + (".in_proj_weight" if match.group(2) == "in_projs" else ".out_proj.weight")
            stacks.setdefault(name, {})[int(match.group(3))] = tensor
        else:
            out[key] = tensor.contiguous()
    for name, steps in stacks.items():
        out[name] = torch.cat([steps[i] for i in range(len(steps))]).contiguous()
    return out


def make_reference_lm(config: LMConfig, seed: int = 0):
    from moshi.models.lm import LMModel

    torch.manual_seed(seed)
    model = LMModel(**reference_kwargs(config)).eval()
    return randomize_(model, seed)


def save_reference_checkpoint(model, config: LMConfig, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(legacy_state_dict(model), str(directory / config.moshi_name))
    raw = config.to_kyutai()
    (directory / "config.json").write_text(json.dumps(raw, indent=2))
    return directory
