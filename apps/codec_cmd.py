"""`antiphon codec`: encode audio to codes, decode codes to audio, or both in a row (roundtrip).

Long files go through the codec in streaming chunks of `CHUNK_FRAMES` frames, so the codec's memory
stays flat however long the file; streaming output equals offline output.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np

from antiphon.apps.devices import parse_device
from antiphon.audio_io import read_audio_native, resample, write_wav
from antiphon.apps.help import Formatter
from antiphon.errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "embedded:codec"
CHUNK_FRAMES = 125  # code frames per streaming call: 10 s of audio at 12.5 Hz


def register(subparsers, common: list[argparse.ArgumentParser]) -> None:
    codec = subparsers.add_parser(
        "codec", parents=common, formatter_class=Formatter,
        help="encode audio to codes, decode codes to audio",
        description="The Mimi-compatible neural audio codec: 24 kHz mono audio <-> 12.5 Hz frames of K codes.",
        epilog="examples:\n"
               "  antiphon codec encode speech.wav speech.codes --num-codebooks 8\n"
               "  antiphon codec decode speech.codes decoded.wav\n"
               "  antiphon codec roundtrip speech.wav roundtrip.wav --model path/to/codec\n\n"
               f"SOURCE is a Hugging Face repo id, a local directory or a .safetensors file (default {DEFAULT_MODEL}).")
    actions = codec.add_subparsers(title="actions", metavar="ACTION", dest="action", required=True)

    enc = actions.add_parser(
        "encode", parents=common, formatter_class=Formatter, help="audio file -> codes file",
        description="Encode an audio file (wav, flac, ogg, mp3; resampled to 24 kHz, downmixed to mono) "
                    "into a codes file: int16 codes [K, F] with their metadata (see README).",
        epilog="example:\n  antiphon codec encode speech.wav speech.codes --num-codebooks 8\n"
               "  cat speech.flac | antiphon codec encode - speech.codes")
    enc.add_argument("input", metavar="IN", help="audio file, or - to read it from standard input")
    enc.add_argument("output", metavar="OUT.codes", help="codes file to write")
    _model_options(enc, DEFAULT_MODEL)
    _codebooks_option(enc)
    enc.set_defaults(run=run_encode)

    dec = actions.add_parser(
        "decode", parents=common, formatter_class=Formatter, help="codes file -> wav file",
        description="Decode a codes file into a 24 kHz 16-bit mono wav file of the original length.",
        epilog="example:\n  antiphon codec decode speech.codes decoded.wav")
    dec.add_argument("input", metavar="IN.codes", help="codes file written by `antiphon codec encode`")
    dec.add_argument("output", metavar="OUT.wav", help="wav file to write")
    _model_options(dec, None, "(default: the codec named in the codes file)")
    dec.set_defaults(run=run_decode)

    rt = actions.add_parser(
        "roundtrip", parents=common, formatter_class=Formatter, help="encode then decode; report speed and SNR",
        description="Encode an audio file and decode it again. Prints the duration, the bitrate, the "
                    "processing time and real-time factor (processing time / audio duration), and the "
                    "SNR of the output against the input. A neural codec keeps the sound, not the "
                    "waveform, so its SNR is low (a few dB) even when the output sounds right.",
        epilog="example:\n  antiphon codec roundtrip demos/sample.wav sample-roundtrip.wav")
    rt.add_argument("input", metavar="IN", help="audio file, or - to read it from standard input")
    rt.add_argument("output", metavar="OUT.wav", help="wav file to write")
    _model_options(rt, DEFAULT_MODEL)
    _codebooks_option(rt)
    rt.set_defaults(run=run_roundtrip)


def _model_options(parser: argparse.ArgumentParser, default: str | None, note: str = "") -> None:
    parser.add_argument("--model", metavar="SOURCE", default=default,
                        help=f"codec: Hugging Face repo id, local directory or .safetensors file {note or f'(default: {default})'}")
    parser.add_argument("--device", default="auto",
                        help="torch device: cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")


def _codebooks_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-codebooks", metavar="K", type=int, default=8,
                        help="codebooks per frame, 1..32 for Mimi (default: 8, as Moshi uses)")


# ---------------------------------------------------------------------- subcommands
def run_encode(args: argparse.Namespace) -> int:
    from antiphon.codec.codes_file import save_codes

    pcm, file_rate = _read_input(args.input)
    _check_output(args.output)
    codec = _load_codec(args.model, args.num_codebooks, args.device)
    pcm = resample(pcm, file_rate, codec.sample_rate)
    codes = encode_pcm(codec, pcm)
    save_codes(args.output, codes, sample_rate=codec.sample_rate, frame_rate=codec.frame_rate,
               frame_size=codec.frame_size, num_samples=pcm.shape[-1], codec_name=str(args.model))
    print(f"encoded {pcm.shape[-1] / codec.sample_rate:.2f} s into {codes.shape[0]} x {codes.shape[1]} codes "
          f"({_bitrate(codec, codes.shape[0]):.0f} bit/s) -> {args.output}")
    return 0


def run_decode(args: argparse.Namespace) -> int:
    from antiphon.codec.codes_file import load_codes

    codes = load_codes(args.input)
    _check_output(args.output)
    source = args.model or codes.codec_name
    codec = _load_codec(source, codes.num_codebooks, args.device)
    if (codec.sample_rate, codec.frame_size) != (codes.sample_rate, codes.frame_size):
        raise InputError(f"{args.input} was made at {codes.sample_rate} Hz with {codes.frame_size}-sample frames, "
                         f"but codec {source} runs at {codec.sample_rate} Hz with {codec.frame_size}")
    pcm = decode_codes(codec, codes.codes)[:, :codes.num_samples]
    write_wav(args.output, pcm, codec.sample_rate)
    print(f"decoded {codes.num_codebooks} x {codes.num_frames} codes into {codes.duration:.2f} s -> {args.output}")
    return 0


def run_roundtrip(args: argparse.Namespace) -> int:
    pcm, file_rate = _read_input(args.input)
    _check_output(args.output)
    codec = _load_codec(args.model, args.num_codebooks, args.device)
    pcm = resample(pcm, file_rate, codec.sample_rate)
    duration = pcm.shape[-1] / codec.sample_rate
    decode_codes(codec, encode_pcm(codec, np.zeros((1, codec.frame_size), np.float32)))  # warm-up, untimed
    start = time.perf_counter()
    codes = encode_pcm(codec, pcm)
    encoded = time.perf_counter()
    out = decode_codes(codec, codes)[:, :pcm.shape[-1]]
    decoded = time.perf_counter()
    write_wav(args.output, out, codec.sample_rate)
    enc_s, dec_s = encoded - start, decoded - encoded
    print(f"input      {args.input}: {duration:.2f} s at {codec.sample_rate} Hz")
    print(f"codes      {codes.shape[0]} codebooks x {codes.shape[1]} frames, {_bitrate(codec, codes.shape[0]):.0f} bit/s")
    print(f"encode     {enc_s:.3f} s (real-time factor {enc_s / duration:.3f})")
    print(f"decode     {dec_s:.3f} s (real-time factor {dec_s / duration:.3f})")
    print(f"total      {enc_s + dec_s:.3f} s (real-time factor {(enc_s + dec_s) / duration:.3f}, "
          f"{duration / (enc_s + dec_s):.1f}x faster than real time)")
    print(f"SNR        {_snr_text(pcm, out)} (output against input)")
    print("           (times exclude loading the model and a one-frame warm-up)")
    print(f"output     {args.output}")
    return 0


# ---------------------------------------------------------------------- the work
def encode_pcm(codec, pcm: np.ndarray):
    """Mono PCM [1, T] at codec.sample_rate -> int64 codes [K, ceil(T / frame_size)], streamed in chunks."""
    import torch
    from tqdm import tqdm

    frame = codec.frame_size
    frames = math.ceil(pcm.shape[-1] / frame)
    device = _codec_device(codec)
    logger.debug("encoding %d samples as %d frames, %d per call", pcm.shape[-1], frames, CHUNK_FRAMES)
    out = []
    with codec.streaming(1), tqdm(total=frames, unit="frame", desc="encode", disable=None, leave=False) as bar:
        for first in range(0, frames, CHUNK_FRAMES):
            chunk = torch.from_numpy(pcm[:, first * frame:(first + CHUNK_FRAMES) * frame])[None]
            chunk = torch.nn.functional.pad(chunk, (0, -chunk.shape[-1] % frame))  # the tail: zeros
            out.append(codec.encode(chunk.to(device)).cpu())
            bar.update(out[-1].shape[-1])
    return torch.cat(out, dim=-1)[0]


def decode_codes(codec, codes) -> np.ndarray:
    """int codes [K, F] -> float32 PCM [1, F * frame_size] at codec.sample_rate, streamed in chunks."""
    import torch
    from tqdm import tqdm

    device = _codec_device(codec)
    frames = codes.shape[-1]
    logger.debug("decoding %d frames, %d per call", frames, CHUNK_FRAMES)
    out = []
    with codec.streaming(1), tqdm(total=frames, unit="frame", desc="decode", disable=None, leave=False) as bar:
        for first in range(0, frames, CHUNK_FRAMES):
            chunk = codes[None, :, first:first + CHUNK_FRAMES].to(device)
            out.append(codec.decode(chunk).float().cpu())
            bar.update(chunk.shape[-1])
    return torch.cat(out, dim=-1)[0].numpy()


# ---------------------------------------------------------------------- helpers
def _read_input(path: str) -> tuple[np.ndarray, int]:
    """Read and downmix before loading the model, so a bad input fails fast."""
    pcm, sample_rate = read_audio_native(path)
    if pcm.shape[0] > 1:
        logger.info("downmixing %d channels to mono", pcm.shape[0])
        pcm = pcm.mean(axis=0, keepdims=True)
    return pcm, sample_rate


def _check_output(path: str) -> None:
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise InputError(f"cannot write {path}: folder {parent} does not exist")


def _load_codec(source: str, num_codebooks: int, device: str):

    from antiphon.codec import Codec

    device = parse_device(device)
    if num_codebooks < 1:
        raise InputError(f"--num-codebooks must be at least 1, got {num_codebooks}")
    start = time.perf_counter()
    codec = Codec.from_pretrained(source, num_codebooks=num_codebooks, device=device, dtype=None)
    logger.info("loaded codec %s on %s in %.2f s", source, device, time.perf_counter() - start)
    return codec


def _codec_device(codec):
    return next(codec.parameters()).device


def _bitrate(codec, num_codebooks: int) -> float:
    return num_codebooks * math.log2(codec.cardinality) * codec.frame_rate


def _snr_text(reference: np.ndarray, output: np.ndarray) -> str:
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    noise = float(np.sum((reference.astype(np.float64) - output) ** 2))
    if signal == 0:
        return "n/a (silent input)"
    if noise == 0:
        return "inf dB"
    return f"{10 * math.log10(signal / noise):.2f} dB"
