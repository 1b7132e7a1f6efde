"""The reference side of `antiphon bench codec`: Kyutai's Mimi (the `moshi` package) streaming frame by
frame on the same weights, timed with the same loop. Prints one JSON line. Run by the bench, not by pytest."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from moshi.models import loaders

from antiphon.apps.bench_cmd import bench_audio, summarize, time_frames
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
    p.add_argument("--compare-codes", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = config_beside(args.weights)
    mimi = loaders.get_mimi(args.weights, config.to_kyutai(), device=device, num_codebooks=args.num_codebooks)
    wav = bench_audio(args.batch, args.frames + args.warmup, config.frame_size).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad(), mimi.streaming(args.batch):
        seconds, codes = time_frames(mimi.encode, mimi.decode, wav, config.frame_size, args.warmup, sync)
    result = summarize(seconds, 1000 * config.frame_size / config.sample_rate)
    result["implementation"] = "moshi " + __import__("moshi").__version__
    if args.compare_codes:
        theirs = torch.load(args.compare_codes)
        result["codes_agreement"] = round((theirs == codes.cpu()).float().mean().item(), 5)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
