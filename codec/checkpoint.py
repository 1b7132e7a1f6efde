"""Load and save codec checkpoints in the released Mimi format.

Released names (see reference/mimi_keys.tsv) map to antiphon's modules by three rules: the nested
wrappers `.conv.conv[.conv].` / `.convtr.convtr[.convtr].` collapse to one level, the transformers
drop their `.transformer` level, and each RVQ layer's `_codebook.{embedding_sum, cluster_usage}`
becomes one row of the stacked `codebooks` table (centroid = embedding_sum / max(usage, 1e-5)).
Also accepted: the 0.2.x module names (`in_projs.0`, `out_projs.0`), the legacy codebook buffer names
(`embed_avg`/`embed_sum`, `cluster_size`, `inited`) and weight-norm pairs (`weight_g`, `weight_v`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from antiphon.checkpoint_io import HubRepo, check_tensors, read_safetensors
from antiphon.codec.config import CodecConfig
from antiphon.codec.model import Codec
from antiphon import embedded
from antiphon.errors import CheckpointError

logger = logging.getLogger(__name__)

MIMI_FILENAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
KNOWN_FILENAMES = (MIMI_FILENAME, "mimi-pytorch-e351c8d8@125.safetensors")

_RENAMES = (
    (re.compile(r"(\.conv)+\."), ".conv."),
    (re.compile(r"(\.convtr)+\."), ".convtr."),
    (re.compile(r"^(encoder|decoder)_transformer\.transformer\."), r"\1_transformer."),
    (re.compile(r"\.self_attn\.in_projs\.0\.weight$"), ".self_attn.in_proj_weight"),
    (re.compile(r"\.self_attn\.out_projs\.0\.weight$"), ".self_attn.out_proj.weight"),
)
_CODEBOOK = re.compile(r"^quantizer\.(rvq_first|rvq_rest)\.vq\.layers\.(\d+)\._codebook\.(\w+)$")
_CODEBOOK_SUM = ("embedding_sum", "embed_avg", "embed_sum")
_CODEBOOK_USAGE = ("cluster_usage", "cluster_size")
_CODEBOOK_IGNORED = ("_initialized", "inited")


# ---------------------------------------------------------------------- source resolution
def resolve_weights(source: str | Path) -> Path:
    """A .safetensors file, a directory holding one, or a Hugging Face repo id -> the weights' path."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return _weights_in_directory(path)
    text = str(source)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not text.endswith(".safetensors"):
        return _weights_from_hub(text)
    raise CheckpointError(f"codec checkpoint not found: {source} (give a .safetensors file, a directory or a repo id)")


def _weights_in_directory(directory: Path) -> Path:
    named = _name_from_lm_config(directory / "config.json")
    candidates = [named] if named else list(KNOWN_FILENAMES)
    for name in candidates:
        if (directory / name).is_file():
            return directory / name
    found = sorted(p for p in directory.glob("*.safetensors") if p.name.startswith(("tokenizer", "mimi")))
    if len(found) == 1:
        return found[0]
    raise CheckpointError(
        f"no codec weights in {directory}: expected {' or '.join(candidates)}"
        + (f"; several candidates: {', '.join(p.name for p in found)}" if found else "")
    )


def _name_from_lm_config(config_path: Path) -> str | None:
    if not config_path.is_file():
        return None
    try:
        return json.loads(config_path.read_text()).get("mimi_name")
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise CheckpointError(f"cannot read {config_path}: {e}") from None


def _weights_from_hub(repo_id: str) -> Path:
    repo = HubRepo(repo_id)
    config = repo.fetch("config.json")
    named = _name_from_lm_config(config) if config else None
    for name in [named] if named else KNOWN_FILENAMES:
        weights = repo.fetch(name)
        if weights is not None:
            repo.fetch(weights.with_suffix(".json").name)  # the config of a non-default size, if any
            return weights
    raise repo.missing(f"codec weights ({named or ' or '.join(KNOWN_FILENAMES)})")


def config_beside(weights: Path) -> CodecConfig:
    sidecar = weights.with_suffix(".json")
    if sidecar.is_file():
        return CodecConfig.from_json(sidecar)
    return CodecConfig()


# ---------------------------------------------------------------------- state-dict translation
def released_to_antiphon(state: dict[str, torch.Tensor], config: CodecConfig) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    codebooks: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    weight_norm: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = _CODEBOOK.match(key)
        if match:
            half, layer, buf = match.group(1), int(match.group(2)), match.group(3)
            if buf in _CODEBOOK_IGNORED:
                continue
            if buf not in _CODEBOOK_SUM + _CODEBOOK_USAGE:
                raise CheckpointError(f"unexpected codebook tensor {key}")
            codebooks.setdefault((half, layer), {})[buf] = tensor
            continue
        for pattern, repl in _RENAMES:
            key = pattern.sub(repl, key)
        if key.endswith((".weight_g", ".weight_v")):
            weight_norm.setdefault(key[:-2], {})[key[-1]] = tensor
            continue
        if re.match(r"^quantizer\.rvq_(first|rest)\.(input|output)_proj\.weight$", key):
            tensor = _squeeze_pointwise(key, tensor)
        out[key] = tensor
    for key, pair in weight_norm.items():
        if set(pair) != {"g", "v"}:
            raise CheckpointError(f"weight-norm pair {key}_g / {key}_v is incomplete")
        v = pair["v"]
        norm = v.norm(dim=tuple(range(1, v.dim())), keepdim=True)
        out[key] = pair["g"] * v / norm
    out.update(_stack_codebooks(codebooks, config))
    return out


def _squeeze_pointwise(key: str, tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dim() == 3:
        if tensor.shape[-1] != 1:
            raise CheckpointError(f"{key} must be a 1x1 conv, got shape {list(tensor.shape)}")
        return tensor[..., 0]
    return tensor


def _stack_codebooks(codebooks: dict, config: CodecConfig) -> dict[str, torch.Tensor]:
    out = {}
    for half, n in (("rvq_first", config.n_q_semantic), ("rvq_rest", config.n_q - config.n_q_semantic)):
        layers = sorted(layer for (h, layer) in codebooks if h == half)
        if layers != list(range(len(layers))) or len(layers) != n:
            raise CheckpointError(
                f"quantizer.{half} must have codebook layers 0..{n - 1}, the checkpoint has {len(layers)}"
                f"{' (with gaps)' if layers != list(range(len(layers))) else ''}"
            )
        tables = []
        for layer in layers:
            bufs = codebooks[(half, layer)]
            total = next((bufs[k] for k in _CODEBOOK_SUM if k in bufs), None)
            usage = next((bufs[k] for k in _CODEBOOK_USAGE if k in bufs), None)
            where = f"quantizer.{half}.vq.layers.{layer}._codebook"
            if total is None or usage is None:
                raise CheckpointError(f"{where} needs embedding_sum and cluster_usage")
            if total.dim() != 2 or usage.shape != total.shape[:1]:
                raise CheckpointError(f"{where}: embedding_sum {list(total.shape)} and cluster_usage "
                                      f"{list(usage.shape)} do not fit together")
            tables.append(total.float() / usage.float().clamp(min=1e-5)[:, None])
        try:
            out[f"quantizer.{half}.codebooks"] = torch.stack(tables)
        except RuntimeError as e:
            raise CheckpointError(f"quantizer.{half} codebooks differ in shape: {e}") from None
    return out


def antiphon_to_released(codec: Codec, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The inverse map, for `save_pretrained` (codebooks saved with cluster_usage = 1), in `dtype`."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in codec.state_dict().items():
        tensor = tensor.detach().to(dtype).contiguous()
        if key.endswith(".codebooks"):
            half = key.split(".")[1]
            for layer, table in enumerate(tensor):
                base = f"quantizer.{half}.vq.layers.{layer}._codebook."
                out[base + "embedding_sum"] = table.clone()
                out[base + "cluster_usage"] = torch.ones(table.shape[0])
                out[base + "_initialized"] = torch.ones(1)
        elif re.match(r"^quantizer\.rvq_(first|rest)\.(input|output)_proj\.weight$", key):
            out[key] = tensor[..., None].contiguous()
        else:
            out[_released_name(key)] = tensor
    return out


def _released_name(key: str) -> str:
    if key.startswith("downsample.conv."):
        return "downsample.conv.conv.conv." + key.split(".")[-1]
    if key.startswith("upsample.convtr."):
        return "upsample.convtr.convtr.convtr." + key.split(".")[-1]
    key = re.sub(r"^(encoder|decoder)_transformer\.", r"\1_transformer.transformer.", key)
    return re.sub(r"\.(conv|convtr)\.(weight|bias)$", r".\1.\1.\2", key)


# ---------------------------------------------------------------------- load / save
def load_state(codec: Codec, state: dict[str, torch.Tensor], origin: str) -> None:
    """Copy a translated state dict into `codec`, naming every missing, unexpected or misshaped tensor."""
    check_tensors({k: v.shape for k, v in codec.state_dict().items()}, state, origin, "codec config")
    codec.load_state_dict(state)


def load_codec(source: str | Path, num_codebooks: int = 8, device=None, dtype=None,
               config: CodecConfig | None = None) -> Codec:
    weights = resolve_weights(embedded.resolve(source))
    config = config or config_beside(weights)
    logger.info("loading codec from %s", weights)
    state = released_to_antiphon(read_safetensors(weights), config)
    codec = Codec(config, num_codebooks=num_codebooks)
    load_state(codec, state, str(weights))
    return codec.to(device=device, dtype=dtype)


def save_codec(codec: Codec, directory: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / MIMI_FILENAME
    save_file(antiphon_to_released(codec, dtype), str(weights))
    if codec.config != CodecConfig():
        codec.config.save_json(weights.with_suffix(".json"))
    return weights
