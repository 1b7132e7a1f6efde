"""Reading checkpoint files, shared by every model: JSON configs, safetensors, and the check that a
state dict fits a model (every missing, unexpected or misshaped tensor named)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from antiphon.errors import CheckpointError


class HubRepo:
    """Files of a Hugging Face repo, through huggingface_hub and its cache. The first connection failure
    switches to the local cache only, so that an offline machine answers at once after one try."""

    def __init__(self, repo_id: str):
        self.repo_id = repo_id
        self.offline = False  # the hub could not be reached

    def fetch(self, name: str) -> Path | None:
        """The local path of `name`, or None when the repo has no such file (or, offline, the cache)."""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

        try:
            return Path(hf_hub_download(self.repo_id, name, local_files_only=self.offline))
        except LocalEntryNotFoundError:  # no connection and not in the cache (a subclass of the next)
            self.offline = True
            return None
        except EntryNotFoundError:
            return None
        except HfHubHTTPError as e:
            raise CheckpointError(f"cannot fetch {name} from the Hugging Face hub repo {self.repo_id}: {e}") from None

    def missing(self, what: str) -> CheckpointError:
        """The error for a file that did not come: unreachable hub, or absent from the repo."""
        if self.offline:
            return CheckpointError(f"{self.repo_id}: the Hugging Face hub cannot be reached and {what} is not in "
                                   f"the local cache; give a local path instead")
        return CheckpointError(f"repo {self.repo_id} has no {what}")


def read_json(path: str | Path, what: str) -> dict:
    """A JSON object from `path`; CheckpointError naming `what` ("codec config", ...) otherwise."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{what} not found: {path}") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {what} {path}: {e}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{what} {path} is not a JSON object")
    return value


class KyutaiJsonConfig:
    """`from_json` / `save_json` for a config class with `from_kyutai(dict)` / `to_kyutai()` and a `WHAT`
    ("codec config", "LM config") that names it in errors."""

    WHAT = "config"

    @classmethod
    def from_json(cls, path: str | Path):
        cfg = read_json(path, cls.WHAT)
        try:
            return cls.from_kyutai(cfg)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_kyutai(), indent=2) + "\n")


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read checkpoint {path} (not a valid safetensors file?): {e}") from None


def check_tensors(expected: dict[str, torch.Size], state: dict[str, torch.Tensor], origin: str, what: str) -> None:
    """Raise CheckpointError naming every tensor of `state` that is missing, unexpected or misshaped
    against `expected` (name -> shape)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [f"{k}: checkpoint {list(state[k].shape)}, model {list(expected[k])}"
                 for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k]]
    problems = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("misshaped", misshaped)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{title} tensors: {shown}")
    if problems:
        raise CheckpointError(f"{origin} does not fit the {what}: " + "; ".join(problems))
