"""`antiphon bench`: measured performance, printed and written as JSON.

`antiphon bench codec`: the codec streaming frame by frame (encode + decode of one 80 ms frame per
call), antiphon against the reference implementation with the same weights, in the same run. The
reference side runs in a child process from tests/reference/ (antiphon itself never imports the
reference package); without it the figures are antiphon's alone. The two take turns, one streaming
session each per round, so that a slow spell of a shared machine hits both: the speedup is the
median of the rounds' ratios.
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
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from antiphon.apps.help import Formatter

logger = logging.getLogger(__name__)

REFERENCE_RUNNER = Path(__file__).resolve().parents[1] / "tests" / "reference" / "codec_bench.py"


def register(subparsers, common: list[argparse.ArgumentParser]) -> None:
    bench = subparsers.add_parser(
        "bench", parents=common, formatter_class=Formatter, help="measure performance (prints, writes JSON)",
        description="Benchmarks. Each prints a table and writes its figures as JSON; ratios are against the "
                    "reference implementation measured in the same run.")
    targets = bench.add_subparsers(title="targets", metavar="TARGET", dest="target", required=True)
    codec = targets.add_parser(
        "codec", parents=common, formatter_class=Formatter,
        help="streaming codec: encode + decode per 80 ms frame",
        description="Streams audio through the codec one frame (1920 samples, 80 ms) at a time: encode, "
                    "then decode of the codes, as a live session does. Reports the time per frame and the "
                    "real-time factor, for antiphon and for the reference with the same weights.",
        epilog="examples:\n"
               "  antiphon bench codec                       # full-size Mimi, random weights, batch 1\n"
               "  antiphon bench codec --batch 4 --frames 100 --json codec-b4.json\n"
               "  antiphon bench codec --model kyutai/moshiko-pytorch-bf16 --no-reference")
    codec.add_argument("--model", metavar="SOURCE", help="codec weights (default: random weights at the full Mimi size)")
    codec.add_argument("--frames", type=int, default=40, help="timed frames per session (default 40)")
    codec.add_argument("--rounds", type=int, default=3, help="sessions per implementation, taking turns (default 3)")
    codec.add_argument("--warmup", type=int, default=5, help="untimed frames first (default 5)")
    codec.add_argument("--batch", type=int, default=1, help="streams encoded together (default 1)")
    codec.add_argument("--num-codebooks", type=int, default=8, help="codebooks (default 8)")
    codec.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    codec.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    codec.add_argument("--no-reference", action="store_true", help="skip the reference implementation")
    codec.add_argument("--json", type=Path, default=None, metavar="PATH",
                       help="where to write the results (default bench-results/codec-<time>.json)")
    codec.set_defaults(run=run_codec)


# ---------------------------------------------------------------------- shared by both sides
def bench_audio(batch: int, frames: int, frame_size: int = 1920, seed: int = 0) -> torch.Tensor:
    """Speech-like test signal (harmonics with a moving pitch, plus noise), [batch, 1, frames * frame_size]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames * frame_size) / 24000
    pitch = 120 + 40 * torch.sin(2 * torch.pi * 0.5 * t)
    phase = 2 * torch.pi * torch.cumsum(pitch, 0) / 24000
    wav = sum(torch.sin(h * phase) / h for h in range(1, 6)) * 0.2
    return (wav + 0.02 * torch.randn(batch, 1, t.numel(), generator=g)).float()


def time_frames(encode, decode, wav: torch.Tensor, frame_size: int, warmup: int, sync=lambda: None,
                progress: str | None = None) -> tuple[list[float], torch.Tensor]:
    """Encode then decode each frame of `wav`; returns seconds per timed frame and all codes [B, K, F]."""
    frames = list(wav.split(frame_size, dim=-1))
    seconds, codes = [], []
    for i, frame in enumerate(tqdm(frames, desc=progress, disable=progress is None, leave=False)):
        sync()
        start = time.perf_counter()
        c = encode(frame)
        decode(c)
        sync()
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
        codes.append(c)
    return seconds, torch.cat(codes, dim=-1)


def summarize(seconds: list[float], frame_ms: float) -> dict:
    ms = sorted(s * 1000 for s in seconds)
    median = statistics.median(ms)
    return {
        "frames": len(ms),
        "ms_per_frame_median": round(median, 3),
        "ms_per_frame_mean": round(statistics.fmean(ms), 3),
        "ms_per_frame_p90": round(ms[int(0.9 * (len(ms) - 1))], 3),
        "real_time_factor": round(frame_ms / median, 3),  # > 1: faster than real time
    }


# ---------------------------------------------------------------------- antiphon side
def run_codec(args) -> int:
    from antiphon.codec import Codec

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            codec = Codec.from_pretrained(args.model, num_codebooks=args.num_codebooks, device=device)
            weights = None
        else:
            torch.manual_seed(0)
            codec = Codec(num_codebooks=args.num_codebooks)
            weights = codec.save_pretrained(tmp)
            codec = codec.to(device)
        wav = bench_audio(args.batch, args.frames + args.warmup, codec.frame_size).to(device)
        frame_ms = 1000 * codec.frame_size / codec.sample_rate
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        reference = None if args.no_reference else ReferenceRunner.start(args, weights, tmp)
        ours, theirs, ratios, agreement = [], [], [], []
        try:
            for r in tqdm(range(args.rounds), desc="rounds", leave=False):
                with codec.streaming(args.batch):
                    seconds, codes = time_frames(codec.encode, codec.decode, wav, codec.frame_size, args.warmup, sync)
                ours += seconds
                if isinstance(reference, ReferenceRunner):
                    ref = reference.session(codes)
                    theirs += ref["seconds"]
                    agreement.append(ref["codes_agreement"])
                    ratios.append(statistics.median(ref["seconds"]) / statistics.median(seconds))
        finally:
            if isinstance(reference, ReferenceRunner):
                reference.close()
    result = {
        "benchmark": "codec streaming encode+decode per frame",
        "machine": _machine(device),
        "settings": {"batch": args.batch, "frames": args.frames, "warmup": args.warmup, "rounds": args.rounds,
                     "num_codebooks": args.num_codebooks, "model": args.model or "random (full Mimi size)",
                     "device": str(device), "torch_threads": torch.get_num_threads()},
        "antiphon": summarize(ours, frame_ms),
    }
    if ratios:
        result["reference"] = {**summarize(theirs, frame_ms), "implementation": reference.implementation,
                               "codes_agreement": min(agreement)}
        result["speedup_per_round"] = [round(x, 2) for x in ratios]
        result["speedup_vs_reference"] = round(statistics.median(ratios), 2)
    elif reference is not None:
        result["reference"] = {"skipped": reference}
    _report(result, args.json or Path("bench-results") / f"codec-{time.strftime('%Y%m%d-%H%M%S')}.json")
    return 0


class ReferenceRunner:
    """The reference codec in a child process (tests/reference/codec_bench.py): one streaming session
    per `session` call, over the same audio and weights, timed with the same loop."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.implementation = self._read()["implementation"]

    @classmethod
    def start(cls, args, weights: Path | None, tmp: str) -> "ReferenceRunner | str":
        """The runner, or why there is none."""
        if weights is None:
            return "--model given: the reference runs on the random full-size weights only"
        if not REFERENCE_RUNNER.is_file():
            return f"reference runner not found at {REFERENCE_RUNNER} (run from a source checkout)"
        cmd = [sys.executable, str(REFERENCE_RUNNER), "--weights", str(weights), "--frames", str(args.frames),
               "--warmup", str(args.warmup), "--batch", str(args.batch), "--num-codebooks", str(args.num_codebooks),
               "--device", args.device, "--threads", str(torch.get_num_threads()), "--codes-dir", tmp]
        logger.info("starting the reference: %s", " ".join(cmd))
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        try:
            return cls(proc)
        except RuntimeError as e:
            return str(e)

    def session(self, codes: torch.Tensor) -> dict:
        path = Path(self.proc.args[self.proc.args.index("--codes-dir") + 1]) / "antiphon-codes.pt"
        torch.save(codes.cpu(), path)
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


def _machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "processor": _cpu_name()}
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


def _report(result: dict, path: Path) -> None:
    a = result["antiphon"]
    print(f"codec streaming, batch {result['settings']['batch']}, {result['settings']['num_codebooks']} codebooks, "
          f"{result['settings']['device']} ({result['settings']['torch_threads']} threads)")
    print(f"  {'':10s} {'median ms':>10s} {'p90 ms':>8s} {'x real time':>12s}")
    rows = [("antiphon", a)]
    ref = result.get("reference", {})
    if "ms_per_frame_median" in ref:
        rows.append(("reference", ref))
    for name, r in rows:
        print(f"  {name:10s} {r['ms_per_frame_median']:10.2f} {r['ms_per_frame_p90']:8.2f} {r['real_time_factor']:12.2f}")
    if "speedup_vs_reference" in result:
        print(f"  antiphon is {result['speedup_vs_reference']:.2f}x faster than the reference (median of rounds "
              f"{', '.join(f'{x:.2f}' for x in result['speedup_per_round'])}; codes agree on "
              f"{100 * ref['codes_agreement']:.2f}%)")
    elif "skipped" in ref:
        print(f"  reference: {ref['skipped']}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  wrote {path}")
