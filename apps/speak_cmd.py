"""`antiphon speak`: text to speech with a Kyutai-TTS-style model, locally or through a server.

With --url, the text goes word by word to a server's /api/tts_streaming (`kyutai_client.speak_text`), which
streams the audio and the word times back; --voice is then a voice name on the server, or a local
speaker-embedding file sent as a Voice message. Locally (--model), the text goes to a `Speaker` (one slot) in one push, then `end`; the speaker steps one 80 ms frame at a
time until its last frame; the ready frames' audio codes are decoded by the model's codec into a wav.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from antiphon.apps.help import Formatter
from antiphon.errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "embedded:tts"
MAX_SECONDS_PER_CHAR = 1.0  # a stop for a model that never ends: at most this much audio per input character
MIN_STEPS = 100
DEFAULT_CFG, DEFAULT_TEMP, DEFAULT_SEED = 2.0, 0.6, 0
SAMPLE_RATE = 24000  # what the TTS servers send


def register(subparsers, common: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "speak", parents=common, formatter_class=Formatter, help="text to speech (local model or server)",
        description="Speak a text (or the text of a file) with a text-to-speech model (Kyutai TTS: delayed "
                    "streams, a depformer, tts_config in config.json) and its codec and tokenizer, into a 24 kHz "
                    "wav file: on this machine (--model), or through a server's /api/tts_streaming (--url; "
                    "antiphon's, or Kyutai's moshi-server). With -v, prints each word with its start and stop "
                    "time in seconds.",
        epilog="examples:\n"
               '  antiphon speak "Hello there, how are you?" -o hello.wav --voice voice.safetensors\n'
               "  antiphon -v speak story.txt -o story.wav --model path/to/tts-model\n"
               '  antiphon speak "Hello." -o hello.wav --url ws://127.0.0.1:8998 --voice expresso/ex03-ex01_happy_001_channel1_334s.wav\n\n'
               f"SOURCE is a Hugging Face repo id or a local directory (default {DEFAULT_MODEL}). A model "
               "conditioned on a speaker needs --voice: a kyutai/tts-voices speaker-embedding .safetensors file. "
               "URL is ws://host:port (the path /api/tts_streaming is added) or a full ws:// or wss:// URL; "
               "with --url, --voice is a local embedding file (sent to the server) or else a voice name the "
               "server knows, and --cfg, --temp and --seed are sent only when given.")
    p.add_argument("text", metavar="TEXT|FILE", help="the text to speak, or a text file holding it")
    p.add_argument("-o", "--output", metavar="OUT.wav", required=True, help="wav file to write")
    p.add_argument("--model", metavar="SOURCE",
                   help=f"TTS model: Hugging Face repo id or local directory (default: {DEFAULT_MODEL})")
    p.add_argument("--url", metavar="URL", help="speak through this server instead of a local model")
    p.add_argument("--api-key", metavar="KEY", help="the server's API key (sent as the kyutai-api-key header)")
    p.add_argument("--voice", metavar="V", help="speaker-embedding .safetensors file (kyutai/tts-voices); "
                                                "with --url, also a voice name on the server")
    p.add_argument("--cfg", type=float, help=f"guidance value of a model with a cfg conditioner (default: {DEFAULT_CFG})")
    p.add_argument("--cfg-coef", type=float, default=1.0, metavar="C",
                   help="two-pass classifier-free guidance for a model trained without CFG distillation (no cfg "
                        "conditioner): the audio is pushed away from a pass without text or voice; twice the "
                        "compute (default: 1, none)")
    p.add_argument("--temp", type=float, help=f"sampling temperature, 0 for argmax (default: {DEFAULT_TEMP})")
    p.add_argument("--seed", type=int, help=f"sampling seed (default: {DEFAULT_SEED})")
    p.add_argument("--device", default="auto", help="torch device of a local model (default: cuda if available, else cpu)")
    p.set_defaults(run=run_speak)


def run_speak(args: argparse.Namespace) -> int:
    from antiphon.audio_io import write_wav
    from antiphon.apps.codec_cmd import _check_output
    from antiphon.apps.transcribe_cmd import check_local_or_url, load_lm

    check_local_or_url(args)
    text = _read_text(args.text)
    _check_output(args.output)
    if args.url is not None:
        if args.cfg_coef != 1.0:
            raise InputError("--cfg-coef applies to a local model (the server protocol carries cfg_alpha: --cfg)")
        pcm, words = speak_with_server(args.url, text, voice=args.voice, api_key=args.api_key, cfg=args.cfg,
                                       temp=args.temp, seed=args.seed)
        sample_rate = SAMPLE_RATE
    else:
        if args.voice is not None and not Path(args.voice).is_file():
            raise InputError(f"voice file not found: {args.voice}")
        lm = load_lm(args.model or DEFAULT_MODEL, args.device)
        pcm, words = speak(lm, text, voice=args.voice, cfg=_given(args.cfg, DEFAULT_CFG),
                           temp=_given(args.temp, DEFAULT_TEMP), seed=_given(args.seed, DEFAULT_SEED),
                           cfg_coef=args.cfg_coef)
        sample_rate = lm.codec.sample_rate
    write_wav(args.output, pcm, sample_rate)
    if getattr(args, "verbose", 0):
        for w in words:
            print(f"{w.start:8.2f} {w.stop:8.2f}  {w.text}")
    print(f"spoke {len(words)} words in {pcm.shape[-1] / sample_rate:.2f} s -> {args.output}")
    return 0


def _given(value, default):
    return default if value is None else value


def speak_with_server(url: str, text: str, voice: str | None = None, api_key: str | None = None,
                      cfg: float | None = None, temp: float | None = None, seed: int | None = None):
    """text -> (float32 PCM [T] at 24 kHz, [TimedWord]) through the TTS server at `url`. `voice`: a local
    speaker-embedding file (sent as a Voice message, [1, C, T]) or else a voice name for the server."""
    import asyncio

    from antiphon.streaming.kyutai_client import TtsClientError, speak_text

    embedding = None
    if voice is not None and Path(voice).is_file():
        from antiphon.lm.tts import load_voice

        embedding = load_voice(voice).t()[None].numpy()  # [T, C] -> [1, C, T], as in the file
        voice = None
    query = {"cfg_alpha": cfg, "temperature": temp, "seed": seed}
    pcm, words = asyncio.run(speak_text(url, text, voice=voice, api_key=api_key, voice_embedding=embedding,
                                        **{k: v for k, v in query.items() if v is not None}))
    if not pcm.size:
        raise TtsClientError(f"the server at {url} sent no audio for this text")
    return pcm, words


def speak(lm, text: str, voice=None, cfg: float | None = 2.0, temp: float = 0.6, seed: int = 0, cfg_coef: float = 1.0):
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
                      temp=temp, temp_text=temp, rng=rng, cfg_coef=cfg_coef)
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
