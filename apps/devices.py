"""The `--device` option every command shares."""

from __future__ import annotations

from antiphon.errors import InputError


def parse_device(text: str):
    """"auto" (cuda when available, else cpu) or any torch device name -> torch.device; InputError otherwise.
    (torch is imported here, not at the top: `antiphon --help` stays fast.)"""
    import torch

    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(text)
    except RuntimeError as e:
        raise InputError(f"bad --device {text!r}: {e}") from None
