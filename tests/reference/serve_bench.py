"""The reference side of `antiphon bench serve`: what the `moshi` package's server does for its one session
every 80 ms frame: Mimi encode, LMGen.step, Mimi decode of the step's audio codes (moshi/server.py), on
the same weights (the LM checkpoint and codec weights antiphon saved), the same sampling and the same
speech-like audio, timed per frame (no network, no Opus). Run by the bench, not by pytest: it prints one
JSON line when ready, then one per `session` line read on stdin (a fresh session: per-frame seconds)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for tests.lm.reference

from moshi.models import loaders  # noqa: E402
from moshi.models.lm import LMGen  # noqa: E402

from antiphon.apps.bench_serve import SAMPLING, bench_frames  # noqa: E402
from antiphon.codec.checkpoint import config_beside  # noqa: E402
from antiphon.lm import LMConfig  # noqa: E402
from tests.lm.reference import reference_kwargs  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--frames", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = LMConfig.from_json(args.checkpoint / "config.json")
    model = loaders.get_moshi_lm(args.checkpoint / config.moshi_name, lm_kwargs=reference_kwargs(config),
                                 device=device, dtype=torch.float32)
    codec_config = config_beside(args.weights)
    mimi = loaders.get_mimi(args.weights, codec_config.to_kyutai(), device=device,
                            num_codebooks=config.n_q - config.dep_q)
    frames = torch.from_numpy(bench_frames(args.warmup + args.frames)).to(device)[:, None, None, :]  # [F, 1, 1, 1920]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(json.dumps({"implementation": "moshi " + __import__("moshi").__version__}), flush=True)
    for command in sys.stdin:
        if command.strip() != "session":
            continue
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
        print(json.dumps({"seconds": seconds}), flush=True)


if __name__ == "__main__":
    main()
