"""Conditioning: the conditioners of Hibiki (the "description" quality label) and Kyutai TTS (the
"cfg" and "control" labels, the "speaker_wavs" voice embeddings), and the fuser that hands their
outputs to the LM (reference: kyutai-stt-tts-hibiki-unmute §2.3, §3.1; kyutai-moshi-mimi §2.7, §2.9).

A config.json describes them with two keys (the reference's format):
- `conditioners`: name -> {"type": "lut", "lut": {n_bins, dim, tokenizer: "noop", possible_values}}
  (a label looked up in a table) or {"type": "tensor", "tensor": {dim}} (a given tensor [S, dim]);
- `fuser`: {"sum": [names], "cross": [names], "prepend": [], "cross_attention_pos_emb": bool,
  "cross_attention_pos_emb_scale": float}. "sum" conditions are added to the input embedding of every
  step; "cross" conditions, concatenated along their positions (plus sinusoidal position embeddings when
  asked), are the source of the temporal layers' cross-attention (config key `cross_attention`).

Every conditioner projects its value to the model's dim (`output_proj`, no bias) and puts
`learnt_padding` [1, 1, D] where the value is missing: a label given as None (dropped, as for a null
condition of classifier-free guidance) or a masked tensor position. Released names:
`condition_provider.conditioners.<name>.{embed.weight, output_proj.weight, learnt_padding}`; the fuser
has no weights. Conditioners compute in float32 whatever the model's dtype, as the reference does.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import torch
from torch import nn

from antiphon.errors import CheckpointError, InputError
from antiphon.lm.layers import sin_embedding

_BASE_KEYS = {"learn_padding", "force_linear", "output_bias", "pad_empty"}
_KIND_KEYS = {"lut": {"n_bins", "dim", "tokenizer", "possible_values", "init_scale"}, "tensor": {"dim"}}
_FUSER_KEYS = {"sum", "cross", "prepend", "cross_attention_pos_emb", "cross_attention_pos_emb_scale"}


# ---------------------------------------------------------------------------------------- specs
@dataclasses.dataclass(frozen=True)
class ConditionerSpec:
    name: str
    kind: str  # "lut" or "tensor"
    dim: int  # the table's width (lut) or the given tensor's (tensor)
    n_bins: int = 0  # lut: table rows besides the padding row
    possible_values: tuple[str, ...] | None = None  # lut: label -> row; None: sha256 hash of the label
    learn_padding: bool = True
    force_linear: bool = True


@dataclasses.dataclass(frozen=True)
class FuserSpec:
    sum: tuple[str, ...] = ()
    cross: tuple[str, ...] = ()
    cross_pos_emb: bool = False
    cross_pos_emb_scale: float = 1.0


def parse_conditioning(conditioners: dict, fuser: dict, cross_attention: bool) -> tuple[tuple[ConditionerSpec, ...], FuserSpec]:
    """The config's `conditioners`, `fuser` and `cross_attention` -> specs; CheckpointError naming what
    antiphon does not build."""
    def bad(message: str) -> CheckpointError:
        return CheckpointError(f"LM config: {message}")

    if bool(conditioners) != bool(fuser):
        raise bad("conditioners and fuser come together (one is given without the other)")
    specs = tuple(_parse_conditioner(name, raw, bad) for name, raw in (conditioners or {}).items())
    if not fuser:
        if cross_attention:
            raise bad("cross_attention needs conditioners fused by 'cross'")
        return specs, FuserSpec()
    if not isinstance(fuser, dict) or set(fuser) - _FUSER_KEYS:
        extra = sorted(set(fuser) - _FUSER_KEYS) if isinstance(fuser, dict) else fuser
        raise bad(f"fuser keys {extra} are not supported (antiphon builds {', '.join(sorted(_FUSER_KEYS))})")
    if fuser.get("prepend"):
        raise bad(f"fuser 'prepend' ({fuser['prepend']!r}) is not supported (only 'sum' and 'cross')")
    kinds = {s.name: s.kind for s in specs}
    spec = FuserSpec(sum=tuple(fuser.get("sum") or ()), cross=tuple(fuser.get("cross") or ()),
                     cross_pos_emb=bool(fuser.get("cross_attention_pos_emb", False)),
                     cross_pos_emb_scale=float(fuser.get("cross_attention_pos_emb_scale", 1.0)))
    for name in spec.sum + spec.cross:
        if name not in kinds:
            raise bad(f"fuser names the conditioner {name!r}, which `conditioners` does not define")
    tensors = [name for name in spec.sum if kinds[name] == "tensor"]
    if tensors:
        raise bad(f"tensor conditioners {tensors} cannot be fused by 'sum' (one value per sequence is needed)")
    if bool(spec.cross) != bool(cross_attention):
        raise bad(f"fuser 'cross' = {list(spec.cross)} and cross_attention = {cross_attention!r} disagree")
    return specs, spec


def _parse_conditioner(name: str, raw: Any, bad) -> ConditionerSpec:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in _KIND_KEYS:
        raise bad(f"conditioner {name!r} has type {kind!r} (antiphon builds 'lut' and 'tensor')")
    kwargs = dict(raw.get(kind) or {})
    extra = sorted(set(kwargs) - _KIND_KEYS[kind] - _BASE_KEYS)
    if extra:
        raise bad(f"conditioner {name!r} ({kind}) has keys {extra} that antiphon does not build")
    if kwargs.get("output_bias"):
        raise bad(f"conditioner {name!r}: output_bias is not supported (the reference never uses it)")
    if not isinstance(kwargs.get("dim"), int) or kwargs["dim"] < 1:
        raise bad(f"conditioner {name!r} needs an integer dim >= 1, got {kwargs.get('dim')!r}")
    spec = ConditionerSpec(name=name, kind=kind, dim=kwargs["dim"], learn_padding=bool(kwargs.get("learn_padding", True)),
                           force_linear=bool(kwargs.get("force_linear", True)))
    if kind == "tensor":
        return spec
    if kwargs.get("tokenizer") != "noop":
        raise bad(f"conditioner {name!r}: tokenizer {kwargs.get('tokenizer')!r} is not supported (only 'noop')")
    n_bins, values = kwargs.get("n_bins"), kwargs.get("possible_values")
    if not isinstance(n_bins, int) or n_bins < 1:
        raise bad(f"conditioner {name!r} needs an integer n_bins >= 1, got {n_bins!r}")
    if values is not None and (len(values) > n_bins or not all(isinstance(v, str) for v in values)):
        raise bad(f"conditioner {name!r}: possible_values must be at most n_bins = {n_bins} strings, got {values!r}")
    return dataclasses.replace(spec, n_bins=n_bins, possible_values=None if values is None else tuple(values))


# ---------------------------------------------------------------------------------------- modules
class Conditioner(nn.Module):
    """Base: `output_proj` [D, dim] (absent when not force_linear and dim == D), `learnt_padding` [1, 1, D]."""

    def __init__(self, spec: ConditionerSpec, output_dim: int):
        super().__init__()
        self.spec = spec
        if spec.force_linear or spec.dim != output_dim:
            self.output_proj = nn.Linear(spec.dim, output_dim, bias=False)
        if spec.learn_padding:
            self.learnt_padding = nn.Parameter(torch.zeros(1, 1, output_dim))

    def finish(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """values [B, S, dim], mask bool [B, S] -> [B, S, D] float32: projected where the mask holds,
        the learnt padding (or zeros) elsewhere."""
        proj = getattr(self, "output_proj", None)
        y = values.float() if proj is None else nn.functional.linear(values.float(), proj.weight.float())
        padding = getattr(self, "learnt_padding", None)
        padding = y.new_zeros(()) if padding is None else padding.float()
        return torch.where(mask[..., None], y, padding)


class LUTConditioner(Conditioner):
    """A label per row -> `embed.weight` [n_bins + 1, dim] (the last row: padding, never read)."""

    def __init__(self, spec: ConditionerSpec, output_dim: int):
        super().__init__(spec, output_dim)
        self.embed = nn.Embedding(spec.n_bins + 1, spec.dim)

    def index(self, label: str | None) -> int | None:
        """A label -> its table row (None: dropped). Host-side: conditions are built once per session."""
        spec = self.spec
        if label is None:
            return None
        if not isinstance(label, str):
            raise InputError(f"condition {spec.name!r} takes a string label or None, got {label!r}")
        if spec.possible_values is None:
            return int(hashlib.sha256(label.encode("utf-8")).hexdigest(), 16) % spec.n_bins
        if label not in spec.possible_values:
            raise InputError(f"condition {spec.name!r} must be one of {list(spec.possible_values)} (or None), got {label!r}")
        return spec.possible_values.index(label)

    def forward(self, labels: list[str | None]) -> torch.Tensor:
        """B labels (None: dropped) -> [B, 1, D] float32."""
        rows = [self.index(label) for label in labels]
        device = self.embed.weight.device
        mask = torch.tensor([r is not None for r in rows], device=device)[:, None]
        ids = torch.tensor([self.spec.n_bins if r is None else r for r in rows], device=device)[:, None]
        return self.finish(nn.functional.embedding(ids, self.embed.weight.float()), mask)


class TensorConditioner(Conditioner):
    """A given tensor [B, S, dim] with its mask [B, S] (False: a missing position)."""

    def forward(self, value) -> torch.Tensor:
        """value: a tensor [B, S, dim], or (tensor, mask bool [B, S]) -> [B, S, D] float32."""
        name, dim = self.spec.name, self.spec.dim
        tensor, mask = value if isinstance(value, tuple) else (value, None)
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 3 or tensor.shape[2] != dim or tensor.shape[1] < 1:
            got = list(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise InputError(f"condition {name!r} takes a tensor [B, S >= 1, {dim}] (or with a mask [B, S]), got {got}")
        if mask is None:
            mask = torch.ones(tensor.shape[:2], dtype=torch.bool)
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != tensor.shape[:2]:
            got = f"{mask.dtype} {list(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise InputError(f"the mask of condition {name!r} must be bool {list(tensor.shape[:2])}, got {got}")
        device = self.learnt_padding.device if self.spec.learn_padding else self.output_proj.weight.device
        return self.finish(tensor.to(device), mask.to(device))


@dataclasses.dataclass(frozen=True)
class Condition:
    """What the fuser hands the LM for B rows. For classifier-free guidance, `Condition.cat(conditioned,
    null)` gives the 2B rows a generator with cfg_coef != 1 takes."""

    sum: torch.Tensor | None  # [B, D] float32: added to the input embedding of every step
    cross: torch.Tensor | None  # [B, S, D] float32: the cross-attention source

    @property
    def batch_size(self) -> int:
        return (self.sum if self.sum is not None else self.cross).shape[0]

    @staticmethod
    def cat(*conditions: "Condition") -> "Condition":
        """Rows of each condition in turn; they must have the same parts (and cross positions S)."""
        def join(parts):
            if any(p is None for p in parts):
                if not all(p is None for p in parts):
                    raise InputError("conditions to join must all have the same parts (sum, cross)")
                return None
            if len({p.shape[1:] for p in parts}) > 1:
                raise InputError(f"conditions to join differ in shape: {[list(p.shape) for p in parts]}")
            return torch.cat(parts)
        return Condition(join([c.sum for c in conditions]), join([c.cross for c in conditions]))

    def to(self, device) -> "Condition":
        return Condition(None if self.sum is None else self.sum.to(device),
                         None if self.cross is None else self.cross.to(device))


class ConditionProvider(nn.Module):
    """`conditioners.<name>`: one module per conditioner of the config; `forward(attributes)` fuses them."""

    def __init__(self, specs: tuple[ConditionerSpec, ...], fuser: FuserSpec, output_dim: int):
        super().__init__()
        kinds = {"lut": LUTConditioner, "tensor": TensorConditioner}
        self.conditioners = nn.ModuleDict({s.name: kinds[s.kind](s, output_dim) for s in specs})
        self.fuser = fuser

    @property
    def fused(self) -> tuple[str, ...]:
        return self.fuser.sum + tuple(n for n in self.fuser.cross if n not in self.fuser.sum)

    def forward(self, batch_size: int | None, attributes: dict[str, Any]) -> Condition:
        """attributes: every fused conditioner's value (labels: str or None; tensors: see
        TensorConditioner), a list of B values or one value for all rows -> Condition of B rows."""
        missing = [n for n in self.fused if n not in attributes]
        unknown = sorted(set(attributes) - set(self.conditioners))
        if missing or unknown:
            raise InputError(f"conditions needed: {', '.join(self.fused)} (None drops a label); "
                             + (f"missing {missing}" if missing else f"unknown {unknown}"))
        batch = self._batch_size(batch_size, attributes)
        out = {}
        for name in self.fused:
            module, value = self.conditioners[name], attributes[name]
            if isinstance(module, LUTConditioner):
                labels = value if isinstance(value, (list, tuple)) else [value] * batch
                out[name] = module(list(labels))
            else:
                y = module(value)
                out[name] = y.expand(batch, -1, -1) if y.shape[0] == 1 else y
                if out[name].shape[0] != batch:
                    raise InputError(f"condition {name!r} has {y.shape[0]} rows, expected {batch}")
        total = None
        for name in self.fuser.sum:
            total = out[name][:, 0] if total is None else total + out[name][:, 0]
        cross = torch.cat([out[n] for n in self.fuser.cross], dim=1) if self.fuser.cross else None
        if cross is not None and self.fuser.cross_pos_emb:
            positions = torch.arange(cross.shape[1], device=cross.device)[None]
            cross = cross + self.fuser.cross_pos_emb_scale * sin_embedding(positions, cross.shape[2], 10000.0)
        return Condition(total, cross)

    def _batch_size(self, batch_size: int | None, attributes: dict[str, Any]) -> int:
        sizes = set()
        for name in self.fused:
            value, lut = attributes[name], isinstance(self.conditioners[name], LUTConditioner)
            if lut and isinstance(value, (list, tuple)):
                sizes.add(len(value))
            elif not lut:
                tensor = value[0] if isinstance(value, tuple) else value
                if isinstance(tensor, torch.Tensor) and tensor.dim() == 3 and tensor.shape[0] != 1:
                    sizes.add(tensor.shape[0])
        if batch_size is not None:
            sizes.add(batch_size)
        if len(sizes) > 1 or 0 in sizes:
            raise InputError(f"conditions disagree on the batch size: {sorted(sizes)}")
        return sizes.pop() if sizes else 1
