"""`antiphon train codec`: a Mimi-architecture codec (the same `Codec` as the full one, a smaller
config) trained on synthetic speech.

Each step draws `batch` random segments of `segment_frames` code frames from the training datasets,
runs the differentiable offline path (encoder -> transformer -> downsample -> split RVQ with a
straight-through gradient -> upsample -> transformer -> decoder) and minimises the multi-scale mel
loss plus the commitment loss; the codebooks learn by EMA (train/vq.py). Batches and re-seeded
centroids depend only on (seed, step), so a resumed run is the run that was not interrupted.

With `adversarial` or `feature` > 0, a multi-scale STFT discriminator (train/discriminator.py) trains
beside the codec from step `disc_start`: each step it takes one hinge update on the batch and the
decoded audio (detached), then the codec adds `adversarial` x the hinge generator loss and `feature` x
the feature-matching loss against the updated discriminator. The discriminator and its optimizer are
saved and resumed with the run. A run recorded without a discriminator (weights 0, or a run older than
these fields) may be resumed with one, the main use: fine-tuning a trained codec with these losses
(give a higher --steps); a fresh discriminator, seeded from `seed`, then starts at the saved step.

With `init`, a run starts from a trained codec's weights (its config replaces `size`); the EMA
statistics start from its codebooks (`EmaSplitVQ.adopt`), which are not re-seeded. With `trainable =
"decoder"` only the decoding half learns (upsample, decoder transformer, SEANet decoder): the encoder
and the codebooks stay frozen, so every input gets the codes it got before, and the language models
trained on those codes stay valid: a better decoder reaches them without retraining.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time

import numpy as np
import torch
from tqdm import tqdm

from antiphon.codec.config import CodecConfig
from antiphon.codec.model import Codec
from antiphon.errors import InputError
from antiphon.train.discriminator import MultiScaleSTFTDiscriminator
from antiphon.train.evaluate import check_eval_sets
from antiphon.train.losses import (MultiScaleMelLoss, discriminator_hinge_loss, feature_matching_loss,
                                   generator_hinge_loss)
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
DISCRIMINATOR_FIELDS = ("adversarial", "feature", "disc_start", "disc_lr", "disc_channels")
TRAINABLE = ("all", "decoder")


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
    adversarial: float = dataclasses.field(default=0.0, metadata={
        "help": "weight of the hinge adversarial loss against a multi-scale STFT discriminator (0: none)"})
    feature: float = dataclasses.field(default=0.0, metadata={
        "help": "weight of the discriminator's feature-matching loss (0: none)"})
    disc_start: int = dataclasses.field(default=0, metadata={
        "help": "step from which the discriminator trains and its losses apply"})
    disc_lr: float = dataclasses.field(default=3e-4, metadata={"help": "the discriminator's learning rate"})
    disc_channels: int = dataclasses.field(default=32, metadata={"help": "the discriminator's conv width"})
    init: str = dataclasses.field(default="", metadata={
        "help": "start from this trained codec (directory or repo id) instead of new weights; its config "
                "replaces --size"})
    trainable: str = dataclasses.field(default="all", metadata={
        "help": "which weights learn: all, or decoder (with --init: the encoder and codebooks stay frozen, "
                "so the codes, and the language models trained on them, stay valid)"})

    @property
    def has_discriminator(self) -> bool:
        return self.adversarial > 0 or self.feature > 0

    def new_codec(self) -> Codec:
        """The codec at step 0, float32, training mode, with only the `trainable` weights learning."""
        if self.trainable not in TRAINABLE:
            raise InputError(f"unknown --trainable {self.trainable!r}: choose from {', '.join(TRAINABLE)}")
        if self.trainable == "decoder" and not self.init:
            raise InputError("--trainable decoder fine-tunes a trained codec's decoder: give --init MODEL")
        if self.init:
            codec = Codec.from_pretrained(self.init, num_codebooks=1, dtype=torch.float32)  # set to all below
        elif self.size in SIZES:
            codec = Codec(SIZES[self.size], num_codebooks=1)
        else:
            raise InputError(f"unknown codec size {self.size!r}: choose from {', '.join(SIZES)}")
        codec.num_codebooks = codec.config.n_q
        if self.trainable == "decoder":
            for frozen in (codec.encoder, codec.encoder_transformer, codec.downsample, codec.quantizer):
                frozen.requires_grad_(False)
        return codec.train()


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
    check_eval_sets("codec", list(eval_dirs))
    run = RunDir(out)
    resuming = start(run, recipe)
    torch.manual_seed(recipe.seed)
    codec = recipe.new_codec().to(device)
    config = codec.config
    quantizer = EmaSplitVQ(codec.quantizer)
    if recipe.init:
        quantizer.adopt()
    frozen = recipe.trainable == "decoder"
    learning = [p for p in codec.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(learning, lr=recipe.lr, betas=(0.8, 0.99), weight_decay=0.0)
    adversary = {}
    if recipe.has_discriminator:
        torch.manual_seed(recipe.seed)
        discriminator = MultiScaleSTFTDiscriminator(recipe.disc_channels).to(device).train()
        disc_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=recipe.disc_lr, betas=(0.5, 0.9),
                                           weight_decay=0.0)
        adversary = {"discriminator": discriminator, "disc_optimizer": disc_optimizer}
    training = Training(codec, optimizer, warmup_cosine(optimizer, recipe.warmup, recipe.steps),
                        {"quantizer": quantizer} | adversary)
    step = resume(run, training, optional=adversary) if resuming else 0
    pool = AudioPool(list(data_dirs))
    logger.info("codec training (%s weights%s) on %.2f h of audio from %s", recipe.trainable,
                f" from {recipe.init}" if recipe.init else "", pool.seconds / 3600, ", ".join(data_dirs))
    mel_loss = MultiScaleMelLoss(config.sample_rate)
    length = recipe.segment_frames * config.frame_size

    def save() -> None:
        run.save_step(step, training)
        run.plot(f"codec ({recipe.init or recipe.size}, {recipe.trainable} weights) training")

    with tqdm(total=recipe.steps, initial=step, desc="train codec", unit="step", disable=not progress) as bar:
        while step < recipe.steps:
            torch.manual_seed(recipe.seed * 1_000_003 + step)
            wav = pool.batch(np.random.default_rng([recipe.seed, step]), recipe.batch, length).to(device)
            with torch.no_grad() if frozen else contextlib.nullcontext():
                latent = codec.encode_to_latent(wav)
                quantized, commitment = quantizer(latent, config.n_q, update=not frozen)
            decoded = codec.decode_latent(quantized)
            reconstruction = mel_loss(decoded, wav)
            loss = reconstruction + recipe.commitment * commitment
            parts = {}
            if adversary and step >= recipe.disc_start:
                parts["disc"] = discriminator_step(discriminator, disc_optimizer, wav, decoded)
                parts["adv"], parts["fm"] = generator_losses(discriminator, wav, decoded)
                loss = loss + recipe.adversarial * parts["adv"] + recipe.feature * parts["fm"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(learning, 1.0)
            optimizer.step()
            training.schedule.step()
            step += 1
            bar.update(1)
            if step % log_every == 0 or step == recipe.steps:
                record = {"step": step, "loss": round(loss.item(), 5), "mel": round(reconstruction.item(), 5),
                          "commitment": round(commitment.item(), 5)} | {k: round(v.item(), 5) for k, v in parts.items()}
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


def start(run: RunDir, recipe: CodecRecipe) -> bool:
    """`run.start` with CodecRecipe's defaults for the fields a recorded recipe lacks; a run recorded
    without a discriminator may take one on (its discriminator fields then change, as --steps may)."""
    defaults = dataclasses.asdict(CodecRecipe())
    recorded = run.path / "recipe.json"
    may_change = ()
    if recipe.has_discriminator and recorded.exists():
        if not CodecRecipe(**defaults | json.loads(recorded.read_text())).has_discriminator:
            may_change = DISCRIMINATOR_FIELDS
            logger.info("%s: a run without a discriminator goes on with one (adversarial %s, feature %s)",
                        run.path, recipe.adversarial, recipe.feature)
    return run.start(dataclasses.asdict(recipe), defaults, may_change)


def resume(run: RunDir, training: Training, optional: dict) -> int:
    """`run.resume`; the parts named in `optional` (the discriminator and its optimizer) stay as built
    when the saved state lacks them (a run that takes a discriminator on now)."""
    saved = run.load().keys()
    missing = {k for k in optional if k not in saved}
    extras = {k: v for k, v in training.extras.items() if k not in missing}
    step = run.resume(dataclasses.replace(training, extras=extras))
    if missing:
        logger.info("%s: no discriminator saved at step %d: a fresh one starts", run.path, step)
    return step


def discriminator_step(discriminator: MultiScaleSTFTDiscriminator, optimizer: torch.optim.Optimizer,
                       real: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
    """One hinge update of the discriminator on real and decoded audio [B, 1, T]; no gradient reaches
    whatever made `decoded`. Returns the (detached) loss."""
    real_logits = [logits for logits, _ in discriminator(real)]
    fake_logits = [logits for logits, _ in discriminator(decoded.detach())]
    loss = discriminator_hinge_loss(real_logits, fake_logits)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def generator_losses(discriminator: MultiScaleSTFTDiscriminator, real: torch.Tensor,
                     decoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The hinge adversarial and the feature-matching loss of decoded audio [B, 1, T] against real audio;
    their gradients reach `decoded` only, not the discriminator's weights."""
    discriminator.requires_grad_(False)
    with torch.no_grad():
        real_features = [features for _, features in discriminator(real)]
    fake_logits, fake_features = zip(*discriminator(decoded))
    discriminator.requires_grad_(True)
    return generator_hinge_loss(list(fake_logits)), feature_matching_loss(real_features, list(fake_features))


def evaluate_codec(codec: Codec, eval_dirs: list[str], count: int, progress: bool = True) -> dict:
    """STOI and SNR of encode -> decode against the input, per eval dataset, over its first `count`
    examples (the first channel: the clean one of two-channel kinds); and, for the English ones, the word
    error rate of an independent recognizer (pocketsphinx) on the resynthesis and on the input. STOI
    looks at bands up to 4 kHz and at envelopes: a codec can score 0.8 and still lose what a recognizer
    needs (MODELS.md, "The codec caps the TTS measure")."""
    from pystoi import stoi

    from antiphon.train.evaluate import pocketsphinx_transcribe, word_error_rate

    codec.eval()
    results: dict = {"num_codebooks": codec.num_codebooks,
                     "kbps": round(codec.num_codebooks * np.log2(codec.cardinality) * codec.frame_rate / 1000, 3)}
    started = time.perf_counter()
    for data_dir in eval_dirs:
        scores, snrs, heard, heard_input = [], [], [], []
        for example, _ in zip(iter_examples(data_dir), tqdm(range(count), desc=f"eval {data_dir}", disable=not progress)):
            ref = example.pcm[0]
            wav = torch.from_numpy(ref)[None, None].to(codec.quantizer.rvq_first.codebooks.device)
            out = codec.decode(codec.encode(wav))[0, 0, :len(ref)].float().cpu().numpy()
            scores.append(stoi(ref, out, codec.sample_rate, extended=False))
            snrs.append(10 * np.log10((ref ** 2).sum() / max(((ref - out) ** 2).sum(), 1e-12)))
            if example.channels[0].language == "en":
                text = example.channels[0].text
                heard.append((text, pocketsphinx_transcribe(out, codec.sample_rate)))
                heard_input.append((text, pocketsphinx_transcribe(ref, codec.sample_rate)))
        results[data_dir] = {"examples": len(scores), "stoi": round(float(np.mean(scores)), 4),
                             "snr_db": round(float(np.mean(snrs)), 2), "english_examples": len(heard)}
        if heard:
            results[data_dir] |= {"wer_pocketsphinx": round(word_error_rate(heard), 4),
                                  "wer_pocketsphinx_input": round(word_error_rate(heard_input), 4)}
    results["eval_s"] = round(time.perf_counter() - started, 1)
    return results
