"""The reference side of `antiphon bench serve`'s density mode (apps/bench_density.py): the `moshi` package
serving N sessions as one batch every 80 ms tick: Mimi encode of the N frames, LMGen.step, Mimi decode of
the step's audio codes (STT: no decode), on the same weights (the LM checkpoint and codec weights antiphon
saved, loaded in the run's dtype; Mimi in float32), the same sampling and the same speech-like audio,
timed per tick with the same untimed ticks first. Run by the bench, not by pytest: it prints one JSON line
when ready, then, for each `session` line read on stdin, serves the next count of --slots and prints its
per-tick seconds, or {"seconds": [], "error": "out of memory"}."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from harness import load_lm, load_mimi, parse, reply, sessions
from moshi.models.lm import LMGen

from antiphon.apps.bench_density import DTYPES, sampling_for
from antiphon.apps.bench_serve import bench_frames
from antiphon.streaming.tasks import task_of
from tests.lm.reference import reference_conditions


def serve(model, mimi, config, slots: int, frames: torch.Tensor, warmup: int, decode: bool, sync) -> list[float]:
    """`slots` sessions as one batch for len(frames) ticks; seconds per tick after `warmup`."""
    conditions = None
    if model.condition_provider is not None:  # Hibiki: the quality label antiphon's Translator gives
        conditions = reference_conditions(model, {"description": ["very_good"] * slots})
    generator = LMGen(model, condition_tensors=conditions, **sampling_for(config))
    step = generator.step_with_extra_heads if config.extra_heads_num_heads else generator.step  # STT: its VAD
    seconds = []
    with torch.no_grad(), mimi.streaming(slots), generator.streaming(slots):
        for i, frame in enumerate(frames):
            wav = frame.expand(slots, 1, -1)
            sync()
            start = time.perf_counter()
            tokens = step(mimi.encode(wav))
            if decode and tokens is not None:
                mimi.decode(tokens[:, 1:])
            sync()
            if i >= warmup:
                seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--dtype", choices=sorted(DTYPES), required=True)
    p.add_argument("--slots", required=True, help="session counts, one per `session` command, in order")
    p.add_argument("--ticks", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    args, device, sync = parse(p)
    config, model = load_lm(args.checkpoint, device, DTYPES[args.dtype])
    mimi = load_mimi(args.weights, device, config.codec_num_codebooks)
    frames = torch.from_numpy(bench_frames(args.warmup + args.ticks)).to(device)[:, None, None, :]  # [F, 1, 1, 1920]
    decode = task_of(SimpleNamespace(config=config)) != "stt"
    counts = [int(n) for n in args.slots.split(",")]
    for _ in sessions():
        if not counts:
            continue
        try:
            reply({"seconds": serve(model, mimi, config, counts.pop(0), frames, args.warmup, decode, sync)})
        except torch.OutOfMemoryError:
            reply({"seconds": [], "error": "out of memory"})
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
