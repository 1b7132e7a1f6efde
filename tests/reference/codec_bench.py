"""The reference side of `antiphon bench codec`: Kyutai's Mimi (the `moshi` package) streaming frame by
frame on the same weights, timed with the same loop. Run by the bench, not by pytest: it prints one
JSON line when ready, then one per `session` line read on stdin (a fresh streaming session over the
bench audio, its per-frame seconds, and how its codes agree with antiphon's, saved at --codes)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from harness import load_mimi, parse, reply, sessions

from antiphon.apps.bench_codec import bench_audio, time_frames
from antiphon.codec.checkpoint import config_beside


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--frames", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--num-codebooks", type=int, required=True)
    p.add_argument("--codes", type=Path, required=True, help="where antiphon leaves its codes before each session")
    args, device, sync = parse(p)
    mimi = load_mimi(args.weights, device, args.num_codebooks)
    frame_size = config_beside(args.weights).frame_size
    wav = bench_audio(args.batch, args.frames + args.warmup, frame_size).to(device)
    for _ in sessions():
        with torch.no_grad(), mimi.streaming(args.batch):
            seconds, codes = time_frames(mimi.encode, mimi.decode, wav, frame_size, args.warmup, sync)
        theirs = torch.load(args.codes)
        reply({"seconds": seconds, "codes_agreement": round((theirs == codes.cpu()).float().mean().item(), 5)})


if __name__ == "__main__":
    main()
