"""`antiphon train codec`: a Mimi-architecture codec (the same `Codec` as the full one, a smaller
config) trained on synthetic speech.

Each step draws `batch` random segments of `segment_frames` code frames from the training datasets,
runs the differentiable offline path (encoder -> transformer -> downsample -> split RVQ with a
straight-through gradient -> upsample -> transformer -> decoder) and minimises the multi-scale mel
loss plus the commitment loss; the codebooks learn by EMA (train/vq.py). Batches and re-seeded
centroids depend only on (seed, step), so a resumed run is the run that was not interrupted.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch
from tqdm import tqdm

from antiphon.codec.config import CodecConfig
from antiphon.codec.model import Codec
from antiphon.errors import InputError
from antiphon.train.losses import MultiScaleMelLoss
from antiphon.train.run_dir import RunDir, Training, warmup_cosine
from antiphon.train.shards import iter_examples, read_manifest
from antiphon.train.vq import EmaSplitVQ

logger = logging.getLogger(__name__)

# The embedded codec: Mimi's layout (SEANet ratios 8-6-5-4, 25 Hz transformers, stride-2 to 12.5 Hz,
# split RVQ of 2048-entry codebooks), narrower and shallower: 8 codebooks = 1.1 kbps.
SMALL = CodecConfig(dimension=128, n_filters=16, num_heads=4, num_layers=2, dim_feedforward=512,
                    codebook_dim=64, n_q=8)
TINY = CodecConfig(dimension=32, n_filters=4, num_heads=2, num_layers=1, dim_feedforward=64,
                   codebook_dim=16, codebook_size=64, n_q=4)
SIZES = {"small": SMALL, "tiny": TINY}


@dataclasses.dataclass
class CodecRecipe:
    size: str = "small"
    steps: int = 20000
    batch: int = 8
    segment_frames: int = 12  # 0.96 s at 12.5 Hz
    lr: float = 1e-3
    warmup: int = 200
    commitment: float = 1.0
    seed: int = 0

    def config(self) -> CodecConfig:
        if self.size not in SIZES:
            raise InputError(f"unknown codec size {self.size!r}: choose from {', '.join(SIZES)}")
        return SIZES[self.size]


class AudioPool:
    """Every channel of the datasets' examples, held as int16, for random segments."""

    def __init__(self, data_dirs: list[str]):
        self.clips: list[np.ndarray] = []
        for data_dir in data_dirs:
            if read_manifest(data_dir)["sample_rate"] != 24000:
                raise InputError(f"{data_dir}: codec training needs 24 kHz datasets")
            for example in iter_examples(data_dir):
                for row in example.pcm:
                    self.clips.append(np.round(row * 32767).astype(np.int16))
        if not self.clips:
            raise InputError(f"no audio in {', '.join(data_dirs)}")
        self.seconds = sum(len(c) for c in self.clips) / 24000

    def batch(self, rng: np.random.Generator, batch: int, length: int) -> torch.Tensor:
        """[batch, 1, length] float in [-1, 1]; clips shorter than `length` are zero-padded."""
        out = np.zeros((batch, 1, length), dtype=np.float32)
        for b in range(batch):
            clip = self.clips[rng.integers(len(self.clips))]
            start = int(rng.integers(max(1, len(clip) - length + 1)))
            piece = clip[start:start + length]
            out[b, 0, :len(piece)] = piece / 32767.0
        return torch.from_numpy(out)


def train_codec(data_dirs: list[str], out: str, recipe: CodecRecipe, eval_dirs: list[str] = (),
                eval_count: int = 50, save_every: int = 500, log_every: int = 10,
                progress: bool = True, device: str | torch.device = "cpu") -> dict:
    """Train (or resume) into `out` on `device`; returns the evaluation (empty without eval_dirs)."""
    run = RunDir(out)
    resuming = run.start(dataclasses.asdict(recipe))
    config = recipe.config()
    torch.manual_seed(recipe.seed)
    codec = Codec(config, num_codebooks=config.n_q).to(device).train()
    quantizer = EmaSplitVQ(codec.quantizer)
    optimizer = torch.optim.AdamW(codec.parameters(), lr=recipe.lr, betas=(0.8, 0.99), weight_decay=0.0)
    training = Training(codec, optimizer, warmup_cosine(optimizer, recipe.warmup, recipe.steps), {"quantizer": quantizer})
    step = run.resume(training) if resuming else 0
    pool = AudioPool(list(data_dirs))
    logger.info("codec training on %.2f h of audio from %s", pool.seconds / 3600, ", ".join(data_dirs))
    mel_loss = MultiScaleMelLoss(config.sample_rate)
    length = recipe.segment_frames * config.frame_size

    def save() -> None:
        run.save_step(step, training)
        run.plot(f"codec ({recipe.size}) training")

    with tqdm(total=recipe.steps, initial=step, desc="train codec", unit="step", disable=not progress) as bar:
        while step < recipe.steps:
            torch.manual_seed(recipe.seed * 1_000_003 + step)
            wav = pool.batch(np.random.default_rng([recipe.seed, step]), recipe.batch, length).to(device)
            latent = codec.encode_to_latent(wav)
            quantized, commitment = quantizer(latent, config.n_q, update=True)
            decoded = codec.decode_latent(quantized)
            reconstruction = mel_loss(decoded, wav)
            loss = reconstruction + recipe.commitment * commitment
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(codec.parameters(), 1.0)
            optimizer.step()
            training.schedule.step()
            step += 1
            bar.update(1)
            if step % log_every == 0 or step == recipe.steps:
                record = {"step": step, "loss": round(loss.item(), 5), "mel": round(reconstruction.item(), 5),
                          "commitment": round(commitment.item(), 5)}
                run.log(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}")
            if step % save_every == 0 or step == recipe.steps:
                save()
    codec.eval()
    codec.save_pretrained(run.model_path)
    results = evaluate_codec(codec, list(eval_dirs), eval_count, progress) if eval_dirs else {}
    if results:
        results["steps"] = step
        run.write_eval(results)
    return results


def evaluate_codec(codec: Codec, eval_dirs: list[str], count: int, progress: bool = True) -> dict:
    """STOI and SNR of encode -> decode against the input, per eval dataset, over its first `count`
    examples (the first channel: the clean one of two-channel kinds)."""
    from pystoi import stoi

    codec.eval()
    results: dict = {"num_codebooks": codec.num_codebooks,
                     "kbps": round(codec.num_codebooks * np.log2(codec.cardinality) * codec.frame_rate / 1000, 3)}
    started = time.perf_counter()
    for data_dir in eval_dirs:
        scores, snrs = [], []
        for example, _ in zip(iter_examples(data_dir), tqdm(range(count), desc=f"eval {data_dir}", disable=not progress)):
            ref = example.pcm[0]
            wav = torch.from_numpy(ref)[None, None].to(codec.quantizer.rvq_first.codebooks.device)
            out = codec.decode(codec.encode(wav))[0, 0, :len(ref)].float().cpu().numpy()
            scores.append(stoi(ref, out, codec.sample_rate, extended=False))
            snrs.append(10 * np.log10((ref ** 2).sum() / max(((ref - out) ** 2).sum(), 1e-12)))
        results[data_dir] = {"examples": len(scores), "stoi": round(float(np.mean(scores)), 4),
                             "snr_db": round(float(np.mean(snrs)), 2)}
    results["eval_s"] = round(time.perf_counter() - started, 1)
    return results
