"""The codec: 24 kHz waveform <-> 12.5 Hz codes, offline and streaming.

Encode: SEANet encoder (25 Hz) -> encoder transformer -> stride-2 downsample (12.5 Hz) -> split RVQ.
Decode: split RVQ -> depthwise stride-2 upsample (25 Hz) -> decoder transformer -> SEANet decoder.

Streaming calls take `active` (bool [B], None = all): only those slots advance; the others' streaming
state (conv buffers, transformer rings) comes out bit-identical, so a paused slot later goes on as if
the call had not happened. Their output rows are zeros (latent, audio) or meaningless (codes).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from antiphon.codec.config import CodecConfig
from antiphon.codec.conv import StreamingConv1d, StreamingConvTranspose1d
from antiphon.codec.quantizer import SplitResidualVQ
from antiphon.codec.seanet import SEANetDecoder, SEANetEncoder
from antiphon.codec.transformer import CodecTransformer
from antiphon.errors import InputError
from antiphon.stateful import advancing_only, reset_streaming, start_streaming, stop_streaming


class Codec(nn.Module):
    def __init__(self, config: CodecConfig | None = None, num_codebooks: int = 8):
        super().__init__()
        cfg = config or CodecConfig()
        self.config = cfg
        stride = cfg.resample_stride
        self.encoder = SEANetEncoder(cfg)
        self.encoder_transformer = CodecTransformer(cfg)
        self.downsample = StreamingConv1d(cfg.dimension, cfg.dimension, 2 * stride, stride=stride,
                                          bias=False, pad_mode="replicate")
        self.quantizer = SplitResidualVQ(cfg.dimension, cfg.codebook_dim, cfg.codebook_size, cfg.n_q,
                                         cfg.n_q_semantic)
        self.upsample = StreamingConvTranspose1d(cfg.dimension, cfg.dimension, 2 * stride, stride=stride,
                                                 groups=cfg.dimension, bias=False)
        self.decoder_transformer = CodecTransformer(cfg)
        self.decoder = SEANetDecoder(cfg)
        self.num_codebooks = num_codebooks
        self._batch_size: int | None = None
        self.eval()

    # ------------------------------------------------------------------ properties
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def frame_size(self) -> int:
        """Samples per code frame (1920 for Mimi: 80 ms at 24 kHz)."""
        return self.config.frame_size

    @property
    def cardinality(self) -> int:
        return self.config.codebook_size

    @property
    def num_codebooks(self) -> int:
        return self._num_codebooks

    @num_codebooks.setter
    def num_codebooks(self, value: int) -> None:
        if not 1 <= value <= self.config.n_q:
            raise InputError(f"num_codebooks must be in 1..{self.config.n_q}, got {value}")
        self._num_codebooks = int(value)

    @property
    def is_streaming(self) -> bool:
        return self._batch_size is not None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, source: str | Path, num_codebooks: int = 8, device=None, dtype=None,
                        quantize: str | None = None) -> "Codec":
        """Load from a Hugging Face repo id, a local directory or a .safetensors file (Mimi's
        released format; a non-default size comes from `<stem>.json` beside the weights).
        `quantize="int8"`: then `quantize` below."""
        from antiphon.codec.checkpoint import load_codec

        codec = load_codec(source, num_codebooks=num_codebooks, device=device, dtype=dtype)
        if quantize is not None:
            codec.quantize(quantize)
        return codec

    def quantize(self, mode: str = "int8") -> int:
        """Weight-only int8 (one scale per output row, antiphon/quantize.py), in place, of the weights
        read at the latent rate: the two transformers, the SEANet convs next to them and the stride-2
        resampling conv (73 of full Mimi's 96 M parameters); returns how many weights. A streaming
        frame then reads a quarter of their bytes (on a CPU, faster at batch 1: BENCHMARKS.md). The
        numbers change (on the CPU activations also round to bfloat16), so near-tie codes can differ
        from the float codec's; the codec is then for inference only (not saved, not trained)."""
        if mode != "int8":
            raise InputError(f"the codec quantizes to int8 only, got {mode!r}")
        if self.is_quantized:
            raise InputError("the codec is already quantized")
        parts = [self.encoder_transformer, self.decoder_transformer, self.downsample,
                 *self.encoder.latent_rate_convs(), *self.decoder.latent_rate_convs()]
        return sum(part.quantize() for part in parts)

    @property
    def is_quantized(self) -> bool:
        from antiphon.quantize import QuantizedWeight

        return any(isinstance(m, QuantizedWeight) for m in self.modules())

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype = torch.float32) -> Path:
        """Write the weights in the released format (in `dtype`: float16 halves the file) and the config
        beside them; returns the weights' path."""
        from antiphon.codec.checkpoint import save_codec

        if self.is_quantized:
            raise InputError("a quantized codec is not saved: save the float one, quantize when loading")
        return save_codec(self, directory, dtype)

    # ------------------------------------------------------------------ streaming
    @contextlib.contextmanager
    def streaming(self, batch_size: int) -> Iterator["Codec"]:
        """Inside, `encode` takes n * frame_size samples per call and `decode` takes [B, K, n]; the
        state of every layer carries over between calls for `batch_size` slots."""
        if self.is_streaming:
            raise RuntimeError("the codec is already streaming; streaming contexts do not nest")
        start_streaming(self, batch_size)
        self._batch_size = batch_size
        try:
            yield self
        finally:
            stop_streaming(self)
            self._batch_size = None

    def reset_streaming(self, mask: torch.Tensor | None = None) -> None:
        """Restart the slots where `mask` [B] (bool) is true (all when None); others are untouched."""
        if not self.is_streaming:
            raise RuntimeError("reset_streaming needs an active `with codec.streaming(batch_size):`")
        device = self.quantizer.rvq_first.codebooks.device
        if mask is None:
            mask = torch.ones(self._batch_size, dtype=torch.bool, device=device)
        mask = torch.as_tensor(mask, device=device)
        if mask.dtype != torch.bool or mask.shape != (self._batch_size,):
            raise InputError(f"reset mask must be bool [{self._batch_size}], got {mask.dtype} {list(mask.shape)}")
        reset_streaming(self, mask)

    # ------------------------------------------------------------------ encode / decode
    @torch.inference_mode()
    def encode(self, wav: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """wav float [B, 1, T] at `sample_rate` -> codes int64 [B, K, ceil(T / frame_size)].

        Offline, the end is zero-padded to whole frames; streaming, T must be a positive multiple of
        frame_size. `active` (streaming only): bool [B], the slots this call advances (module docstring)."""
        self._check_wav(wav)
        length = wav.shape[-1]
        if self.is_streaming:
            if length == 0 or length % self.frame_size:
                raise InputError(f"a streaming encode takes a positive multiple of {self.frame_size} samples, got {length}")
        else:
            pad = -length % self.frame_size
            if pad:
                wav = torch.nn.functional.pad(wav, (0, pad))
        return self.encode_latent(self.encode_to_latent(wav, active))

    def encode_to_latent(self, wav: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 1, n * frame_size] -> the latent before quantization [B, D, n] (no checks of `wav`).
        `active` (streaming only): bool [B]; paused slots' rows are zeros, their state is kept."""
        return self._advancing(self._encode_to_latent, wav, active)

    def _encode_to_latent(self, wav: torch.Tensor) -> torch.Tensor:
        x = self.encoder(wav.to(self.downsample.conv.weight.dtype))
        x = self.encoder_transformer(x)
        return self.downsample(x)

    def encode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        return self.quantizer.encode(latent, self.num_codebooks)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """codes int [B, K, F] (1 <= K <= n_q, 0 <= code < cardinality) -> wav float [B, 1, F * frame_size].
        `active` (streaming only): bool [B], the slots this call advances (module docstring); the codes of
        paused slots must still be in range."""
        self._check_codes(codes)
        return self.decode_latent(self.quantizer.decode(codes.long()), active)

    def decode_latent(self, latent: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """latent [B, D, F] -> [B, 1, F * frame_size] (no checks of `latent`). `active` (streaming only):
        bool [B]; paused slots' rows are zeros, their state is kept."""
        return self._advancing(self._decode_latent, latent, active)

    def _decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        x = self.upsample(latent)
        x = self.decoder_transformer(x)
        return self.decoder(x)

    def _advancing(self, run, x: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
        """run(x), advancing only the active slots (all when None: then nothing else is done)."""
        if active is None:
            return run(x)
        active = self._check_active(active)
        with advancing_only(self, active):
            out = run(x)
        return out.masked_fill(~active.view(-1, *[1] * (out.dim() - 1)), 0.0)

    # ------------------------------------------------------------------ input checks
    def _check_active(self, active: torch.Tensor) -> torch.Tensor:
        """The active mask -> on the codec's device (shape and dtype only: no host read)."""
        if not self.is_streaming:
            raise InputError("active (paused slots) needs an active `with codec.streaming(batch_size):`")
        if not isinstance(active, torch.Tensor) or active.dtype != torch.bool or active.shape != (self._batch_size,):
            got = f"{active.dtype} {list(active.shape)}" if isinstance(active, torch.Tensor) else type(active).__name__
            raise InputError(f"active must be a bool tensor [B = {self._batch_size}], got {got}")
        return active.to(self.quantizer.rvq_first.codebooks.device)

    def _check_batch(self, batch: int) -> None:
        if self.is_streaming and batch != self._batch_size:
            raise InputError(f"streaming with batch_size {self._batch_size}, but got a batch of {batch}")

    def _check_wav(self, wav: torch.Tensor) -> None:
        if not isinstance(wav, torch.Tensor):
            raise InputError(f"encode takes a torch.Tensor [B, 1, T], got {type(wav).__name__}")
        if wav.dim() != 3:
            raise InputError(f"encode takes audio of shape [B, 1, T], got rank {wav.dim()} {list(wav.shape)}")
        if wav.shape[1] != self.config.channels:
            raise InputError(f"encode takes mono audio [B, 1, T], got {wav.shape[1]} channels; downmix first")
        if not wav.is_floating_point():
            raise InputError(f"encode takes float audio in [-1, 1], got {wav.dtype}")
        self._check_batch(wav.shape[0])

    def _check_codes(self, codes: torch.Tensor) -> None:
        if not isinstance(codes, torch.Tensor):
            raise InputError(f"decode takes a torch.Tensor [B, K, F], got {type(codes).__name__}")
        if codes.dim() != 3:
            raise InputError(f"decode takes codes of shape [B, K, F], got rank {codes.dim()} {list(codes.shape)}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise InputError(f"decode takes integer codes, got {codes.dtype}")
        if not 1 <= codes.shape[1] <= self.config.n_q:
            raise InputError(f"decode takes 1..{self.config.n_q} codebooks, got {codes.shape[1]}")
        if self.is_streaming and codes.shape[2] == 0:
            raise InputError("a streaming decode takes at least one frame")
        self._check_batch(codes.shape[0])
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.cardinality):
            raise InputError(f"codes must be in [0, {self.cardinality}), got values in "
                             f"[{int(codes.min())}, {int(codes.max())}]")

