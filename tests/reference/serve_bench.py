"""The reference side of `antiphon bench serve`: what the `moshi` package's server does for its one session
every 80 ms frame: Mimi encode, LMGen.step, Mimi decode of the step's audio codes (moshi/server.py), on
the same weights (the LM checkpoint and codec weights antiphon saved), the same sampling and the same
speech-like audio, timed per frame (no network, no Opus). Run by the bench, not by pytest: it prints one
JSON line when ready, then one per `session` line read on stdin (a fresh session: per-frame seconds)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from harness import load_lm, load_mimi, parse, reply, sessions
from moshi.models.lm import LMGen

from antiphon.apps.bench_serve import SAMPLING, bench_frames


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--frames", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    args, device, sync = parse(p)
    config, model = load_lm(args.checkpoint, device)
    mimi = load_mimi(args.weights, device, config.n_q - config.dep_q)
    frames = torch.from_numpy(bench_frames(args.warmup + args.frames)).to(device)[:, None, None, :]  # [F, 1, 1, 1920]
    for _ in sessions():
        generator = LMGen(model, temp=SAMPLING["temp"], temp_text=SAMPLING["temp_text"], top_k=SAMPLING["top_k"],
                          top_k_text=SAMPLING["top_k_text"])
        seconds = []
        with torch.no_grad(), mimi.streaming(1), generator.streaming(1):
            for i, frame in enumerate(frames):
                sync()
                start = time.perf_counter()
                codes = mimi.encode(frame)
                for c in range(codes.shape[-1]):  # as moshi/server.py
                    tokens = generator.step(codes[:, :, c:c + 1])
                    if tokens is not None:
                        mimi.decode(tokens[:, 1:])
                sync()
                if i >= args.warmup:
                    seconds.append(time.perf_counter() - start)
        reply({"seconds": seconds})


if __name__ == "__main__":
    main()
