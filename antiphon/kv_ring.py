"""The streaming attention state shared by every transformer: a ring of keys and values per layer for
all slots, preallocated, written at one shared pointer.

Each slot has its own position counter, so slots reset at different times stay correct: the keys of
a slot's previous session carry position -1 and are masked, and nothing else of the other slots
changes. A call's steps are written before they attend, so the ring holds `context + PIECE - 1`
steps and a call is taken in pieces of at most PIECE steps: no step ever loses a key of its window,
and streaming equals offline attention over the last `context` steps.

Paused slots (`hold(active)`): a call may advance only some slots. Every slot's row is still written at
the shared pointer (fixed shapes), so at `end` the columns written for a paused slot get key position -1
and its position counter stays: its next step takes the positions it would have had, and sees the keys
of its own past steps only. Its history still ages with the pointer: the columns written while it is
paused held its oldest steps, now lost. A piece of T steps sees the slot's past steps written within the
last context + PIECE - 1 - T ring steps before it. So after a pause of k steps it sees all of its window
while k <= PIECE - T (k <= 7 for the one-step calls of generation); a longer pause hides the oldest
k - (PIECE - T) past steps of the window of its first step (fewer for the next steps, as the window
slides past the pause), and from k = context + PIECE - 1 - T on the slot sees none of its past. Pauses
add up: the steps paused within the slot's window count together.

With `live_window` (the LM's rings), attention reads only the ring's live window: the columns written
since the oldest slot's reset (at most the whole ring), so a young session does not pay for the full
context. The window is the contiguous run of columns ending at this piece's last one; while it would wrap
past the ring's end, the whole ring is read. Outside the window every column is masked for every slot,
so the result is the same.

Storage (`kv_dtype`): None keeps keys and values in the model's dtype; "bfloat16" stores them in bfloat16;
"int8" stores int8 with a float32 scale per written key (and value) vector per KV head (symmetric: absmax
/ 127, kernels/decode_attention.py `quantize_kv`), quantized in `write`. Either way `write` returns the
window in the model's dtype (dequantized), so attention is unchanged. Bytes per ring step per KV head,
for keys and again for values: hd * 4 in float32, hd * 2 in bfloat16, hd + 4 in int8 (`bytes_per_slot`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

PIECE = 8  # most steps written to the ring at once
KV_DTYPES = {None: None, "bfloat16": torch.bfloat16, "int8": torch.int8}  # kv_dtype -> storage (None: the model's)


@dataclass
class Step:
    """What one piece of a call needs: positions [B, T] of its steps, the ring index [T] its keys go
    to, the attention mask [B, 1, T, R] (additive: 0 or -inf) over the ring."""

    positions: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor  # [B, 1, T, W]: over the live window only
    window: slice  # the ring columns attention reads


class KVRing:
    def __init__(self, layers: int, batch_size: int, kv_heads: int, head_dim: int, context: int,
                 device: torch.device, dtype: torch.dtype, live_window: bool = True, kv_dtype: str | None = None):
        """`dtype`: the model's, that of k, v given to `write` and of the windows it returns; `kv_dtype`:
        how keys and values are stored (module docstring)."""
        if kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv_dtype must be one of {', '.join(map(repr, KV_DTYPES))}, got {kv_dtype!r}")
        self.context, self.live_window, self.dtype = context, live_window, dtype
        self.capacity = context + PIECE - 1
        shape = (layers, batch_size, kv_heads, self.capacity, head_dim)
        store = KV_DTYPES[kv_dtype] or dtype
        self.keys = torch.zeros(shape, device=device, dtype=store)  # [L, B, KH, R, hd]
        self.values = torch.zeros(shape, device=device, dtype=store)
        int8 = kv_dtype == "int8"  # then float32 scales [L, B, KH, R], one per stored vector
        self.key_scales = torch.zeros(shape[:-1], device=device) if int8 else None
        self.value_scales = torch.zeros(shape[:-1], device=device) if int8 else None
        self.key_positions = torch.full((batch_size, self.capacity), -1, device=device, dtype=torch.long)
        self.offset = torch.zeros(batch_size, device=device, dtype=torch.long)  # steps seen per slot
        self.pointer = 0  # next ring index, shared by all slots
        self.ages = [0] * batch_size  # host: ring steps written since each slot's reset (at most capacity)
        self.window = slice(0, self.capacity)
        self.active: torch.Tensor | None = None  # [B] bool while only these slots advance (`hold`)

    def reset(self, mask: torch.Tensor) -> None:
        """Restart the slots where `mask` [B] is true."""
        self.key_positions.masked_fill_(mask[:, None], -1)
        self.offset.masked_fill_(mask, 0)
        self.ages = [0 if m else age for m, age in zip(mask.tolist(), self.ages)]  # a host read, outside steps

    def hold(self, active: torch.Tensor) -> Callable[[], None]:
        """Until the returned function is called, `end` advances only the slots where `active` [B] (bool)
        is true; the others keep their offset and lose the keys written for them (module docstring)."""
        self.active = active

        def release() -> None:
            self.active = None
        return release

    def begin(self, steps: int) -> Step:
        """Positions, ring index and mask of the next `steps` (<= PIECE) steps; their key positions
        are recorded now, their keys and values by each layer (`write`)."""
        if steps > PIECE:
            raise ValueError(f"a ring step takes at most {PIECE} steps, got {steps}")
        device = self.offset.device
        positions = self.offset[:, None] + torch.arange(steps, device=device)  # [B, T]
        index = (self.pointer + torch.arange(steps, device=device)) % self.capacity
        self.window = self._live_window(steps)
        key_positions = self.key_positions.index_copy_(1, index, positions)[:, self.window]  # [B, W]
        delta = positions[:, :, None] - key_positions[:, None, :]  # [B, T, W]
        allowed = (key_positions[:, None, :] >= 0) & (delta >= 0) & (delta < self.context)
        return Step(positions, index, additive_mask(allowed, self.dtype)[:, None], self.window)

    def _live_window(self, steps: int) -> slice:
        """The columns holding any slot's keys once this piece is written: the last min(capacity, oldest
        age + steps) ring steps, as one slice; the whole ring when that run wraps past the end."""
        span = min(self.capacity, max(self.ages) + steps)
        stop = self.pointer + steps
        if not self.live_window or stop > self.capacity or stop < span:
            return slice(0, self.capacity)
        return slice(stop - span, stop)

    def write(self, layer: int, index: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, KH, T, hd] of `layer` at `index`; returns that layer's live window of the ring
        [B, KH, W, hd] (the columns of `begin`'s mask) in the model's dtype."""
        self.store(layer, index, k, v)
        return self._window(self.keys[layer], self._scales(self.key_scales, layer)), \
            self._window(self.values[layer], self._scales(self.value_scales, layer))

    def store(self, layer: int, index: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v [B, KH, T, hd] of `layer` at `index`, quantized when the ring is int8."""
        self._store(self.keys[layer], self._scales(self.key_scales, layer), index, k)
        self._store(self.values[layer], self._scales(self.value_scales, layer), index, v)

    def stored(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """One layer's whole ring as stored: keys, values [B, KH, R, hd] and, int8, their scales [B, KH, R]."""
        return (self.keys[layer], self.values[layer], self._scales(self.key_scales, layer),
                self._scales(self.value_scales, layer))

    @staticmethod
    def _scales(scales: torch.Tensor | None, layer: int) -> torch.Tensor | None:
        return None if scales is None else scales[layer]

    @staticmethod
    def _store(ring: torch.Tensor, scales: torch.Tensor | None, index: torch.Tensor, x: torch.Tensor) -> None:
        if scales is None:
            ring.index_copy_(2, index, x.to(ring.dtype))
            return
        from antiphon.kernels.decode_attention import quantize_kv  # imports triton: int8 rings only

        q, scale = quantize_kv(x)
        ring.index_copy_(2, index, q)
        scales.index_copy_(2, index, scale)

    def _window(self, ring: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
        """One layer's live window [B, KH, W, hd] in the model's dtype."""
        if scales is None:
            return ring[:, :, self.window].to(self.dtype)
        from antiphon.kernels.decode_attention import dequantize_kv

        return dequantize_kv(ring[:, :, self.window], scales[:, :, self.window], self.dtype)

    def bytes_per_slot(self) -> int:
        """Bytes the ring holds per slot over all layers: keys, values, their scales (int8) and key
        positions, i.e. R * (2 * L * KH * (hd * itemsize + (4 if int8 else 0)) + 8)."""
        held = [self.keys, self.values, self.key_scales, self.value_scales, self.key_positions]
        return sum(t.nbytes for t in held if t is not None) // self.key_positions.shape[0]

    def end(self, steps: int) -> None:
        """Close the piece that `begin(steps)` opened: the slots advance by `steps`, except, while
        `active` is set, the paused ones, whose columns of this piece are masked (position -1)."""
        if self.active is not None:
            self._forget_paused(steps, self.active)
            self.offset += steps * self.active
        else:
            self.offset += steps
        self.pointer = (self.pointer + steps) % self.capacity
        self.ages = [min(self.capacity, age + steps) for age in self.ages]

    def _forget_paused(self, steps: int, active: torch.Tensor) -> None:
        """Key position -1 in the columns of this piece for the slots where `active` [B] is false."""
        index = (self.pointer + torch.arange(steps, device=self.offset.device)) % self.capacity  # [T]
        written = self.key_positions.index_select(1, index)  # [B, T]
        self.key_positions.index_copy_(1, index, written.masked_fill(~active[:, None], -1))


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool mask (True = attend) -> additive mask (0 / -inf), which SDPA on CPU takes faster."""
    return torch.zeros(allowed.shape, device=allowed.device, dtype=dtype).masked_fill_(~allowed, float("-inf"))
