"""`antiphon bench`: measured performance, printed and written as JSON.

Each target (one module: bench_codec, bench_lm, bench_serve) times antiphon against the reference implementation
with the same weights, in the same run. The reference side runs in a child process from
tests/reference/ (antiphon itself never imports the reference package); without it the figures are
antiphon's alone. The two take turns, one session each per round, so that a slow spell of a shared
machine hits both: the speedup is the median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from antiphon.apps.help import Formatter

logger = logging.getLogger(__name__)

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "tests" / "reference"


def register(subparsers, common: list[argparse.ArgumentParser]) -> None:
    from antiphon.apps import bench_codec, bench_lm, bench_serve

    bench = subparsers.add_parser(
        "bench", parents=common, formatter_class=Formatter, help="measure performance (prints, writes JSON)",
        description="Benchmarks. Each prints a table and writes its figures as JSON; ratios are against the "
                    "reference implementation measured in the same run, on the same weights.")
    targets = bench.add_subparsers(title="targets", metavar="TARGET", dest="target", required=True)
    for module in (bench_codec, bench_lm, bench_serve):
        module.register(targets, common)


def add_common_options(parser: argparse.ArgumentParser, unit: str, default_rounds: int = 3,
                       per_session: bool = True) -> None:
    """The options every target shares; `per_session=False` leaves out --<unit>s and --batch (a target
    that sizes its sessions otherwise, e.g. in seconds and slots)."""
    if per_session:
        parser.add_argument(f"--{unit}s", dest="steps", type=int, default=40,
                            help=f"timed {unit}s per session (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help=f"untimed {unit}s first (default 5)")
    parser.add_argument("--rounds", type=int, default=default_rounds,
                        help=f"sessions per implementation, taking turns (default {default_rounds})")
    if per_session:
        parser.add_argument("--batch", type=int, default=1, help="streams served together (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference implementation")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="where to write the results (default bench-results/<target>-<time>.json)")


def summarize(seconds: list[float], period_ms: float) -> dict:
    """Per-step times -> median, mean, p90 (ms) and real-time factor against a `period_ms` budget."""
    ms = sorted(s * 1000 for s in seconds)
    median = statistics.median(ms)
    return {
        "steps": len(ms),
        "ms_median": round(median, 3),
        "ms_mean": round(statistics.fmean(ms), 3),
        "ms_p90": round(ms[int(0.9 * (len(ms) - 1))], 3),
        "real_time_factor": round(period_ms / median, 3),  # > 1: faster than real time
    }


def device_sync(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


class ReferenceRunner:
    """A reference implementation in a child process: it prints one JSON line when ready, then one per
    `session` call (a fresh streaming session, its per-step seconds and whatever it checks)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.implementation = self._read()["implementation"]

    @classmethod
    def start(cls, script: str, arguments: list[str]) -> "ReferenceRunner | str":
        """The runner, or why there is none."""
        path = REFERENCE_DIR / script
        if not path.is_file():
            return f"reference runner not found at {path} (run from a source checkout)"
        cmd = [sys.executable, str(path), *arguments]
        logger.info("starting the reference: %s", " ".join(cmd))
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        try:
            return cls(proc)
        except RuntimeError as e:
            return str(e)

    def session(self) -> dict:
        self.proc.stdin.write("session\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            tail = self.proc.stderr.read().strip().splitlines()[-1:] or ["(no output)"]
            raise RuntimeError(f"reference failed: {tail[0]}")
        return json.loads(line)


@dataclass
class Turns:
    """Per-step seconds of every session of each side, the per-round speedups, the reference's replies."""

    ours: list[float] = field(default_factory=list)
    theirs: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    replies: list[dict] = field(default_factory=list)


def take_turns(rounds: int, session, reference, share=lambda payload: None) -> Turns:
    """Run `session()` -> (seconds per step, payload) and, when `reference` is a runner, one reference
    session after each (`share(payload)` first, e.g. to leave antiphon's codes for it to compare);
    closes the runner at the end."""
    turns = Turns()
    try:
        for _ in tqdm(range(rounds), desc="rounds", leave=False):
            seconds, payload = session()
            turns.ours += seconds
            if isinstance(reference, ReferenceRunner):
                share(payload)
                reply = reference.session()
                turns.theirs += reply["seconds"]
                turns.replies.append(reply)
                turns.ratios.append(statistics.median(reply["seconds"]) / statistics.median(seconds))
    finally:
        if isinstance(reference, ReferenceRunner):
            reference.close()
    return turns


def compare(result: dict, ours: list[float], theirs: list[float], ratios: list[float], period_ms: float,
            reference, extra: dict | None = None) -> dict:
    """Add the reference's figures and the speedup to `result` (reference: a runner or why none)."""
    if ratios:
        result["reference"] = {**summarize(theirs, period_ms), "implementation": reference.implementation,
                               **(extra or {})}
        result["speedup_per_round"] = [round(x, 2) for x in ratios]
        result["speedup_vs_reference"] = round(statistics.median(ratios), 2)
    elif reference is not None:
        result["reference"] = {"skipped": reference}
    return result


def machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "processor": _cpu_name(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def report(result: dict, title: str, unit: str, path: Path | None, target: str, note: str = "") -> None:
    """Print the table and write the JSON."""
    print(title)
    print(f"  {'':10s} {f'median ms/{unit}':>16s} {'p90 ms':>8s} {'x real time':>12s}")
    rows = [("antiphon", result["antiphon"])]
    ref = result.get("reference", {})
    if "ms_median" in ref:
        rows.append(("reference", ref))
    for name, r in rows:
        print(f"  {name:10s} {r['ms_median']:16.2f} {r['ms_p90']:8.2f} {r['real_time_factor']:12.2f}")
    if "speedup_vs_reference" in result:
        print(f"  antiphon is {result['speedup_vs_reference']:.2f}x faster than the reference (median of rounds "
              f"{', '.join(f'{x:.2f}' for x in result['speedup_per_round'])}){note}")
    elif "skipped" in ref:
        print(f"  reference: {ref['skipped']}")
    write_json(result, path, target)


def write_json(result: dict, path: Path | None, target: str) -> None:
    """Write `result` to `path` (default bench-results/<target>-<time>.json) and say where."""
    path = path or Path("bench-results") / f"{target}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  wrote {path}")
