"""Waiting for a slot. Without a queue (`size` 0) a session that finds every slot taken is refused at
once (NoFreeSlot: the protocol's Error, then close 1013 "try again later"). With a queue, it waits its
turn, first come first served, for up to `timeout` seconds; its client is told nothing until its slot is
ready, as the protocols already say "go" only then (the Moshi handshake, the STT/TTS Ready). Past `size`
waiting sessions, or past the timeout, it is refused as without a queue. A session whose client leaves
while waiting gives its place up."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable

from .scheduler import NoFreeSlot


class AdmissionQueue:
    def __init__(self, engine, size: int = 0, timeout: float = 30.0):
        if size < 0 or timeout <= 0:
            raise ValueError(f"queue size must be >= 0 and timeout > 0, got {size} and {timeout}")
        self.engine, self.size, self.timeout = engine, size, timeout
        self._waiting: deque[object] = deque()  # tickets, first in line on the left

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def admit(self, session: int, sink, sampling: dict | None = None,
                    gone: Callable[[], bool] = lambda: False) -> bool:
        """Reserve a slot for `session` (Engine.admit), waiting in line if the queue allows: True once
        admitted, False if `gone()` (the client left) while waiting; NoFreeSlot when refused."""
        if not self._waiting:
            try:
                self.engine.admit(session, sink, sampling)
                return True
            except NoFreeSlot:
                if self.size == 0:
                    raise
        slots = self.engine.slots
        if len(self._waiting) >= self.size:
            raise NoFreeSlot(slots, f"no free channels: all {slots} slots are busy and {self.size} sessions "
                                    f"are waiting, try again later")
        ticket = object()
        self._waiting.append(ticket)
        deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            while True:
                await asyncio.sleep(self.engine.interval)  # slots free at the engine's ticks
                if gone():
                    return False
                if self._waiting[0] is ticket:
                    try:
                        self.engine.admit(session, sink, sampling)
                        return True
                    except NoFreeSlot:
                        pass
                if asyncio.get_running_loop().time() >= deadline:
                    raise NoFreeSlot(slots, f"no free channels: all {slots} slots stayed busy for the "
                                            f"{self.timeout:g} s this session may wait, try again later")
        finally:
            self._waiting.remove(ticket)
