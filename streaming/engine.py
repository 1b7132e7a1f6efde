"""The engine: B slots, one batched tick per 80 ms (design, example 1).

    tick: plan = scheduler.plan(inbox) -> reset joined/left slots -> codec.encode -> lm step -> codec.decode
          -> publish

Every tick advances every live slot together with fixed shapes [B, ...]; slots without a session still
compute (their state is reset when a session joins) so shapes never change. The tick runs on its own
thread (`start()`), or by hand (`tick()`, for tests). The network talks to it only through `admit` /
`submit` / `leave` and the per-session sink it gives at admission (a thread-safe, non-blocking callable
that receives `SlotReady`, `OutputFrame`, `EngineFailed`).

First frame (reference §3.1, §3.5): a fresh slot's first LM step never sees its input (initial tokens are
read instead), so that frame is thrown away and the codec state of the slot is reset after it, giving the
next frame the codec's first-frame padding. The handshake goes out only after the tick that reset the
slot, and clients send audio only after the handshake, so the throw-away frame is the silence the slot
gets in that tick: no client audio is lost.

Output: the generator emits nothing for a slot during its first max_delay + 1 steps (-2 rows); those
rows are decoded as code 0 (fixed shapes, no host read) and not published. For Moshi (max_delay 1) the
only such step is the first, whose codec state is reset anyway; for a model with max_delay > 1, the
slot's decoder has seen max_delay - 1 such frames before its first real one.

Host reads: one per tick, at publish (the text ids, a ready mask and the PCM of the batch); `.any()` of
the plan masks are numpy, not device reads. Sampling is the engine's (one generator for all slots).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time

import numpy as np
import torch
from antiphon.lm.generate import UNGENERATED

from antiphon.errors import InputError

from .errors import EngineError
from .frames import FRAME_SAMPLES, EngineFailed, Join, Leave, OutputFrame, SlotReady
from .metrics import TickStats
from .scheduler import DEFAULT_MAX_BACKLOG, Scheduler, TickPlan

logger = logging.getLogger(__name__)

FRAME_SECONDS = 0.08


class Engine:
    """`Engine(lm, codec, slots)`: dialogue (Moshi-style) generation for `slots` sessions at once.

    `sampling`: temp, temp_text, top_k, top_k_text, rng (see lm.tasks); defaults from the model's
    lm_gen_config. `interval`: seconds between ticks on the tick thread."""

    def __init__(self, lm, codec, slots: int, interval: float = FRAME_SECONDS,
                 max_backlog: int = DEFAULT_MAX_BACKLOG, **sampling):
        from antiphon.lm.tasks import Dialogue

        cfg = lm.config
        self.n_in = cfg.n_q - cfg.dep_q
        if codec.frame_size != FRAME_SAMPLES or codec.sample_rate != 24000:
            raise InputError(f"the engine needs a 24 kHz codec with {FRAME_SAMPLES}-sample frames, got "
                             f"{codec.sample_rate} Hz / {codec.frame_size}")
        if codec.num_codebooks < self.n_in or codec.cardinality < cfg.card:
            raise InputError(f"the codec gives {codec.num_codebooks} codebooks of {codec.cardinality} codes; the LM "
                             f"reads {self.n_in} streams of {cfg.card} codes: set codec.num_codebooks or pair them right")
        self.lm, self.codec, self.interval = lm, codec, interval
        self.device = lm.device
        self.scheduler = Scheduler(slots, max_backlog)
        self.dialogue = Dialogue(lm, slots, check_inputs=False, **sampling)
        self.stats = TickStats(interval)
        self.frames_in = self.frames_out = self.silence_frames = 0
        self.failed: str | None = None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[int, object] = {}
        self._steps = np.zeros(slots, dtype=np.int64)  # frames published per slot since its session joined
        self._streaming = contextlib.ExitStack()
        self._streaming.enter_context(codec.streaming(slots))
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def slots(self) -> int:
        return self.scheduler.slots

    # ------------------------------------------------------------------ network side (any thread)
    def admit(self, session: int, sink) -> int:
        """Reserve a slot for `session` (NoFreeSlot at once when none is free); `sink(event)` receives its events."""
        if self.failed is not None:
            raise EngineError(f"the engine has failed: {self.failed}")
        slot = self.scheduler.admit(session)
        self._sinks[session] = sink
        self._inbox.put(Join(session, slot))
        return slot

    def submit(self, message) -> None:
        """Queue an InputFrame for the next tick (thread-safe, never blocks)."""
        self._inbox.put(message)

    def leave(self, session: int) -> None:
        """The session ended: free its slot now; the next tick resets it. Idempotent."""
        self.scheduler.release(session)
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
        with torch.inference_mode():
            self._reset(plan)
            self._tell_ready(plan)
            if not plan.live.any():
                return False
            codes = self._encode(plan)
            tokens = self.dialogue.generator.step(codes)
            pcm = self._decode(tokens)
            self._after_first(plan)
            self._publish(plan, tokens, pcm)
        return True

    def _drain(self) -> list:
        messages = []
        with contextlib.suppress(queue.Empty):
            while True:
                messages.append(self._inbox.get_nowait())
        return messages

    def _reset(self, plan: TickPlan) -> None:
        if plan.reset.any():
            mask = torch.from_numpy(plan.reset).to(self.device)
            self.codec.reset_streaming(mask)
            self.dialogue.reset(mask)
            self._steps[plan.reset] = 0

    def _encode(self, plan: TickPlan) -> torch.Tensor:
        """[B, 1920] PCM -> [B, n_q - dep_q, 1] codes (the unchecked codec path: no host read)."""
        self.frames_in += plan.frames_in
        self.silence_frames += plan.silent
        wav = torch.from_numpy(plan.pcm).to(self.device)[:, None, :]
        return self.codec.encode_latent(self.codec.encode_to_latent(wav))[:, : self.n_in]

    def _decode(self, tokens: torch.Tensor | None) -> torch.Tensor | None:
        """tokens [B, 1 + dep_q, 1] -> PCM [B, 1920] (rows not ready yet decode code 0 and are not published)."""
        if tokens is None:
            return None
        audio = tokens[:, 1:]
        audio = torch.where(audio == UNGENERATED, 0, audio)
        return self.codec.decode_latent(self.codec.quantizer.decode(audio))[:, 0]

    def _after_first(self, plan: TickPlan) -> None:
        if plan.first.any():  # the throw-away first frame: restart the slot's codec (reference §3.1)
            self.codec.reset_streaming(torch.from_numpy(plan.first).to(self.device))

    def _publish(self, plan: TickPlan, tokens: torch.Tensor | None, pcm: torch.Tensor | None) -> None:
        if tokens is None:
            return
        cfg = self.lm.config
        text = tokens[:, 0, 0].cpu().numpy()  # the tick's one host read (with the PCM below)
        pcm = pcm.float().cpu().numpy()
        silent = (text < 0) | (text == cfg.existing_text_padding_id) | (text == cfg.existing_text_end_padding_id)
        for slot in np.flatnonzero(plan.live & (text != UNGENERATED)):
            session = plan.owners[slot]
            event = OutputFrame(pcm=pcm[slot].copy(), text=None if silent[slot] else int(text[slot]),
                                step=int(self._steps[slot]))
            self._steps[slot] += 1
            self.frames_out += 1
            self._send(session, event)

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

    # ------------------------------------------------------------------ warm-up and the tick thread
    def warmup(self, ticks: int = 4) -> None:
        """Run `ticks` steps on silence for every slot (reference §3.3), then reset all slots."""
        with torch.inference_mode():
            silence = torch.zeros(self.slots, 1, FRAME_SAMPLES, device=self.device)
            for _ in range(ticks):
                codes = self.codec.encode_latent(self.codec.encode_to_latent(silence))[:, : self.n_in]
                self._decode(self.dialogue.generator.step(codes))
            everything = torch.ones(self.slots, dtype=torch.bool, device=self.device)
            self.codec.reset_streaming(everything)
            self.dialogue.reset(everything)

    def start(self) -> None:
        """Run the tick every `interval` seconds on a thread of its own."""
        if self._thread is not None:
            raise RuntimeError("the engine is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="antiphon-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
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
