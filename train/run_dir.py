"""A training run's directory: what makes every run resumable and readable afterwards.

    OUT/state.pt        everything needed to go on (model, optimizer, step, random state), written
                        atomically every `--save-every` steps and at the end
    OUT/recipe.json     the recipe the run was started with (a resumed run must match it)
    OUT/history.jsonl   one line per logged step: {"step", "loss", ...parts}
    OUT/loss.png        the loss curves, redrawn at every save
    OUT/model/          the exported model (the format `from_pretrained` loads)
    OUT/eval.json       the evaluation at the end
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path

import torch

from antiphon.errors import InputError

logger = logging.getLogger(__name__)


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.state_path = self.path / "state.pt"
        self.history_path = self.path / "history.jsonl"
        self.model_path = self.path / "model"

    # ------------------------------------------------------------------ recipe
    def start(self, recipe: dict, defaults: dict | None = None, may_change: tuple[str, ...] = ()) -> bool:
        """Record `recipe` for a new run, or check it against the recorded one (only `steps` and the
        fields in `may_change` may change: the schedule then ends at the new count); True when a saved
        state is there to resume from. A field the recorded recipe lacks (a run older than the field)
        counts as its value in `defaults`."""
        path = self.path / "recipe.json"
        if path.exists():
            saved = (defaults or {}) | json.loads(path.read_text())
            free = {"steps", *may_change}
            changed = sorted(k for k in set(saved) | set(recipe) if k not in free and saved.get(k) != recipe.get(k))
            if changed:
                raise InputError(f"{self.path} holds a run with another recipe (differs in {', '.join(changed)}); "
                                 "give a new --out directory")
            if saved.get("steps") != recipe.get("steps"):
                logger.info("%s: steps changed from %s to %s", self.path, saved.get("steps"), recipe.get("steps"))
        path.write_text(json.dumps(recipe, indent=2) + "\n")
        return self.state_path.exists()

    # ------------------------------------------------------------------ state
    def save(self, state: dict) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.state_path)

    def load(self) -> dict:
        try:
            return torch.load(self.state_path, map_location="cpu", weights_only=False)
        except Exception as e:  # a truncated or foreign file
            raise InputError(f"cannot resume from {self.state_path}: {e}") from None

    def save_step(self, step: int, parts: "Training") -> None:
        self.save({"step": step, "rng": {"torch": torch.get_rng_state()}}
                  | {name: part.state_dict() for name, part in parts.named()})

    def resume(self, parts: "Training") -> int:
        """Load the saved state into `parts` and return its step; history after it is dropped."""
        state = self.load()
        for name, part in parts.named():
            part.load_state_dict(state[name])
        torch.set_rng_state(state["rng"]["torch"])
        self.truncate_history(state["step"])
        logger.info("resuming %s at step %d", self.path, state["step"])
        return state["step"]

    # ------------------------------------------------------------------ history
    def log(self, record: dict) -> None:
        with open(self.history_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def history(self) -> list[dict]:
        if not self.history_path.exists():
            return []
        with open(self.history_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def truncate_history(self, step: int) -> None:
        """Drop records after `step` (a run resumed from an earlier save logs them again)."""
        kept = [r for r in self.history() if r["step"] <= step]
        self.history_path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def plot(self, title: str) -> Path | None:
        """Draw history.jsonl's curves (smoothed) into loss.png; None when matplotlib is missing."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            logger.warning("matplotlib is not installed: no loss.png (pip install matplotlib)")
            return None
        records = self.history()
        if not records:
            return None
        keys = list(dict.fromkeys(k for r in records for k in r if k != "step"))  # curves that start later too
        fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), sharex=True, squeeze=False)
        steps = [r["step"] for r in records]
        for ax, key in zip(axes[:, 0], keys):
            values = [r.get(key, float("nan")) for r in records]
            ax.plot(steps, values, alpha=0.3, color="C0")
            ax.plot(steps, _smooth(values), color="C0")
            ax.set_ylabel(key)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("step")
        axes[0, 0].set_title(title)
        fig.tight_layout()
        out = self.path / "loss.png"
        fig.savefig(out, dpi=80)
        plt.close(fig)
        return out

    def write_eval(self, results: dict) -> None:
        (self.path / "eval.json").write_text(json.dumps(results, indent=2) + "\n")


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    out, last = [], None
    for v in values:
        last = v if last is None else weight * last + (1 - weight) * v
        out.append(last)
    return out


@dataclasses.dataclass
class Training:
    """What a run saves and resumes: anything with state_dict / load_state_dict, by name."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    extras: dict = dataclasses.field(default_factory=dict)

    def named(self):
        return [("model", self.model), ("optimizer", self.optimizer), ("schedule", self.schedule), *self.extras.items()]


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` steps, then a cosine from 1 to 0.1 at `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
