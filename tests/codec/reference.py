"""A reference oracle for the codec parity tests, built with Kyutai's `moshi` package.

Import this module only from tests that first did `pytest.importorskip("moshi")`: it imports `moshi`
at module level, and `moshi` is an optional test dependency of antiphon, never a runtime one.

`make_reference_checkpoint` builds a small Mimi with random but non-trivial weights (random biases,
norms and layer scales; codebooks fitted to the model's own latents so that every codebook is used),
saves it the way the released `tokenizer-e351c8d8-checkpoint125.safetensors` is stored (float32,
legacy fused attention names, `_codebook.{embedding_sum,cluster_usage,_initialized}` buffers) with
its JSON config beside it, and returns the path and the reference model loaded back from that file.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from moshi.models.compression import MimiModel
from moshi.models.loaders import get_mimi
from moshi.modules.transformer import LayerScale
from safetensors.torch import save_file

from antiphon.codec.config import CodecConfig

CHECKPOINT_NAME = "tokenizer-test.safetensors"
CONFIG_NAME = "tokenizer-test.json"

# The centroid table of a codebook is embedding_sum / max(cluster_usage, EPSILON) (moshi's default).
EPSILON = 1e-5


def small_config(**overrides) -> CodecConfig:
    """A tiny Mimi: same ratios (frame size 1920 at 24 kHz) and structure as the release, small widths,
    and an attention context of 32 encoder steps (1.28 s, 16 code frames) so that a few seconds of
    audio exercise the sliding window."""
    kwargs = dict(
        dimension=32, n_filters=4, num_heads=2, num_layers=2, dim_feedforward=64, context=32,
        codebook_dim=16, codebook_size=128, n_q=32,
    )
    kwargs.update(overrides)
    return CodecConfig(**kwargs)


# ---------------------------------------------------------------------------------------------- audio
def make_test_audio(batch: int, num_samples: int, seed: int, sample_rate: int = 24000) -> torch.Tensor:
    """Deterministic test signals [batch, 1, num_samples], float32, peak in [0.3, 0.9]: per row, three
    tones with vibrato and slow envelopes, a chirp, gated coloured-noise bursts and a little white
    noise, all with random parameters."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(batch, *shape, 1, generator=g, dtype=torch.float64)

    two_pi = 2 * math.pi
    t = (torch.arange(num_samples, dtype=torch.float64) / sample_rate)[None]  # [1, T]
    x = torch.zeros(batch, num_samples, dtype=torch.float64)
    for _ in range(3):
        f0 = 80.0 + 900.0 * rand() ** 2
        vib = 1.0 + 0.05 * torch.sin(two_pi * (2 + 6 * rand()) * t)
        phase = two_pi * torch.cumsum(f0 * vib, -1) / sample_rate
        env = 0.5 + 0.5 * torch.sin(two_pi * (0.5 + 3 * rand()) * t + two_pi * rand())
        x += 0.2 * env * torch.sin(phase + two_pi * rand())
    fa, fb = 100 + 3000 * rand(), 100 + 3000 * rand()
    duration = num_samples / sample_rate
    x += 0.15 * torch.sin(two_pi * (fa * t + (fb - fa) * t**2 / (2 * duration)))
    # white noise through a random exponential FIR low-pass, gated on and off
    noise = torch.randn(batch, 1, num_samples + 63, generator=g, dtype=torch.float64)
    decay = 0.5 + 0.45 * rand()[:, :, None]  # [B, 1, 1]
    kernels = decay ** torch.arange(63, -1, -1, dtype=torch.float64)  # [B, 1, 64]
    coloured = torch.nn.functional.conv1d(noise.transpose(0, 1), kernels, groups=batch)[0]
    coloured = coloured / coloured.std(-1, keepdim=True).clamp(min=1e-9)
    gate = (torch.sin(two_pi * (1 + 3 * rand()) * t + two_pi * rand()) > 0.3).double()
    x += 0.2 * gate * coloured
    x += 0.02 * torch.randn(batch, num_samples, generator=g, dtype=torch.float64)
    x = x / x.abs().amax(-1, keepdim=True).clamp(min=1e-9) * (0.3 + 0.6 * rand())
    return x[:, None].float()


# -------------------------------------------------------------------------------------- the checkpoint
def released_state_dict(model: MimiModel) -> dict[str, torch.Tensor]:
    """The model's state dict under the names of the released file: the attention weights of both
    transformers under the legacy fused names, everything float32 and contiguous."""
    out = {}
    for key, value in model.state_dict().items():
        key = re.sub(r"\.self_attn\.in_projs\.0\.weight$", ".self_attn.in_proj_weight", key)
        key = re.sub(r"\.self_attn\.out_projs\.0\.weight$", ".self_attn.out_proj.weight", key)
        assert "projs." not in key, key
        out[key] = value.detach().to(torch.float32).contiguous().clone()
    return out


def _randomise(model: MimiModel, g: torch.Generator) -> None:
    """Random biases, norms and layer scales (the defaults are 0, 1 and 0.01 for most of them)."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LayerScale):
                module.scale.copy_(0.05 + 0.45 * torch.rand(module.scale.shape, generator=g))
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(0.7 + 0.6 * torch.rand(module.weight.shape, generator=g))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))
        for name, p in model.named_parameters():
            if name.endswith(".bias") and "norm" not in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (Euclidean, computed in float64) for every row of x."""
    return torch.cdist(x.double()[None], centroids.double()[None])[0].argmin(-1)


def _kmeans(samples: torch.Tensor, k: int, iters: int, g: torch.Generator) -> torch.Tensor:
    """A few Lloyd iterations from k distinct sampled points; empty clusters keep their centroid."""
    centroids = samples[torch.randperm(samples.shape[0], generator=g)[:k]].clone()
    for _ in range(iters):
        onehot = torch.nn.functional.one_hot(_nearest(samples, centroids), k).to(samples.dtype)  # [N, k]
        counts = onehot.sum(0)
        sums = onehot.T @ samples
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
    return centroids


def _fit_codebooks(model: MimiModel, latent: torch.Tensor, g: torch.Generator, kmeans_iters: int = 3) -> None:
    """latent: [N, D] vectors just before the quantizer. Fill every codebook of both RVQs."""
    q = model.quantizer
    with torch.no_grad():
        for rvq in (q.rvq_first, q.rvq_rest):
            residual = rvq.input_proj(latent.T[None])[0].T.contiguous()  # [N, d]
            for layer in rvq.vq.layers:
                cb = layer._codebook
                bins = cb.codebook_size
                if residual.shape[0] < bins:
                    raise ValueError(f"{residual.shape[0]} latent vectors cannot fit {bins} centroids")
                centroids = _kmeans(residual, bins, kmeans_iters, g)
                # Usage counts as a trained file has them: positive, spread over decades, and for a
                # few entries below the epsilon clamp (their centroid is then embedding_sum / EPSILON).
                usage = torch.exp(torch.empty(bins).uniform_(math.log(0.05), math.log(500.0), generator=g))
                tiny = torch.randperm(bins, generator=g)[: max(1, bins // 64)]
                usage[tiny] = EPSILON * torch.rand(tiny.shape, generator=g) * 0.5
                cb.embedding_sum.copy_(centroids * usage.clamp(min=EPSILON)[:, None])
                cb.cluster_usage.copy_(usage)
                cb._initialized.fill_(1.0)
                cb._embedding = None  # drop moshi's cached centroid table
                table = cb.embedding  # exactly what a loader computes from the stored buffers
                residual = residual - table[_nearest(residual, table)]


def make_reference_checkpoint(directory: Path, config: CodecConfig, seed: int = 0,
                              fit_batch: int = 24, fit_seconds: float = 4.0) -> tuple[Path, MimiModel]:
    """Build a random Mimi with `config`, fit its codebooks to its own latents, save it in the released
    format as `directory / "tokenizer-test.safetensors"` with `tokenizer-test.json` beside it, and return
    (path, reference MimiModel loaded from that file, eval mode, all `config.n_q` codebooks active)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    kyutai = config.to_kyutai()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.random.fork_rng(devices=[]):  # seed the modules' default init, leave the global RNG be
        torch.manual_seed(seed)
        model = get_mimi(None, kyutai, device="cpu", num_codebooks=config.n_q)
    model.eval()
    _randomise(model, g)

    fit_samples = int(fit_seconds * config.sample_rate) // config.frame_size * config.frame_size
    wav = make_test_audio(fit_batch, fit_samples, seed=seed + 2, sample_rate=config.sample_rate)
    with torch.no_grad():
        # Default init shrinks activations through SEANet (latent std ~0.06); rescale the last encoder
        # conv so the latent has unit std, as a trained encoder's has, and the transformers' residual
        # branches (layer scale <= 0.5) refine it rather than drown it.
        last = model.encoder.model[-1].conv.conv
        gain = 1.0 / model.encoder(wav).std()
        last.weight.mul_(gain)
        last.bias.mul_(gain)
        emb = model._encode_to_unquantized_latent(wav)  # SEANet + encoder transformer + downsample
    latent = emb.transpose(1, 2).reshape(-1, emb.shape[1]).contiguous()  # [N, D]
    _fit_codebooks(model, latent, g)

    path = directory / CHECKPOINT_NAME
    save_file(released_state_dict(model), str(path))
    config.save_json(directory / CONFIG_NAME)

    reference = get_mimi(path, kyutai, device="cpu", num_codebooks=config.n_q)
    reference.eval()
    return path, reference
