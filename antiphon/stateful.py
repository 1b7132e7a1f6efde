"""One streaming-state idea for every stateful layer.

A `Stateful` module holds `self.state` (None when not streaming). `start(batch_size)` preallocates
the state of every slot, `reset(mask)` returns chosen slots to their initial state and leaves the
other slots bit-identical, `stop()` drops the state. The helpers below walk a module tree.

Paused slots: inside `advancing_only(states, active)` a call advances only the slots where `active` [B]
is true; every module's `hold(state, active)` makes sure the other slots' state comes out as it went in.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn


class Stateful(nn.Module):
    """A module with per-slot streaming state. Subclasses implement `init_state` and `reset_state`, and
    `hold` unless their state is a dict of small tensors with the slots first."""

    state: object | None

    def __init__(self) -> None:
        super().__init__()
        self.state = None

    def init_state(self, batch_size: int) -> object:
        raise NotImplementedError

    def reset_state(self, state: object, mask: torch.Tensor) -> None:
        """Return the slots where `mask` [B] (bool) is true to their initial state, in place."""
        raise NotImplementedError

    def hold(self, state: object, active: torch.Tensor) -> Callable[[], None]:
        """Before a call that advances only the slots where `active` [B] (bool) is true: returns the
        function to run after it, which puts the other slots' state back, bit-identical. This default
        snapshots a dict of tensors [B, ...] (small states: conv buffers) and restores the paused rows."""
        saved = {name: tensor.clone() for name, tensor in state.items()}

        def restore() -> None:
            for name, tensor in state.items():
                keep = active.view(-1, *[1] * (tensor.dim() - 1))
                tensor.copy_(torch.where(keep, tensor, saved[name]))
        return restore

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


@contextlib.contextmanager
def advancing_only(states: nn.Module | dict[Stateful, object], active: torch.Tensor) -> Iterator[None]:
    """Within, a call advances only the slots where `active` [B] (bool) is true; the others' state is
    put back on leaving (also on an error). `states`: a streaming module tree, or {module: state}."""
    pairs = states.items() if isinstance(states, dict) else [(m, m.state) for m in stateful_modules(states)]
    restores = [module.hold(state, active) for module, state in pairs]
    try:
        yield
    finally:
        for restore in reversed(restores):
            restore()
