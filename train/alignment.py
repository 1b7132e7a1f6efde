"""Word timings: mapping a synthesizer's own word events onto the text's words, tightening each
word to the span where it is audible, and measuring how well the boundaries fall where speech does.

A text's words are its whitespace-separated tokens, punctuation included ("three?"), in the form
the LM's text stream sees them. Every backend reports where each token starts (and, for flite and
festival, where it ends) from the synthesizer's own segment timings; `tighten` then trims each
word's span of leading and trailing silence at `FRAME_S` resolution, so that a word never spans a
pause (a comma, a sentence end).
"""

from __future__ import annotations

import numpy as np

FRAME_S = 0.005  # energy frame for tightening and measuring, seconds
SILENCE_BELOW_PEAK_DB = 35.0  # a frame this far below the utterance's loudest frame is silence

Word = tuple[str, float, float]  # (word, start_s, stop_s)


def frame_energy_db(pcm: np.ndarray, sample_rate: int, frame_s: float = FRAME_S) -> np.ndarray:
    """RMS energy in dB of consecutive non-overlapping frames of mono PCM [T] (the last partial
    frame dropped); silence reads -120 dB."""
    hop = max(1, int(round(frame_s * sample_rate)))
    n = len(pcm) // hop
    frames = np.asarray(pcm[: n * hop], dtype=np.float64).reshape(n, hop)
    return 10.0 * np.log10(np.mean(frames * frames, axis=1) + 1e-12)


def tighten(words: list[Word], pcm: np.ndarray, sample_rate: int) -> list[Word]:
    """Shrink each word's [start, stop] to its first and last frame above the silence threshold
    (`SILENCE_BELOW_PEAK_DB` under the loudest frame) among the frames wholly inside it. A word with
    no audible frame keeps its span."""
    energy = frame_energy_db(pcm, sample_rate)
    if len(energy) == 0:
        return list(words)
    loud = energy > energy.max() - SILENCE_BELOW_PEAK_DB
    out = []
    for word, start, stop in words:
        first, last = int(np.ceil(start / FRAME_S - 1e-6)), min(int(stop / FRAME_S + 1e-6), len(loud))
        audible = np.flatnonzero(loud[first:last])
        if len(audible) and audible[0] > 0:
            start = (first + audible[0]) * FRAME_S
        if len(audible) and audible[-1] < last - first - 1:
            stop = (first + audible[-1] + 1) * FRAME_S
        out.append((word, round(float(start), 4), round(float(stop), 4)))
    return out


def token_spans(text: str) -> list[tuple[int, int]]:
    """[start, end) character offsets of each whitespace-separated token of `text`."""
    spans, pos = [], 0
    for token in text.split():
        start = text.index(token, pos)
        pos = start + len(token)
        spans.append((start, pos))
    return spans


def shift(words: list[Word], offset_s: float) -> list[Word]:
    """The same words `offset_s` seconds later."""
    return [(w, round(a + offset_s, 4), round(b + offset_s, 4)) for w, a, b in words]


def boundary_quietness(words: list[Word], pcm: np.ndarray, sample_rate: int,
                       offset_s: float = 0.0) -> tuple[int, int, float]:
    """How well word boundaries fall where the speech is quiet: (boundaries measured, boundaries
    in a quiet spot, chance). Measured are the boundaries between touching words (no pause between
    them; pauses trivially mark their edges). A spot is quiet when the quietest `FRAME_S` frame
    within one frame of it is among the quietest quarter of the speech frames (the frames inside
    words); `chance` is the fraction of all speech frames for which the same holds, what boundaries
    placed at random would score. With `offset_s`, the boundaries are moved by that much first:
    timings that follow the audio score best at offset 0."""
    energy = frame_energy_db(pcm, sample_rate)
    inside = np.zeros(len(energy), dtype=bool)
    for _, start, stop in words:
        inside[int(start / FRAME_S):int(stop / FRAME_S)] = True
    if inside.sum() < 4:
        return 0, 0, 0.0
    quiet_level = np.percentile(energy[inside], 25)
    padded = np.pad(energy, 1, mode="edge")
    local_min = np.minimum(np.minimum(padded[:-2], padded[1:-1]), padded[2:])
    chance = float(np.mean(local_min[inside] <= quiet_level))
    measured = quiet = 0
    for (_, _, stop), (_, start, _) in zip(words, words[1:]):
        if start - stop > FRAME_S:
            continue
        frame = min(max(int(round((start + offset_s) / FRAME_S)), 0), len(energy) - 1)
        measured += 1
        quiet += bool(local_min[frame] <= quiet_level)
    return measured, quiet, chance
