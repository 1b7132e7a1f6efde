"""What the reference sides of `antiphon bench` share: their common options (--device, --threads), the
`moshi` package's loaders on the weights antiphon saved, and the exchange with the bench: one JSON line
naming the implementation when ready, then one JSON reply per `session` line read on stdin."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import moshi
import torch
from moshi.models import loaders

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for tests.lm.reference

from antiphon.codec.checkpoint import config_beside  # noqa: E402
from antiphon.lm import LMConfig  # noqa: E402
from tests.lm.reference import reference_kwargs  # noqa: E402


def parse(p: argparse.ArgumentParser) -> tuple[argparse.Namespace, torch.device, Callable[[], None]]:
    """The script's options plus --device and --threads (applied) -> (args, device, sync)."""
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return args, device, sync


def load_lm(checkpoint: Path, device: torch.device, dtype: torch.dtype = torch.float32):
    """(antiphon's LMConfig, the reference LM) from a checkpoint directory antiphon saved."""
    config = LMConfig.from_json(checkpoint / "config.json")
    model = loaders.get_moshi_lm(checkpoint / config.moshi_name, lm_kwargs=reference_kwargs(config),
                                 device=device, dtype=dtype)
    return config, model


def load_mimi(weights: Path, device: torch.device, num_codebooks: int):
    """The reference Mimi on codec weights antiphon saved (its config beside them)."""
    return loaders.get_mimi(weights, config_beside(weights).to_kyutai(), device=device, num_codebooks=num_codebooks)


def sessions() -> Iterator[None]:
    """Say ready, then yield once per `session` line on stdin (answer each with `reply`)."""
    reply({"implementation": f"moshi {moshi.__version__}"})
    for command in sys.stdin:
        if command.strip() == "session":
            yield


def reply(message: dict) -> None:
    print(json.dumps(message), flush=True)
