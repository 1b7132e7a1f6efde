"""The multi-scale STFT discriminator, its hinge and feature-matching losses, and where their gradients go."""

from __future__ import annotations

import pytest
import torch

from antiphon.codec import Codec
from antiphon.train.codec_train import TINY, discriminator_step, generator_losses
from antiphon.train.discriminator import WINDOWS, MultiScaleSTFTDiscriminator
from antiphon.train.losses import discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss


def test_every_scale_gives_a_logit_map_and_its_feature_maps():
    torch.manual_seed(0)
    outputs = MultiScaleSTFTDiscriminator(channels=4)(torch.randn(2, 1, 4800))
    assert len(outputs) == len(WINDOWS) == 5
    for window, (logits, features) in zip(WINDOWS, outputs):
        frames, bins = 4800 // (window // 4) + 1, window // 2 + 1
        assert logits.shape == (2, 1, frames, -(-bins // 8)), window
        assert [f.shape for f in features] == [(2, 4, frames, -(-bins // 2 ** k)) for k in (0, 1, 2, 3, 3)]
        assert torch.isfinite(logits).all()


def test_hinge_losses_on_hand_made_logits():
    real, fake = [torch.full((2, 1, 3, 4), 2.0)] * 2, [torch.full((2, 1, 5, 2), -2.0)] * 2
    assert discriminator_hinge_loss(real, fake).item() == 0.0  # both beyond the margin
    assert generator_hinge_loss(fake).item() == 3.0
    assert generator_hinge_loss(real).item() == 0.0
    # at zero both sides sit inside the margin: 1 + 1; one sub-discriminator at 0, one at the margin: mean
    zeros = [torch.zeros(1, 1, 2, 2)]
    assert discriminator_hinge_loss(zeros, zeros).item() == 2.0
    assert discriminator_hinge_loss(zeros + real[:1], zeros + fake[:1]).item() == 1.0


def test_feature_matching_is_zero_for_equal_features_and_relative_otherwise():
    torch.manual_seed(0)
    real = [[torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 2)], [torch.randn(2, 3, 6, 5)]]
    assert feature_matching_loss(real, real).item() == 0.0
    assert feature_matching_loss(real, [[f + 0.1 for f in fs] for fs in real]).item() > 0
    # relative: |1.5 - 1| / |1| on every map, whatever the scale of the features
    ones = [[torch.ones(1, 2, 3, 3)], [100 * torch.ones(1, 2, 2, 2)]]
    assert feature_matching_loss(ones, [[1.5 * f for f in fs] for fs in ones]).item() == pytest.approx(0.5)


def _decoded(codec: Codec, wav: torch.Tensor) -> torch.Tensor:
    return codec.decode_latent(codec.encode_to_latent(wav))


def test_the_discriminator_step_leaves_the_codec_without_gradients():
    torch.manual_seed(0)
    codec, discriminator = Codec(TINY, num_codebooks=TINY.n_q), MultiScaleSTFTDiscriminator(channels=4)
    optimizer = torch.optim.AdamW(discriminator.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in discriminator.parameters()]
    wav = torch.randn(2, 1, 2 * TINY.frame_size) * 0.1
    loss = discriminator_step(discriminator, optimizer, wav, _decoded(codec, wav))
    assert loss.item() > 0 and not loss.requires_grad
    assert all(p.grad is None for p in codec.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, discriminator.parameters()))  # it trained


def test_the_generator_losses_train_the_codec_not_the_discriminator():
    torch.manual_seed(0)
    codec, discriminator = Codec(TINY, num_codebooks=TINY.n_q), MultiScaleSTFTDiscriminator(channels=4)
    wav = torch.randn(2, 1, 2 * TINY.frame_size) * 0.1
    adversarial, feature = generator_losses(discriminator, wav, _decoded(codec, wav))
    (adversarial + feature).backward()
    assert all(p.grad is None for p in discriminator.parameters())
    assert all(p.requires_grad for p in discriminator.parameters())  # ready for its next step
    assert sum(p.grad.abs().sum() for p in codec.decoder.parameters() if p.grad is not None) > 0
