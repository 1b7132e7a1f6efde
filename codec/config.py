"""Codec configuration, read from and written to Kyutai's `mimi_config` JSON format.

The JSON has top-level `sample_rate`, `channels`, `frame_rate` and three sections, `seanet`,
`transformer` and `quantizer`, holding the keyword arguments of the reference's modules. Keys that
would change the architecture to one antiphon does not build are rejected; keys that only restate
what antiphon does (causal, conv_layout, ...) are checked against the one supported value.
"""

from __future__ import annotations

import dataclasses
import math

from antiphon.checkpoint_io import KyutaiJsonConfig
from antiphon.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class CodecConfig(KyutaiJsonConfig):
    WHAT = "codec config"  # in errors

    sample_rate: int = 24000
    channels: int = 1
    frame_rate: float = 12.5
    # SEANet
    dimension: int = 512  # latent channels
    n_filters: int = 64
    ratios: tuple[int, ...] = (8, 6, 5, 4)  # decoder order; the encoder applies them reversed
    kernel_size: int = 7
    last_kernel_size: int = 3
    residual_kernel_size: int = 3
    n_residual_layers: int = 1
    dilation_base: int = 2
    compress: int = 2
    # encoder / decoder transformers (25 Hz)
    num_heads: int = 8
    num_layers: int = 8
    dim_feedforward: int = 2048
    context: int = 250
    max_period: float = 10000.0
    layer_scale: float | None = 0.01
    # split residual vector quantizer
    codebook_dim: int = 256
    codebook_size: int = 2048
    n_q: int = 32
    n_q_semantic: int = 1

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)

    @property
    def encoder_frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def resample_stride(self) -> int:
        stride = self.encoder_frame_rate / self.frame_rate
        return int(round(stride))

    @property
    def frame_size(self) -> int:
        return self.hop_length * self.resample_stride

    def __post_init__(self) -> None:
        stride = self.encoder_frame_rate / self.frame_rate
        if abs(stride - round(stride)) > 1e-6 or stride < 1:
            raise CheckpointError(
                f"frame_rate {self.frame_rate} must divide the SEANet rate {self.encoder_frame_rate}"
            )
        if self.channels != 1:
            raise CheckpointError(f"only mono codecs are supported, config has channels={self.channels}")
        if self.dimension % self.num_heads:
            raise CheckpointError(f"dimension {self.dimension} is not a multiple of num_heads {self.num_heads}")
        if not 1 <= self.n_q_semantic < self.n_q:
            raise CheckpointError(f"n_q_semantic={self.n_q_semantic} must be in [1, n_q={self.n_q})")

    # ------------------------------------------------------------------ Kyutai's JSON format
    @classmethod
    def from_kyutai(cls, cfg: dict) -> "CodecConfig":
        cfg = dict(cfg)
        try:
            seanet = dict(cfg.pop("seanet"))
            transformer = dict(cfg.pop("transformer"))
            quantizer = dict(cfg.pop("quantizer"))
        except KeyError as e:
            raise CheckpointError(f"codec config lacks the {e.args[0]!r} section") from None
        out: dict = {}
        _take(out, cfg, "top level", {"sample_rate": "sample_rate", "channels": "channels",
                                      "frame_rate": "frame_rate"}, {})
        _take(out, seanet, "seanet", {
            "dimension": "dimension", "n_filters": "n_filters", "ratios": "ratios",
            "kernel_size": "kernel_size", "last_kernel_size": "last_kernel_size",
            "residual_kernel_size": "residual_kernel_size", "n_residual_layers": "n_residual_layers",
            "dilation_base": "dilation_base", "compress": "compress", "channels": None,
        }, {"causal": True, "activation": "ELU", "norm": "none", "pad_mode": "constant",
            "true_skip": True, "disable_norm_outer_blocks": 0, "lstm": 0})
        _take(out, transformer, "transformer", {
            "num_heads": "num_heads", "num_layers": "num_layers", "dim_feedforward": "dim_feedforward",
            "context": "context", "max_period": "max_period", "layer_scale": "layer_scale",
            "d_model": None, "input_dimension": None, "output_dimensions": None,
        }, {"causal": True, "conv_layout": True, "gating": "none", "norm": "layer_norm",
            "positional_embedding": "rope", "bias_ff": False, "bias_attn": False, "kv_repeat": 1})
        _take(out, quantizer, "quantizer", {
            "dimension": "codebook_dim", "bins": "codebook_size", "n_q": "n_q",
            "input_dimension": None, "output_dimension": None,
        }, {"no_quantization_rate": 0.0, "q_dropout": False})
        if "ratios" in out:
            out["ratios"] = tuple(out["ratios"])
        dim = out.get("dimension", cls.dimension)
        for section, key, value in (("transformer", "d_model", transformer.get("d_model")),
                                    ("quantizer", "input_dimension", quantizer.get("input_dimension"))):
            if value is not None and value != dim:
                raise CheckpointError(f"codec config {section}.{key}={value} differs from seanet.dimension={dim}")
        return cls(**out)

    def to_kyutai(self) -> dict:
        return {
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "frame_rate": self.frame_rate,
            "seanet": {
                "channels": self.channels, "dimension": self.dimension, "causal": True,
                "n_filters": self.n_filters, "n_residual_layers": self.n_residual_layers,
                "activation": "ELU", "compress": self.compress, "dilation_base": self.dilation_base,
                "disable_norm_outer_blocks": 0, "kernel_size": self.kernel_size,
                "residual_kernel_size": self.residual_kernel_size,
                "last_kernel_size": self.last_kernel_size, "norm": "none", "pad_mode": "constant",
                "ratios": list(self.ratios), "true_skip": True,
            },
            "quantizer": {
                "dimension": self.codebook_dim, "n_q": self.n_q, "bins": self.codebook_size,
                "input_dimension": self.dimension, "output_dimension": self.dimension,
            },
            "transformer": {
                "d_model": self.dimension, "num_heads": self.num_heads, "num_layers": self.num_layers,
                "causal": True, "layer_scale": self.layer_scale, "context": self.context,
                "conv_layout": True, "max_period": self.max_period, "gating": "none",
                "norm": "layer_norm", "positional_embedding": "rope",
                "dim_feedforward": self.dim_feedforward, "input_dimension": self.dimension,
                "output_dimensions": [self.dimension],
            },
        }



def _take(out: dict, section: dict, where: str, mapping: dict, fixed: dict) -> None:
    """Move the keys of `section` into `out` under their field names (None: checked elsewhere);
    keys of `fixed` must hold the one supported value; any other key is an error."""
    for key, value in section.items():
        if key in mapping:
            if mapping[key] is not None:
                out[mapping[key]] = value
        elif key in fixed:
            if value != fixed[key]:
                raise CheckpointError(
                    f"codec config {where}.{key}={value!r} is not supported (antiphon builds {fixed[key]!r})"
                )
        else:
            raise CheckpointError(f"codec config {where} has an unknown key {key!r}")
