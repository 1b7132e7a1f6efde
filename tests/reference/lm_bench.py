"""The reference side of `antiphon bench lm`: the `moshi` package's LMGen stepping the same weights
(loaded from the checkpoint antiphon saved), timed with the same loop on the same inputs. Run by the
bench, not by pytest: it prints one JSON line when ready, then one per `session` line read on stdin."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for tests.lm.reference

from moshi.models import loaders  # noqa: E402
from moshi.models.lm import LMGen  # noqa: E402

from antiphon.apps.bench_lm import bench_inputs, time_steps  # noqa: E402
from antiphon.lm import LMConfig  # noqa: E402
from tests.lm.reference import reference_kwargs  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = LMConfig.from_json(args.checkpoint / "config.json")
    model = loaders.get_moshi_lm(args.checkpoint / config.moshi_name, lm_kwargs=reference_kwargs(config),
                                 device=device, dtype=torch.float32)
    inputs = bench_inputs(args.batch, config.n_q - config.dep_q, args.steps + args.warmup, config.card).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(json.dumps({"implementation": "moshi " + __import__("moshi").__version__}), flush=True)
    for command in sys.stdin:
        if command.strip() != "session":
            continue
        generator = LMGen(model, temp=0.8, temp_text=0.7, top_k=250, top_k_text=25)
        with torch.no_grad(), generator.streaming(args.batch):
            seconds = time_steps(generator.step, inputs, args.warmup, sync)
        print(json.dumps({"seconds": seconds}), flush=True)


if __name__ == "__main__":
    main()
