"""The engine: B slots, one batched tick per 80 ms (design, example 1), for any of the four tasks.

    tick: plan = scheduler.plan(inbox) -> reset joined/left slots -> tell joined sessions -> task.step(plan)
          -> send each (slot, event) to the slot's session

Every tick advances the live slots together with fixed shapes [B, ...]; the task (streaming.tasks) does
the batched model work: codec encode, LM step, codec decode, and decides which slots move (the rest stay
bit-identical). The tick runs on the calling thread (`run()`, until `stop()`), on a thread of its own
(`start()`), or by hand (`tick()`, for tests). The network
talks to it only through `admit` / `submit` / `leave` and the per-session sink it gives at admission (a
thread-safe, non-blocking callable that receives `SlotReady`, the task's events and `EngineFailed`).

The handshake (`SlotReady`) goes out at the end of the tick that reset the slot and took its first frame
(the engine's own silence, see streaming.tasks), before that tick's events, and clients send only after
it: no client input is lost, and a client's frames arrive early in the tick interval (sent before the
step, they would arrive just after the next tick had planned and wait a whole interval).
"""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time

import torch

from antiphon.errors import InputError

from .errors import EngineError
from .frames import FRAME_SAMPLES, FRAME_SECONDS, SAMPLE_RATE, EngineFailed, Join, Leave, SlotReady
from .metrics import TickStats
from .scheduler import DEFAULT_MAX_BACKLOG, Scheduler, TickPlan
from .tasks import make_task

logger = logging.getLogger(__name__)


class Engine:
    """`Engine(lm, codec, slots)`: `slots` sessions of the model's task (dialogue, translation, stt, tts,
    from its config; or `task=`) at once.

    `options`: the task's (sampling: temp, temp_text, top_k, top_k_text, rng; TTS: voice, cfg; translation:
    quality, cfg_coef); defaults from the model's lm_gen_config. `interval`: seconds between ticks on the
    tick thread."""

    def __init__(self, lm, codec, slots: int, interval: float = FRAME_SECONDS,
                 max_backlog: int = DEFAULT_MAX_BACKLOG, task: str | None = None, **options):
        if codec.frame_size != FRAME_SAMPLES or codec.sample_rate != SAMPLE_RATE:
            raise InputError(f"the engine needs a 24 kHz codec with {FRAME_SAMPLES}-sample frames, got "
                             f"{codec.sample_rate} Hz / {codec.frame_size}")
        self.lm, self.codec, self.interval = lm, codec, interval
        self.task = make_task(lm, codec, slots, task, **options)
        self.scheduler = Scheduler(slots, max_backlog, idle=self.task.idle)
        self.stats = TickStats(interval)
        self.frames_in = self.frames_out = self.silence_frames = 0
        self.failed: str | None = None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[int, object] = {}
        self._sampling: dict[int, dict] = {}  # joining session -> its sampling, until its slot is configured
        self._streaming = contextlib.ExitStack()
        self._streaming.enter_context(codec.streaming(slots))
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def kind(self) -> str:
        """The task served: "dialogue", "translation", "stt" or "tts"."""
        return self.task.kind

    @property
    def slots(self) -> int:
        return self.scheduler.slots

    # ------------------------------------------------------------------ network side (any thread)
    def admit(self, session: int, sink, sampling: dict | None = None) -> int:
        """Reserve a slot for `session` (NoFreeSlot at once when none is free); `sink(event)` receives its
        events. `sampling`: the session's own temp, temp_text, top_k, top_k_text (the others: the engine's)."""
        if self.failed is not None:
            raise EngineError(f"the engine has failed: {self.failed}")
        slot = self.scheduler.admit(session)
        self._sampling[session] = dict(sampling or {})
        self._sinks[session] = sink
        self._inbox.put(Join(session, slot))
        return slot

    def submit(self, message) -> None:
        """Queue an InputFrame for the next tick (thread-safe, never blocks)."""
        self._inbox.put(message)

    def leave(self, session: int) -> None:
        """The session ended: free its slot now; the next tick resets it. Idempotent."""
        self.scheduler.release(session)
        self._sampling.pop(session, None)
        if self._sinks.pop(session, None) is not None:
            self._inbox.put(Leave(session))

    # ------------------------------------------------------------------ the tick
    def tick(self) -> bool:
        """One 80 ms step for every live slot; returns whether any slot was live (only those ticks are
        timed). Raises EngineError, after telling every session (EngineFailed); the engine is then dead."""
        if self.failed is not None:
            raise EngineError(f"the engine has failed: {self.failed}")
        start = time.perf_counter()
        try:
            worked = self._step()
        except Exception as e:
            error = EngineError(f"engine tick failed: {type(e).__name__}: {e}")
            self._fail(error, e)
            raise error from e
        if worked:
            self.stats.record(time.perf_counter() - start)
        return worked

    def _step(self) -> bool:
        plan = self.scheduler.plan(self._drain())
        self.frames_in += plan.frames_in
        self.silence_frames += plan.silent
        with torch.inference_mode():
            if plan.reset.any():
                self.task.reset(plan.reset)
            for session, slot in plan.joined:
                self.task.configure(slot, self._sampling.pop(session, {}))
            live = bool(plan.live.any())
            events = self.task.step(plan) if live else []
        self._tell_ready(plan)  # after the step: the client's frames then arrive early in the next interval
        if not live:
            return False
        for slot, event in events:
            self.frames_out += 1
            self._send(plan.owners[slot], event)
        return True

    def _drain(self) -> list:
        messages = []
        with contextlib.suppress(queue.Empty):
            while True:
                messages.append(self._inbox.get_nowait())
        return messages

    def _tell_ready(self, plan: TickPlan) -> None:
        for session, slot in plan.joined:
            self._send(session, SlotReady(slot))

    def _send(self, session: int, event) -> None:
        sink = self._sinks.get(session)
        if sink is None:
            return
        try:
            sink(event)
        except Exception:  # a broken sink is that session's problem, never the tick's
            logger.exception("session %s: its sink failed; dropping the session", session)
            self.leave(session)

    # ------------------------------------------------------------------ warm-up and the tick loop
    def warmup(self, ticks: int = 4) -> None:
        """Run `ticks` steps on silence (or nothing, for TTS) for every slot (reference §3.3), then reset all slots."""
        with torch.inference_mode():
            self.task.warmup(ticks)

    def run(self) -> None:
        """Tick every `interval` seconds on the calling thread until `stop()` (from any thread). A server
        runs it on the thread that loaded the model and warmed up, its network on another: on CPU, OpenMP
        keeps one worker pool per thread that ran parallel torch work, and with two pools and no spare
        cores libgomp stops spinning between parallel regions, so each pays a wake-up (measured on 2
        cores: a 23 ms LM step takes 36 ms on a second thread). After an engine failure it waits for
        `stop()` (the sessions were told)."""
        self._run()
        self._stop.wait()

    def start(self) -> None:
        """Run the tick every `interval` seconds on a thread of its own (tests; `run()` is faster on CPU)."""
        if self._thread is not None:
            raise RuntimeError("the engine is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="antiphon-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End `run()` or the `start()` thread (waiting for the thread)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        self.stop()
        self._streaming.close()

    def _run(self) -> None:
        deadline = time.monotonic()
        while not self._stop.is_set():
            try:
                self.tick()
            except EngineError:
                return
            now = time.monotonic()
            deadline = max(deadline + self.interval, now)  # late: start the next tick at once, never in a burst
            self._stop.wait(deadline - now)

    def _fail(self, error: EngineError, cause: BaseException) -> None:
        logger.error("%s", error, exc_info=cause)
        self.failed = str(error)
        for session in list(self._sinks):
            self._send(session, EngineFailed(self.failed))
