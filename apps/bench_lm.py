"""`antiphon bench lm`: one streaming generation step of the multistream LM (temporal transformer, text
sampling, the depth transformer's codebook steps with their sampling), antiphon against the
reference on the same weights, at a given batch."""

from __future__ import annotations

import tempfile
import time

import torch

from antiphon.apps.bench_cmd import (ReferenceRunner, add_common_options, compare, device_sync, machine, report,
                                     summarize, take_turns)
from antiphon.apps.help import Formatter

STEP_MS = 80.0  # one step per 12.5 Hz frame

# A Moshi-shaped dialogue model of ~75 M parameters: 8 x 512 temporal transformer, 2 x 256 depformer
# with weights per codebook step, 8 + 8 audio streams, 8000 text tokens, a 3000-step context.
SHAPES = {
    "dialogue-75m": dict(dim=512, num_heads=8, num_layers=8, context=3000, text_card=8000, depformer_dim=256,
                         depformer_num_heads=4, depformer_num_layers=2, depformer_dim_feedforward=int(4.125 * 256)),
}


def register(targets, common) -> None:
    parser = targets.add_parser(
        "lm", parents=common, formatter_class=Formatter, help="streaming LM: one generation step per 80 ms",
        description="Steps the LM's streaming generator as a live session does (user audio codes in; text and "
                    "audio codes sampled out) and reports the time per step, for antiphon and for the "
                    "reference's LMGen with the same weights.",
        epilog="examples:\n"
               "  antiphon bench lm                      # the ~75 M dialogue shape, random weights, batch 1\n"
               "  antiphon bench lm --batch 8 --json lm-b8.json\n"
               "  antiphon bench lm --quantize int8       # antiphon's int8 temporal transformer, the reference in float")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="dialogue-75m", help="model shape (random weights)")
    parser.add_argument("--quantize", choices=("int8", "int4"),
                        help="antiphon's temporal transformer weights quantized after saving (lm/quantize.py); "
                             "the reference keeps the float weights")
    add_common_options(parser, "step")
    parser.set_defaults(run=run)


def time_steps(step, inputs: torch.Tensor, warmup: int, sync=lambda: None) -> list[float]:
    """Call `step` on each [B, K, 1] column of `inputs` [B, K, T]; seconds per timed step."""
    seconds = []
    for i, column in enumerate(inputs.split(1, dim=-1)):
        sync()
        start = time.perf_counter()
        step(column)
        sync()
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    return seconds


def bench_inputs(batch: int, streams: int, steps: int, card: int, seed: int = 0) -> torch.Tensor:
    """Random user audio codes [batch, streams, steps]."""
    return torch.randint(0, card, (batch, streams, steps), generator=torch.Generator().manual_seed(seed))


def run(args) -> int:
    from antiphon.lm import LM, LMConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = LMConfig(**SHAPES[args.shape])
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        lm = LM(config)
        lm.save_pretrained(tmp)
        lm = lm.to(device)
        params = sum(p.numel() for p in lm.parameters())
        if args.quantize:
            from antiphon.lm.quantize import quantize_lm

            quantize_lm(lm, args.quantize)
        reference = None if args.no_reference else ReferenceRunner.start("lm_bench.py", [
            "--checkpoint", tmp, "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
            "--device", args.device, "--threads", str(torch.get_num_threads())])
        inputs = bench_inputs(args.batch, config.n_q - config.dep_q, args.steps + args.warmup, config.card).to(device)

        def session():
            generator = lm.generator(args.batch, rng=torch.Generator(device).manual_seed(0), check_inputs=False)
            return time_steps(generator.step, inputs, args.warmup, device_sync(device)), None

        turns = take_turns(args.rounds, session, reference)
    result = {
        "benchmark": "LM streaming generation step",
        "machine": machine(device),
        "settings": {"shape": args.shape, "parameters": params, "quantize": args.quantize, "batch": args.batch,
                     "steps": args.steps,
                     "warmup": args.warmup, "rounds": args.rounds, "device": str(device),
                     "sampling": "temp 0.8 / top-k 250 audio, temp 0.7 / top-k 25 text"},
        "antiphon": summarize(turns.ours, STEP_MS),
    }
    compare(result, turns.ours, turns.theirs, turns.ratios, STEP_MS, reference)
    quantized = f", {args.quantize} weights" if args.quantize else ""
    report(result, f"LM step, {args.shape} ({params / 1e6:.1f} M parameters{quantized}), batch {args.batch}, {device} "
                   f"({torch.get_num_threads()} threads)", "step", args.json, "lm")
    return 0
