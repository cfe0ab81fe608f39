"""Incremental WebM (Matroska) demuxer for Opus audio, as Chrome's and Firefox's MediaRecorder
write it: Segment and Cluster of unknown size, SimpleBlocks, the OpusHead in CodecPrivate.

It reads EBML element by element as bytes arrive and returns each audio block's frames as soon
as the whole block is in, so decoding never waits for the end of a cluster. Only elements it
needs are buffered (each capped at `MAX_ELEMENT`); others are skipped as they stream past.
Inside a Segment or Cluster an unknown element ID means the stream is corrupt, not an
extension, so it is reported rather than skipped.

After the header such a break may be a gap (chunks the client dropped): the demuxer resumes at
the next Cluster (ID 1F 43 B6 75) whose Timecode, its first child as recorders write it, is
later than the last Cluster's; see `containers` for the window. Chromium's chunks end one byte
into a SimpleBlock (its ID) and begin with the rest of one, so after a dropped chunk the stream
joins up by itself and no resync is needed; other cuts are what the resync is for.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from gateway.audio.containers import RESYNC_WINDOW, Cut, Packet, StreamConfig, StreamDemuxer
from gateway.errors import BadAudio

MAX_ELEMENT = 1 << 20  # a buffered element (CodecPrivate) larger than this is refused
MAX_BLOCK = 64 << 10  # no recorder writes an Opus block this large: the size is garbage
MAX_SKIP = 64 << 20  # a skipped element larger than this is refused too: the size is garbage

EBML, SEGMENT, CLUSTER, TRACKS, TRACK_ENTRY, AUDIO, BLOCK_GROUP = (
    0x1A45DFA3,
    0x18538067,
    0x1F43B675,
    0x1654AE6B,
    0xAE,
    0xE1,
    0xA0,
)
SIMPLE_BLOCK, BLOCK, TRACK_NUMBER, TRACK_TYPE, CODEC_ID, CODEC_PRIVATE = (
    0xA3,
    0xA1,
    0xD7,
    0x83,
    0x86,
    0x63A2,
)
SAMPLING_FREQUENCY, CHANNELS, VOID, CRC32, DISCARD_PADDING = 0xB5, 0x9F, 0xEC, 0xBF, 0x75A2
TIMECODE = 0xE7

MASTERS = {SEGMENT, CLUSTER, TRACKS, TRACK_ENTRY, AUDIO, BLOCK_GROUP}
WANTED = {SIMPLE_BLOCK, BLOCK, TRACK_NUMBER, TRACK_TYPE, CODEC_ID, CODEC_PRIVATE}
WANTED |= {SAMPLING_FREQUENCY, CHANNELS, DISCARD_PADDING, TIMECODE}
# Children allowed where unknown IDs mean corruption (None is the top level).
STRICT: dict[int | None, set[int]] = {
    None: {EBML, SEGMENT, VOID},
    SEGMENT: {0x114D9B74, 0x1549A966, TRACKS, CLUSTER, 0x1C53BB6B, 0x1254C367, 0x1043A770}
    | {0x1941A469, VOID, CRC32},
    CLUSTER: {TIMECODE, 0x5854, 0xA7, 0xAB, SIMPLE_BLOCK, BLOCK_GROUP, 0xAF, VOID, CRC32},
}
UNKNOWN_SIZE_OK = {SEGMENT, CLUSTER}


@dataclass
class _Track:
    number: int = 0
    type: int = 0
    codec: str = ""
    private: bytes = b""
    rate: float = 48000.0
    channels: int = 1


def _opus_head(channels: int, rate: float) -> bytes:
    """An OpusHead for a track without CodecPrivate (mono/stereo only, RFC 7845)."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, 312, int(rate), 0, 0)


class WebmDemuxer(StreamDemuxer):
    """WebM bytes in (chunk edges anywhere), Opus packets out."""

    name = "webm/opus"
    SYNC = CLUSTER.to_bytes(4, "big")

    def __init__(self) -> None:
        super().__init__()
        self._stack: list[tuple[int, int | None]] = []  # open masters: (id, end or None)
        self._skip = 0
        self._tracks: list[_Track] = []
        self._audio: int | None = None
        self._group: list[bytes] = []  # the open BlockGroup's frames, sent when it closes
        self._discard_ns = 0  # the open BlockGroup's DiscardPadding
        self._cluster_time = -1  # the last Cluster's Timecode

    def _step(self, packets: list[Packet]) -> bool:
        """Advance over one element header or payload; False when more bytes are needed."""
        while self._stack and (end := self._stack[-1][1]) is not None and self._offset >= end:
            if self._offset > end:
                raise Cut(f"WebM element overruns its parent at byte {end}: corrupt stream")
            if self._stack.pop()[0] == BLOCK_GROUP:
                self._end_group(packets)
        if self._skip:
            n = min(self._skip, len(self._buf))
            self._consume(n)
            self._skip -= n
            return not self._skip
        if self._offset == 0 and len(self._buf) >= 4 and self._buf[:4] != b"\x1a\x45\xdf\xa3":
            raise BadAudio(
                "expected a WebM stream starting with the EBML header 1A 45 DF A3, found "
                f"{self._buf[:4].hex(' ').upper()}; the first chunk must be the recorder's first"
            )
        header = self._header()
        if header is None:
            return False
        eid, size, length = header
        self._close_unknown(eid)
        parent = self._stack[-1][0] if self._stack else None
        if parent in STRICT and eid not in STRICT[parent]:
            where = {None: "at the top level", SEGMENT: "in the Segment"}.get(
                parent, "in a Cluster"
            )
            raise Cut(
                f"expected a WebM element {where} at byte {self._offset}, found ID {eid:X}: "
                "the stream is corrupt, cut, or not WebM"
            )
        if size is None and eid not in UNKNOWN_SIZE_OK:
            raise Cut(f"WebM element {eid:X} has an unknown size; only Segment/Cluster may")
        if eid in MASTERS:
            self._consume(length)
            self._stack.append((eid, None if size is None else self._offset + size))
            if eid == CLUSTER and self._audio is None:
                self._audio = self._choose_track()
            elif eid == TRACK_ENTRY:
                self._tracks.append(_Track())
            elif eid == BLOCK_GROUP:
                self._group, self._discard_ns = [], 0
            return True
        assert size is not None
        if eid not in WANTED:
            # After the header only clusters of blocks follow: a large element is a misread.
            if size > (MAX_SKIP if self.config is None else RESYNC_WINDOW):
                raise Cut(f"WebM element {eid:X} declares {size} bytes: corrupt stream")
            self._consume(length)
            self._skip = size
            return True
        limit = MAX_BLOCK if eid in (SIMPLE_BLOCK, BLOCK) else MAX_ELEMENT
        if size > limit:
            raise Cut(f"WebM element {eid:X} declares {size} bytes, over the {limit} limit")
        if len(self._buf) < length + size:
            return False
        payload = bytes(self._buf[length : length + size])
        self._consume(length + size)
        self._element(eid, payload, packets)
        return True

    def _header(self, at: int = 0) -> tuple[int, int | None, int] | None:
        """(ID, size or None if unknown, header length) of the element at `_buf[at]`, or None
        if not all in yet."""
        buf = self._buf
        if len(buf) <= at:
            return None
        id_len = 9 - buf[at].bit_length()
        if id_len > 4:
            raise Cut(
                f"expected a WebM element ID at byte {self._offset + at}, found byte "
                f"{buf[at]:02X}: the stream is corrupt or cut"
            )
        if len(buf) <= at + id_len:
            return None
        size_len = 9 - buf[at + id_len].bit_length()
        if size_len > 8:
            raise Cut(f"WebM element at byte {self._offset + at} has an invalid size field")
        end = at + id_len + size_len
        if len(buf) < end:
            return None
        eid = int.from_bytes(buf[at : at + id_len], "big")
        raw = int.from_bytes(buf[at + id_len : end], "big") & ((1 << 7 * size_len) - 1)
        size = None if raw == (1 << 7 * size_len) - 1 else raw
        return eid, size, id_len + size_len

    def _trust(self, at: int) -> bool | None:
        """A Cluster to resume at: its first child a Timecode later than the last Cluster's."""
        try:
            cluster = self._header(at)
            if cluster is None:
                return None
            start = at + cluster[2]
            timecode = self._header(start)
            if timecode is None:
                return None
        except BadAudio:
            return False
        eid, size, length = timecode
        if eid != TIMECODE or size is None or not 1 <= size <= 8:
            return False
        if len(self._buf) < start + length + size:
            return None
        value = int.from_bytes(self._buf[start + length : start + length + size], "big")
        return value > self._cluster_time

    def _restart(self) -> None:
        """Resume in the Segment: sizes of elements open before the gap no longer match the
        bytes (recorders write the Segment and Clusters with unknown size anyway)."""
        self._stack = [(SEGMENT, None)]
        self._skip = 0
        self._group, self._discard_ns = [], 0

    def _close_unknown(self, eid: int) -> None:
        """An unknown-size master ends where an element that cannot be its child begins."""
        while self._stack and self._stack[-1][1] is None:
            top = self._stack[-1][0]
            if eid in STRICT.get(top, set()) or not any(
                eid in STRICT.get(m, set()) for m, _ in self._stack[:-1]
            ):
                return
            self._stack.pop()

    def _element(self, eid: int, payload: bytes, packets: list[Packet]) -> None:
        if eid == SIMPLE_BLOCK:
            packets.extend(Packet(frame) for frame in self._block(payload))
            return
        if eid == BLOCK:
            self._group += self._block(payload)
            return
        if eid == DISCARD_PADDING:
            self._discard_ns = int.from_bytes(payload, "big", signed=True)
            return
        if eid == TIMECODE:
            self._cluster_time = int.from_bytes(payload, "big")
            return
        if not self._tracks:
            return  # a track field outside any TrackEntry: ignore
        track = self._tracks[-1]
        if eid == TRACK_NUMBER:
            track.number = int.from_bytes(payload, "big")
        elif eid == TRACK_TYPE:
            track.type = int.from_bytes(payload, "big")
        elif eid == CODEC_ID:
            track.codec = payload.rstrip(b"\0").decode("ascii", "replace")
        elif eid == CODEC_PRIVATE:
            track.private = payload
        elif eid == CHANNELS:
            track.channels = int.from_bytes(payload, "big")
        elif eid == SAMPLING_FREQUENCY and len(payload) in (4, 8):
            track.rate = struct.unpack(">f" if len(payload) == 4 else ">d", payload)[0]

    def _choose_track(self) -> int:
        audio = [t for t in self._tracks if t.type == 2 or t.codec.startswith("A_")]
        if not audio:
            found = [t.codec for t in self._tracks] or "no track header"
            raise BadAudio(
                f"expected an Opus audio track (A_OPUS) in the WebM header, found {found}; "
                "was the recorder's first chunk sent first?"
            )
        track = audio[0]
        if track.codec != "A_OPUS":
            raise BadAudio(f"expected an Opus audio track (A_OPUS), found {track.codec}")
        head = track.private or _opus_head(track.channels, track.rate)
        if not head.startswith(b"OpusHead"):
            raise BadAudio(f"expected an OpusHead in CodecPrivate, found {head[:8]!r}")
        self.config = StreamConfig("opus", head)
        return track.number

    def _end_group(self, packets: list[Packet]) -> None:
        """A BlockGroup's frames go out when it closes: its DiscardPadding may follow the Block."""
        packets.extend(Packet(frame) for frame in self._group[:-1])
        if self._group:
            packets.append(Packet(self._group[-1], self._discard_ns))
        self._group = []

    def _block(self, block: bytes) -> list[bytes]:
        """The frames of a block of the audio track (none for other tracks)."""
        if self._audio is None:
            raise Cut("WebM block outside a Cluster: corrupt stream")
        n = 9 - block[0].bit_length() if block else 9
        if n > 8 or len(block) < n + 3:
            raise Cut("WebM block too short or with an invalid track number: corrupt stream")
        track = int.from_bytes(block[:n], "big") & ((1 << 7 * n) - 1)
        if track == self._audio:
            return _frames(block[n + 3 :], block[n + 2])
        if all(t.number != track for t in self._tracks):
            raise Cut(f"WebM block of track {track}, which the header does not declare")
        return []


def _frames(data: bytes, flags: int) -> list[bytes]:
    """Split a block's payload into frames by its lacing (none, Xiph, fixed or EBML)."""
    lacing = (flags >> 1) & 3
    if lacing == 0:
        return [data]
    try:
        count, pos = data[0] + 1, 1
        sizes: list[int] = []
        if lacing == 1:  # Xiph: each size a run of 255s plus a last byte
            for _ in range(count - 1):
                size = 0
                while data[pos] == 255:
                    size, pos = size + 255, pos + 1
                sizes.append(size + data[pos])
                pos += 1
        elif lacing == 3:  # EBML: first size a vint, then signed differences
            for i in range(count - 1):
                n = 9 - data[pos].bit_length()
                raw = int.from_bytes(data[pos : pos + n], "big") & ((1 << 7 * n) - 1)
                pos += n
                sizes.append(raw if i == 0 else sizes[-1] + raw - ((1 << (7 * n - 1)) - 1))
        else:  # fixed: equal sizes
            sizes = [(len(data) - pos) // count] * (count - 1)
    except IndexError:
        raise Cut("WebM block lacing runs past the block: corrupt stream") from None
    sizes.append(len(data) - pos - sum(sizes))
    if min(sizes) < 0:
        raise Cut("WebM block lacing sizes exceed the block: corrupt stream")
    frames = []
    for size in sizes:
        frames.append(data[pos : pos + size])
        pos += size
    return frames
