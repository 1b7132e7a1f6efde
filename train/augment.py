"""Audio augmentation for synthetic speech, numpy only, every random choice drawn from the numpy
Generator given (so the same generator state gives the same samples).

- `noise`: white, pink (1/f power) or babble-like (speech-shaped noise, amplitude-modulated at
  syllable rates 2-7 Hz, several streams summed), at a target SNR in dB against the signal's power.
- `reverberate`: convolution with a synthetic room impulse response: a direct path, then Gaussian
  noise under an exponential decay of the given RT60, low-passed a little more as it decays.
- `gain_db` / `random_level`: level changes; `random_level` keeps the peak under `PEAK_LIMIT`.
"""

from __future__ import annotations

import numpy as np

from antiphon.errors import InputError

NOISE_KINDS = ("white", "pink", "babble")
PEAK_LIMIT = 0.99


def gain_db(pcm: np.ndarray, db: float) -> np.ndarray:
    """`pcm` scaled by `db` decibels."""
    return (pcm * np.float32(10.0 ** (db / 20.0))).astype(np.float32)


def random_level(pcm: np.ndarray, rng: np.random.Generator, low_db: float = -35.0, high_db: float = -15.0) -> np.ndarray:
    """`pcm` scaled to an RMS level drawn uniformly in [low_db, high_db] dBFS, then scaled down
    if needed so that its peak stays under `PEAK_LIMIT`."""
    target = rng.uniform(low_db, high_db)
    rms = float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))) if len(pcm) else 0.0
    if rms <= 0.0:
        return pcm.astype(np.float32)
    out = gain_db(pcm, target - 20.0 * np.log10(rms))
    peak = float(np.abs(out).max())
    return (out * np.float32(PEAK_LIMIT / peak)).astype(np.float32) if peak > PEAK_LIMIT else out


def make_noise(kind: str, length: int, rng: np.random.Generator, sample_rate: int = 24000) -> np.ndarray:
    """Unit-RMS noise [length] of `kind` (one of `NOISE_KINDS`)."""
    if kind == "white":
        noise = rng.standard_normal(length)
    elif kind == "pink":
        noise = _shape_spectrum(rng.standard_normal(length), lambda f: 1.0 / np.sqrt(np.maximum(f, 20.0)), sample_rate)
    elif kind == "babble":
        noise = sum(_babble_stream(length, rng, sample_rate) for _ in range(int(rng.integers(3, 7))))
    else:
        raise InputError(f"unknown noise kind {kind!r}: choose from {', '.join(NOISE_KINDS)}")
    rms = np.sqrt(np.mean(noise * noise)) if length else 1.0
    return (noise / max(rms, 1e-12)).astype(np.float32)


def noise(pcm: np.ndarray, rng: np.random.Generator, snr_db: float, kind: str, sample_rate: int = 24000) -> np.ndarray:
    """`pcm` plus noise of `kind` at `snr_db` (signal power over noise power)."""
    power = float(np.mean(np.square(pcm, dtype=np.float64))) if len(pcm) else 0.0
    scale = np.sqrt(power / 10.0 ** (snr_db / 10.0))
    return (pcm + scale * make_noise(kind, len(pcm), rng, sample_rate)).astype(np.float32)


def impulse_response(rng: np.random.Generator, rt60_s: float, sample_rate: int = 24000,
                     direct_to_reverb_db: float = 0.0) -> np.ndarray:
    """A synthetic room impulse response: a unit direct path, then after a 2-10 ms gap a noise tail
    decaying by 60 dB over `rt60_s`, scaled to `direct_to_reverb_db` below the direct path's energy."""
    if rt60_s <= 0:
        raise InputError(f"rt60 must be positive, got {rt60_s}")
    length = int(rt60_s * sample_rate)
    gap = int(rng.uniform(0.002, 0.010) * sample_rate)
    t = np.arange(length) / sample_rate
    tail = rng.standard_normal(length) * 10.0 ** (-3.0 * t / rt60_s)
    tail = np.convolve(tail, np.ones(3) / 3.0, mode="same")  # a gentle low-pass: rooms absorb highs
    tail *= np.sqrt(10.0 ** (-direct_to_reverb_db / 10.0) / max(np.sum(tail * tail), 1e-12))
    ir = np.zeros(gap + length)
    ir[0] = 1.0
    ir[gap:] += tail
    return ir.astype(np.float32)


def reverberate(pcm: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """`pcm` convolved with `ir` (by FFT), cut to the input's length, at the input's RMS level."""
    if len(pcm) == 0:
        return pcm.astype(np.float32)
    n = len(pcm) + len(ir) - 1
    size = 1 << (n - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(pcm, size) * np.fft.rfft(ir, size), size)[: len(pcm)]
    before = np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))
    after = np.sqrt(np.mean(wet * wet))
    return (wet * (before / max(after, 1e-12))).astype(np.float32)


def random_augment(pcm: np.ndarray, rng: np.random.Generator, sample_rate: int = 24000,
                   reverb_p: float = 0.3, noise_p: float = 0.6) -> tuple[np.ndarray, dict]:
    """The training augmentation: reverberation (probability `reverb_p`, RT60 0.15-0.8 s), noise
    (probability `noise_p`, a random kind at 5-40 dB SNR), then a random level. Returns the audio
    and a record of what was applied."""
    applied: dict = {}
    if rng.random() < reverb_p:
        rt60, drr = float(rng.uniform(0.15, 0.8)), float(rng.uniform(-3.0, 10.0))
        pcm = reverberate(pcm, impulse_response(rng, rt60, sample_rate, drr))
        applied["reverb"] = {"rt60_s": round(rt60, 3), "direct_to_reverb_db": round(drr, 1)}
    if rng.random() < noise_p:
        kind, snr = NOISE_KINDS[rng.integers(len(NOISE_KINDS))], float(rng.uniform(5.0, 40.0))
        pcm = noise(pcm, rng, snr, kind, sample_rate)
        applied["noise"] = {"kind": kind, "snr_db": round(snr, 1)}
    pcm = random_level(pcm, rng)
    applied["rms_dbfs"] = round(float(20 * np.log10(np.sqrt(np.mean(np.square(pcm, dtype=np.float64))) + 1e-12)), 1)
    return pcm, applied


def _shape_spectrum(white: np.ndarray, gain, sample_rate: int) -> np.ndarray:
    """`white` filtered by the magnitude response `gain(frequency_hz)` (FFT at a power-of-two size)."""
    size = 1 << max(0, len(white) - 1).bit_length()
    freqs = np.fft.rfftfreq(size, 1.0 / sample_rate)
    return np.fft.irfft(np.fft.rfft(white, size) * gain(freqs), size)[: len(white)]


def _babble_stream(length: int, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """One talker-like stream: noise with a speech-like spectrum (a broad peak near 500 Hz, falling
    above), switched on and off at a random syllable rate."""
    centre = rng.uniform(300.0, 700.0)
    shaped = _shape_spectrum(rng.standard_normal(length),
                             lambda f: 1.0 / (1.0 + ((f - centre) / 400.0) ** 2) + 0.05 / (1.0 + f / 4000.0), sample_rate)
    rate = rng.uniform(2.0, 7.0)
    t = np.arange(length) / sample_rate
    envelope = np.maximum(0.0, np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))) ** 2
    return shaped * envelope / max(np.sqrt(np.mean(shaped * shaped)), 1e-12)
