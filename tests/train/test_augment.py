"""Augmentation: deterministic from the generator, noise at the asked SNR and with its kind's
character, impulse responses that decay, levels in range and never clipping."""

from __future__ import annotations

import numpy as np
import pytest

from antiphon.errors import InputError
from antiphon.train import augment

SR = 24000


def tone(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)


def test_same_generator_state_same_audio():
    pcm = tone()
    a, info_a = augment.random_augment(pcm, np.random.default_rng([1, 2]))
    b, info_b = augment.random_augment(pcm, np.random.default_rng([1, 2]))
    c, _ = augment.random_augment(pcm, np.random.default_rng([1, 3]))
    assert np.array_equal(a, b) and info_a == info_b and not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.shape == pcm.shape


@pytest.mark.parametrize("kind", augment.NOISE_KINDS)
@pytest.mark.parametrize("snr_db", [5.0, 20.0])
def test_noise_is_added_at_the_asked_snr(kind, snr_db):
    pcm = tone()
    noisy = augment.noise(pcm, np.random.default_rng(0), snr_db, kind, SR)
    added = noisy - pcm
    measured = 10 * np.log10(np.mean(pcm.astype(np.float64) ** 2) / np.mean(added.astype(np.float64) ** 2))
    assert abs(measured - snr_db) < 0.1


def band_power(x: np.ndarray, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / SR)
    return float(spectrum[(freqs >= lo) & (freqs < hi)].mean())


def test_noise_kinds_have_their_character():
    rng = np.random.default_rng(0)
    white, pink, babble = (augment.make_noise(k, 2 * SR, rng, SR) for k in ("white", "pink", "babble"))
    for x in (white, pink, babble):
        assert abs(np.sqrt(np.mean(x.astype(np.float64) ** 2)) - 1) < 1e-3
    # white is flat, pink and babble fall with frequency; babble comes and goes like syllables
    assert 0.5 < band_power(white, 100, 1000) / band_power(white, 4000, 8000) < 2
    assert band_power(pink, 100, 1000) > 4 * band_power(pink, 4000, 8000)
    assert band_power(babble, 300, 800) > 10 * band_power(babble, 4000, 8000)
    envelope = lambda x: np.sqrt(np.mean(x[: len(x) // 480 * 480].reshape(-1, 480) ** 2, axis=1))  # noqa: E731
    assert np.std(envelope(babble)) > 3 * np.std(envelope(white))


def test_impulse_response_decays_and_reverb_keeps_length_and_level():
    rng = np.random.default_rng(0)
    ir = augment.impulse_response(rng, rt60_s=0.5, sample_rate=SR)
    tail = ir[1:].astype(np.float64) ** 2
    quarter = len(tail) // 4
    assert ir[0] == 1.0 and tail[:quarter].sum() > 100 * tail[-quarter:].sum()
    pcm = tone(0.5)
    pcm[SR // 4:] = 0  # a sound then silence: the reverb fills the silence
    wet = augment.reverberate(pcm, ir)
    assert wet.shape == pcm.shape
    assert np.isclose(np.sqrt(np.mean(wet.astype(np.float64) ** 2)), np.sqrt(np.mean(pcm.astype(np.float64) ** 2)), rtol=1e-3)
    assert np.abs(wet[SR // 4 + SR // 20:]).max() > 1e-3
    with pytest.raises(InputError, match="rt60"):
        augment.impulse_response(rng, 0.0)


def test_levels_stay_in_range_and_never_clip():
    rng = np.random.default_rng(0)
    assert np.allclose(augment.gain_db(tone(), 20 * np.log10(2)), 2 * tone(), atol=1e-6)
    for _ in range(20):
        out = augment.random_level(tone(), rng, -30.0, -10.0)
        level = 20 * np.log10(np.sqrt(np.mean(out.astype(np.float64) ** 2)))
        assert level <= -10.0 + 1e-3 and np.abs(out).max() <= augment.PEAK_LIMIT
    loud = augment.random_level(tone(), rng, 0.0, 0.0)  # asks for more than the peak allows
    assert np.isclose(np.abs(loud).max(), augment.PEAK_LIMIT)


def test_unknown_noise_kind():
    with pytest.raises(InputError, match="noise kind"):
        augment.make_noise("brown", 100, np.random.default_rng(0))
