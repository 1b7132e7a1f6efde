"""The streaming attention state shared by every transformer: a ring of keys and values per layer for
all slots, preallocated, written at one shared pointer.

Each slot has its own position counter, so slots reset at different times stay correct: the keys of
a slot's previous session carry position -1 and are masked, and nothing else of the other slots
changes. A call's steps are written before they attend, so the ring holds `context + PIECE - 1`
steps and a call is taken in pieces of at most PIECE steps: no step ever loses a key of its window,
and streaming equals offline attention over the last `context` steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PIECE = 8  # most steps written to the ring at once


@dataclass
class Step:
    """What one piece of a call needs: positions [B, T] of its steps, the ring index [T] its keys go
    to, the attention mask [B, 1, T, R] (additive: 0 or -inf) over the ring."""

    positions: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor


class KVRing:
    def __init__(self, layers: int, batch_size: int, kv_heads: int, head_dim: int, context: int,
                 device: torch.device, dtype: torch.dtype):
        self.context = context
        self.capacity = context + PIECE - 1
        shape = (layers, batch_size, kv_heads, self.capacity, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)  # [L, B, KH, R, hd]
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.key_positions = torch.full((batch_size, self.capacity), -1, device=device, dtype=torch.long)
        self.offset = torch.zeros(batch_size, device=device, dtype=torch.long)  # steps seen per slot
        self.pointer = 0  # next ring index, shared by all slots

    def reset(self, mask: torch.Tensor) -> None:
        """Restart the slots where `mask` [B] is true."""
        self.key_positions.masked_fill_(mask[:, None], -1)
        self.offset.masked_fill_(mask, 0)

    def begin(self, steps: int) -> Step:
        """Positions, ring index and mask of the next `steps` (<= PIECE) steps; their key positions
        are recorded now, their keys and values by each layer (`write`)."""
        if steps > PIECE:
            raise ValueError(f"a ring step takes at most {PIECE} steps, got {steps}")
        device = self.offset.device
        positions = self.offset[:, None] + torch.arange(steps, device=device)  # [B, T]
        index = (self.pointer + torch.arange(steps, device=device)) % self.capacity
        key_positions = self.key_positions.index_copy_(1, index, positions)  # [B, R]
        delta = positions[:, :, None] - key_positions[:, None, :]  # [B, T, R]
        allowed = (key_positions[:, None, :] >= 0) & (delta >= 0) & (delta < self.context)
        return Step(positions, index, additive_mask(allowed, self.keys.dtype)[:, None])

    def write(self, layer: int, index: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, KH, T, hd] of `layer` at `index`; returns that layer's whole ring [B, KH, R, hd]."""
        keys, values = self.keys[layer], self.values[layer]
        keys.index_copy_(2, index, k)
        values.index_copy_(2, index, v)
        return keys, values

    def end(self, steps: int) -> None:
        self.offset += steps
        self.pointer = (self.pointer + steps) % self.capacity


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool mask (True = attend) -> additive mask (0 / -inf), which SDPA on CPU takes faster."""
    return torch.zeros(allowed.shape, device=allowed.device, dtype=dtype).masked_fill_(~allowed, float("-inf"))
