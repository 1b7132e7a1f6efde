"""The reference side of `antiphon bench codec`: Kyutai's Mimi (the `moshi` package) streaming frame by
frame on the same weights, timed with the same loop. Run by the bench, not by pytest: it prints one
JSON line when ready, then one per `session` line read on stdin (a fresh streaming session over the
bench audio, its per-frame seconds, and how its codes agree with antiphon's, saved at --codes)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from moshi.models import loaders

from antiphon.apps.bench_codec import bench_audio, time_frames
from antiphon.codec.checkpoint import config_beside


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--frames", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--num-codebooks", type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--codes", type=Path, required=True, help="where antiphon leaves its codes before each session")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = config_beside(args.weights)
    mimi = loaders.get_mimi(args.weights, config.to_kyutai(), device=device, num_codebooks=args.num_codebooks)
    wav = bench_audio(args.batch, args.frames + args.warmup, config.frame_size).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(json.dumps({"implementation": "moshi " + __import__("moshi").__version__}), flush=True)
    for command in sys.stdin:
        if command.strip() != "session":
            continue
        with torch.no_grad(), mimi.streaming(args.batch):
            seconds, codes = time_frames(mimi.encode, mimi.decode, wav, config.frame_size, args.warmup, sync)
        theirs = torch.load(args.codes)
        agreement = (theirs == codes.cpu()).float().mean().item()
        print(json.dumps({"seconds": seconds, "codes_agreement": round(agreement, 5)}), flush=True)


if __name__ == "__main__":
    main()
