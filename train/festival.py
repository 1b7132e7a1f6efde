"""festival through its command line, one `festival --batch` process per utterance, driven by a
Scheme script that synthesizes the text, saves the wave, and prints the utterance's own timings.

festival's Token items are the text's whitespace tokens; their daughters are the words (and, for
tokens with punctuation, punctuation items without segments). Each word's start is the end of the
segment before its first segment and its stop the end of its last segment: the durations that
drove the waveform. Voices: every installed voice whose description says English or French (Debian
has English ones: kal_diphone, ked_diphone, cmu_us_slt_arctic_hts). Rate sets Duration_Stretch
(1 / rate), which the diphone voices follow and HTS voices ignore; pitch is not varied.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import sphn

from antiphon.train import alignment
from antiphon.train.synth import SynthesisError, Voice

LANGUAGE_CODES = {"english": "en", "french": "fr"}
TIMEOUT_S = 120

_LIST_VOICES = """
(mapcar (lambda (v) (format t "%s\\t%l\\n" v (cadr (assoc 'language (cadr (voice.description v))))))
        (voice.list))
"""

_SYNTHESIZE = """
(voice_{voice})
(Parameter.set 'Duration_Stretch {stretch})
(set! utt (utt.synth (Utterance Text "{text}")))
(utt.save.wave utt "{wav}" 'riff)
(set! tok (utt.relation.first utt 'Token))
(while tok
  (format t "token\\n")
  (mapcar (lambda (w) (format t "word\\t%f\\t%f\\n"
                              (item.feat w "R:SylStructure.daughter1.daughter1.R:Segment.p.end")
                              (item.feat w "R:SylStructure.daughtern.daughtern.R:Segment.end")))
          (item.daughters tok))
  (set! tok (item.next tok)))
"""


class FestivalSynthesizer:
    name = "festival"

    def available(self) -> bool:
        return shutil.which("festival") is not None

    def varies(self, voice_name: str) -> tuple[bool, bool]:
        """Diphone voices follow Duration_Stretch; no voice's pitch is varied."""
        return "hts" not in voice_name, False

    def voices(self) -> list[Voice]:
        out = _run(_LIST_VOICES)
        voices = []
        for line in out.splitlines():
            name, _, language = line.partition("\t")
            if language.strip() in LANGUAGE_CODES:
                voices.append(Voice("festival", name.strip(), LANGUAGE_CODES[language.strip()]))
        return voices

    def synthesize_native(self, text: str, voice: Voice) -> tuple[np.ndarray, int, list[alignment.Word]]:
        with tempfile.TemporaryDirectory(prefix="antiphon-festival-") as tmp:
            wav = Path(tmp) / "out.wav"
            escaped = text.replace("\\", "\\\\").replace('"', '\\"')
            out = _run(_SYNTHESIZE.format(voice=voice.name, stretch=1.0 / voice.rate, text=escaped, wav=wav))
            if not wav.exists():
                raise SynthesisError(f"festival voice {voice.name} wrote no audio for {text!r}")
            pcm, sample_rate = sphn.read(str(wav))
        times = _token_times(out)
        tokens = text.split()
        if len(times) != len(tokens):
            raise SynthesisError(f"festival timed {len(times)} tokens in {text!r}, expected {len(tokens)}")
        return np.asarray(pcm[0], dtype=np.float32), int(sample_rate), [(t, a, b) for t, (a, b) in zip(tokens, times)]


def _token_times(out: str) -> list[tuple[float, float]]:
    """(start, stop) per printed token that has words with segments (punctuation items have none)."""
    times: list[tuple[float, float]] = []
    current: list[tuple[float, float]] | None = None
    for line in out.splitlines() + ["token"]:
        if line == "token":
            if current:
                times.append((min(a for a, _ in current), max(b for _, b in current)))
            current = []
        elif line.startswith("word\t") and current is not None:
            start, stop = map(float, line.split("\t")[1:])
            if stop > 0:
                current.append((start, stop))
    return times


def _run(script: str) -> str:
    """Run a Scheme script in `festival --batch`; its standard output."""
    with tempfile.NamedTemporaryFile("w", suffix=".scm") as f:
        f.write(script)
        f.flush()
        try:
            result = subprocess.run(["festival", "--batch", f.name], capture_output=True, text=True, timeout=TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SynthesisError(f"festival failed: {e}") from None
    if result.returncode != 0 or "SIOD ERROR" in result.stderr + result.stdout:
        raise SynthesisError(f"festival failed: {(result.stderr or result.stdout).strip()[-300:]}")
    return result.stdout
