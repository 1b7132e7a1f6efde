"""`antiphon translate`: speech to speech translation with a Hibiki-style model, locally or through a server.

Locally (--model), the file is read at the codec's rate (mono), its trailing silence cut (`speech_end`:
the models are trained to see the source end `END_LAG_S` after its last word), encoded by the streaming
codec after one frame of silence (a slot never sees its first frame), and fed to a `Translator` one
80 ms frame at a time; then its end-of-input frame, then silence until the model's text EOS (or
`TAIL_SECONDS`). The
ready frames' audio codes are decoded into the translated speech; the text pieces make the words, timed
on the translated speech's clock. With --url, the audio goes to a server's /api/translate at the pace
of real time, then Control endTurn (`client.translate_pcm`).
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np

from antiphon.apps.help import Formatter
from antiphon.errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "embedded:translation"
SAMPLE_RATE = 24000
FRAME = 1920  # 80 ms at 24 kHz
TAIL_SECONDS = 10.0  # after the source: the most the model may take to finish its translation
SPEECH_DB = 30.0  # an 80 ms frame within this many dB of the loudest one is speech (speech_end)


def register(subparsers, common: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "translate", parents=common, formatter_class=Formatter, help="speech translation (local model or server)",
        description="Translate the speech of an audio file (wav, flac, ogg, mp3; resampled to 24 kHz, downmixed "
                    "to mono) with a simultaneous translation model (Hibiki: source audio in, translated text "
                    "and speech out, model_type hibiki) and its codec and tokenizer: on this machine (--model), "
                    "or through a server's /api/translate (--url). Prints the translated text (with --json, its "
                    "words timed on the translated speech) and writes the translated speech with -o.",
        epilog="examples:\n"
               "  antiphon translate question.wav -o question-fr.wav\n"
               "  antiphon translate speech.mp3 --json --model kyutai/hibiki-1b-pytorch-bf16 --cfg-coef 3\n"
               "  antiphon translate speech.wav -o out.wav --url ws://127.0.0.1:8998\n\n"
               f"SOURCE is a Hugging Face repo id or a local directory (default {DEFAULT_MODEL}: English <-> "
               "French, the language of the speech chooses). URL is ws://host:port (the path /api/translate "
               "is added) or a full ws:// or wss:// URL.")
    p.add_argument("input", metavar="FILE", help="audio file, or - to read it from standard input")
    p.add_argument("-o", "--output", metavar="OUT.wav", help="write the translated speech to this wav file")
    p.add_argument("--model", metavar="SOURCE",
                   help=f"translation model: Hugging Face repo id or local directory (default: {DEFAULT_MODEL})")
    p.add_argument("--url", metavar="URL", help="translate through this server instead of a local model")
    p.add_argument("--api-key", metavar="KEY", help="the server's API key (sent as the kyutai-api-key header)")
    p.add_argument("--json", action="store_true",
                   help='print {"text", "duration", "words": [{"text", "start", "stop"}]} (times on the translated speech)')
    p.add_argument("--temp", type=float, help="sampling temperature of text and audio, 0 for argmax "
                                              "(default: the model's own settings)")
    p.add_argument("--cfg-coef", type=float, default=1.0, metavar="C",
                   help="classifier-free guidance on the quality label of a conditioned model (Hibiki's README: "
                        "3 for more voice similarity, less accuracy; twice the compute; default: 1, none)")
    p.add_argument("--seed", type=int, help="sampling seed of a local model (default: 0)")
    p.add_argument("--device", default="auto", help="torch device of a local model (default: cuda if available, else cpu)")
    p.set_defaults(run=run_translate)


def run_translate(args: argparse.Namespace) -> int:
    from antiphon.apps.codec_cmd import _check_output
    from antiphon.apps.transcribe_cmd import check_local_or_url, load_lm
    from antiphon.audio_io import read_audio, write_wav

    check_local_or_url(args)
    if args.output is not None:
        _check_output(args.output)
    pcm = read_audio(args.input, SAMPLE_RATE, mono=True)[0]  # before loading the model: a bad file fails fast
    if args.url is not None:
        if args.cfg_coef != 1.0 or args.temp is not None or args.seed is not None:
            raise InputError("--cfg-coef, --temp and --seed apply to a local model")
        speech, text = translate_with_server(args.url, pcm, api_key=args.api_key)
        words = None
    else:
        lm = load_lm(args.model or DEFAULT_MODEL, args.device)
        speech, words = translate(lm, pcm, temp=args.temp, seed=args.seed or 0, cfg_coef=args.cfg_coef)
        text = " ".join(w["text"] for w in words)
    if args.output is not None:
        write_wav(args.output, speech[None], SAMPLE_RATE)
    if args.json:
        print(json.dumps({"text": text, "duration": round(speech.size / SAMPLE_RATE, 3)}
                         | ({"words": words} if words is not None else {}), ensure_ascii=False))
    else:
        print(text)
    return 0


def translate_with_server(url: str, pcm: np.ndarray, api_key: str | None = None) -> tuple[np.ndarray, str]:
    """float32 PCM [T] at 24 kHz -> (translated speech [T'] at 24 kHz, its text) through the server at `url`
    (the source's trailing silence cut, as locally)."""
    import asyncio

    from antiphon.streaming.client import translate_pcm

    start = time.perf_counter()
    speech, text = asyncio.run(translate_pcm(url, pcm[:speech_end(pcm, FRAME)], api_key=api_key))
    logger.info("translated %.2f s of audio through %s in %.2f s", pcm.size / SAMPLE_RATE, url,
                time.perf_counter() - start)
    return speech, text


def translate(lm, pcm: np.ndarray, temp: float | None = None, seed: int = 0, cfg_coef: float = 1.0
              ) -> tuple[np.ndarray, list[dict]]:
    """float32 PCM [T] at 24 kHz -> (translated speech, float32 [T'] at 24 kHz; [{"text", "start", "stop"}],
    seconds on the translated speech's clock)."""
    import torch
    from tqdm import tqdm

    from antiphon.apps.codec_cmd import decode_codes, encode_pcm
    from antiphon.apps.transcribe_cmd import _words
    from antiphon.lm.tasks import FRAME_SECONDS, Translator

    sampling = {} if temp is None else {"temp": temp, "temp_text": temp}
    rng = torch.Generator(device=lm.device).manual_seed(seed)
    try:
        translator = Translator(lm, 1, cfg_coef=cfg_coef, rng=rng, **sampling)
    except InputError as e:
        raise InputError(f"not a translation model: {e}") from None
    codec, cfg = lm.codec, lm.config
    if codec.sample_rate != SAMPLE_RATE:
        raise InputError(f"the model's codec runs at {codec.sample_rate} Hz; only {SAMPLE_RATE} Hz codecs are supported")
    codec.num_codebooks = cfg.n_q - cfg.dep_q
    frame = codec.frame_size
    pcm = pcm[:speech_end(pcm, frame)]
    padded = np.concatenate([np.zeros(frame, np.float32), pcm, np.zeros(-pcm.size % frame, np.float32)])
    source = encode_pcm(codec, padded[None]).to(lm.device)  # [K, F]
    silence = encode_pcm(codec, np.zeros((1, frame), np.float32)).to(lm.device)  # [K, 1]
    frames = [source[None, :, f:f + 1] for f in range(source.shape[-1])] + [translator.end_of_input()]
    frames += [silence[None]] * round(TAIL_SECONDS / FRAME_SECONDS)
    audio, pieces = [], []  # [dep_q, 1] per ready frame; (token, time on the output's clock)
    with torch.inference_mode():
        for f in tqdm(range(len(frames)), unit="frame", desc="translate", disable=None, leave=False):
            out = translator.step(frames[f])
            if out is None or not bool(out.ready[0]):
                continue
            if bool(out.is_end[0]):
                break
            if bool(out.is_word[0]):
                pieces.append((int(out.text[0]), len(audio) * FRAME_SECONDS))
            audio.append(out.audio[0].cpu())
        else:
            logger.warning("the model did not end its translation within %.0f s of the source's end", TAIL_SECONDS)
    if not audio:
        raise InputError("the model produced no output for this audio")
    speech = decode_codes(codec, torch.cat(audio, dim=-1))[0]  # [T'] at 24 kHz
    return speech, _words(lm.tokenizer, pieces, FRAME_SECONDS)


def speech_end(pcm: np.ndarray, frame: int) -> int:
    """The length of `pcm` [T] without its trailing silence: `END_LAG_S` past the end of the last frame
    within SPEECH_DB of the loudest (the whole of it when that is further, or when it is all silent)."""
    from antiphon.train.streams import END_LAG_S

    frames = np.pad(pcm, (0, -pcm.size % frame)).reshape(-1, frame)
    level = 10 * np.log10(np.maximum((frames.astype(np.float64) ** 2).mean(axis=1), 1e-20))
    if level.max() <= -200:  # digital silence
        return pcm.size
    loud = np.flatnonzero(level >= level.max() - SPEECH_DB)
    return min(pcm.size, (int(loud[-1]) + 1) * frame + round(END_LAG_S * SAMPLE_RATE))
