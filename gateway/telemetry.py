"""Process-wide counters and structured logging set-up.

Counters are Prometheus metrics (served at `/metrics`) so operators see slow consumers, false
interruptions and turn outcomes across all sessions; per-turn timings travel to the client in
`turn_end.metrics` and into one log line per turn.
"""

from __future__ import annotations

import logging
import sys

import structlog
from prometheus_client import Counter, Gauge, Histogram

from gateway.protocol import TurnEndReason, TurnMetrics

SESSIONS_ACTIVE = Gauge("voxgate_sessions_active", "Open sessions", ["pipeline"])
SESSIONS_TOTAL = Counter("voxgate_sessions", "Sessions started", ["pipeline"])
TURNS = Counter("voxgate_turns", "Assistant turns by how they ended", ["pipeline", "reason"])
SLOW_CONSUMER_CLOSES = Counter(
    "voxgate_slow_consumer_closes",
    "Sockets closed 1013 because the client stopped reading",
    ["pipeline"],
)
REPLY_PAUSES = Counter(
    "voxgate_reply_pauses",
    "Replies paused for the user's speech, by outcome: resumed (a backchannel or noise: a "
    "false interruption avoided) or interrupted",
    ["pipeline", "outcome"],
)
BACKCHANNELS = Counter(
    "voxgate_backchannels",
    "Acknowledgements during a reply that neither cut it nor became a turn",
    ["pipeline"],
)
END_OF_TURN = Counter(
    "voxgate_end_of_turn",
    "User turns ended, by why: complete (model and words), timeout (turns.max_wait_ms), "
    "silence (vad.min_silence_ms), stt (the STT's endpoint), audio_end",
    ["pipeline", "reason"],
)
END_OF_TURN_MODEL = Counter(
    "voxgate_end_of_turn_model",
    "End-of-turn model calls: run, or skipped (the turn was decided before a worker was free)",
    ["pipeline", "outcome"],
)
STAGE_SECONDS = Histogram(
    "voxgate_stage_seconds",
    "Per-turn stage latency (turn_end.metrics): stt_final, llm_ttft, tts_ttfb, "
    "voice_to_voice, gateway_overhead, end_of_turn_wait (the silence the turn engine waited)",
    ["pipeline", "stage"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5),
)
TOOL_SECONDS = Histogram(
    "voxgate_tool_seconds",
    "Tool calls by tool and outcome (ok, or why it failed: timeout, status, unreachable, ...)",
    ["pipeline", "tool", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
PROVIDER_ERRORS = Counter(
    "voxgate_provider_errors", "Provider failures", ["pipeline", "provider", "kind"]
)
PROVIDER_FAILURES = Counter(
    "voxgate_provider_failures",
    "Provider calls that failed (each opens or keeps open that provider's breaker)",
    ["pipeline", "stage", "provider", "kind"],
)
PROVIDER_FALLBACKS = Counter(
    "voxgate_provider_fallbacks",
    "Turns or streams moved off a provider to the next of its stage's chain",
    ["pipeline", "stage", "provider"],
)
PREEMPTIVE = Counter(
    "voxgate_preemptive_replies",
    "Replies started on a pause (turns.preemptive_ms): used when the turn ended there, "
    "discarded when the user spoke on",
    ["pipeline", "outcome"],
)
AUDIO_RECEIVED = Counter(
    "voxgate_audio_received_seconds", "Seconds of user audio received from clients", ["pipeline"]
)
STT_AUDIO_SENT = Counter(
    "voxgate_stt_audio_sent_seconds",
    "Seconds of user audio sent to each STT provider (what it bills by; `stt.send`)",
    ["pipeline", "provider"],
)
DECODE_ERRORS = Counter(
    "voxgate_decode_errors", "Sessions whose input audio did not decode", ["pipeline", "codec"]
)
RATE_LIMITED = Counter(
    "voxgate_rate_limited_frames", "Control frames refused over the rate limit", ["pipeline"]
)
SESSIONS_REFUSED = Counter(
    "voxgate_sessions_refused",
    "Sockets closed before `session_started`, by reason: route_full, process_full, draining "
    "(1013 at accept), unauthorized, bad_message (1008), providers_unavailable (1013), "
    "provider_refused (1011: a refused or missing key)",
    ["pipeline", "reason"],
)
DRAIN_CLOSES = Counter(
    "voxgate_drain_closes", "Sessions closed 1001 by a graceful drain", ["pipeline"]
)


class AudioLedger:
    """A session's audio: seconds received from the client and sent to each STT provider
    (what a provider bills by), for the session's last log line and Prometheus."""

    def __init__(self, pipeline: str, sample_rate: int) -> None:
        self._pipeline = pipeline
        self._rate = sample_rate
        self._received = 0
        self._sent: dict[str, int] = {}
        # Looked up once: `labels()` costs a few microseconds, and this counts every frame.
        self._received_counter = AUDIO_RECEIVED.labels(pipeline)

    def received(self, samples: int) -> None:
        self._received += samples
        self._received_counter.inc(samples / self._rate)

    def sent(self, provider: str, pcm_bytes: int) -> None:
        samples = pcm_bytes // 2
        self._sent[provider] = self._sent.get(provider, 0) + samples
        STT_AUDIO_SENT.labels(self._pipeline, provider).inc(samples / self._rate)

    def report(self) -> dict[str, object]:
        return {
            "audio_received_s": round(self._received / self._rate, 2),
            "stt_audio_sent_s": {p: round(n / self._rate, 2) for p, n in self._sent.items()},
        }


STAGES = tuple(f.removesuffix("_ms") for f in TurnMetrics.__struct_fields__ if f.endswith("_ms"))
"""The `stage` label's values: `turn_end.metrics` timings."""


def observe_turn(pipeline: str, metrics: TurnMetrics) -> None:
    for stage in STAGES:
        if (ms := getattr(metrics, f"{stage}_ms")) is not None:
            STAGE_SECONDS.labels(pipeline, stage).observe(ms / 1000)


def declare(pipeline: str) -> None:
    """Create `pipeline`'s series of every session and turn now, at zero, as Prometheus
    advises for label values known ahead (a rate over a series that appears with its first
    event misses that event). It also takes their creation out of the process's first turn:
    ~30 us per stage histogram, six per turn."""
    for metric in (SESSIONS_ACTIVE, SESSIONS_TOTAL, AUDIO_RECEIVED):
        metric.labels(pipeline)
    for reason in TurnEndReason:
        TURNS.labels(pipeline, reason)
    for stage in STAGES:
        STAGE_SECONDS.labels(pipeline, stage)


LIBRARY_LOG_LEVEL = logging.WARNING
"""What the libraries' own loggers (uvicorn, httpx, the provider SDKs) may log: warnings and
errors. At INFO, httpx alone wrote a line for every LLM request."""


def configure_logging(json: bool | None = None) -> None:
    """JSON lines when not on a terminal (production), readable key=value on one; the
    libraries' stdlib logging goes out the same way, so a log shipper sees one format."""
    if json is None:
        json = not sys.stderr.isatty()
    # JSON needs exceptions rendered to text first; the console renderer does its own.
    renderers: list[structlog.types.Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if json
        else [structlog.dev.ConsoleRenderer(colors=False)]
    )
    stamped: list[structlog.types.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *stamped, *renderers],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.stdlib.add_logger_name,
                *renderers,
            ],
            foreign_pre_chain=stamped,
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(LIBRARY_LOG_LEVEL)
