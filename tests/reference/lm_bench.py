"""The reference side of `antiphon bench lm`: the `moshi` package's LMGen stepping the same weights
(loaded from the checkpoint antiphon saved), timed with the same loop on the same inputs. Run by the
bench, not by pytest: it prints one JSON line when ready, then one per `session` line read on stdin."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from harness import load_lm, parse, reply, sessions
from moshi.models.lm import LMGen

from antiphon.apps.bench_lm import bench_inputs, time_steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    args, device, sync = parse(p)
    config, model = load_lm(args.checkpoint, device)
    inputs = bench_inputs(args.batch, config.n_q - config.dep_q, args.steps + args.warmup, config.card).to(device)
    for _ in sessions():
        generator = LMGen(model, temp=0.8, temp_text=0.7, top_k=250, top_k_text=25)
        with torch.no_grad(), generator.streaming(args.batch):
            reply({"seconds": time_steps(generator.step, inputs, args.warmup, sync)})


if __name__ == "__main__":
    main()
