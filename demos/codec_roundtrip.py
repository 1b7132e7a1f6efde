"""Round-trip the bundled speech sample through the codec: audio -> codes -> audio.

    python demos/codec_roundtrip.py                       # the Kyutai codec (downloaded once)
    python demos/codec_roundtrip.py path/to/codec out.wav # a local directory or .safetensors file
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from antiphon.audio_io import read_audio, write_wav
from antiphon.codec import Codec

SAMPLE = Path(__file__).with_name("sample.wav")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="kyutai/moshiko-pytorch-bf16", help="repo id or path of the codec")
    parser.add_argument("output", nargs="?", default="sample-roundtrip.wav", help="wav file to write")
    args = parser.parse_args()

    codec = Codec.from_pretrained(args.model, num_codebooks=8)
    pcm = read_audio(SAMPLE, codec.sample_rate, mono=True)  # float32 [1, T]
    wav = torch.from_numpy(pcm)[None]  # [B=1, 1, T]
    codes = codec.encode(wav)  # int64 [1, K=8, F]: 12.5 frames per second
    decoded = codec.decode(codes)[..., : wav.shape[-1]]  # [1, 1, F * 1920], trimmed to T
    write_wav(args.output, decoded[0].numpy(), codec.sample_rate)
    print(f"{SAMPLE.name}: {pcm.shape[-1] / codec.sample_rate:.2f} s -> codes {list(codes.shape)} -> {args.output}")


if __name__ == "__main__":
    main()
