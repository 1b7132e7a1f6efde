"""Engine and server counters, and their Prometheus text form (`/metrics`).

`TickStats` keeps the durations of the last `window` ticks that did work (a histogram-like summary:
count, p50, p99, max) and counts overruns: ticks longer than the tick interval (the tick is late and
every session's audio with it). Thread-safe enough for one writer (the tick thread) and many readers:
readers copy the window first.
"""

from __future__ import annotations

from collections import Counter, deque

import numpy as np


class TickStats:
    def __init__(self, interval: float, window: int = 1024):
        self.interval = interval  # seconds
        self.count = 0  # ticks that did work
        self.overruns = 0  # ticks longer than `interval`
        self.total = 0.0  # seconds, all ticks
        self._recent: deque[float] = deque(maxlen=window)

    def record(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self._recent.append(seconds)
        if seconds > self.interval:
            self.overruns += 1

    def summary(self) -> dict:
        """{count, overruns, p50_s, p99_s, max_s, mean_s} over the recent window (0 before the first tick)."""
        recent = np.array(list(self._recent), dtype=np.float64)
        q = (lambda p: float(np.percentile(recent, p))) if recent.size else (lambda p: 0.0)
        return {"count": self.count, "overruns": self.overruns, "p50_s": q(50), "p99_s": q(99),
                "max_s": float(recent.max()) if recent.size else 0.0,
                "mean_s": self.total / self.count if self.count else 0.0}


def prometheus(engine, errors: Counter, queued: int = 0) -> str:
    """The Prometheus text exposition of the engine's state, the sessions waiting for a slot and the
    server's errors by kind."""
    ticks = engine.stats.summary()
    lines = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP antiphon_{name} {help_}")
        lines.append(f"# TYPE antiphon_{name} {kind}")
        lines.extend(f"antiphon_{name}{labels} {value:g}" for labels, value in samples)

    metric("live_sessions", "gauge", "Sessions holding a slot.", [("", engine.scheduler.live_sessions)])
    metric("free_slots", "gauge", "Slots free for a new session.", [("", engine.scheduler.free_slots)])
    metric("slots", "gauge", "Slots of the engine.", [("", engine.scheduler.slots)])
    metric("queued_sessions", "gauge", "Sessions waiting for a free slot.", [("", queued)])
    metric("tick_seconds", "summary", "Duration of the engine ticks that did work (recent window).",
           [('{quantile="0.5"}', ticks["p50_s"]), ('{quantile="0.99"}', ticks["p99_s"]),
            ("_sum", engine.stats.total), ("_count", ticks["count"])])
    metric("tick_interval_seconds", "gauge", "Target tick interval.", [("", engine.interval)])
    metric("tick_overruns_total", "counter", "Ticks longer than the tick interval.", [("", ticks["overruns"])])
    metric("frames_in_total", "counter", "80 ms frames received from clients.", [("", engine.frames_in)])
    metric("frames_out_total", "counter", "80 ms frames sent to sessions.", [("", engine.frames_out)])
    metric("silence_frames_total", "counter", "Frames of silence given to live slots with no input in time.",
           [("", engine.silence_frames)])
    metric("dropped_frames_total", "counter", "Input frames dropped from an over-long backlog.",
           [("", engine.scheduler.dropped_frames)])
    metric("engine_failed", "gauge", "1 once the engine has failed.", [("", int(engine.failed is not None))])
    kinds = sorted(errors) or ["none"]
    metric("errors_total", "counter", "Sessions closed on an error, by kind.",
           [(f'{{kind="{k}"}}', errors.get(k, 0)) for k in kinds])
    return "\n".join(lines) + "\n"
