"""Incremental fragmented-MP4 demuxer, as MediaRecorder writes `audio/mp4`: AAC from Safari
(stsd/mp4a/esds), Opus from Chromium (stsd/Opus/dOps): ftyp and moov first, then moof+mdat.

Header boxes (moov, moof) are buffered whole, up to a limit; an mdat is streamed: each sample
the preceding moof's trun lists is returned as soon as its bytes are in, so a fragment's audio
does not wait for the fragment's end. Unneeded boxes are skipped as they stream past.

Gaps (chunks the client dropped): Chromium's chunks are whole moof+mdat fragments, so a dropped
chunk leaves a valid stream. A cut elsewhere breaks the box structure; after the header the
demuxer then resumes at the next moof that parses, is for its track and has a higher mfhd
sequence number than the last fragment's (see `containers` for the window). A cut inside an
mdat is only seen at its end, so the samples read across it may decode as a burst of noise.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from gateway.audio.containers import RESYNC_WINDOW, Cut, Packet, StreamConfig, StreamDemuxer
from gateway.errors import BadAudio

MAX_HEADER_BOX = 4 << 20  # moov / moof larger than this are refused
MAX_SKIP = 256 << 20  # a skipped box larger than this is refused: the size is garbage
CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"mvex", b"moof", b"traf"}
OPUS_RATE = 48000  # Opus always decodes at 48 kHz; its pre-skip counts 48 kHz samples
AAC_OBJECT_TYPES = {0x40, 0x66, 0x67, 0x68}  # MPEG-4 audio; MPEG-2 AAC main/LC/SSR


@dataclass
class _Trak:
    id: int = 0
    handler: bytes = b""
    timescale: int = 0
    entry: bytes = b""
    codec: str = "aac"
    config: bytes | None = None
    pre_skip: int = 0
    media_time: int | None = None


@dataclass
class _Run:
    start: int | None  # stream offset of the first sample, None: at the next mdat's payload
    sizes: list[int] = field(default_factory=list)


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of each box in data[start:end]."""
    while start + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, start)
        head = 8
        if size == 1 and start + 16 <= end:
            size, head = struct.unpack_from(">Q", data, start + 8)[0], 16
        elif size == 0:
            size = end - start
        if size < head or start + size > end:
            raise Cut(f"MP4 box {kind!r} has an invalid size {size}: corrupt stream")
        yield kind, start + head, start + size
        start += size


def _descriptor(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, payload start, payload end) of an MPEG-4 descriptor (ISO/IEC 14496-1)."""
    tag, size, pos = data[pos], 0, pos + 1
    for _ in range(4):
        byte, pos = data[pos], pos + 1
        size = size << 7 | byte & 0x7F
        if not byte & 0x80:
            break
    return tag, pos, pos + size


def _esds_config(data: bytes, start: int, end: int) -> bytes:
    """The AudioSpecificConfig inside an esds box (after its version and flags)."""
    tag, pos, _ = _descriptor(data, start + 4)
    if tag != 0x03:
        raise BadAudio(f"MP4 esds: expected an ES descriptor (tag 3), found tag {tag}")
    flags = data[pos + 2]
    pos += 3 + (2 if flags & 0x80 else 0) + (2 if flags & 0x20 else 0)
    if flags & 0x40:
        pos += 1 + data[pos]
    tag, pos, _ = _descriptor(data, pos)
    if tag != 0x04:
        raise BadAudio(f"MP4 esds: expected a decoder config (tag 4), found tag {tag}")
    if data[pos] not in AAC_OBJECT_TYPES:
        raise BadAudio(f"expected AAC audio in the MP4, found object type 0x{data[pos]:02X}")
    tag, pos, stop = _descriptor(data, pos + 13)
    if tag != 0x05 or stop > end or stop == pos:
        raise BadAudio("MP4 esds has no AudioSpecificConfig (tag 5): cannot set up AAC")
    return data[pos:stop]


class Mp4Demuxer(StreamDemuxer):
    """Fragmented MP4 bytes in (chunk edges anywhere), AAC packets (raw frames) out."""

    name = "mp4/aac"
    SYNC, SYNC_AT = b"moof", 4

    def __init__(self) -> None:
        super().__init__()
        self._fragment = 0  # the last moof's sequence number
        self._skip = 0
        self._mdat_end: int | None = None  # stream offset where the open mdat ends
        self._unbounded = False  # an mdat of size 0: runs to the end of the stream
        self._track: int | None = None
        self._defaults: dict[int, int] = {}  # trex default sample size by track
        self._runs: list[_Run] = []

    def _step(self, packets: list[Packet]) -> bool:
        if self._skip:
            n = min(self._skip, len(self._buf))
            self._consume(n)
            self._skip -= n
            return not self._skip
        if self._mdat_end is not None or self._unbounded:
            return self._mdat(packets)
        if len(self._buf) < 8:
            return False
        size, kind = struct.unpack_from(">I4s", self._buf)
        if self._offset == 0 and kind != b"ftyp":
            raise BadAudio(
                "expected an MP4 stream starting with an ftyp box, found "
                f"{bytes(self._buf[:8]).hex(' ').upper()}; send the recorder's first chunk first"
            )
        if not all(0x20 <= c < 0x7F for c in kind):
            raise Cut(
                f"expected an MP4 box header at byte {self._offset}, found "
                f"{bytes(self._buf[:8]).hex(' ').upper()}: the stream is corrupt or cut"
            )
        head = 8
        if size == 1:
            if len(self._buf) < 16:
                return False
            size, head = struct.unpack_from(">Q", self._buf, 8)[0], 16
        if kind == b"mdat":
            self._consume(head)
            self._unbounded = size == 0
            self._mdat_end = None if size == 0 else self._offset + size - head
            self._place_runs()
            return True
        if size < head:
            raise Cut(f"MP4 box {kind!r} at byte {self._offset} has invalid size {size}")
        if kind in (b"moov", b"moof"):
            if size > MAX_HEADER_BOX:
                raise Cut(f"MP4 {kind.decode()} box of {size} bytes, over the limit")
            if len(self._buf) < size:
                return False
            box = bytes(self._buf[:size])
            start = self._offset
            try:
                if kind == b"moov":
                    self._moov(box, head)
                else:
                    self._moof(box, head, start)
            except (struct.error, IndexError):
                raise Cut(
                    f"MP4 {kind.decode()} box at byte {start} ends inside one of its fields: "
                    "corrupt stream"
                ) from None
            self._consume(size)
            return True
        # After the header only fragments follow: another large box is a misread.
        if size > (MAX_SKIP if self.config is None else RESYNC_WINDOW):
            raise Cut(f"MP4 box {kind!r} declares {size} bytes: corrupt stream")
        n = min(size, len(self._buf))
        self._consume(n)
        self._skip = size - n
        return True

    def _moov(self, box: bytes, head: int) -> None:
        traks: list[_Trak] = []
        self._walk(box, head, len(box), traks)
        sound = [t for t in traks if t.handler == b"soun"]
        if not sound:
            raise BadAudio("expected an audio track in the MP4 header (moov), found none")
        trak = sound[0]
        if trak.config is None:
            found = trak.entry.decode("latin-1") or "no sample entry"
            raise BadAudio(f"expected AAC (mp4a) or Opus audio in the MP4, found {found!r}")
        # Without an edit list: drop AAC's priming frame, or Opus's declared pre-skip.
        skip = (
            dict(skip_samples=trak.pre_skip, skip_rate=OPUS_RATE)
            if trak.codec == "opus"
            else dict(skip_frames=1)
        )
        if trak.media_time is not None and trak.timescale:
            skip = dict(skip_samples=trak.media_time, skip_rate=trak.timescale)
        self._track = trak.id
        self.config = StreamConfig(trak.codec, trak.config, **skip)

    def _walk(self, box: bytes, start: int, end: int, traks: list[_Trak]) -> None:
        for kind, pos, stop in _boxes(box, start, end):
            if kind == b"trak":
                traks.append(_Trak())
            trak = traks[-1] if traks else _Trak()
            if kind in CONTAINERS:
                self._walk(box, pos, stop, traks)
            elif kind == b"tkhd":
                trak.id = struct.unpack_from(">I", box, pos + (20 if box[pos] == 1 else 12))[0]
            elif kind == b"mdhd":
                trak.timescale = struct.unpack_from(">I", box, pos + (20 if box[pos] else 12))[0]
            elif kind == b"hdlr":
                trak.handler = box[pos + 8 : pos + 12]
            elif kind == b"elst" and struct.unpack_from(">I", box, pos + 4)[0]:
                fmt = ">Qq" if box[pos] == 1 else ">Ii"
                trak.media_time = max(0, struct.unpack_from(fmt, box, pos + 8)[1])
            elif kind == b"stsd":
                self._stsd(box, pos + 8, stop, trak)
            elif kind == b"trex":
                track, _, _, size = struct.unpack_from(">IIII", box, pos + 4)
                self._defaults[track] = size

    def _stsd(self, box: bytes, start: int, end: int, trak: _Trak) -> None:
        for kind, pos, stop in _boxes(box, start, end):
            trak.entry = kind
            if kind == b"Opus":
                self._opus_entry(box, pos, stop, trak)
                return
            if kind != b"mp4a":
                return
            version = struct.unpack_from(">H", box, pos + 8)[0]
            children = pos + 28 + {1: 16, 2: 36}.get(version, 0)
            for child, cpos, cstop in _boxes(box, children, stop):
                if child == b"esds":
                    trak.config = _esds_config(box, cpos, cstop)
            if trak.config is None:
                raise BadAudio("MP4 mp4a sample entry has no esds box: cannot set up AAC")
            return

    def _opus_entry(self, box: bytes, pos: int, stop: int, trak: _Trak) -> None:
        """Opus in ISO BMFF: the dOps box is OpusHead's fields in big-endian order."""
        for child, cpos, cstop in _boxes(box, pos + 28, stop):
            if child == b"dOps" and cstop - cpos >= 11:
                _, channels, pre_skip, rate, gain, family = struct.unpack_from(">BBHIhB", box, cpos)
                trak.codec, trak.pre_skip = "opus", pre_skip
                trak.config = (
                    b"OpusHead"
                    + struct.pack("<BBHIhB", 1, channels, pre_skip, rate, gain, family)
                    + box[cpos + 11 : cstop]
                )
                return
        raise BadAudio("MP4 Opus sample entry has no dOps box: cannot set up Opus")

    def _moof(self, box: bytes, head: int, moof_start: int) -> None:
        if self._track is None:
            raise BadAudio(
                "expected the MP4 header (ftyp, moov) before the first fragment (moof); "
                "the first chunk must be the recorder's first"
            )
        for kind, pos, stop in _boxes(box, head, len(box)):
            if kind == b"mfhd" and stop - pos >= 8:
                self._fragment = struct.unpack_from(">I", box, pos + 4)[0]
            elif kind == b"traf":
                self._traf(box, pos, stop, moof_start)

    def _trust(self, at: int) -> bool | None:
        """A whole moof, with a later sequence number than the last, for this track."""
        if len(self._buf) < at + 8:
            return None
        size = struct.unpack_from(">I", self._buf, at)[0]
        if not 16 <= size <= RESYNC_WINDOW:
            return False
        if len(self._buf) < at + size:
            return None
        box = bytes(self._buf[at : at + size])
        fragment, tracks = 0, set()
        try:
            for kind, pos, stop in _boxes(box, 8, size):
                if kind == b"mfhd":
                    fragment = struct.unpack_from(">I", box, pos + 4)[0]
                elif kind == b"traf":
                    tfhd = (p for k, p, _ in _boxes(box, pos, stop) if k == b"tfhd")
                    tracks |= {struct.unpack_from(">I", box, p + 4)[0] for p in tfhd}
        except (BadAudio, struct.error):
            return False
        return fragment > self._fragment and self._track in tracks

    def _restart(self) -> None:
        self._skip, self._mdat_end, self._unbounded, self._runs = 0, None, False, []

    def _traf(self, box: bytes, start: int, end: int, moof_start: int) -> None:
        base, default_size, track = moof_start, self._defaults.get(self._track or 0, 0), None
        for kind, pos, _ in _boxes(box, start, end):
            if kind == b"tfhd":
                flags = int.from_bytes(box[pos + 1 : pos + 4], "big")
                track, pos = struct.unpack_from(">I", box, pos + 4)[0], pos + 8
                if flags & 0x01:
                    base, pos = struct.unpack_from(">Q", box, pos)[0], pos + 8
                pos += 4 * (bool(flags & 0x02) + bool(flags & 0x08))
                if flags & 0x10:
                    default_size = struct.unpack_from(">I", box, pos)[0]
            elif kind == b"trun" and track == self._track:
                self._runs.append(self._trun(box, pos, base, default_size))

    def _trun(self, box: bytes, pos: int, base: int, default_size: int) -> _Run:
        flags = int.from_bytes(box[pos + 1 : pos + 4], "big")
        count, pos = struct.unpack_from(">I", box, pos + 4)[0], pos + 8
        run = _Run(None)
        if flags & 0x01:
            run.start, pos = base + struct.unpack_from(">i", box, pos)[0], pos + 4
        pos += 4 if flags & 0x04 else 0
        if not flags & 0x200 and not default_size:
            raise BadAudio("MP4 trun gives no sample sizes and there is no default size")
        fields = bin(flags & 0xF00).count("1")
        size_at = bin(flags & 0x100).count("1")
        for _ in range(count):
            run.sizes.append(
                struct.unpack_from(">I", box, pos + 4 * size_at)[0]
                if flags & 0x200
                else default_size
            )
            pos += 4 * fields
        return run

    def _place_runs(self) -> None:
        """Runs without a data offset start at this mdat's payload, one after another."""
        pos = self._offset
        for run in self._runs:
            if run.start is None:
                run.start = pos
            pos = run.start + sum(run.sizes)

    def _mdat(self, packets: list[Packet]) -> bool:
        end = self._mdat_end
        while self._runs:
            run = self._runs[0]
            assert run.start is not None
            size = run.sizes[0]
            if run.start < self._offset or (end is not None and run.start + size > end):
                raise Cut("MP4 trun points outside its mdat: corrupt stream")
            if run.start > self._offset:  # bytes of another track, or padding
                n = min(run.start - self._offset, len(self._buf))
                self._consume(n)
                if run.start > self._offset:
                    return False
            if len(self._buf) < size:
                return False
            packets.append(Packet(bytes(self._buf[:size])))
            self._consume(size)
            run.sizes.pop(0)
            run.start += size
            if not run.sizes:
                self._runs.pop(0)
        if end is None:
            self._consume(len(self._buf))
            return False
        n = min(end - self._offset, len(self._buf))
        self._consume(n)
        if self._offset < end:
            return False
        self._mdat_end = None
        return True
