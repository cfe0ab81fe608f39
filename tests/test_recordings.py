"""Real MediaRecorder output from Chromium (tests/recordings/) decodes chunk by chunk, and
with chunks dropped (the SDK's send queue under backpressure) the rest still decodes."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from gateway.audio.codecs import DEMUXERS, open_decoder
from gateway.audio.containers import ContainerDecoder
from gateway.audio.ogg import ogg_crc
from gateway.audio.webm import WebmDemuxer
from gateway.config import VAD
from gateway.errors import BadAudio
from gateway.protocol import InputCodec
from gateway.turns import SpeechBegan, SpeechEnded
from tests.audio_fixtures import best_correlation, random_chunks
from tests.conftest import Silero
from tests.test_vad import speech_events

RECORDINGS = Path(__file__).parent / "recordings"
RATE = 16000
CASES = {"chromium-webm-opus": InputCodec.WEBM_OPUS, "chromium-mp4-opus": InputCodec.MP4_AAC}


async def utterance_ms(name: str, silero: Silero) -> tuple[float, list[SpeechBegan | SpeechEnded]]:
    """Decoded duration and VAD events, feeding the chunks as the browser delivered them."""
    decoder = open_decoder(CASES[name], None, RATE)
    pcm = [decoder.decode(chunk.read_bytes()) for chunk in sorted((RECORDINGS / name).iterdir())]
    pcm.append(decoder.flush())
    decoder.close()
    audio = np.concatenate(pcm)
    vad = VAD(speech_pad_ms=0, min_silence_ms=300)
    return audio.size * 1000 / RATE, await speech_events(silero(), audio, vad)


@pytest.mark.parametrize("name", list(CASES))
async def test_real_recording_decodes_to_its_length_with_one_utterance(
    name: str, silero: Silero
) -> None:
    duration_ms, events = await utterance_ms(name, silero)
    assert 2700 <= duration_ms <= 3100, "recorded for 3 s"
    assert [type(e) for e in events] == [SpeechBegan, SpeechEnded]


async def test_both_browser_formats_carry_the_same_utterance(silero: Silero) -> None:
    spans = []
    for name in CASES:
        _, (start, end) = await utterance_ms(name, silero)
        spans.append(end.t_ms - start.t_ms)
    assert abs(spans[0] - spans[1]) <= 60


# ---- chunks dropped under backpressure --------------------------------------------------------
# The SDK's send queue drops whole chunks, never the first (the header). What that does to the
# stream, with what Chromium really sent: its WebM chunks end one byte into a SimpleBlock (the
# A3 ID) and the next begins with the rest of one, and it starts a Cluster per chunk; its MP4
# chunks are whole moof+mdat fragments. So after a dropped chunk the bytes join up into a valid
# stream and no resync is needed (gaps == 0). Ogg (Firefox; Chromium records none) is built here
# from the same recording's Opus packets, in pages a live writer would flush whole per chunk,
# where whole pages dropped show as a jump in the page sequence. A gap anywhere in the bytes (a
# recorder that cuts elsewhere) makes the demuxer resume at the next Cluster, page or moof.

PACKET_MS = 60  # Chromium's Opus packets: three 20 ms frames
SERIAL = 0x5EED


def chunks_of(name: str) -> list[bytes]:
    return [chunk.read_bytes() for chunk in sorted((RECORDINGS / name).iterdir())]


def decode(codec: InputCodec, chunks: list[bytes]) -> tuple[list[np.ndarray], int]:
    """PCM per chunk (the flush added to the last) and the gaps the decoder resumed after."""
    decoder = open_decoder(codec, None, RATE)
    assert isinstance(decoder, ContainerDecoder)
    try:
        out = [decoder.decode(chunk) for chunk in chunks]
        out[-1] = np.concatenate([out[-1], decoder.flush()])
        return out, decoder.gaps
    finally:
        decoder.close()


def ms(pcm: list[np.ndarray]) -> float:
    return sum(p.size for p in pcm) * 1000 / RATE


def ogg_page(seq: int, flags: int, granule: int, laces: list[int], body: bytes) -> bytes:
    head = b"OggS" + bytes([0, flags]) + struct.pack("<qIII", granule, SERIAL, seq, 0)
    page = head + bytes([len(laces), *laces]) + body
    return page[:22] + struct.pack("<I", ogg_crc(page)) + page[26:]


def ogg_of_the_webm_recording(page_bytes: int) -> tuple[list[bytes], list[set[int]]]:
    """The real WebM recording's Opus packets in Ogg pages of about `page_bytes` (packets span
    pages): the pages, and which audio packets each page holds a part of."""
    demuxer = WebmDemuxer()
    packets = [p.data for chunk in chunks_of("chromium-webm-opus") for p in demuxer.feed(chunk)]
    assert demuxer.config is not None
    tags = b"OpusTags" + struct.pack("<II", 0, 0)
    pages = [ogg_page(0, 0x02, 0, [19], demuxer.config.extradata[:19])]
    pages.append(ogg_page(1, 0, 0, [len(tags)], tags))
    segments = []  # (bytes, packet index, ends the packet)
    for i, packet in enumerate(packets):
        for at in range(0, len(packet) // 255 * 255 + 1, 255):
            segments.append((packet[at : at + 255], i, at + 255 > len(packet)))
    touched: list[set[int]] = [set(), set()]
    continued = False
    while segments:
        page, size = [], 0
        while segments and len(page) < 255 and size + len(segments[0][0]) <= page_bytes:
            page.append(segments.pop(0))
            size += len(page[-1][0])
        ended = [i for _, i, end in page if end]
        granule = (ended[-1] + 1) * PACKET_MS * 48 if ended else -1
        laces = [len(s) for s, _, _ in page]
        body = b"".join(s for s, _, _ in page)
        pages.append(ogg_page(len(pages), 0x01 if continued else 0, granule, laces, body))
        touched.append({i for _, i, _ in page})
        continued = not page[-1][2]
    return pages, touched


@pytest.mark.parametrize("dropped", [{1}, {2}, {4, 5, 6}, {8}], ids=str)
@pytest.mark.parametrize("name", list(CASES))
def test_chromium_chunks_dropped_whole_leave_a_stream_that_decodes_the_rest(
    name: str, dropped: set[int]
) -> None:
    chunks = chunks_of(name)
    full, _ = decode(CASES[name], chunks)
    kept = [c for i, c in enumerate(chunks) if i not in dropped]
    out, gaps = decode(CASES[name], kept)
    assert gaps == 0, "the chunks join up by themselves: nothing to resync"
    # Lost: the packets that end in the dropped chunks (WebM: the block a chunk's last byte
    # starts survives, spliced onto the kept A3 before the gap).
    demuxer = DEMUXERS[CASES[name]]()
    per_chunk = [len(demuxer.feed(chunk)) for chunk in chunks]
    lost_ms = sum(per_chunk[i] for i in dropped) * PACKET_MS
    assert abs(ms(out) - (ms(full) - lost_ms)) <= 1, (ms(out), ms(full), lost_ms)
    # What follows the gap is the same audio as without it, once what the codec and resampler
    # held of the audio before the gap has come out.
    settle = PACKET_MS * RATE // 1000
    after = np.concatenate(out[max(dropped) + 1 - len(dropped) :])[settle:]
    same = np.concatenate(full[max(dropped) + 1 :])[settle:]
    if np.abs(same).max() < 100:  # the recording's silent end: silence both ways
        assert np.abs(after).max() < 100
    else:  # the lag: a dropped first audio chunk moves the codec's priming skip along
        assert best_correlation(same, after, RATE // 4) > 0.95


def test_without_the_header_chunk_nothing_decodes() -> None:
    with pytest.raises(BadAudio, match="first chunk must be the recorder's first"):
        decode(CASES["chromium-webm-opus"], chunks_of("chromium-webm-opus")[1:])


@pytest.mark.parametrize("dropped", [{2}, {5, 6}, {10, 11, 12}], ids=str)
def test_ogg_pages_dropped_whole_lose_only_the_packets_on_them(dropped: set[int]) -> None:
    pages, touched = ogg_of_the_webm_recording(page_bytes=1200)
    head, audio = pages[:2], pages[2:]
    chunks = [b"".join(head)] + [b"".join(audio[i : i + 2]) for i in range(0, len(audio), 2)]
    full, _ = decode(InputCodec.OGG_OPUS, chunks)
    kept = [c for i, c in enumerate(chunks) if i not in dropped]
    out, gaps = decode(InputCodec.OGG_OPUS, kept)
    assert gaps == len(dropped) - sum(1 for i in dropped if i - 1 in dropped)
    lost = set().union(*(touched[2 + 2 * (i - 1) + k] for i in dropped for k in (0, 1)))
    expected = ms(full) - len(lost) * PACKET_MS
    assert abs(ms(out) - expected) <= 1, (ms(out), ms(full), sorted(lost))


def recording_bytes(fmt: str) -> tuple[bytes, int]:
    """The whole stream of each format made from the real recording, and its header's size."""
    if fmt == "ogg":
        pages, _ = ogg_of_the_webm_recording(page_bytes=1200)
        return b"".join(pages), len(pages[0]) + len(pages[1])
    chunks = chunks_of(f"chromium-{fmt}-opus")
    return b"".join(chunks), 146 if fmt == "webm" else len(chunks[0])  # webm: to the 1st Cluster


ELEMENT_MS = {"webm": 300, "ogg": 2 * 75, "mp4": 660}  # the longest Cluster, 2 pages, fragment


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fmt", ["webm", "ogg", "mp4"])
def test_a_gap_anywhere_in_the_bytes_resumes_at_the_next_element(fmt: str, seed: int) -> None:
    data, head = recording_bytes(fmt)
    codec = {"webm": InputCodec.WEBM_OPUS, "ogg": InputCodec.OGG_OPUS, "mp4": InputCodec.MP4_AAC}
    rng = np.random.default_rng(seed)
    start = int(rng.integers(head + 1, len(data) - 12_000))
    size = int(rng.integers(200, 6000))
    full, _ = decode(codec[fmt], random_chunks(data, seed, 2500))
    cut = data[:start] + data[start + size :]
    decoder = open_decoder(codec[fmt], None, RATE)
    assert isinstance(decoder, ContainerDecoder)
    out = [decoder.decode(chunk) for chunk in random_chunks(cut, seed, 2500)] + [decoder.flush()]
    decoder.close()
    assert decoder.gaps <= 1
    # Lost: what was cut, and at most the element it cut into and the one the demuxer skipped
    # to find where to resume. Packets read across the cut may decode (as noise): at most one.
    most = size / ((len(data) - head) / ms(full)) + 2 * ELEMENT_MS[fmt]
    assert ms(full) - most <= ms(out) <= ms(full) + PACKET_MS, (ms(out), ms(full), size)


def test_a_size_the_gap_left_spanning_later_bytes_is_not_waited_for() -> None:
    # A gap in an Ogg page's header: it now claims 255 lacing values (tens of KiB). The pages
    # after it decode as they arrive, not once that many more bytes have come.
    pages, touched = ogg_of_the_webm_recording(page_bytes=1200)
    chunks = [b"".join(pages[:2]), *pages[2:]]  # chunk i + 1 is page i + 2
    full, _ = decode(InputCodec.OGG_OPUS, chunks)
    broken = 12
    chunks[broken - 1] = pages[broken][:26] + b"\xff" + pages[broken][27:]
    upto = broken + 3  # fed up to the third page after the broken one
    out, gaps = decode(InputCodec.OGG_OPUS, chunks[:upto])
    assert gaps == 1
    lost = touched[broken] | touched[broken + 1]  # its packets, and one it began in the next
    assert ms(out) >= ms(full[:upto]) - len(lost) * PACKET_MS
