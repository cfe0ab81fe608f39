"""Incremental Ogg demuxer for Opus (RFC 3533 pages, RFC 7845 Opus mapping).

Pages are read as soon as each is whole (a page is at most 65,307 bytes, so the buffer is
bounded by the format), checked against their CRC so a cut or corrupted page is reported
instead of decoded as noise, and split into packets by their lacing values, joining packets
that continue across pages. The first stream whose first packet is an OpusHead is decoded;
other logical streams are ignored.
"""

from __future__ import annotations

import zlib

from gateway.audio.containers import Packet, StreamConfig, StreamDemuxer
from gateway.errors import BadAudio

MAX_PACKET = 1 << 20  # a packet spanning pages beyond this is refused
HEADER = 27
_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def ogg_crc(page: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, not reflected, zero init), via zlib's reflected
    CRC-32 over bit-reversed bytes; the page's CRC field must already be zeroed."""
    reflected = zlib.crc32(page.translate(_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


class OggDemuxer(StreamDemuxer):
    """Ogg bytes in (chunk edges anywhere), Opus packets out."""

    name = "ogg/opus"

    def __init__(self) -> None:
        super().__init__()
        self._serial: int | None = None
        self._partial = bytearray()
        self._packets_seen = 0

    def _step(self, packets: list[Packet]) -> bool:
        page = self._page()
        if page is not None:
            self._read_page(page, packets)
        return page is not None

    def _page(self) -> bytes | None:
        buf = self._buf
        head = bytes(buf[:4])
        if head != b"OggS"[: len(head)]:
            what = "stream starting with" if self._offset == 0 else "page (OggS) at byte"
            where = "" if self._offset == 0 else f" {self._offset}"
            raise BadAudio(
                f"expected an Ogg {what}{where} 'OggS', found {head.hex(' ').upper()}: "
                + ("not an Ogg stream" if self._offset == 0 else "the stream is corrupt or cut")
            )
        if len(buf) < HEADER or len(buf) < HEADER + buf[26]:
            return None
        if buf[4] != 0:
            raise BadAudio(f"Ogg page at byte {self._offset} has version {buf[4]}, expected 0")
        size = HEADER + buf[26] + sum(buf[HEADER : HEADER + buf[26]])
        if len(buf) < size:
            return None
        page = bytes(buf[:size])
        stored = int.from_bytes(page[22:26], "little")
        if ogg_crc(page[:22] + b"\0\0\0\0" + page[26:]) != stored:
            raise BadAudio(
                f"Ogg page at byte {self._offset} fails its CRC check: the stream is corrupt "
                "or was cut and continued with other bytes"
            )
        self._consume(size)
        return page

    def _read_page(self, page: bytes, packets: list[Packet]) -> None:
        flags, serial = page[5], int.from_bytes(page[14:18], "little")
        if self._serial is None:
            if not flags & 0x02:
                raise BadAudio(
                    "expected the Ogg stream's first page (with OpusHead), found a later page; "
                    "the first chunk must be the recorder's first"
                )
            if not page[HEADER + page[26] :].startswith(b"OpusHead"):
                found = page[HEADER + page[26] :][:8]
                raise BadAudio(f"expected Opus in Ogg (an OpusHead packet), found {found!r}")
            self._serial = serial
        if serial != self._serial:
            return
        if flags & 0x01 and not self._partial and self._packets_seen:
            raise BadAudio(f"Ogg page at byte {self._offset} continues a packet never started")
        if not flags & 0x01 and self._partial:
            raise BadAudio(f"Ogg page before byte {self._offset} is missing: a packet was cut")
        pos = HEADER + page[26]
        for lace in page[HEADER:pos]:
            self._partial += page[pos : pos + lace]
            pos += lace
            if len(self._partial) > MAX_PACKET:
                raise BadAudio(f"Ogg packet over {MAX_PACKET} bytes: corrupt stream")
            if lace < 255:
                self._packet(bytes(self._partial), packets)
                self._partial.clear()

    def _packet(self, packet: bytes, packets: list[Packet]) -> None:
        n, self._packets_seen = self._packets_seen, self._packets_seen + 1
        if n == 0:
            if len(packet) < 19 or packet[8] & 0xF0:
                raise BadAudio(f"OpusHead too short or of unknown version: {packet[:19].hex()}")
            if packet[9] == 0:
                raise BadAudio("OpusHead declares 0 channels")
            self.config = StreamConfig("opus", packet)
        elif n == 1:
            if not packet.startswith(b"OpusTags"):
                raise BadAudio(f"expected OpusTags as the second Ogg packet, found {packet[:8]!r}")
        else:
            packets.append(Packet(packet))
