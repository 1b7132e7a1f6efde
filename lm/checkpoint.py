"""Load and save LM checkpoints in the released format (reference §2.7, moshi7b_keys.tsv).

Released names equal antiphon's module names, except that each depformer layer keeps its S per-step
attention weight sets stacked: antiphon's `self_attn.in_proj_weight` [S, 3Dd, Dd] and
`self_attn.out_proj.weight` [S, Dd, Dd] are stored flat, [S * 3Dd, Dd] and [S * Dd, Dd] (the legacy
fused names). Also accepted on load: the per-step module names of newer state dicts
(`self_attn.in_projs.{i}.weight`, `self_attn.out_projs.{i}.weight`, the same for `cross_attention`),
stacked in step order. Conditioners (`condition_provider.*`) stay float32 whatever the dtype, as in
the reference.

A source is a local directory, a .safetensors file, or a Hugging Face repo id. The repository's
config.json names the weights (`moshi_name`), the codec (`mimi_name`) and the text tokenizer
(`tokenizer_name`); a name may also be `hf://owner/repo/path`. No config.json means Moshi 7B.

Two stored forms load too, turned into plain weights at load time (lm.weight_formats): Kyutai's q8
files (`"quantize": true`: int8 Linear weights + row scales, dequantized to the model's dtype) and
moshi-finetune's LoRA outputs (`"lora": true`: adapters in `lora_name`, default `lora.safetensors`,
found like the other files of the source and merged into the base weights).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from antiphon import embedded
from antiphon.checkpoint_io import HubRepo, check_tensors, read_safetensors
from antiphon.errors import CheckpointError
from antiphon.lm.config import MOSHI_NAME, LMConfig, WeightsFormat
from antiphon.lm.layers import Embedding
from antiphon.lm.model import LM
from antiphon.lm.weight_formats import dequantize_int8, merge_lora

logger = logging.getLogger(__name__)

_STACKED = re.compile(r"^depformer\.layers\.\d+\.self_attn\.(in_proj_weight|out_proj\.weight)$")
_PER_STEP = re.compile(r"^(.*\.(?:self_attn|cross_attention))\.(in_projs|out_projs)\.(\d+)\.weight$")
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


# ---------------------------------------------------------------------- sources
class Source:
    """Where a model's files come from: a local directory or a Hugging Face repo id."""

    def __init__(self, directory: Path | None = None, repo_id: str | None = None):
        self.directory, self.repo_id = directory, repo_id
        self._hub = HubRepo(repo_id) if repo_id is not None else None

    def __str__(self) -> str:
        return str(self.directory) if self.directory is not None else self.repo_id

    @classmethod
    def parse(cls, source: str | Path) -> tuple["Source", Path | None]:
        """-> (the source, an explicit weights file or None)."""
        path = Path(source).expanduser()
        if path.is_dir():
            return cls(directory=path), None
        if path.is_file():
            return cls(directory=path.parent), path
        if isinstance(source, str) and _REPO_ID.fullmatch(source) and not source.endswith(".safetensors"):
            return cls(repo_id=source), None
        raise CheckpointError(f"LM checkpoint not found: {source} (give a directory, a .safetensors file or a repo id)")

    def fetch(self, name: str, required: bool = True) -> Path | None:
        """A file of this source (or `hf://owner/repo/path` anywhere) -> its local path; None when absent
        and not `required`."""
        if name.startswith("hf://"):
            parts = name.removeprefix("hf://").split("/")
            return Source(repo_id="/".join(parts[:2])).fetch("/".join(parts[2:]), required)
        if self.directory is not None:
            path = self.directory / name
            if path.is_file():
                return path
            if required:
                raise CheckpointError(f"{self.directory} has no {name}")
            return None
        return self._fetch_from_hub(name, required)

    def _fetch_from_hub(self, name: str, required: bool) -> Path | None:
        path = self._hub.fetch(name)
        if path is None and required:
            raise self._hub.missing(name)
        return path


def read_config(source: Source) -> tuple[LMConfig, WeightsFormat]:
    path = source.fetch("config.json", required=False)
    if path is None:
        logger.warning("%s has no config.json: assuming Moshi 7B", source)
        return LMConfig(), WeightsFormat()
    return LMConfig.from_json(path), WeightsFormat.from_json(path)


# ---------------------------------------------------------------------- state-dict translation
def antiphon_to_released(model: LM) -> dict[str, torch.Tensor]:
    """Model state -> released names and shapes (stacked depformer weights flattened)."""
    out = {}
    for key, tensor in model.state_dict().items():
        if _STACKED.match(key):
            tensor = tensor.flatten(0, 1)
        out[key] = tensor
    return out


def released_to_antiphon(state: dict[str, torch.Tensor], model: LM, origin: str) -> dict[str, torch.Tensor]:
    """Released state -> the model's names and shapes, naming every missing, unexpected or misshaped tensor."""
    state = _merge_per_step(state, origin)
    check_tensors({k: v.shape for k, v in antiphon_to_released(model).items()}, state, origin, "LM config")
    internal = model.state_dict()
    return {k: v.view(internal[k].shape) if _STACKED.match(k) else v for k, v in state.items()}


def _merge_per_step(state: dict[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    """`self_attn.in_projs.{i}.weight` / `out_projs.{i}.weight` -> the fused, stacked legacy tensors."""
    out, groups = {}, {}
    for key, tensor in state.items():
        match = _PER_STEP.match(key)
        if match is None:
            out[key] = tensor
            continue
        prefix, kind, step = match.group(1), match.group(2), int(match.group(3))
        groups.setdefault((prefix, kind), {})[step] = tensor
    for (prefix, kind), steps in groups.items():
        name = f"{prefix}.in_proj_weight" if kind == "in_projs" else f"{prefix}.out_proj.weight"
        if sorted(steps) != list(range(len(steps))):
            raise CheckpointError(f"{origin}: {prefix}.{kind} has steps {sorted(steps)}, expected 0..{len(steps) - 1}")
        if name in out:
            raise CheckpointError(f"{origin} holds both {name} and {prefix}.{kind}.*")
        try:
            out[name] = torch.cat([steps[i] for i in range(len(steps))], dim=0)
        except RuntimeError as e:
            raise CheckpointError(f"{origin}: the steps of {prefix}.{kind} differ in shape: {e}") from None
    return out


# ---------------------------------------------------------------------- load / save
def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_lm(source: str | Path, device=None, dtype=None) -> LM:
    """The LM of a source (see the module's docstring). q8 weights are dequantized and LoRA adapters
    merged here, on the CPU state dict, so the model is a plain one in `dtype`: `save_pretrained` writes
    a plain checkpoint (`model.safetensors` for a q8 source)."""
    where, weights = Source.parse(embedded.resolve(source))
    config, stored = read_config(where)
    weights = weights or where.fetch(config.moshi_name)
    adapters = _fetch_adapters(where, stored)
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype or default_dtype(device)
    logger.info("loading LM from %s", weights)
    if stored.quantize:  # what the model saves is not q8
        config = dataclasses.replace(config, moshi_name=MOSHI_NAME)
    with torch.device("meta"):
        model = LM(config).to(dtype=dtype)
    if model.is_conditioned:
        model.condition_provider.float()
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    state = dequantize_int8(read_safetensors(weights), stored.quantize, lambda k: dtypes.get(k, dtype), str(weights))
    state = released_to_antiphon(state, model, str(weights))  # checked before the model is allocated
    if adapters is not None:
        state = merge_lora(state, read_safetensors(adapters), stored.lora_rank, stored.lora_scaling,
                           _linear_weights(model), str(adapters))
    model = model.to_empty(device=device)
    model.load_state_dict(state)
    if config.model_type == "hibiki":
        # As the reference loader does: an early text EOS (2) reads as PAD (3).
        with torch.no_grad():
            model.text_emb.weight[2] = model.text_emb.weight[3]
    model.source = where
    return model.eval()


def _fetch_adapters(where: Source, stored: WeightsFormat) -> Path | None:
    if not stored.lora:
        return None
    try:
        return where.fetch(stored.lora_name)
    except CheckpointError as e:
        raise CheckpointError(f"config.json says \"lora\": true but the LoRA adapters are missing: {e}") from None


def _linear_weights(model: LM) -> dict[str, torch.dtype]:
    """The model's Linear weights (every matrix but the embedding tables) -> their dtype."""
    tables = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (Embedding, nn.Embedding))}
    return {k: p.dtype for k, p in model.named_parameters()
            if k.endswith("weight") and p.dim() >= 2 and k not in tables}


def save_lm(model: LM, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / model.config.moshi_name
    state = {k: v.detach().contiguous() for k, v in antiphon_to_released(model).items()}
    save_file(state, str(weights))
    model.config.save_json(directory / "config.json")
    return weights


# ---------------------------------------------------------------------- companions
def _source_of(model: LM) -> Source:
    source = getattr(model, "source", None)
    if source is None:
        raise CheckpointError("this LM was not loaded from a checkpoint: load its codec and tokenizer yourself "
                              "(Codec.from_pretrained, sentencepiece)")
    return source


def load_companion_codec(model: LM):
    from antiphon.codec import CodecConfig
    from antiphon.codec.checkpoint import load_codec

    source, cfg = _source_of(model), model.config
    weights = source.fetch(cfg.mimi_name, required=False)
    if weights is None:
        raise CheckpointError(f"{source} has no codec weights {cfg.mimi_name}; load one with Codec.from_pretrained")
    codec_config = None
    if cfg.mimi_config_name:
        codec_config = CodecConfig.from_json(source.fetch(cfg.mimi_config_name))
    needed = cfg.codec_num_codebooks
    codec = load_codec(weights, num_codebooks=1, device=model.device, config=codec_config)
    if codec.config.n_q < needed:
        raise CheckpointError(f"the codec {weights.name} has {codec.config.n_q} codebooks, the LM needs {needed}")
    codec.num_codebooks = needed
    return codec


def load_companion_tokenizer(model: LM):
    source, cfg = _source_of(model), model.config
    path = source.fetch(cfg.tokenizer_name, required=False)
    if path is None:
        raise CheckpointError(f"{source} has no text tokenizer {cfg.tokenizer_name}")
    try:
        import sentencepiece
    except ImportError:
        raise CheckpointError("the text tokenizer needs the sentencepiece package: pip install sentencepiece") from None
    try:
        tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"cannot read the text tokenizer {path}: {e}") from None
    if tokenizer.vocab_size() != cfg.text_card:
        raise CheckpointError(f"the text tokenizer {path.name} has {tokenizer.vocab_size()} pieces, the LM's "
                              f"text_card is {cfg.text_card}")
    return tokenizer
