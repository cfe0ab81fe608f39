"""Who gets a socket, and who gets a session: slots go to authenticated sessions only.

A socket is accepted as *unauthenticated*: bounded per process and per source address, and
given `limits.start_timeout_s` to send a valid `session_start`. Only once its token passes does
it become a session and take one of the route's `max_sessions` and the process's slots. (Before,
a slot was taken at accept, so a stranger who opened sockets and sent nothing could hold a
token route full and lock its users out.) Every socket from one source address counts against
`max_sockets_per_address`, so one host cannot take the whole process either. Addresses are the
client's as uvicorn reports it, after trusted proxy headers (`FORWARDED_ALLOW_IPS`), or a
proxy's own client-address header (`address_header`).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from gateway.errors import AtCapacity
from gateway.pipeline import Pipeline

SESSIONS_PER_CPU = 50
"""Conversations a process takes per CPU unless `--max-sessions` says otherwise. bench/load.py
on 2 vCPUs (smart-turn and silero on, scripted providers, bench/README.md "Load") keeps the
gateway's share of a turn at p99 32 ms with 100 conversations and passes 50 ms near 150; the
cloud SDKs add ~8 ms of CPU per turn (bench/cloud.py), so 50 per CPU leaves them room."""
EMBEDDED_SESSIONS_PER_CPU = 1.5
"""Conversations per CPU on a route whose STT, LLM or TTS runs here (`runs_here`): on 2 cores
pipelines/local.yaml keeps end of speech -> first audio at p90 1.0 s with 3 conversations and
passes 1.5 s at 4 (bench/embedded.py --users)."""


def cpus() -> int:
    """CPUs this process may run on (its affinity, as a container or `taskset` sets it)."""
    return len(os.sched_getaffinity(0)) or 1


def default_max_sessions() -> int:
    """The process's limit unless told: measured capacity, scaled to the machine it runs on."""
    return SESSIONS_PER_CPU * cpus()


def route_limit(pipeline: Pipeline) -> int | None:
    """The route's own session limit: `limits.max_sessions`, or the embedded models' default;
    None when only the process's limit applies."""
    if pipeline.limits.max_sessions is not None:
        return pipeline.limits.max_sessions
    if any(block.runs_here for block in (pipeline.stt, pipeline.llm, pipeline.tts)):
        return max(1, math.floor(EMBEDDED_SESSIONS_PER_CPU * cpus()))
    return None


@dataclass
class Capacity:
    max_sessions: int = field(default_factory=default_max_sessions)
    """Sessions on this process, all routes (each route may also have its own limit,
    `route_limit`)."""
    max_unauthenticated: int = 256
    max_unauthenticated_per_address: int = 16
    max_sockets_per_address: int = 100
    """0: no limit (load tests from one machine)."""
    address_header: str | None = None
    """A header a trusted proxy sets to the client's address (Fly.io: `fly-client-ip`),
    used instead of the connection's; unlike X-Forwarded-For, a client cannot add to it."""
    draining: bool = False
    sessions: Counter[str] = field(default_factory=Counter)
    """Authenticated sessions by route."""
    unauthenticated: Counter[str] = field(default_factory=Counter)
    """Sockets still without a session, by source address."""
    sockets: Counter[str] = field(default_factory=Counter)
    """Every accepted socket, by source address."""

    def refusal(self, pipeline: Pipeline, address: str) -> str | None:
        """Why a new socket is refused at once (close 1013: the client retries later)."""
        per_address = self.max_sockets_per_address
        if self.draining:
            return "draining"
        if per_address and self.sockets[address] >= per_address:
            return "address_full"
        if self.unauthenticated[address] >= self.max_unauthenticated_per_address:
            return "address_unauthenticated"
        if self.unauthenticated.total() >= self.max_unauthenticated:
            return "unauthenticated_full"
        return self.session_refusal(pipeline)

    def session_refusal(self, pipeline: Pipeline) -> str | None:
        if self.draining:
            return "draining"
        limit = route_limit(pipeline)
        if limit is not None and self.sessions[pipeline.route] >= limit:
            return "route_full"
        if self.sessions.total() >= self.max_sessions:
            return "process_full"
        return None

    @contextmanager
    def socket(self, pipeline: Pipeline, address: str) -> Iterator[Seat]:
        """Count an accepted socket until it closes; its `Seat` becomes a session's slot."""
        seat = Seat(self, pipeline, address)
        self.sockets[address] += 1
        self.unauthenticated[address] += 1
        try:
            yield seat
        finally:
            _decrement(self.sockets, address)
            if seat.admitted:
                _decrement(self.sessions, pipeline.route)
            else:
                _decrement(self.unauthenticated, address)


class Seat:
    """One socket's place: unauthenticated until `admit`, then one session's slot."""

    def __init__(self, capacity: Capacity, pipeline: Pipeline, address: str) -> None:
        self._capacity = capacity
        self._pipeline = pipeline
        self._address = address
        self.admitted = False

    def admit(self) -> None:
        """The socket authenticated: take a session slot, or raise AtCapacity."""
        capacity = self._capacity
        if reason := capacity.session_refusal(self._pipeline):
            raise AtCapacity(reason)
        _decrement(capacity.unauthenticated, self._address)
        capacity.sessions[self._pipeline.route] += 1
        self.admitted = True


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]  # a long-running server must not keep every address it ever saw
