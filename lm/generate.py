"""Streaming generation with the multistream LM: one 80 ms step for B slots (reference §3.1).

Per slot: a token cache [K = 1 + n_q, max_delay + 2] (a ring over time, -2 = not generated yet) and an
offset (steps done). One step, for every slot at its own offset:

1. the input codes of this frame go to the input rows at column (offset + delay_k) mod C;
2. the model's input column is column offset mod C, with the initial token (text_card, card) wherever
   offset <= delay_k (so the first input frame is never seen);
3. temporal transformer (its own ring KV cache of `context` steps per slot) -> text logits -> text token;
4. the depformer, codebook by codebook: its first input is the text token just sampled, then each
   audio token just sampled (a fresh KV cache of dep_q positions every step);
5. offset += 1; text and audio tokens go to column offset mod C;
6. out: row k = column (offset - max_delay + delay_k) mod C: for every stream the frame
   offset - 1 - max_delay. Slots with offset <= max_delay have nothing yet: -2 rows.

Nothing in `step` reads a value on the host (shapes are fixed, sampling is an exponential race), except
the optional range check of the input codes. `reset(mask)` restarts chosen slots as fresh ones and leaves
the other slots bit-identical.

Conditioning (lm.conditioners): a conditioned model takes `condition` (`lm.condition(...)`, B rows): its
sum is added to every step's input, its cross source is projected to the cross-attention keys and values
of every layer once, here. CFG (cfg_coef != 1) doubles the rows: rows 0..B-1 take the conditioned rows
of `condition`, rows B..2B-1 the null ones (`Condition.cat(conditioned, null)`); text and depformer
logits are mixed as null + (cond - null) * coef. A plain tensor [R, D] stands for summed conditions.
With `cfg_is_no_text` (TTS models trained without CFG distillation) the null rows also read no text: their
text input is the zero token past the initial one, and the text token is sampled from the conditioned
rows alone (guidance on the audio only); an unconditioned model then needs no condition.

TTS hooks (Kyutai TTS, lm.tts / lm.tasks.Speaker), all without a host read: `step(text=...)` replaces the
sampled text token per slot before the depformer and the token cache see it (the padding state machine's
decision, made on the host between steps; -1 keeps the sampled token); `step(pad_bonus=...)` is added to
the PAD logit after CFG, before sampling; `audio_delay` (steps) forces the model's audio stream k to the
zero token (-1) while a slot's offset < delays[k] + audio_delay. `last_text` [B] holds the text tokens
sampled by the last step, before any replacement (the state machine reads it between steps).

Per slot, for an engine that steps B slots together: `step(active=[B])` advances only the active slots
and leaves the others' state as it was (a paused client, a TTS slot waiting for words); `set_sampling`
gives chosen slots their own temperatures and top-k; `set_condition_rows` gives chosen slots another
condition (a TTS voice), before they are reset.
"""

from __future__ import annotations

import contextlib

import torch

from antiphon.errors import InputError
from antiphon.lm.conditioners import Condition
from antiphon.lm.layers import Embedding
from antiphon.lm.sampling import cfg_mix, sample
from antiphon.stateful import advancing_only, stateful_modules

UNGENERATED = -2
SAMPLING = ("temp", "temp_text", "top_k", "top_k_text")


class LMGenerator:
    """Generation state for `batch_size` slots of one LM; see the module docstring. Build with `lm.generator`."""

    def __init__(self, lm, batch_size: int, temp: float = 0.8, temp_text: float = 0.7, top_k: int = 250,
                 top_k_text: int = 25, cfg_coef: float = 1.0, condition: Condition | torch.Tensor | None = None,
                 rng: torch.Generator | None = None, check_inputs: bool = True, audio_delay: int = 0,
                 cfg_is_no_text: bool = False):
        cfg = lm.config
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.lm, self.batch_size = lm, batch_size
        # sampling: a number when all slots share it (the fast path), else a tensor [B] (set_sampling)
        self.temp, self.temp_text, self.top_k, self.top_k_text = temp, temp_text, top_k, top_k_text
        self.default_sampling = {name: getattr(self, name) for name in SAMPLING}  # as constructed
        self._slot_sampling = {name: [value] * batch_size for name, value in self.default_sampling.items()}  # host
        self.cfg_coef, self.rng, self.check_inputs = float(cfg_coef), rng, check_inputs
        self.rows = 2 * batch_size if self.cfg else batch_size
        self.cfg_is_no_text = self.cfg and bool(cfg_is_no_text)
        self.condition = self._check_condition(condition)
        self.dep_q, self.n_in = cfg.dep_q, cfg.n_q - cfg.dep_q
        self.max_delay = max(cfg.delays)
        if not isinstance(audio_delay, int) or audio_delay < 0:
            raise InputError(f"audio_delay must be an int >= 0 (steps), got {audio_delay!r}")
        device = lm.device
        self.delays = torch.tensor(cfg.delays, device=device, dtype=torch.long)  # [K]
        self.audio_until = self.delays[1: 1 + self.dep_q] + audio_delay  # [dep_q]: zero audio before these offsets
        self.audio_delay = audio_delay
        self.initial = torch.tensor([lm.text_initial_token] + [lm.initial_token] * cfg.n_q, device=device)[None, :, None]
        self.tokens = torch.full((batch_size, cfg.num_codebooks, self.max_delay + 2), UNGENERATED,
                                 device=device, dtype=torch.long)  # [B, K, C]
        self.offsets = torch.zeros(batch_size, device=device, dtype=torch.long)  # [B]
        self.steps = 0  # host count of steps since all slots were last fresh (only decides None)
        with torch.no_grad():
            cross = None if self.condition is None else self.condition.cross
            self.cross = None if cross is None else lm.transformer.cross_keys_values(cross.to(lm.dtype))
            self.states = {m: m.init_state(self.rows) for m in stateful_modules(lm)}
            self.depth_cache = lm.depformer.init_cache(self.rows) if self.dep_q else None
        self.last_extra_heads: torch.Tensor | None = None  # [B, heads, dim] softmax probabilities
        self.last_text = torch.full((batch_size,), UNGENERATED, device=device, dtype=torch.long)  # [B] as sampled

    @property
    def cfg(self) -> bool:
        return self.cfg_coef != 1.0

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def step(self, codes: torch.Tensor, text: torch.Tensor | None = None,
             pad_bonus: torch.Tensor | float | None = None, active: torch.Tensor | None = None) -> torch.Tensor | None:
        """codes int [B, n_q - dep_q, 1]: this frame of the input streams (audio codes in [0, card),
        card = the initial / end-of-input token, -1 = the zero token) -> None while no slot has output
        yet (the first max_delay + 1 steps), else tokens [B, 1 + dep_q, 1]: text, then the dep_q audio
        codes, all of one frame (-2 rows for slots still within their first max_delay + 1 steps).
        `last_extra_heads` then holds this step's extra-head probabilities [B, heads, dim].

        text (optional) int [B] or [B, 2]: the text token each slot takes instead of the sampled one, -1
        keeping the sampled one; with two columns, column 1 applies where the sampled token is the new-word
        id (existing_text_end_padding_id) and column 0 elsewhere. pad_bonus (optional) float [B] or a
        number: added to the PAD logit (existing_text_padding_id) before sampling.

        active (optional) bool [B]: the slots this step advances (None: all). A paused slot's state (token
        cache, offset, attention ring: see antiphon/kv_ring.py for how long its history stays in view) is
        left as it was, its codes are ignored (but range-checked), its output row and `last_text` are -2 and its extra-head
        row is meaningless; `None` still comes from the count of steps, paused or not."""
        self._check_codes(codes)
        forced = self._check_text(text)
        active = self._check_active(active)
        column = self._input_column(codes.to(self.tokens.device), active)  # [B, K, 1]
        rows = column.repeat(2, 1, 1) if self.cfg else column
        if self.cfg_is_no_text:  # the null rows read the zero token as text, past the initial one
            null_text = rows[self.batch_size:, 0]  # [B, 1]
            null_text.masked_fill_(self.offsets[:, None] > self.delays[0], Embedding.ZERO)
        with self._streaming(active):
            hidden = self.lm.forward_hidden(rows, self.condition, self.cross)  # [R, 1, D]
        text_logits = self.lm.text_linear(hidden[:, 0]).float()  # [R, N]
        logits = text_logits[: self.batch_size] if self.cfg_is_no_text else self._mix(text_logits)
        if pad_bonus is not None:
            logits = self._add_pad_bonus(logits, pad_bonus)
        sampled = sample(logits, self.temp_text, self.top_k_text, self.rng)
        self.last_text = sampled if active is None else sampled.masked_fill(~active, UNGENERATED)
        text = sampled if forced is None else self._replace_text(sampled, forced)
        audio = self._depformer(text, hidden)
        if self.audio_delay:  # the zero token until each stream's (delayed) start
            audio = [torch.where(self.offsets < self.audio_until[k], Embedding.ZERO, a) for k, a in enumerate(audio)]
        new = torch.stack([text] + audio, dim=1)  # [B, 1 + dep_q]
        if self.lm.extra_heads:
            heads = torch.stack(self.lm.forward_extra_heads(hidden[: self.batch_size, 0]), dim=1)
            self.last_extra_heads = torch.softmax(heads.float(), dim=-1)
        return self._write_and_read(new, active)

    @torch.no_grad()
    def reset(self, mask: torch.Tensor) -> None:
        """mask bool [B]: restart those slots as fresh ones (the others stay bit-identical)."""
        mask = self._check_mask(mask, "reset mask")
        rows = mask.repeat(2) if self.cfg else mask
        for module, state in self.states.items():
            module.reset_state(state, rows)
        self.tokens.masked_fill_(mask[:, None, None], UNGENERATED)
        self.offsets.masked_fill_(mask, 0)
        if bool(mask.all()):  # outside the step: one host read
            self.steps = 0

    def set_sampling(self, mask: torch.Tensor, temp: float | None = None, temp_text: float | None = None,
                     top_k: int | None = None, top_k_text: int | None = None) -> None:
        """Set the sampling of the slots where mask [B] (bool) is true; None leaves a value as it is. The
        values stay across `reset` (a session sets them when it joins). While all slots share a stream's
        temperature and top-k, the step takes them as numbers (the fast path, as built); otherwise as
        tensors [B], sampled row by row. One host read of the mask, none in the step."""
        self._check_mask(mask, "set_sampling mask")
        given = {"temp": temp, "temp_text": temp_text, "top_k": top_k, "top_k_text": top_k_text}
        for name, value in given.items():
            if value is not None:
                _check_sampling_value(name, value)
        chosen = mask.tolist()
        for name, value in given.items():
            if value is not None:
                per_slot = self._slot_sampling[name]
                per_slot[:] = [value if c else old for c, old in zip(chosen, per_slot)]
        for pair in (("temp", "top_k"), ("temp_text", "top_k_text")):
            self._set_sampling_pair(*pair)

    def _set_sampling_pair(self, temp: str, top_k: str) -> None:
        """The temperature and top-k of one stream, from their per-slot values: numbers if all slots share
        both, else both tensors [B] (so that a step builds no tensor from a number)."""
        temps, top_ks = self._slot_sampling[temp], self._slot_sampling[top_k]
        if len(set(temps)) == 1 and len(set(top_ks)) == 1:
            setattr(self, temp, temps[0])
            setattr(self, top_k, top_ks[0])
        else:
            setattr(self, temp, torch.tensor(temps, device=self.tokens.device, dtype=torch.float32))
            setattr(self, top_k, torch.tensor(top_ks, device=self.tokens.device, dtype=torch.long))

    @torch.no_grad()
    def set_condition_rows(self, mask: torch.Tensor, condition: Condition | torch.Tensor) -> None:
        """Give the slots where mask [B] (bool) is true their rows of `condition` (as the constructor takes
        it: B rows, or with CFG 2B = Condition.cat(conditioned, null), whose null rows follow their slot;
        the same cross-attention length S as now) and rebuild their cross-attention keys and values. The
        other slots stay bit-identical. Reset these slots before they go on: their state was made under
        the old condition."""
        mask = self._check_mask(mask, "set_condition_rows mask")
        if self.condition is None:
            raise InputError("this generator was built without a condition: there are no rows to change")
        new = self._check_condition(condition)
        rows = mask.repeat(2) if self.cfg else mask  # [R]
        self.condition = Condition(_take_rows(rows, new.sum, self.condition.sum, "sum"),
                                   _take_rows(rows, new.cross, self.condition.cross, "cross"))
        if self.cross is not None:
            fresh = self.lm.transformer.cross_keys_values(new.cross.to(self.lm.dtype))
            self.cross = [tuple(_take_rows(rows, n, o, "cross") for n, o in zip(new_kv, old_kv))
                          for new_kv, old_kv in zip(fresh, self.cross)]

    # ------------------------------------------------------------------ the step's parts
    def _input_column(self, codes: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
        """Write this frame's input codes into the cache (active slots only), read the model's input
        column [B, K, 1]."""
        size = self.tokens.shape[2]
        at = (self.offsets[:, None] + self.delays[None, 1 + self.dep_q:]) % size  # [B, n_in]
        inputs = self.tokens[:, 1 + self.dep_q:]  # [B, n_in, C]
        if active is not None:  # paused slots write back what is there
            codes = torch.where(active[:, None, None], codes, inputs.gather(2, at[..., None]))
        inputs.scatter_(2, at[..., None], codes)
        now = (self.offsets % size)[:, None, None].expand(-1, self.tokens.shape[1], 1)
        is_initial = self.offsets[:, None, None] <= self.delays[None, :, None]
        return torch.where(is_initial, self.initial, self.tokens.gather(2, now))

    def _replace_text(self, sampled: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
        """sampled [B], forced [B, 2] -> [B]: the forced token of the sampled action, -1 keeping it."""
        is_word = sampled == self.lm.config.existing_text_end_padding_id
        chosen = torch.where(is_word, forced[:, 1], forced[:, 0])
        return torch.where(chosen < 0, sampled, chosen)

    def _add_pad_bonus(self, logits: torch.Tensor, bonus: torch.Tensor | float) -> torch.Tensor:
        """logits [B, N] -> a copy with `bonus` ([B] or a number) added to the PAD column."""
        pad = self.lm.config.existing_text_padding_id
        if isinstance(bonus, torch.Tensor):
            if bonus.shape != (self.batch_size,):
                raise InputError(f"pad_bonus must be a number or a float tensor [B = {self.batch_size}], "
                                 f"got {list(bonus.shape)}")
            bonus = bonus.to(logits.device, logits.dtype)
        logits = logits.clone()
        logits[:, pad] += bonus
        return logits

    def _depformer(self, text: torch.Tensor, hidden: torch.Tensor) -> list[torch.Tensor]:
        """text [B], hidden [R, 1, D] -> dep_q audio tokens, each [B]."""
        lm, out, prev = self.lm, [], text
        for k in range(self.dep_q):
            prev = prev.repeat(2) if self.cfg else prev
            embed = lm.depformer_text_emb if k == 0 else lm.depformer_emb[k - 1]
            x = lm.depformer_in[lm._in_index(k)](hidden) + embed(prev[:, None])  # [R, 1, Dd]
            y = lm.depformer.step(x, k, self.depth_cache)[:, 0]
            logits = self._mix(lm.linears[k](lm._depformer_norm(k, y)).float())
            prev = sample(logits, self.temp, self.top_k, self.rng)
            out.append(prev)
        return out

    def _write_and_read(self, new: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor | None:
        """new [B, 1 + dep_q] (this step's tokens) -> the frame to emit [B, 1 + dep_q, 1] or None. Paused
        slots (active false) keep their offset and cache and emit -2 rows."""
        size = self.tokens.shape[2]
        self.offsets += 1 if active is None else active
        self.steps += 1
        at = (self.offsets % size)[:, None, None].expand(-1, 1 + self.dep_q, 1)
        outputs = self.tokens[:, : 1 + self.dep_q]  # [B, 1 + dep_q, C]
        new = new[..., None]
        if active is not None:  # paused slots write back what is there
            new = torch.where(active[:, None, None], new, outputs.gather(2, at))
        outputs.scatter_(2, at, new)
        if self.steps <= self.max_delay:
            return None
        back = (self.offsets[:, None] - self.max_delay + self.delays[None, : 1 + self.dep_q]) % size
        out = outputs.gather(2, back[..., None])
        unready = self.offsets <= self.max_delay
        if active is not None:
            unready = unready | ~active
        return out.masked_fill_(unready[:, None, None], UNGENERATED)

    def _mix(self, logits: torch.Tensor) -> torch.Tensor:
        return cfg_mix(logits, self.cfg_coef) if self.cfg else logits

    @contextlib.contextmanager
    def _streaming(self, active: torch.Tensor | None = None):
        """Install this generator's state in the model's stateful modules for one step only, so that the
        model's offline forward and other generators of the same model are unaffected. With `active` [B],
        only those slots (and their CFG rows) advance."""
        for module, state in self.states.items():
            module.state = state
        try:
            if active is None:
                yield
            else:
                with advancing_only(self.states, active.repeat(2) if self.cfg else active):
                    yield
        finally:
            for module in self.states:
                module.state = None

    # ------------------------------------------------------------------ checks
    def _check_condition(self, condition) -> Condition | None:
        lm, dim = self.lm, self.lm.config.dim
        if isinstance(condition, torch.Tensor):  # summed conditions given directly
            if condition.shape != (self.rows, dim) or lm.transformer.has_cross_attention:
                what = "[2B, D] (conditioned rows, then null rows)" if self.cfg else "[B, D]"
                raise InputError(f"condition must be {what} = [{self.rows}, {dim}], for a model without "
                                 f"cross-attention; got {list(condition.shape)}")
            return Condition(condition.to(lm.device), None)
        if condition is None and self.cfg and not lm.is_conditioned and not self.cfg_is_no_text:
            raise InputError(f"cfg_coef={self.cfg_coef} needs conditioned and null rows, and this model has no "
                             f"conditioners: pass condition [2B, D = {dim}] (summed condition embeddings), "
                             f"or use cfg_coef=1")
        if self.cfg and isinstance(condition, Condition) and condition.batch_size != self.rows:
            raise InputError(f"cfg_coef={self.cfg_coef} needs a condition of 2B = {self.rows} rows: "
                             f"Condition.cat(conditioned, null); got {condition.batch_size} rows")
        return lm._check_condition(condition, (self.rows, 1))

    def _check_active(self, active) -> torch.Tensor | None:
        return None if active is None else self._check_mask(active, "step active")

    def _check_mask(self, mask, what: str) -> torch.Tensor:
        """A per-slot mask -> bool [B] on the device (shape and dtype only: no host read)."""
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != (self.batch_size,):
            got = f"{mask.dtype} {list(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise InputError(f"{what} must be a bool tensor [B = {self.batch_size}], got {got}")
        return mask.to(self.tokens.device)

    def _check_text(self, text) -> torch.Tensor | None:
        """The forced text tokens -> [B, 2] on the device (shape and dtype only: no host read)."""
        if text is None:
            return None
        batch = self.batch_size
        if not isinstance(text, torch.Tensor) or text.shape not in ((batch,), (batch, 2)):
            got = list(text.shape) if isinstance(text, torch.Tensor) else type(text).__name__
            raise InputError(f"step text must be an int tensor [B] or [B, 2] = [{batch}] or [{batch}, 2] (forced text "
                             f"tokens, -1 keeps the sampled one), got {got}")
        if text.dtype.is_floating_point or text.dtype == torch.bool or text.is_complex():
            raise InputError(f"step text must be an integer tensor, got {text.dtype}")
        text = text.to(self.tokens.device, torch.long)
        return text[:, None].expand(-1, 2) if text.dim() == 1 else text

    def _check_codes(self, codes: torch.Tensor) -> None:
        want = (self.batch_size, self.n_in, 1)
        if not isinstance(codes, torch.Tensor) or tuple(codes.shape) != want:
            got = list(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise InputError(f"step codes must be [B, n_q - dep_q, 1] = {list(want)} (one frame of the input "
                             f"streams per slot), got {got}")
        if codes.dtype.is_floating_point or codes.dtype == torch.bool or codes.is_complex():
            raise InputError(f"step codes must be an integer tensor, got {codes.dtype}")
        if self.check_inputs and codes.numel():  # a host read: engines that trust their codec turn it off
            low, high = int(codes.min()), int(codes.max())
            card = self.lm.config.card
            if low < -1 or high > card:
                raise InputError(f"step codes must be in [-1, {card}] (-1: zero token, {card}: initial / end of "
                                 f"input), got values in [{low}, {high}]")


def _check_sampling_value(name: str, value) -> None:
    if name.startswith("top_k"):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InputError(f"{name} must be an int >= 0 (0: no limit), got {value!r}")
    elif not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InputError(f"{name} must be a number (<= 0: greedy), got {value!r}")


def _take_rows(rows: torch.Tensor, new: torch.Tensor | None, old: torch.Tensor | None, part: str) -> torch.Tensor | None:
    """rows bool [R] -> a tensor [R, ...] with the rows of `new` where rows is true, of `old` elsewhere."""
    if (new is None) != (old is None) or (new is not None and new.shape != old.shape):
        shapes = [None if t is None else list(t.shape) for t in (old, new)]
        raise InputError(f"the new condition's {part} part must have the shape of the current one: {shapes[0]}, "
                         f"got {shapes[1]}")
    if new is None:
        return None
    return torch.where(rows.view(-1, *[1] * (new.dim() - 1)), new.to(old.dtype), old)
