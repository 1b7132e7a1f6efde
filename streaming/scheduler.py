"""Admission, eviction and input framing: the scheduler hands the tick a plan; the tick decides nothing.

Two sides, two threads:

- `admit(session)` / `release(session)` run on the network side, under a lock: a slot is reserved (or
  `NoFreeSlot` raised at once, never a wait) and freed as soon as the session ends, so the next session
  can take it at the very next tick.
- `plan(messages)` runs on the tick thread only. It applies the queued `Join` / `InputFrame` / `Leave`
  messages in order, then builds the `TickPlan`: which slots to reset, which are live, which take their
  first frame, and each live slot's next 1920-sample frame.

Input rule (documented, tested): each tick takes the oldest queued frame of every live slot. A live slot
with nothing queued in time gets 80 ms of silence (counted in `silence_frames`), so a slow or paused
client never stops the tick; the model hears silence, as it would from a muted microphone. A slot whose
queue grows beyond `max_backlog` frames (a client sending faster than real time) loses its oldest frames
(counted in `dropped_frames`), which bounds the added latency to max_backlog * 80 ms.
Frames of a session that no longer owns its slot (it left; its slot may already serve another session)
are discarded.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from .errors import CLOSE_TRY_AGAIN_LATER, ProtocolError
from .frames import FRAME_SAMPLES, InputFrame, Join, Leave

DEFAULT_MAX_BACKLOG = 25  # frames (2 s)


class NoFreeSlot(ProtocolError):
    """Every slot is taken: the client gets an Error at once and the socket closes with 1013."""

    def __init__(self, slots: int):
        super().__init__(f"no free channels: all {slots} slots are busy, try again later", CLOSE_TRY_AGAIN_LATER)


@dataclass(frozen=True)
class TickPlan:
    reset: np.ndarray  # bool [B]: slots joined or left since the last tick (reset before this tick's step)
    live: np.ndarray  # bool [B]: slots with a session this tick
    first: np.ndarray  # bool [B]: live slots taking their first frame (the throw-away frame, reference §3.1)
    pcm: np.ndarray  # float32 [B, FRAME_SAMPLES]: each slot's input frame (silence where none arrived)
    owners: tuple  # [B] session id or None
    joined: tuple  # (session, slot) pairs admitted since the last tick: tell them SlotReady
    silent: int  # live slots given silence this tick
    frames_in: int  # frames taken from queues this tick


class Scheduler:
    def __init__(self, slots: int, max_backlog: int = DEFAULT_MAX_BACKLOG):
        if not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be an int >= 1, got {slots!r}")
        self.slots, self.max_backlog = slots, max_backlog
        self._lock = threading.Lock()
        self._reserved: dict[int, int] = {}  # session -> slot (network side, under the lock)
        # tick-thread state
        self._owner: list[int | None] = [None] * slots
        self._slot_of: dict[int, int] = {}
        self._queue = [deque() for _ in range(slots)]
        self._taken = [0] * slots  # frames taken since the slot's session joined
        self._pending_reset = np.zeros(slots, dtype=bool)
        self._joined: list[tuple[int, int]] = []
        self.dropped_frames = 0

    # ------------------------------------------------------------------ network side (any thread)
    def admit(self, session: int) -> int:
        """Reserve the lowest free slot for `session` and return it; raise NoFreeSlot at once when none is free."""
        with self._lock:
            if session in self._reserved:
                raise ValueError(f"session {session} is already admitted")
            free = sorted(set(range(self.slots)) - set(self._reserved.values()))
            if not free:
                raise NoFreeSlot(self.slots)
            self._reserved[session] = free[0]
            return free[0]

    def release(self, session: int) -> None:
        """Free the session's slot (idempotent). The tick resets it when it reads the session's Leave."""
        with self._lock:
            self._reserved.pop(session, None)

    @property
    def live_sessions(self) -> int:
        with self._lock:
            return len(self._reserved)

    @property
    def free_slots(self) -> int:
        return self.slots - self.live_sessions

    # ------------------------------------------------------------------ tick thread
    def plan(self, messages) -> TickPlan:
        """Apply the queued messages in order, then take one frame per live slot."""
        frames_in = 0
        for message in messages:
            frames_in += self._apply(message)
        live = np.array([owner is not None for owner in self._owner])
        first = np.array([live[s] and self._taken[s] == 0 for s in range(self.slots)])
        pcm = np.zeros((self.slots, FRAME_SAMPLES), dtype=np.float32)
        silent = 0
        for slot in np.flatnonzero(live):
            if self._queue[slot]:
                pcm[slot] = self._queue[slot].popleft()
            else:
                silent += 1
            self._taken[slot] += 1
        plan = TickPlan(reset=self._pending_reset.copy(), live=live, first=first, pcm=pcm, owners=tuple(self._owner),
                        joined=tuple(self._joined), silent=silent, frames_in=frames_in)
        self._pending_reset[:] = False
        self._joined.clear()
        return plan

    def _apply(self, message) -> int:
        if isinstance(message, Join):
            self._evict(message.slot)
            self._owner[message.slot] = message.session
            self._slot_of[message.session] = message.slot
            self._pending_reset[message.slot] = True
            self._joined.append((message.session, message.slot))
        elif isinstance(message, Leave):
            slot = self._slot_of.get(message.session)
            if slot is not None and self._owner[slot] == message.session:
                self._evict(slot)
                self._pending_reset[slot] = True
        elif isinstance(message, InputFrame):
            slot = self._slot_of.get(message.session)
            if slot is None or self._owner[slot] != message.session:
                return 0
            queue = self._queue[slot]
            queue.append(message.pcm)
            if len(queue) > self.max_backlog:
                queue.popleft()
                self.dropped_frames += 1
            return 1
        else:
            raise TypeError(f"not an engine message: {type(message).__name__}")
        return 0

    def _evict(self, slot: int) -> None:
        owner = self._owner[slot]
        if owner is not None:
            self._slot_of.pop(owner, None)
        self._owner[slot] = None
        self._queue[slot].clear()
        self._taken[slot] = 0
        self._joined[:] = [(s, k) for s, k in self._joined if k != slot]
