"""Triton, when it imports. The kernel modules take `triton`, `tl` and `jit` from here, so they (and
their torch references) import on machines without Triton; launching a kernel there raises.

Whether a kernel runs compiled or under Triton's interpreter is decided when `jit` decorates it, that is
when its module is first imported: TRITON_INTERPRET=1 must be in the environment before then.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the machine
    triton = None
    tl = None


def available() -> bool:
    return triton is not None


class _Missing:
    def __init__(self, fn):
        self.fn = fn

    def __getitem__(self, grid):
        raise RuntimeError(f"{self.fn.__name__}: Triton is not installed; use the torch reference "
                           "(ANTIPHON_KERNELS=torch or leave it unset)")


def jit(fn):
    """triton.jit, or a stand-in that raises when launched."""
    return triton.jit(fn) if triton is not None else _Missing(fn)


def next_power_of_2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()
