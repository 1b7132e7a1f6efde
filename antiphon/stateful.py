"""One streaming-state idea for every stateful layer.

A `Stateful` module holds `self.state` (None when not streaming). `start(batch_size)` preallocates
the state of every slot, `reset(mask)` returns chosen slots to their initial state and leaves the
other slots bit-identical, `stop()` drops the state. The helpers below walk a module tree.
"""

from __future__ import annotations

import torch
from torch import nn


class Stateful(nn.Module):
    """A module with per-slot streaming state. Subclasses implement `init_state` and `reset_state`."""

    state: object | None

    def __init__(self) -> None:
        super().__init__()
        self.state = None

    def init_state(self, batch_size: int) -> object:
        raise NotImplementedError

    def reset_state(self, state: object, mask: torch.Tensor) -> None:
        """Return the slots where `mask` [B] (bool) is true to their initial state, in place."""
        raise NotImplementedError

    @property
    def is_streaming(self) -> bool:
        return self.state is not None


def stateful_modules(root: nn.Module) -> list[Stateful]:
    return [m for m in root.modules() if isinstance(m, Stateful)]


def start_streaming(root: nn.Module, batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for m in stateful_modules(root):
        m.state = m.init_state(batch_size)


def stop_streaming(root: nn.Module) -> None:
    for m in stateful_modules(root):
        m.state = None


def reset_streaming(root: nn.Module, mask: torch.Tensor) -> None:
    for m in stateful_modules(root):
        if m.state is None:
            raise RuntimeError("reset_streaming called outside a streaming context")
        m.reset_state(m.state, mask)
