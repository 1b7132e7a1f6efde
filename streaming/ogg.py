"""Ogg page framing (RFC 3533), enough to check and split what travels in Moshi's Audio messages.

sphn encodes and decodes the Opus inside; this module only reads page headers, so the server can tell
header pages (OpusHead / OpusTags) from audio pages and reject bytes that are not Ogg at all. It does not
check page CRCs (the Opus decoder does). Pure functions, no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import ProtocolError

CAPTURE = b"OggS"
HEADER_BYTES = 27  # fixed part of a page header, before the lacing table
FLAG_CONTINUED, FLAG_BOS, FLAG_EOS = 0x01, 0x02, 0x04
_HEADER = struct.Struct("<4sBBqIII B")


@dataclass(frozen=True)
class OggPage:
    """One Ogg page. `granule` is in the stream's granule units (48 kHz samples for Opus), -1 when no packet ends here."""

    header_type: int  # FLAG_* bits
    granule: int
    serial: int
    sequence: int
    lacing: tuple[int, ...]  # segment sizes in bytes, each 0..255
    body: bytes

    @property
    def packets(self) -> list[bytes]:
        """The packet pieces in this page: a piece ends at a lacing value < 255; the last may continue on the next page."""
        out, start, size = [], 0, 0
        for n in self.lacing:
            size += n
            if n < 255:
                out.append(self.body[start:start + size])
                start, size = start + size, 0
        if size:
            out.append(self.body[start:start + size])
        return out

    @property
    def is_opus_header(self) -> bool:
        """True for the OpusHead and OpusTags pages that start an Ogg/Opus stream."""
        return self.body.startswith((b"OpusHead", b"OpusTags"))

    @property
    def size(self) -> int:
        return HEADER_BYTES + len(self.lacing) + len(self.body)


def split_pages(data: bytes) -> list[OggPage]:
    """Split bytes holding whole Ogg pages. Raises ProtocolError on a bad capture pattern, version or a truncated page."""
    data = bytes(data)
    pages, pos = [], 0
    while pos < len(data):
        if len(data) - pos < HEADER_BYTES:
            raise ProtocolError(f"truncated Ogg page header at byte {pos}: {len(data) - pos} of {HEADER_BYTES} bytes")
        capture, version, header_type, granule, serial, sequence, _crc, n_seg = _HEADER.unpack_from(data, pos)
        if capture != CAPTURE:
            raise ProtocolError(f"not an Ogg page at byte {pos}: expected b'OggS', got {capture!r}")
        if version != 0:
            raise ProtocolError(f"unsupported Ogg version {version} at byte {pos} (only 0 exists)")
        lacing_end = pos + HEADER_BYTES + n_seg
        lacing = tuple(data[pos + HEADER_BYTES:lacing_end])
        end = lacing_end + sum(lacing)
        if len(lacing) < n_seg or end > len(data):
            raise ProtocolError(f"truncated Ogg page at byte {pos}: needs {end - pos} bytes, {len(data) - pos} left")
        pages.append(OggPage(header_type, granule, serial, sequence, lacing, data[lacing_end:end]))
        pos = end
    return pages
