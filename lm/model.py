"""The multistream audio language model: summed per-stream embeddings -> temporal transformer ->
text head, and per time step the depth transformer over the dep_q output codebooks (reference §2.2-2.5).

Token column per step: row 0 text, rows 1..n_q audio (the model's dep_q streams first, then the
input streams). Special ids: text_card / card = the initial token (input only), -1 = the zero token
(embeds to an exact zero vector; masked in outputs).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch
from torch import nn

from antiphon.errors import InputError
from antiphon.kernels import dispatch
from antiphon.lm.conditioners import Condition, ConditionProvider
from antiphon.lm.config import LMConfig
from antiphon.lm.layers import Embedding, Linear, make_norm
from antiphon.lm.transformer import DepthTransformer, TemporalTransformer


@dataclasses.dataclass(frozen=True)
class LMOutput:
    """Teacher-forced outputs, aligned with the input codes (no shift needed for a loss).
    Invalid positions (beyond a stream's delay at the end, or a zero-token input) are NaN in the
    logits and False in the masks."""

    text_logits: torch.Tensor  # [B, 1, T, text_card_out] float
    text_mask: torch.Tensor  # [B, 1, T] bool
    logits: torch.Tensor  # [B, dep_q, T, card] float
    mask: torch.Tensor  # [B, dep_q, T] bool


class LM(nn.Module):
    def __init__(self, config: LMConfig | None = None):
        super().__init__()
        cfg = config or LMConfig()
        self.config = cfg
        self.source = None  # where from_pretrained found it (lm.checkpoint.Source)
        self.emb = nn.ModuleList([Embedding(cfg.card + 1, cfg.dim) for _ in range(cfg.n_q)])
        self.text_emb = Embedding(cfg.text_card + 1, cfg.dim, demux=cfg.demux_second_stream)
        self.transformer = TemporalTransformer(cfg)
        self.out_norm = make_norm(cfg.norm, cfg.dim)
        self.text_linear = Linear(cfg.dim, cfg.text_out)
        self.extra_heads = nn.ModuleList([Linear(cfg.dim, cfg.extra_heads_dim) for _ in range(cfg.extra_heads_num_heads)])
        dd, low_rank = cfg.depformer_dim, cfg.depformer_low_rank_embeddings
        # Present even without a depformer (dep_q = 0) when not multi-linear, as in the released files.
        self.depformer_in = nn.ModuleList([Linear(cfg.dim, dd) for _ in range(cfg.depformer_in_count)])
        if cfg.dep_q:
            # Codebook k > 0 takes the token of codebook k - 1; the last codebook is never an input.
            self.depformer_emb = nn.ModuleList([Embedding(cfg.card + 1, dd, low_rank) for _ in range(cfg.dep_q - 1)])
            self.depformer_text_emb = Embedding(cfg.text_card + 1, dd, low_rank, demux=cfg.demux_second_stream)
            self.depformer = DepthTransformer(cfg)
            if cfg.depformer_norm is not None:
                self.depformer_norms = nn.ModuleList([make_norm(cfg.depformer_norm, dd) for _ in range(cfg.dep_q)])
            self.linears = nn.ModuleList([Linear(dd, cfg.card) for _ in range(cfg.dep_q)])
        specs, fuser = cfg.conditioning
        if specs:  # float32 whatever the model's dtype (lm.checkpoint keeps it so)
            self.condition_provider = ConditionProvider(specs, fuser, cfg.dim)
        self.eval()

    # ------------------------------------------------------------------ properties
    @property
    def text_initial_token(self) -> int:
        return self.config.text_card

    @property
    def initial_token(self) -> int:
        return self.config.card

    @property
    def device(self) -> torch.device:
        return self.text_emb.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.text_emb.weight.dtype

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, source: str | Path, device=None, dtype=None, quantize: str | None = None,
                        group_size: int = 128, kv_dtype: str | None = None) -> "LM":
        """Load from a Hugging Face repo id or a local directory (config.json + `moshi_name` weights in the
        released format; no config.json means Moshi 7B). Default dtype: bf16 on GPU, fp32 on CPU.
        Kyutai's q8 weights (`"quantize": true`) are dequantized to that dtype, and moshi-finetune's LoRA
        adapters (`"lora": true`, file `lora_name`) merged, at load: the model is a plain one.
        `quantize` ("int8" or "int4" in groups of `group_size`): then the temporal transformer's weights
        are quantized for weight-only matmuls (lm/quantize.py). `kv_dtype` ("bfloat16" or "int8", with a
        scale per key vector): how streaming stores keys and values (antiphon/kv_ring.py).
        `lm.codec` and `lm.tokenizer` load on first use from the same source."""
        from antiphon.kv_ring import KV_DTYPES
        from antiphon.lm.checkpoint import load_lm

        if kv_dtype not in KV_DTYPES:
            raise InputError(f"unknown kv_dtype {kv_dtype!r}: expected bfloat16 or int8 (or none: the model's dtype)")
        lm = load_lm(source, device=device, dtype=dtype)
        lm.transformer.kv_dtype = kv_dtype
        if quantize is not None:
            from antiphon.lm.quantize import quantize_lm

            quantize_lm(lm, quantize, group_size)
        return lm

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json and the weights in the released format; returns the weights' path."""
        from antiphon.lm.checkpoint import save_lm

        return save_lm(self, directory)

    @functools.cached_property
    def codec(self):
        """The Mimi codec of this model's repository (loaded on first use)."""
        from antiphon.lm.checkpoint import load_companion_codec

        return load_companion_codec(self)

    @functools.cached_property
    def tokenizer(self):
        """The SentencePiece text tokenizer of this model's repository (loaded on first use)."""
        from antiphon.lm.checkpoint import load_companion_tokenizer

        return load_companion_tokenizer(self)

    # ------------------------------------------------------------------ conditioning
    @property
    def is_conditioned(self) -> bool:
        return hasattr(self, "condition_provider")

    @torch.no_grad()
    def condition(self, batch_size: int | None = None, **attributes) -> Condition:
        """The condition of B rows for `forward(conditions=...)` and `generator(condition=...)`. One
        keyword per fused conditioner of the config (`condition_provider.fused`): a label (str; None
        drops it: the learnt padding, as in a null condition) or a tensor [B or 1, S, dim] (optionally
        `(tensor, mask [B, S])`), given once for all rows or as a list of B labels. Examples: Hibiki
        `lm.condition(description="very_good")`; Kyutai TTS `lm.condition(control="ok", cfg="2.0",
        speaker_wavs=(voices, mask))`. For CFG: `Condition.cat(conditioned, null)`."""
        if not self.is_conditioned:
            raise InputError("this model has no conditioners (its config.json has none)")
        return self.condition_provider(batch_size, attributes)

    # ------------------------------------------------------------------ streaming generation
    def generator(self, batch_size: int, temp: float = 0.8, temp_text: float = 0.7, top_k: int = 250,
                  top_k_text: int = 25, cfg_coef: float = 1.0, condition: Condition | torch.Tensor | None = None,
                  rng: torch.Generator | None = None, check_inputs: bool = True, audio_delay: int = 0,
                  cfg_is_no_text: bool = False):
        """A streaming generation state for `batch_size` slots (lm.generate.LMGenerator): `step(codes
        [B, n_q - dep_q, 1])` -> None or tokens [B, 1 + dep_q, 1]; `reset(mask [B])`. Temperatures <= 0
        are greedy; `rng` (a torch.Generator on the model's device) makes sampling deterministic.
        `condition` (`lm.condition(...)`, B rows) is needed by a conditioned model; cfg_coef != 1 needs
        2B rows: `Condition.cat(conditioned, null)`. A tensor [R, D] stands for summed conditions.
        `audio_delay` (steps; TTS): the model's audio streams stay the zero token that much longer.
        `cfg_is_no_text` (with cfg_coef != 1): the null rows read no text and the text is not guided."""
        from antiphon.lm.generate import LMGenerator

        return LMGenerator(self, batch_size, temp=temp, temp_text=temp_text, top_k=top_k, top_k_text=top_k_text,
                           cfg_coef=cfg_coef, condition=condition, rng=rng, check_inputs=check_inputs,
                           audio_delay=audio_delay, cfg_is_no_text=cfg_is_no_text)

    # ------------------------------------------------------------------ teacher-forced forward
    def forward(self, codes: torch.Tensor, conditions: Condition | None = None,
                inputs: torch.Tensor | None = None) -> LMOutput:
        """codes int [B, 1 + n_q, T] in natural time alignment (text row, then audio rows; -1 = zero
        token) -> LMOutput aligned with `codes`. The model applies its delays and initial tokens.
        A conditioned model needs `conditions` (`lm.condition(...)`, B rows or 1 for all).
        `inputs` (like codes; training): what the temporal transformer reads instead of `codes`, e.g.
        with text tokens dropped; the outputs stay those of `codes` (targets, masks, depformer inputs)."""
        self._check_codes(codes)
        cfg = self.config
        batch = codes.shape[0]
        conditions = self._check_condition(conditions, (batch, 1))
        initial = self._initial_column(batch, codes.device)  # [B, K, 1]
        delayed = torch.cat([initial, delay_streams(codes, cfg.delays, initial)], dim=2)  # [B, K, T + 1]
        if inputs is not None:
            if inputs.shape != codes.shape:
                raise InputError(f"inputs {tuple(inputs.shape)} must have the codes' shape {tuple(codes.shape)}")
            self._check_codes(inputs)
            read = torch.cat([initial, delay_streams(inputs, cfg.delays, initial)], dim=2)
        else:
            read = delayed
        hidden = self.forward_hidden(read[:, :, :-1], conditions)  # [B, T, D]
        text_logits = self.text_linear(hidden)[:, None]  # [B, 1, T, Nt]
        if cfg.dep_q:
            logits = self.forward_depth(delayed[:, :, 1:], hidden)
        else:
            logits = hidden.new_zeros(batch, 0, codes.shape[2], cfg.card)
        text_logits, text_mask = undelay_streams(text_logits.float(), cfg.delays[:1])
        logits, mask = undelay_streams(logits.float(), cfg.delays[1: 1 + cfg.dep_q])
        text_mask &= codes[:, :1] != Embedding.ZERO
        mask &= codes[:, 1: 1 + cfg.dep_q] != Embedding.ZERO
        return LMOutput(text_logits, text_mask, logits, mask)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, 1 + n_q, S] (already delayed) -> summed embeddings [B, S, D]. Where kernels.dispatch
        picks Triton, the audio streams are one fused lookup over their stacked tables."""
        text = self.text_emb(tokens[:, 0])
        if not self.emb:
            return text
        if dispatch.use_triton(text):
            return dispatch.embedding_sum(tokens[:, 1:], *self._stacked_audio_tables()) + text
        x = None
        for k, emb in enumerate(self.emb):
            e = emb(tokens[:, 1 + k])
            x = e if x is None else x + e
        return x + text

    def _stacked_audio_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The audio tables as one [n_q (card + 1), D] and their offsets [n_q] (kernels/embedding_sum.py),
        a copy kept while the tables are unchanged (same storage, same version)."""
        from antiphon.kernels.embedding_sum import stack_tables

        key = tuple((e.weight.data_ptr(), e.weight._version) for e in self.emb)
        if getattr(self, "_stacked", (None,))[0] != key:
            self._stacked = (key, *stack_tables([e.weight.detach() for e in self.emb]))
        return self._stacked[1:]

    def forward_hidden(self, tokens: torch.Tensor, condition: Condition | None = None, cross: list | None = None) -> torch.Tensor:
        """tokens [B, 1 + n_q, S] (delayed inputs) -> post-norm temporal output [B, S, D]. `condition`
        (B rows): its sum is added to every step's input; its cross source is attended to, unless the
        per-layer keys and values are given precomputed (`cross`, from transformer.cross_keys_values)."""
        x = self.embed(tokens)
        if condition is not None and condition.sum is not None:
            x = x + condition.sum[:, None].to(x.dtype)
        if cross is None and condition is not None and condition.cross is not None:
            cross = self.transformer.cross_keys_values(condition.cross.to(x.dtype))
        return self.out_norm(self.transformer(x, cross))

    def _check_condition(self, condition, rows: tuple[int, ...]) -> Condition | None:
        """A condition for the given row counts (the first one is the batch; the others may be broadcast)
        -> on the model's device, with `rows[0]` rows; None for an unconditioned model."""
        if not self.is_conditioned:
            if condition is not None:
                raise InputError("this model has no conditioners; pass no condition")
            return None
        if not isinstance(condition, Condition):
            raise InputError(f"this model is conditioned ({', '.join(self.condition_provider.fused)}): pass a "
                             f"Condition from lm.condition(...), got {type(condition).__name__}")
        if condition.batch_size not in rows:
            raise InputError(f"the condition has {condition.batch_size} rows, expected {' or '.join(map(str, rows))}")
        condition = condition.to(self.device)
        if condition.batch_size != rows[0]:
            def grow(t):
                return None if t is None else t.expand(rows[0], *t.shape[1:])
            condition = Condition(grow(condition.sum), grow(condition.cross))
        return condition

    def forward_extra_heads(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """hidden [B, S, D] -> one [B, S, extra_heads_dim] logit tensor per extra head."""
        return [head(hidden) for head in self.extra_heads]

    def forward_depth(self, targets: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Teacher-forced depformer. targets [B, 1 + n_q, S] (the delayed tokens of each step: the text
        token feeds codebook 0, audio token k - 1 feeds codebook k), hidden [B, S, D] -> [B, dep_q, S, card]."""
        cfg = self.config
        batch, steps = hidden.shape[:2]
        inputs = []
        for k in range(cfg.dep_q):
            projected = self.depformer_in[self._in_index(k)](hidden)
            token = self.depformer_text_emb(targets[:, 0]) if k == 0 else self.depformer_emb[k - 1](targets[:, k])
            inputs.append(projected + token)
        x = torch.stack(inputs, dim=2).flatten(0, 1)  # [B * S, dep_q, Dd]
        out = self.depformer(x)
        logits = [self.linears[k](self._depformer_norm(k, out[:, k])) for k in range(cfg.dep_q)]
        return torch.stack(logits, dim=1).unflatten(0, (batch, steps)).transpose(1, 2).contiguous()

    def _in_index(self, k: int) -> int:
        cfg = self.config
        if not cfg.depformer_multi_linear:
            return 0
        return cfg.depformer_weights_per_step_schedule[k] if cfg.depformer_weights_per_step_schedule else k

    def _depformer_norm(self, k: int, x: torch.Tensor) -> torch.Tensor:
        norms = getattr(self, "depformer_norms", None)
        return x if norms is None else norms[k](x[:, None])[:, 0]

    def _initial_column(self, batch: int, device) -> torch.Tensor:
        column = torch.full((batch, self.config.num_codebooks, 1), self.initial_token, dtype=torch.long, device=device)
        column[:, 0] = self.text_initial_token
        return column

    def _check_codes(self, codes: torch.Tensor) -> None:
        cfg = self.config
        if not isinstance(codes, torch.Tensor) or codes.dim() != 3 or codes.shape[1] != cfg.num_codebooks:
            shape = list(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise InputError(f"codes must be [B, 1 + n_q = {cfg.num_codebooks}, T], got {shape}")
        if codes.dtype.is_floating_point or codes.dtype == torch.bool or codes.is_complex():
            raise InputError(f"codes must be an integer tensor, got {codes.dtype}")
        if codes.shape[0] == 0 or codes.shape[2] == 0:
            raise InputError(f"codes must have at least one row and one step, got {list(codes.shape)}")
        for name, rows, top in (("text", codes[:, :1], self.text_emb.max_id), ("audio", codes[:, 1:], cfg.card)):
            if rows.numel() and (int(rows.min()) < -1 or int(rows.max()) > top):
                raise InputError(f"{name} codes must be in [-1, {top}] (-1: zero token), got values in "
                                 f"[{int(rows.min())}, {int(rows.max())}]")


def delay_streams(codes: torch.Tensor, delays, initial: torch.Tensor) -> torch.Tensor:
    """codes [B, K, T] -> [B, K, T] where row k is shifted right by delays[k] steps, the first steps
    filled with initial[:, k] (initial [B, K, 1])."""
    rows = []
    for k, delay in enumerate(delays):
        row = codes[:, k]
        if delay:
            row = torch.cat([initial[:, k].expand(-1, min(delay, row.shape[1])), row[:, :-delay]], dim=1)
        rows.append(row)
    return torch.stack(rows, dim=1)


def undelay_streams(values: torch.Tensor, delays) -> tuple[torch.Tensor, torch.Tensor]:
    """values [B, K, T, ...] on the delayed time axis -> (values back on the codes' time axis, mask
    [B, K, T]); the last delays[k] steps of row k have no prediction: NaN and False."""
    batch, rows, steps = values.shape[:3]
    mask = torch.ones(batch, rows, steps, dtype=torch.bool, device=values.device)
    out = values.clone()
    for k, delay in enumerate(delays):
        if delay:
            out[:, k, : max(steps - delay, 0)] = values[:, k, delay:]
            out[:, k, max(steps - delay, 0):] = float("nan")
            mask[:, k, max(steps - delay, 0):] = False
    return out, mask
