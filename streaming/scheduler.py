"""Admission, eviction and input framing: the scheduler hands the tick a plan; the tick decides nothing.

Two sides, two threads:

- `admit(session)` / `release(session)` run on the network side, under a lock: a slot is reserved (or
  `NoFreeSlot` raised at once, never a wait) and freed as soon as the session ends, so the next session
  can take it at the very next tick.
- `plan(messages)` runs on the tick thread only. It applies the queued `Join` / `Leave` / session inputs
  in order, then builds the `TickPlan`: which slots to reset, which are live, which take their first
  frame, each live slot's next 1920-sample frame, and the other inputs it reached on the way.

A session's inputs (`InputFrame`, `EndOfInput`, `TextIn`, `VoiceIn`) queue per slot, in order. Each tick
takes, for every live slot, the queued inputs up to and including its oldest `InputFrame` or
`EndOfInput`: at most one frame per tick, and an end of input never before the frames sent ahead of it.
TTS sessions send no frames, so each tick takes all of their words.

Idle rules (documented, tested), by the task's `idle` mode:
- "silence" (dialogue, translation): a live slot with no frame queued in time gets 80 ms of silence
  (counted in `silence_frames`), so a slow or paused client never stops the tick; the model hears what it
  would from a muted microphone. A queue beyond `max_backlog` frames (a client sending faster than real
  time) loses its oldest frames (counted in `dropped_frames`), which bounds the added latency to
  max_backlog * 80 ms.
- "pause" (speech to text): a live slot with no frame queued is not stepped this tick (`has_frame` is
  false); nothing is dropped (the server holds a fast client back instead, see streaming.server).
A slot's first tick is always the engine's own silence (the client sends only after SlotReady).
Inputs of a session that no longer owns its slot (it left; its slot may already serve another session)
are discarded.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from .errors import CLOSE_TRY_AGAIN_LATER, ProtocolError
from .frames import FRAME_SAMPLES, EndOfInput, InputFrame, Join, Leave, TextIn, VoiceIn

DEFAULT_MAX_BACKLOG = 25  # frames (2 s)
IDLE_MODES = ("silence", "pause")


class NoFreeSlot(ProtocolError):
    """Every slot is taken (and the admission queue, if any, has no place or waited too long): the client
    gets an Error and the socket closes with 1013."""

    def __init__(self, slots: int, message: str | None = None):
        super().__init__(message or f"no free channels: all {slots} slots are busy, try again later",
                         CLOSE_TRY_AGAIN_LATER)


@dataclass(frozen=True)
class TickPlan:
    reset: np.ndarray  # bool [B]: slots joined or left since the last tick (reset before this tick's step)
    live: np.ndarray  # bool [B]: slots with a session this tick
    first: np.ndarray  # bool [B]: live slots taking their first frame (the throw-away frame, reference §3.1)
    pcm: np.ndarray  # float32 [B, FRAME_SAMPLES]: each slot's input frame (silence where none arrived)
    has_frame: np.ndarray  # bool [B]: live slots that took a client frame this tick
    inputs: tuple  # (slot, EndOfInput | TextIn | VoiceIn) taken this tick, in order
    owners: tuple  # [B] session id or None
    joined: tuple  # (session, slot) pairs admitted since the last tick: tell them SlotReady
    silent: int  # live slots given silence this tick
    frames_in: int  # frames taken from queues this tick


class Scheduler:
    def __init__(self, slots: int, max_backlog: int = DEFAULT_MAX_BACKLOG, idle: str = "silence"):
        if not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be an int >= 1, got {slots!r}")
        if idle not in IDLE_MODES:
            raise ValueError(f"idle must be one of {IDLE_MODES}, got {idle!r}")
        self.slots, self.max_backlog, self.idle = slots, max_backlog, idle
        self._lock = threading.Lock()
        self._reserved: dict[int, int] = {}  # session -> slot (network side, under the lock)
        # tick-thread state
        self._owner: list[int | None] = [None] * slots
        self._slot_of: dict[int, int] = {}
        self._queue = [deque() for _ in range(slots)]  # a slot's inputs, in order
        self._frames = [0] * slots  # InputFrames in each queue
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
        """Apply the queued messages in order, then take each live slot's inputs for this tick."""
        frames_in = 0
        for message in messages:
            frames_in += self._apply(message)
        live = np.array([owner is not None for owner in self._owner])
        first = np.array([live[s] and self._taken[s] == 0 for s in range(self.slots)])
        pcm = np.zeros((self.slots, FRAME_SAMPLES), dtype=np.float32)
        has_frame = np.zeros(self.slots, dtype=bool)
        inputs = []
        for slot in np.flatnonzero(live & ~first):
            queue = self._queue[slot]
            while queue:
                item = queue.popleft()
                if isinstance(item, InputFrame):
                    pcm[slot], has_frame[slot] = item.pcm, True
                    self._frames[slot] -= 1
                    break
                inputs.append((int(slot), item))
                if isinstance(item, EndOfInput):
                    break
        for slot in np.flatnonzero(live):
            self._taken[slot] += 1
        silent = int((live & ~has_frame).sum()) if self.idle == "silence" else 0
        plan = TickPlan(reset=self._pending_reset.copy(), live=live, first=first, pcm=pcm, has_frame=has_frame,
                        inputs=tuple(inputs), owners=tuple(self._owner), joined=tuple(self._joined), silent=silent,
                        frames_in=frames_in)
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
        elif isinstance(message, (InputFrame, EndOfInput, TextIn, VoiceIn)):
            slot = self._slot_of.get(message.session)
            if slot is None or self._owner[slot] != message.session:
                return 0
            self._queue[slot].append(message)
            if not isinstance(message, InputFrame):
                return 0
            self._frames[slot] += 1
            if self.idle == "silence" and self._frames[slot] > self.max_backlog:
                self._drop_oldest_frame(slot)
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
        self._frames[slot] = 0
        self._taken[slot] = 0
        self._joined[:] = [(s, k) for s, k in self._joined if k != slot]

    def _drop_oldest_frame(self, slot: int) -> None:
        queue = self._queue[slot]
        oldest = next(i for i, item in enumerate(queue) if isinstance(item, InputFrame))
        del queue[oldest]
        self._frames[slot] -= 1
        self.dropped_frames += 1
