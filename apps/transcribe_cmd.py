"""`antiphon transcribe`: speech to text with a Kyutai-STT-style model, locally or through a server.

With --url, the audio goes to a server's /api/asr-streaming (`kyutai_client.transcribe_pcm`), which sends
the words with their times back. Locally (--model), the file is read at the codec's rate (mono), put between `audio_silence_prefix_seconds` of silence and
enough trailing silence to flush the text delay (`audio_delay_seconds` plus the model's max delay),
encoded by the streaming codec, and fed to a `Transcriber` one 80 ms frame at a time. Pieces starting
with "▁" start a word; a word's start is the time of its first piece, its stop the end of the frame of
its last piece, both on the input file's clock.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time

import numpy as np

from antiphon.apps.devices import parse_device
from antiphon.apps.help import Formatter
from antiphon.errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "embedded:stt"
SAMPLE_RATE = 24000
FLUSH_FRAMES = 8  # extra silent frames after the text delay: room for the last word's pieces (as train/streams.py ends stt sequences)


def register(subparsers, common: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "transcribe", parents=common, formatter_class=Formatter, help="speech to text (local model or server)",
        description="Transcribe an audio file (wav, flac, ogg, mp3; resampled to 24 kHz, downmixed to mono) with "
                    "a speech-to-text model (Kyutai STT: audio codes in, text tokens out, no depformer) and its "
                    "codec and tokenizer: on this machine (--model), or through a server's /api/asr-streaming "
                    "(--url; antiphon's, or Kyutai's moshi-server). Prints the words joined by spaces, or with "
                    "--json the words with their start and stop times in seconds.",
        epilog="examples:\n"
               "  antiphon transcribe speech.wav\n"
               "  antiphon transcribe speech.mp3 --json > words.json\n"
               "  cat speech.flac | antiphon transcribe - --model path/to/stt-model\n"
               "  antiphon transcribe speech.wav --url ws://127.0.0.1:8998 --api-key public_token\n\n"
               f"SOURCE is a Hugging Face repo id or a local directory (default {DEFAULT_MODEL}). URL is "
               "ws://host:port (the path /api/asr-streaming is added) or a full ws:// or wss:// URL.")
    p.add_argument("input", metavar="FILE", help="audio file, or - to read it from standard input")
    p.add_argument("--model", metavar="SOURCE",
                   help=f"STT model: Hugging Face repo id or local directory (default: {DEFAULT_MODEL})")
    p.add_argument("--url", metavar="URL", help="transcribe through this server instead of a local model")
    p.add_argument("--api-key", metavar="KEY", help="the server's API key (sent as the kyutai-api-key header)")
    p.add_argument("--json", action="store_true", help='print {"text", "duration", "words": [{"text", "start", "stop"}]}')
    p.add_argument("--device", default="auto", help="torch device of a local model (default: cuda if available, else cpu)")
    p.set_defaults(run=run_transcribe)


def run_transcribe(args: argparse.Namespace) -> int:
    from antiphon.audio_io import read_audio

    check_local_or_url(args)
    pcm = read_audio(args.input, SAMPLE_RATE, mono=True)[0]  # before loading the model: a bad file fails fast
    if args.url is not None:
        words = transcribe_with_server(args.url, pcm, api_key=args.api_key)
    else:
        words = transcribe(load_lm(args.model or DEFAULT_MODEL, args.device), pcm)
    if args.json:
        print(json.dumps({"text": " ".join(w["text"] for w in words), "duration": round(pcm.size / SAMPLE_RATE, 3),
                          "words": words}, ensure_ascii=False))
    else:
        print(" ".join(w["text"] for w in words))
    return 0


def check_local_or_url(args: argparse.Namespace) -> None:
    """--model (a local model) and --url (a server) exclude each other; --api-key goes with --url."""
    if args.url is not None and args.model is not None:
        raise InputError("give --model (a local model) or --url (a server), not both")
    if args.url is None and args.api_key is not None:
        raise InputError("--api-key goes with --url (a server)")


def transcribe_with_server(url: str, pcm: np.ndarray, api_key: str | None = None) -> list[dict]:
    """float32 PCM [T] at 24 kHz -> [{"text", "start", "stop"}] through the STT server at `url`."""
    import asyncio

    from antiphon.streaming.kyutai_client import transcribe_pcm

    start = time.perf_counter()
    words = asyncio.run(transcribe_pcm(url, pcm, api_key=api_key))
    logger.info("transcribed %.2f s of audio through %s in %.2f s", pcm.size / SAMPLE_RATE, url,
                time.perf_counter() - start)
    return [{"text": w.text, "start": round(w.start, 3), "stop": round(w.stop, 3)} for w in words if w.text]


def load_lm(source: str, device: str):
    from antiphon.lm import LM

    device = parse_device(device)
    start = time.perf_counter()
    lm = LM.from_pretrained(source, device=device)
    logger.info("loaded %s on %s in %.2f s", source, device, time.perf_counter() - start)
    return lm


def transcribe(lm, pcm: np.ndarray, **sampling) -> list[dict]:
    """float32 PCM [T] at 24 kHz -> [{"text", "start", "stop"}] (seconds on the input's clock)."""
    import torch
    from tqdm import tqdm

    from antiphon.apps.codec_cmd import encode_pcm
    from antiphon.lm.tasks import FRAME_SECONDS, Transcriber

    try:
        transcriber = Transcriber(lm, 1, **sampling)
    except InputError as e:
        raise InputError(f"not a speech-to-text model: {e}") from None
    tokenizer, codec = lm.tokenizer, lm.codec
    if codec.sample_rate != SAMPLE_RATE:
        raise InputError(f"the model's codec runs at {codec.sample_rate} Hz; only {SAMPLE_RATE} Hz codecs are supported")
    cfg, frame = lm.config, codec.frame_size
    prefix = float(cfg.stt_config.get("audio_silence_prefix_seconds", 0.0))
    prefix_frames = max(1, round(prefix / FRAME_SECONDS))  # at least one: the model never sees a slot's first frame
    tail_frames = math.ceil(transcriber.text_delay / FRAME_SECONDS) + transcriber.generator.max_delay + FLUSH_FRAMES
    padded = np.concatenate([np.zeros(prefix_frames * frame, np.float32), pcm,
                             np.zeros(-pcm.size % frame + tail_frames * frame, np.float32)])
    codes = encode_pcm(codec, padded[None])  # [K, F], streamed
    offset = prefix_frames * FRAME_SECONDS
    pieces: list[tuple[int, float]] = []  # (token, time in s on the input's clock)
    with torch.inference_mode():
        for f in tqdm(range(codes.shape[-1]), unit="frame", desc="transcribe", disable=None, leave=False):
            out = transcriber.step(codes[None, :, f:f + 1].to(lm.device))
            if out is not None and bool(out.is_word[0]):
                pieces.append((int(out.text[0]), float(out.time[0]) - offset))
    return _words(tokenizer, pieces, FRAME_SECONDS)


def _words(tokenizer, pieces: list[tuple[int, float]], frame_seconds: float) -> list[dict]:
    """Group pieces into words (a piece starting with "▁" starts one) and decode each word."""
    groups: list[list[tuple[int, float]]] = []
    for token, at in pieces:
        if not groups or tokenizer.id_to_piece(token).startswith("\u2581"):
            groups.append([])
        groups[-1].append((token, at))
    words = []
    for group in groups:
        text = tokenizer.decode([t for t, _ in group]).strip()
        stop = group[-1][1] + frame_seconds
        if text and stop > 0:  # a word wholly before 0 s belongs to the silence prefix
            words.append({"text": text, "start": round(max(group[0][1], 0.0), 3), "stop": round(stop, 3)})
    return words
