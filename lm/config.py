"""LM configuration, read from a repository's `config.json` in Kyutai's format.

The JSON holds the keyword arguments of the reference's LM (dim, n_q, dep_q, delays, depformer_*,
...) plus repository keys (moshi_name, mimi_name, tokenizer_name, model_type, lm_gen_config,
tts_config, stt_config). A key missing from the JSON takes the reference constructor's default,
which is not always Moshi 7B's value (e.g. depformer_pos_emb defaults to "sin"); a repository with no
`config.json` is Moshi 7B (`LMConfig()`, the dataclass defaults).

Keys that would change the architecture to one antiphon does not build raise a CheckpointError
naming the key; keys antiphon does not know are logged as a warning and ignored. `quantize` and the
`lora*` keys say how the weights are stored, not what the model is: they are read by WeightsFormat.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from antiphon.checkpoint_io import KyutaiJsonConfig
from antiphon.errors import CheckpointError
from antiphon.lm.conditioners import ConditionerSpec, FuserSpec, parse_conditioning

logger = logging.getLogger(__name__)

MOSHI_NAME = "model.safetensors"
MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
TOKENIZER_NAME = "tokenizer_spm_32k_3.model"
LORA_NAME = "lora.safetensors"  # the adapters file moshi-finetune writes beside its config.json

NORMS = ("rms_norm_f32", "rms_norm", "layer_norm", "layer_norm_f32")
GATINGS = ("none", "silu", "gelu", "relu", "sigmoid", "tanh", "elu", "leaky_relu", "mish", "softsign")
POSITIONAL = ("rope", "rope_concat", "none", "sin", "sin_rope")  # rope_concat: RoPE not interleaved


@dataclasses.dataclass(frozen=True)
class LMConfig(KyutaiJsonConfig):
    """Defaults: Moshi 7B (`loaders._lm_kwargs`, reference §2.1)."""

    WHAT = "LM config"  # in errors

    # temporal transformer
    dim: int = 4096
    num_heads: int = 32
    num_layers: int = 32
    hidden_scale: float = 4.125
    context: int | None = 3000  # attention window in steps (None: unlimited)
    max_period: float = 10000.0
    gating: str = "silu"
    norm: str = "rms_norm_f32"
    positional_embedding: str = "rope"
    positional_scale: float = 1.0  # for the "sin" embeddings
    kv_repeat: int = 1
    layer_scale: float | None = None
    # streams and vocabularies
    text_card: int = 32000
    text_card_out: int | None = None  # None: text_card
    existing_text_padding_id: int = 3
    existing_text_end_padding_id: int = 0
    n_q: int = 16  # audio streams in
    dep_q: int = 8  # audio streams out (depformer)
    card: int = 2048
    delays: tuple[int, ...] = (0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1)
    demux_second_stream: bool = False
    extra_heads_num_heads: int = 0
    extra_heads_dim: int = 6
    # conditioning (lm.conditioners): label tables and given tensors, summed into the input or attended to
    conditioners: dict = dataclasses.field(default_factory=dict, hash=False)
    fuser: dict = dataclasses.field(default_factory=dict, hash=False)
    cross_attention: bool = False  # a cross-attention block in every temporal layer (source: fuser "cross")
    # depth transformer
    depformer_dim: int = 1024
    depformer_dim_feedforward: int | tuple[int, ...] | None = 4224  # None: hidden_scale * depformer_dim
    depformer_num_heads: int = 16
    depformer_num_layers: int = 6
    depformer_multi_linear: bool = True
    depformer_weights_per_step: bool = True
    depformer_weights_per_step_schedule: tuple[int, ...] | None = None
    depformer_low_rank_embeddings: int | None = None
    depformer_pos_emb: str = "none"
    depformer_norm: str | None = None  # a norm per codebook before `linears` (None: none)
    depformer_gating: str = "silu"
    depformer_max_period: float = 10000.0
    depformer_kv_repeat: int = 1
    depformer_layer_scale: float | None = None
    # repository
    moshi_name: str = MOSHI_NAME
    mimi_name: str = MIMI_NAME
    mimi_config_name: str | None = None
    tokenizer_name: str = TOKENIZER_NAME
    model_type: str = "moshi"
    lm_gen_config: dict = dataclasses.field(default_factory=dict, hash=False)
    tts_config: dict = dataclasses.field(default_factory=dict, hash=False)
    stt_config: dict = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        def bad(message: str) -> CheckpointError:
            return CheckpointError(f"LM config: {message}")

        if self.dim % self.num_heads or self.num_heads % self.kv_repeat:
            raise bad(f"dim={self.dim}, num_heads={self.num_heads}, kv_repeat={self.kv_repeat} do not divide")
        if len(self.delays) != 1 + self.n_q:
            raise bad(f"delays has {len(self.delays)} entries, expected 1 + n_q = {1 + self.n_q}")
        if any(d < 0 for d in self.delays):
            raise bad(f"delays must be >= 0, got {list(self.delays)}")
        if not 0 <= self.dep_q <= self.n_q:
            raise bad(f"dep_q={self.dep_q} must be in [0, n_q={self.n_q}]")
        if self.context is not None and self.context < 1:
            raise bad(f"context must be >= 1 or null, got {self.context}")
        for key in ("norm", "depformer_norm"):
            value = getattr(self, key)
            if value is not None and value not in NORMS:
                raise bad(f"{key}={value!r} is not supported (antiphon builds {', '.join(NORMS)})")
        for key in ("gating", "depformer_gating"):
            if getattr(self, key) not in GATINGS:
                raise bad(f"{key}={getattr(self, key)!r} is not supported (antiphon builds {', '.join(GATINGS)})")
        for key in ("positional_embedding", "depformer_pos_emb"):
            if getattr(self, key) not in POSITIONAL:
                raise bad(f"{key}={getattr(self, key)!r} is not a positional embedding ({', '.join(POSITIONAL)})")
        parse_conditioning(self.conditioners, self.fuser, self.cross_attention)
        if self.cross_attention and self.kv_repeat != 1:
            raise bad(f"cross_attention with kv_repeat={self.kv_repeat} is not a reference architecture (needs 1)")
        if self.dep_q:
            if self.depformer_dim % self.depformer_num_heads or self.depformer_num_heads % self.depformer_kv_repeat:
                raise bad(f"depformer_dim={self.depformer_dim} and depformer_num_heads="
                          f"{self.depformer_num_heads} (kv_repeat {self.depformer_kv_repeat}) do not divide")
            schedule = self.depformer_weights_per_step_schedule
            if schedule is not None:
                if len(schedule) != self.dep_q or min(schedule) < 0:
                    raise bad(f"depformer_weights_per_step_schedule needs dep_q={self.dep_q} entries >= 0, "
                              f"got {list(schedule)}")
                if not self.depformer_weights_per_step:
                    raise bad("depformer_weights_per_step_schedule needs depformer_weights_per_step=true")
            ff = self.depformer_dim_feedforward
            if isinstance(ff, tuple) and len(ff) != self.depformer_weight_sets:
                raise bad(f"depformer_dim_feedforward lists {len(ff)} sizes for {self.depformer_weight_sets} weight sets")
            if self.depformer_gating == "none" and (self.depformer_weights_per_step or isinstance(ff, tuple)):
                raise bad("depformer_gating='none' with per-step weights is not a reference architecture")

    # ------------------------------------------------------------------ derived sizes
    @property
    def conditioning(self) -> tuple[tuple[ConditionerSpec, ...], FuserSpec]:
        """The conditioners and the fuser, parsed (lm.conditioners)."""
        return parse_conditioning(self.conditioners, self.fuser, self.cross_attention)

    @property
    def num_codebooks(self) -> int:
        """Rows of the token column: text + n_q audio streams."""
        return 1 + self.n_q

    @property
    def text_out(self) -> int:
        return self.text_card if self.text_card_out is None else self.text_card_out

    @property
    def dim_feedforward(self) -> int:
        return int(self.hidden_scale * self.dim)

    @property
    def depformer_weight_sets(self) -> int:
        """Distinct per-step weight sets of the depformer layers (1 when shared)."""
        if not self.depformer_weights_per_step:
            return 1
        schedule = self.depformer_weights_per_step_schedule
        return self.dep_q if schedule is None else max(schedule) + 1

    @property
    def depformer_schedule(self) -> tuple[int, ...]:
        """The weight set used at each depformer step (codebook) k < dep_q."""
        if not self.depformer_weights_per_step:
            return (0,) * self.dep_q
        return self.depformer_weights_per_step_schedule or tuple(range(self.dep_q))

    @property
    def depformer_feedforwards(self) -> tuple[int, ...]:
        """dim_feedforward of each depformer weight set."""
        ff = self.depformer_dim_feedforward
        if ff is None:
            ff = int(self.hidden_scale * self.depformer_dim)
        return tuple(ff) if isinstance(ff, tuple) else (ff,) * self.depformer_weight_sets

    @property
    def depformer_in_count(self) -> int:
        if not self.depformer_multi_linear:
            return 1
        schedule = self.depformer_weights_per_step_schedule
        return self.dep_q if schedule is None else max(schedule) + 1

    @property
    def codec_num_codebooks(self) -> int:
        """Codebooks the codec must produce and read: one stream's worth."""
        n = max(self.dep_q, self.n_q - self.dep_q)
        return n // 2 if self.tts_config.get("multistream") else n

    # ------------------------------------------------------------------ Kyutai's JSON format
    @classmethod
    def from_kyutai(cls, cfg: dict) -> "LMConfig":
        """A config.json dict -> LMConfig. Missing keys take the reference constructor's defaults."""
        cfg = dict(cfg)
        for key, supported in _FIXED.items():
            if key in cfg and cfg.pop(key) not in supported:
                raise CheckpointError(f"LM config key {key!r} is not supported (antiphon builds "
                                      f"{' or '.join(map(repr, supported))})")
        for key in _IGNORED:
            cfg.pop(key, None)
        if "demux_second_text_stream" in cfg:
            cfg["demux_second_stream"] = cfg.pop("demux_second_text_stream")
        out: dict[str, Any] = dict(_REFERENCE_DEFAULTS)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in cfg if k not in fields)
        if unknown:
            logger.warning("LM config: ignoring unknown keys %s", ", ".join(unknown))
        out.update({k: v for k, v in cfg.items() if k in fields})
        # Inherited by the depformer from the temporal transformer unless given (as in the reference).
        for key in ("gating", "max_period", "kv_repeat", "layer_scale", "num_layers"):
            if f"depformer_{key}" not in cfg and key in out:
                out[f"depformer_{key}"] = out[key]
        for key in ("num_layers", "num_heads") + (("depformer_num_heads",) if out.get("dep_q", 8) else ()):
            if key not in cfg:
                raise CheckpointError(f"LM config lacks the required key {key!r}")
        for key in ("delays", "depformer_weights_per_step_schedule", "depformer_dim_feedforward"):
            if isinstance(out.get(key), list):
                out[key] = tuple(out[key])
        for key in ("lm_gen_config", "tts_config", "stt_config", "conditioners", "fuser"):
            out[key] = dict(out.get(key) or {})
        out["cross_attention"] = bool(out.get("cross_attention"))
        if out.get("depformer_num_heads") is None:
            out["depformer_num_heads"] = 1  # unused without a depformer
        try:
            return cls(**out)
        except TypeError as e:
            raise CheckpointError(f"LM config has a value of the wrong type: {e}") from None

    def to_kyutai(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        for key in ("conditioners", "fuser"):
            if not out[key]:
                del out[key]
        out["causal"] = True
        return out


@dataclasses.dataclass(frozen=True)
class WeightsFormat(KyutaiJsonConfig):
    """How a repository's config.json says the LM weights are stored. lm.weight_formats turns both
    kinds into plain weights at load, so the loaded model is the plain architecture of its LMConfig."""

    WHAT = "LM config"  # in errors

    quantize: bool = False  # `moshi_name` holds int8 Linear weights + float32 row scales (Kyutai's q8)
    lora: bool = False  # LoRA adapters in `lora_name`, merged into the base weights (moshi-finetune)
    lora_rank: int = 128  # the reference loader's defaults
    lora_scaling: float = 2.0
    lora_name: str | None = None  # with lora: LORA_NAME when not given

    def __post_init__(self) -> None:
        for key in ("quantize", "lora"):
            if not isinstance(getattr(self, key), bool):
                raise CheckpointError(f"LM config: {key} must be true or false, got {getattr(self, key)!r}")
        if self.lora_name is not None and not self.lora:
            raise CheckpointError(f"LM config: lora_name={self.lora_name!r} needs lora: true")
        if not isinstance(self.lora_rank, int) or self.lora_rank < 1:
            raise CheckpointError(f"LM config: lora_rank must be a positive integer, got {self.lora_rank!r}")
        if not isinstance(self.lora_scaling, (int, float)):
            raise CheckpointError(f"LM config: lora_scaling must be a number, got {self.lora_scaling!r}")

    @classmethod
    def from_kyutai(cls, cfg: dict) -> "WeightsFormat":
        out = {f.name: cfg[f.name] for f in dataclasses.fields(cls) if cfg.get(f.name) not in (None, "")}
        if out.get("lora") is True:
            out.setdefault("lora_name", LORA_NAME)
        return cls(**out)


# The reference LM constructor's defaults, for keys a config.json leaves out.
_REFERENCE_DEFAULTS: dict[str, Any] = {
    "delays": (0,), "n_q": 8, "dep_q": 8, "card": 1024, "text_card": 32000, "dim": 128, "num_heads": 8,
    "hidden_scale": 4, "norm": "layer_norm", "depformer_dim": 256, "depformer_dim_feedforward": None,
    "depformer_multi_linear": False, "depformer_weights_per_step": False,
    "depformer_weights_per_step_schedule": None, "depformer_low_rank_embeddings": None,
    "depformer_pos_emb": "sin", "depformer_norm": None, "existing_text_padding_id": 3,
    "existing_text_end_padding_id": 0, "extra_heads_num_heads": 0, "extra_heads_dim": 6, "context": None,
    "positional_embedding": "sin", "max_period": 10000.0, "positional_scale": 1.0, "gating": "none",
    "layer_scale": None, "kv_repeat": 1, "text_card_out": None, "demux_second_stream": False,
    "conditioners": {}, "fuser": {}, "cross_attention": False,
}
# Keys whose only supported values are listed.
_FIXED: dict[str, tuple] = {"causal": (True,), "bias_proj": (False,), "norm_emb": (False,),
                            "skip_self_attn": (False,), "depformer_skip_self_attn": (False,)}
# Training-only or overridden keys of the format, and those of WeightsFormat (how the weights are stored).
_IGNORED = ("depformer_context", "depformer_causal", "gradient_checkpointing", "betas", "model_id",
            "quantize", "lora", "lora_rank", "lora_scaling", "lora_name")
