"""`antiphon speak`: text to speech with a Kyutai-TTS-style model, locally.

The text goes to a `Speaker` (one slot) in one push, then `end`; the speaker steps one 80 ms frame at a
time until its last frame; the ready frames' audio codes are decoded by the model's codec into a wav.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from antiphon.apps.help import Formatter
from antiphon.errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "kyutai/tts-1.6b-en_fr"
MAX_SECONDS_PER_CHAR = 1.0  # a stop for a model that never ends: at most this much audio per input character
MIN_STEPS = 100


def register(subparsers, common: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "speak", parents=common, formatter_class=Formatter, help="text to speech (local model)",
        description="Speak a text (or the text of a file) with a text-to-speech model (Kyutai TTS: delayed "
                    "streams, a depformer, tts_config in config.json) and its codec and tokenizer, on this "
                    "machine, into a 24 kHz wav file. With -v, prints each word with its start and stop time "
                    "in seconds.",
        epilog="examples:\n"
               '  antiphon speak "Hello there, how are you?" -o hello.wav --voice voice.safetensors\n'
               "  antiphon -v speak story.txt -o story.wav --model path/to/tts-model\n\n"
               f"SOURCE is a Hugging Face repo id or a local directory (default {DEFAULT_MODEL}). A model "
               "conditioned on a speaker needs --voice: a kyutai/tts-voices speaker-embedding .safetensors file.")
    p.add_argument("text", metavar="TEXT|FILE", help="the text to speak, or a text file holding it")
    p.add_argument("-o", "--output", metavar="OUT.wav", required=True, help="wav file to write")
    p.add_argument("--model", metavar="SOURCE", default=DEFAULT_MODEL,
                   help=f"TTS model: Hugging Face repo id or local directory (default: {DEFAULT_MODEL})")
    p.add_argument("--voice", metavar="FILE", help="speaker-embedding .safetensors file (kyutai/tts-voices)")
    p.add_argument("--cfg", type=float, default=2.0, help="guidance value of a model with a cfg conditioner (default: 2.0)")
    p.add_argument("--temp", type=float, default=0.6, help="sampling temperature, 0 for argmax (default: 0.6)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(run=run_speak)


def run_speak(args: argparse.Namespace) -> int:
    from antiphon.apps.audio_io import write_wav
    from antiphon.apps.codec_cmd import _check_output
    from antiphon.apps.transcribe_cmd import load_lm

    text = _read_text(args.text)
    _check_output(args.output)
    if args.voice is not None and not Path(args.voice).is_file():
        raise InputError(f"voice file not found: {args.voice}")
    lm = load_lm(args.model, args.device)
    pcm, words = speak(lm, text, voice=args.voice, cfg=args.cfg, temp=args.temp, seed=args.seed)
    write_wav(args.output, pcm, lm.codec.sample_rate)
    if getattr(args, "verbose", 0):
        for w in words:
            print(f"{w.start:8.2f} {w.stop:8.2f}  {w.text}")
    print(f"spoke {len(words)} words in {pcm.shape[-1] / lm.codec.sample_rate:.2f} s -> {args.output}")
    return 0


def speak(lm, text: str, voice=None, cfg: float | None = 2.0, temp: float = 0.6, seed: int = 0):
    """text -> (float32 PCM [1, T] at the codec's rate, [SpokenWord]) with a one-slot Speaker."""
    import torch
    from tqdm import tqdm

    from antiphon.apps.codec_cmd import decode_codes
    from antiphon.lm.tasks import FRAME_SECONDS, Speaker

    if not lm.config.dep_q or "audio_delay" not in lm.config.tts_config:
        raise InputError("not a text-to-speech model: it needs a depformer and tts_config['audio_delay'] in config.json")
    conditioned = lm.is_conditioned
    if voice is not None and not conditioned:
        raise InputError("this TTS model takes no voice: leave out --voice")
    if conditioned and voice is None and "speaker_wavs" in lm.condition_provider.fused:
        raise InputError("this TTS model speaks in a given voice: pass --voice FILE (a kyutai/tts-voices "
                         "speaker-embedding .safetensors file)")
    rng = torch.Generator(device=lm.device).manual_seed(seed)
    speaker = Speaker(lm, 1, voice=voice, cfg=cfg if conditioned else None, tokenizer=lm.tokenizer,
                      temp=temp, temp_text=temp, rng=rng)
    speaker.push(0, text)
    speaker.end(0)
    max_steps = max(MIN_STEPS, int(len(text) * MAX_SECONDS_PER_CHAR / FRAME_SECONDS))
    frames, words = [], []
    with torch.inference_mode(), tqdm(total=None, unit="frame", desc="speak", disable=None, leave=False) as bar:
        for _ in range(max_steps):
            out = speaker.step()
            words += out.words
            if bool(out.ready[0]):
                frames.append(out.audio[0].cpu())  # [dep_q, 1]
                bar.update(1)
            if bool(out.last[0]):
                break
        else:
            logger.warning("stopped after %d steps without the end of the text", max_steps)
    if not frames:
        raise InputError("the model produced no audio for this text")
    codes = torch.cat(frames, dim=-1)  # [dep_q, F]
    return decode_codes(lm.codec, codes), words


def _read_text(text: str) -> str:
    path = Path(text)
    try:
        is_file = len(text) < 4096 and "\n" not in text and path.is_file()
    except OSError:
        is_file = False
    if is_file:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read text file {path}: {e}") from None
    if not text.strip():
        raise InputError("nothing to speak: the text is empty")
    return text
