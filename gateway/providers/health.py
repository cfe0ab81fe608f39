"""Which providers may get traffic: a small circuit breaker per provider per process.

A provider that failed stops getting turns; a background probe (its adapter's `probe`) checks
it again after a back-off, and only a successful probe gives it traffic back, so users do not
pay for finding out that it is still down. A provider that refused our credentials is never
retried: the same key will be refused again, and hammering an auth endpoint can get an account
locked. A reload with a new key makes a new breaker (the key is part of its identity).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import structlog

from gateway.errors import PermanentProviderError, ProviderError

log = structlog.get_logger()

Probe = Callable[[], Awaitable[None]]


class State(enum.StrEnum):
    HEALTHY = "healthy"
    DOWN = "down"
    """Failed; a background probe decides when it gets traffic back."""
    REFUSED = "refused"
    """Rejected our credentials or request: no retries until the configuration changes."""


def breaker_key(
    stage: str, provider: str, base_url: str | None, model: str | None, api_key: str | None
) -> str:
    """Identity of one model at one endpoint for one account (the key is hashed, never kept):
    an outage or a withdrawn model at one does not bench the others."""
    account = hashlib.sha256((api_key or "").encode()).hexdigest()[:12]
    return f"{stage}:{provider}:{base_url or 'default'}:{model or 'default'}:{account}"


@dataclass
class _Breaker:
    state: State = State.HEALTHY
    failures: int = 0
    probing: bool = False
    error: ProviderError | None = None


@dataclass
class ProviderHealth:
    """Breakers for every provider endpoint this process talks to, and their probes.

    `run` is the probes' owner: the app's lifespan runs it, so no probe outlives the server.
    Without a running owner a failed provider simply stays down.
    """

    first_probe_s: float = 2.0
    max_probe_s: float = 60.0
    probe_timeout_s: float = 5.0
    _breakers: dict[str, _Breaker] = field(default_factory=dict)
    _probes: asyncio.Queue[tuple[str, Probe]] = field(default_factory=asyncio.Queue)

    def state(self, key: str) -> State:
        breaker = self._breakers.get(key)
        return breaker.state if breaker is not None else State.HEALTHY

    def last_error(self, key: str) -> ProviderError | None:
        breaker = self._breakers.get(key)
        return breaker.error if breaker is not None else None

    def succeeded(self, key: str) -> None:
        """A down provider served a request after all (it was the last resort)."""
        breaker = self._breakers.get(key)
        if breaker is not None and breaker.state is State.DOWN:
            breaker.state = State.HEALTHY  # ends its probe loop
            del self._breakers[key]

    def failed(self, key: str, error: ProviderError, probe: Probe) -> None:
        breaker = self._breakers.setdefault(key, _Breaker())
        breaker.error = error
        if isinstance(error, PermanentProviderError):
            if breaker.state is not State.REFUSED:
                log.error(
                    "provider_refused",
                    provider=key,
                    error=str(error),
                    hint="check its api_key in the pipeline file; no more requests go to it",
                )
            breaker.state = State.REFUSED
            return
        breaker.failures += 1
        if breaker.state is State.HEALTHY:
            log.warning("provider_down", provider=key, error=str(error))
        breaker.state = State.DOWN
        if not breaker.probing:
            breaker.probing = True
            self._probes.put_nowait((key, probe))

    @asynccontextmanager
    async def probing(self) -> AsyncIterator[None]:
        """Probes run while this is open (the app's lifespan; tests)."""
        async with asyncio.TaskGroup() as tasks:
            runner = tasks.create_task(self.run())
            yield
            runner.cancel()

    async def run(self) -> None:
        """Runs probes until cancelled."""
        async with asyncio.TaskGroup() as probes:
            while True:
                key, probe = await self._probes.get()
                probes.create_task(self._probe_until_up(key, probe))

    async def _probe_until_up(self, key: str, probe: Probe) -> None:
        breaker = self._breakers[key]
        delay = self.first_probe_s
        while breaker.state is State.DOWN:
            await asyncio.sleep(delay)
            try:
                async with asyncio.timeout(self.probe_timeout_s):
                    await probe()
            except (ProviderError, TimeoutError) as error:
                if isinstance(error, PermanentProviderError):
                    breaker.state = State.REFUSED
                delay = min(delay * 2, self.max_probe_s)
                continue
            log.info("provider_up", provider=key, failures=breaker.failures)
            self._breakers.pop(key, None)
            return
