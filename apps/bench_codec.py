"""`antiphon bench codec`: the codec streaming frame by frame (encode, then decode of the codes, one
80 ms frame per call, as a live session does), antiphon against the reference on the same weights."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from antiphon.apps.bench_cmd import (ReferenceRunner, add_common_options, compare, device_sync, machine, report,
                                     summarize, take_turns)
from antiphon.apps.help import Formatter


def register(targets, common) -> None:
    parser = targets.add_parser(
        "codec", parents=common, formatter_class=Formatter,
        help="streaming codec: encode + decode per 80 ms frame",
        description="Streams audio through the codec one frame (1920 samples, 80 ms) at a time: encode, "
                    "then decode of the codes, as a live session does. Reports the time per frame and the "
                    "real-time factor, for antiphon and for the reference with the same weights.",
        epilog="examples:\n"
               "  antiphon bench codec                       # full-size Mimi, random weights, batch 1\n"
               "  antiphon bench codec --batch 4 --frames 100 --json codec-b4.json\n"
               "  antiphon bench codec --quantize int8           # antiphon's int8 codec against the float reference\n"
               "  antiphon bench codec --model kyutai/moshiko-pytorch-bf16 --no-reference")
    parser.add_argument("--model", metavar="SOURCE", help="codec weights (default: random weights at the full Mimi size)")
    parser.add_argument("--num-codebooks", type=int, default=8, help="codebooks (default 8)")
    parser.add_argument("--quantize", choices=("int8",),
                        help="antiphon's codec with int8 weights at the latent rate (Codec.quantize); the "
                             "reference keeps the float weights")
    add_common_options(parser, "frame")
    parser.set_defaults(run=run)


def bench_audio(batch: int, frames: int, frame_size: int = 1920, seed: int = 0) -> torch.Tensor:
    """Speech-like test signal (harmonics with a moving pitch, plus noise), [batch, 1, frames * frame_size]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames * frame_size) / 24000
    pitch = 120 + 40 * torch.sin(2 * torch.pi * 0.5 * t)
    phase = 2 * torch.pi * torch.cumsum(pitch, 0) / 24000
    wav = sum(torch.sin(h * phase) / h for h in range(1, 6)) * 0.2
    return (wav + 0.02 * torch.randn(batch, 1, t.numel(), generator=g)).float()


def time_frames(encode, decode, wav: torch.Tensor, frame_size: int, warmup: int,
                sync=lambda: None) -> tuple[list[float], torch.Tensor]:
    """Encode then decode each frame of `wav`; returns seconds per timed frame and all codes [B, K, F]."""
    seconds, codes = [], []
    for i, frame in enumerate(wav.split(frame_size, dim=-1)):
        sync()
        start = time.perf_counter()
        c = encode(frame)
        decode(c)
        sync()
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
        codes.append(c)
    return seconds, torch.cat(codes, dim=-1)


def run(args) -> int:
    from antiphon.codec import Codec

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        codes_path = Path(tmp) / "antiphon-codes.pt"  # antiphon's codes, for the reference to compare
        if args.model:
            codec = Codec.from_pretrained(args.model, num_codebooks=args.num_codebooks, device=device,
                                          quantize=args.quantize)
            reference = None if args.no_reference else "--model given: the reference runs on random full-size weights only"
        else:
            torch.manual_seed(0)
            codec = Codec(num_codebooks=args.num_codebooks)
            weights = codec.save_pretrained(tmp)
            codec = codec.to(device)
            if args.quantize:
                codec.quantize(args.quantize)
            reference = None if args.no_reference else ReferenceRunner.start("codec_bench.py", [
                "--weights", str(weights), "--frames", str(args.steps), "--warmup", str(args.warmup),
                "--batch", str(args.batch), "--num-codebooks", str(args.num_codebooks), "--device", args.device,
                "--threads", str(torch.get_num_threads()), "--codes", str(codes_path)])
        wav = bench_audio(args.batch, args.steps + args.warmup, codec.frame_size).to(device)
        frame_ms = 1000 * codec.frame_size / codec.sample_rate

        def session():
            with codec.streaming(args.batch):
                return time_frames(codec.encode, codec.decode, wav, codec.frame_size, args.warmup, device_sync(device))

        turns = take_turns(args.rounds, session, reference, share=lambda codes: torch.save(codes.cpu(), codes_path))
    agreement = [reply["codes_agreement"] for reply in turns.replies]
    result = {
        "benchmark": "codec streaming encode+decode per frame",
        "machine": machine(device),
        "settings": {"batch": args.batch, "frames": args.steps, "warmup": args.warmup, "rounds": args.rounds,
                     "num_codebooks": args.num_codebooks, "model": args.model or "random (full Mimi size)",
                     "quantize": args.quantize,
                     "device": str(device)},
        "antiphon": summarize(turns.ours, frame_ms),
    }
    compare(result, turns.ours, turns.theirs, turns.ratios, frame_ms, reference,
            {"codes_agreement": min(agreement)} if agreement else None)
    note = f"; codes agree on {100 * min(agreement):.2f}%" if agreement else ""
    quantized = f", {args.quantize} weights" if args.quantize else ""
    report(result, f"codec streaming, batch {args.batch}, {args.num_codebooks} codebooks{quantized}, {device} "
                   f"({torch.get_num_threads()} threads)", "frame", args.json, "codec", note)
    return 0
