"""The Mimi-compatible streaming neural audio codec: 24 kHz audio <-> 12.5 Hz codes."""

from antiphon.codec.config import CodecConfig
from antiphon.codec.model import Codec

__all__ = ["Codec", "CodecConfig"]
