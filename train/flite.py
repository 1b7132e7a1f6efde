"""flite through its C libraries (libflite.so.1 and one libflite_cmu_us_NAME.so.1 per voice, via
ctypes), for the utterance structure the command line does not print with times.

flite builds an utterance whose Token items (the text's whitespace tokens) have Word daughters,
whose syllables hold Segments with end times. A token starts where the segment before its first
segment ends and stops where its last segment ends: the synthesizer's own durations, the same that
drove the waveform. Voices: those `flite -lv` lists (kal, kal16, awb, rms, slt; awb_time, which
only speaks clock times, excluded), all US English. Rate sets flite's duration_stretch (1 / rate);
pitch scales the diphone voices' int_f0_target_mean and sets the clustergen voices' f0_shift.
The clustergen voices (awb, rms, slt) draw noise from libc's rand(), reseeded before each
synthesis so that the same (text, voice) gives the same samples whatever was synthesized before.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import threading

import numpy as np

from antiphon.train import alignment
from antiphon.train.synth import SynthesisError, Voice

EXCLUDED_VOICES = {"awb_time"}
RAND_SEED = 1
_START = b"daughter1.R:SylStructure.daughter1.daughter1.R:Segment.p.end"
_STOP = b"daughtern.R:SylStructure.daughtern.daughtern.R:Segment.end"
_SIGNATURES = {
    "flite_init": (ctypes.c_int, []),
    "flite_synth_text": (ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_void_p]),
    "flite_feat_set_float": (None, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_float]),
    "flite_get_param_float": (ctypes.c_float, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_float]),
    "utt_relation": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
    "relation_head": (ctypes.c_void_p, [ctypes.c_void_p]),
    "item_next": (ctypes.c_void_p, [ctypes.c_void_p]),
    "item_daughter": (ctypes.c_void_p, [ctypes.c_void_p]),
    "ffeature_float": (ctypes.c_float, [ctypes.c_void_p, ctypes.c_char_p]),
    "delete_utterance": (None, [ctypes.c_void_p]),
}


class _VoiceStruct(ctypes.Structure):  # the head of cst_voice
    _fields_ = [("name", ctypes.c_char_p), ("features", ctypes.c_void_p)]


class _Wave(ctypes.Structure):  # cst_wave
    _fields_ = [("type", ctypes.c_char_p), ("sample_rate", ctypes.c_int), ("num_samples", ctypes.c_int),
                ("num_channels", ctypes.c_int), ("samples", ctypes.POINTER(ctypes.c_short))]


class FliteSynthesizer:
    name = "flite"

    def __init__(self) -> None:
        self._lib = None
        self._voices: dict[str, tuple[int, float]] = {}  # name -> (cst_voice*, default f0 mean)
        self._lock = threading.Lock()

    def available(self) -> bool:
        try:
            ctypes.CDLL("libflite.so.1")
        except OSError:
            return False
        return shutil.which("flite") is not None

    def varies(self, voice_name: str) -> tuple[bool, bool]:
        return True, True

    def voices(self) -> list[Voice]:
        out = subprocess.run(["flite", "-lv"], capture_output=True, text=True, check=True).stdout
        names = out.split(":", 1)[-1].split()
        return [Voice("flite", name, "en") for name in names if name not in EXCLUDED_VOICES]

    def synthesize_native(self, text: str, voice: Voice) -> tuple[np.ndarray, int, list[alignment.Word]]:
        with self._lock:
            lib = self._library()
            handle, f0_mean = self._voice(voice.name)
            features = ctypes.cast(handle, ctypes.POINTER(_VoiceStruct)).contents.features
            lib.flite_feat_set_float(features, b"duration_stretch", 1.0 / voice.rate)
            lib.flite_feat_set_float(features, b"int_f0_target_mean", f0_mean * voice.pitch)
            lib.flite_feat_set_float(features, b"f0_shift", voice.pitch)
            self._libc.srand(RAND_SEED)  # clustergen voices draw excitation noise from libc's rand()
            utt = lib.flite_synth_text(text.encode(), handle)
            if not utt:
                raise SynthesisError(f"flite failed on {text!r}")
            try:
                wave = ctypes.cast(self._utt_wave(utt), ctypes.POINTER(_Wave)).contents
                pcm = np.ctypeslib.as_array(wave.samples, shape=(wave.num_samples,)).copy()
                sample_rate = wave.sample_rate
                words = self._token_times(lib, utt)
            finally:
                lib.delete_utterance(utt)
        tokens = text.split()
        if len(words) != len(tokens):
            raise SynthesisError(f"flite found {len(words)} tokens in {text!r}, expected {len(tokens)}")
        return pcm, sample_rate, [(tok, a, b) for tok, (a, b) in zip(tokens, words)]

    @staticmethod
    def _token_times(lib, utt) -> list[tuple[float, float]]:
        times = []
        token = lib.relation_head(lib.utt_relation(utt, b"Token"))
        while token:
            if lib.item_daughter(token):  # tokens of punctuation alone have no words
                times.append((float(lib.ffeature_float(token, _START)), float(lib.ffeature_float(token, _STOP))))
            token = lib.item_next(token)
        return times

    def _library(self):
        if self._lib is None:
            lib = ctypes.CDLL("libflite.so.1", mode=ctypes.RTLD_GLOBAL)
            for name, (restype, argtypes) in _SIGNATURES.items():
                getattr(lib, name).restype, getattr(lib, name).argtypes = restype, argtypes
            lib.utt_wave.restype, lib.utt_wave.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
            for dependency in ("libflite_usenglish.so.1", "libflite_cmulex.so.1"):
                ctypes.CDLL(dependency, mode=ctypes.RTLD_GLOBAL)
            lib.flite_init()
            self._lib, self._utt_wave = lib, lib.utt_wave
            self._libc = ctypes.CDLL(None)
        return self._lib

    def _voice(self, name: str) -> tuple[int, float]:
        if name not in self._voices:
            try:
                voice_lib = ctypes.CDLL(f"libflite_cmu_us_{name}.so.1", mode=ctypes.RTLD_GLOBAL)
            except OSError:
                raise SynthesisError(f"flite has no voice {name!r}") from None
            register = getattr(voice_lib, f"register_cmu_us_{name}")
            register.restype, register.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
            handle = register(None)
            features = ctypes.cast(handle, ctypes.POINTER(_VoiceStruct)).contents.features
            self._voices[name] = (handle, float(self._lib.flite_get_param_float(features, b"int_f0_target_mean", 100.0)))
        return self._voices[name]
