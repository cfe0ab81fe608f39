"""Incremental Ogg demuxer for Opus (RFC 3533 pages, RFC 7845 Opus mapping).

Pages are read as soon as each is whole (a page is at most 65,307 bytes, so the buffer is
bounded by the format), checked against their CRC so a cut or corrupted page is reported
instead of decoded as noise, and split into packets by their lacing values, joining packets
that continue across pages. The first stream whose first packet is an OpusHead is decoded;
other logical streams are ignored.

Gaps (chunks the client dropped): pages carry a sequence number, so whole pages lost show as a
jump in it; the packet the gap cut is dropped and decoding goes on. A gap inside a page breaks
the stream (no `OggS` where a page should begin, or a page failing its CRC): after the header
the demuxer then resumes at the next page of its stream that passes the CRC check and comes
later in sequence than the last good one (see `containers` for the window).
"""

from __future__ import annotations

import zlib

from gateway.audio.containers import Cut, Packet, StreamConfig, StreamDemuxer
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
    SYNC = b"OggS"

    def __init__(self) -> None:
        super().__init__()
        self._serial: int | None = None
        self._sequence = -1  # the last page's sequence number
        self._partial = bytearray()
        self._packets_seen = 0
        self._lost = False  # pages were lost: the next page's continued packet is cut

    def _step(self, packets: list[Packet]) -> bool:
        page = self._page()
        if page is None:
            return False
        if self._ours(page) and _sequence(page) <= self._sequence:
            raise Cut(f"Ogg page {_sequence(page)} after page {self._sequence}: out of order")
        self._consume(len(page))
        self._read_page(page, packets)
        return True

    def _ours(self, page: bytes) -> bool:
        return int.from_bytes(page[14:18], "little") == self._serial

    def _page(self, at: int = 0) -> bytes | None:
        """The whole page at `_buf[at]`, CRC checked, or None until it is all in."""
        buf = self._buf
        offset = self._offset + at
        head = bytes(buf[at : at + 4])
        if head != b"OggS"[: len(head)]:
            if offset == 0:
                raise BadAudio(
                    f"expected an Ogg stream starting with 'OggS', found {head.hex(' ').upper()}"
                    ": not an Ogg stream"
                )
            raise Cut(
                f"expected an Ogg page (OggS) at byte {offset}, found {head.hex(' ').upper()}: "
                "the stream is corrupt or cut"
            )
        if len(buf) < at + HEADER or len(buf) < at + HEADER + buf[at + 26]:
            return None
        if buf[at + 4] != 0:
            raise Cut(f"Ogg page at byte {offset} has version {buf[at + 4]}, expected 0")
        size = HEADER + buf[at + 26] + sum(buf[at + HEADER : at + HEADER + buf[at + 26]])
        if len(buf) < at + size:
            return None
        page = bytes(buf[at : at + size])
        stored = int.from_bytes(page[22:26], "little")
        if ogg_crc(page[:22] + b"\0\0\0\0" + page[26:]) != stored:
            raise Cut(
                f"Ogg page at byte {offset} fails its CRC check: the stream is corrupt "
                "or was cut and continued with other bytes"
            )
        return page

    def _resumable(self) -> bool:
        return self._packets_seen >= 2  # past OpusHead and OpusTags

    def _trust(self, at: int) -> bool | None:
        """A whole page of this stream, passing its CRC check, later than the last good one."""
        try:
            page = self._page(at)
        except BadAudio:
            return False
        if page is None:
            return None
        return self._ours(page) and _sequence(page) > self._sequence

    def _restart(self) -> None:
        self._lost = True

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
        previous, self._sequence = self._sequence, _sequence(page)
        if self._sequence > previous + 1 and previous >= 0 and not self._lost:
            self._lost = True  # whole pages are missing: a gap between chunks
            self.gaps += 1
        laces = page[HEADER : HEADER + page[26]]
        pos = HEADER + page[26]
        if self._lost:  # drop the packet the gap cut: its start, and its rest on this page
            self._partial.clear()
            cut = _continued(laces) if flags & 0x01 else b""
            self._lost = len(cut) == len(laces) and laces[-1:] == b"\xff"  # it goes on
            laces, pos = laces[len(cut) :], pos + sum(cut)
        elif flags & 0x01 and not self._partial and self._packets_seen:
            raise BadAudio(f"Ogg page at byte {self._offset} continues a packet never started")
        elif not flags & 0x01 and self._partial:
            raise BadAudio(f"Ogg page before byte {self._offset} is missing: a packet was cut")
        for lace in laces:
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


def _sequence(page: bytes) -> int:
    return int.from_bytes(page[18:22], "little")


def _continued(laces: bytes) -> bytes:
    """The lacing values of the packet a page continues: up to and including the first < 255."""
    for i, lace in enumerate(laces):
        if lace < 255:
            return laces[: i + 1]
    return laces
