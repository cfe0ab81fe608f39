"""`voxgate serve` as a real process: health, readiness, and reloads that drop no call."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import pytest

from gateway import protocol
from gateway.client import VoiceClient
from gateway.server import listen
from tests.fakes.openai import FakeOpenAI


def pipeline_file(reply: str) -> str:
    return (
        "vad: {provider: none}\n"
        "stt: {provider: scripted}\n"
        f"llm: {{provider: scripted, reply: {reply!r}, ttft_ms: 0, token_ms: 0}}\n"
        "tts: {provider: scripted, ttfb_ms: 0, words_per_minute: 6000}\n"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextmanager
def voxgate_serve(folder: Path, *flags: str) -> Iterator[Server]:
    port = free_port()
    log = folder.parent / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--pipelines",
        str(folder),
        "--port",
        str(port),
        *flags,
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(cmd, stderr=sink, env={**os.environ, "NO_PROXY": "127.0.0.1"})
    try:
        yield Server(process, port, log)
    finally:
        process.terminate()
        process.wait(10)


async def wait_ready(server: Server) -> None:
    async with asyncio.timeout(20), httpx.AsyncClient() as http:
        while True:
            try:
                if (await http.get(server.url("/readyz"))).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert server.process.poll() is None, server.log.read_text()
            await asyncio.sleep(0.05)


@asynccontextmanager
async def session(server: Server, route: str) -> AsyncIterator[VoiceClient]:
    async with VoiceClient.connect(f"ws://127.0.0.1:{server.port}{route}") as client:
        await client.start()
        yield client


async def reply_of(client: VoiceClient) -> str:
    await client.send(protocol.Text(text="hi"))
    events, _ = await client.collect_until(protocol.TurnEnd)
    return "".join(e.text for e in events if isinstance(e, protocol.LLMToken))


async def test_healthz_and_readyz_answer(tmp_path: Path) -> None:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "a.yaml").write_text(pipeline_file("one"))
    with voxgate_serve(folder) as server:
        await wait_ready(server)
        async with httpx.AsyncClient() as http:
            health = await http.get(server.url("/healthz"))
            ready = await http.get(server.url("/readyz"))
    assert health.status_code == 200
    assert ready.json() == {"ready": True, "pipelines": ["/ws/a"]}


@pytest.mark.parametrize("trigger", ["sighup", "watch"])
async def test_reload_changes_new_sessions_and_keeps_live_ones(
    tmp_path: Path, trigger: str
) -> None:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    a = folder / "a.yaml"
    a.write_text(pipeline_file("one"))
    flags = ("--reload-pipelines",) if trigger == "watch" else ()
    with voxgate_serve(folder, *flags) as server:
        await wait_ready(server)

        def reload() -> None:
            if trigger == "sighup":
                server.process.send_signal(signal.SIGHUP)

        async with session(server, "/ws/a") as live:
            assert await reply_of(live) == "one"
            a.write_text(pipeline_file("two"))
            (folder / "b.yaml").write_text(pipeline_file("bee"))
            reload()
            async with asyncio.timeout(10):
                while True:
                    async with session(server, "/ws/a") as fresh:
                        if await reply_of(fresh) == "two":
                            break
                    await asyncio.sleep(0.1)
            async with session(server, "/ws/b") as added:
                assert await reply_of(added) == "bee"
            assert await reply_of(live) == "one", "a call in progress keeps its pipeline"

            a.write_text("llm: [broken\n")
            reload()
            async with asyncio.timeout(10):
                while "pipeline_reload_failed" not in server.log.read_text():
                    await asyncio.sleep(0.05)
            assert "a.yaml:2:1: YAML syntax error" in server.log.read_text()
            async with session(server, "/ws/a") as after_broken:
                assert await reply_of(after_broken) == "two", "the old version keeps serving"
        assert server.process.poll() is None


async def test_serving_is_logged_once_listening(tmp_path: Path) -> None:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "a.yaml").write_text(pipeline_file("one"))
    with voxgate_serve(folder) as server:
        await wait_ready(server)
        log = server.log.read_text()
    assert f'"url": "http://127.0.0.1:{server.port}/"' in log and '"event": "serving"' in log


async def test_what_start_up_loaded_is_frozen_out_of_the_collectors_way(tmp_path: Path) -> None:
    """A full garbage collection walking every module and model start-up made stalled the
    loop ~50 ms in the first turns; frozen before serving, it is never walked."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "a.yaml").write_text(pipeline_file("one"))
    with voxgate_serve(folder) as server:
        await wait_ready(server)
        events = [json.loads(line) for line in server.log.read_text().splitlines()]
    names = [e["event"] for e in events]
    (loaded,) = [e for e in events if e["event"] == "providers_loaded"]
    assert names.index("providers_loaded") < names.index("serving")
    assert loaded["frozen_objects"] > 10_000, loaded


async def test_every_log_line_is_json_with_the_libraries_quiet_below_warning(
    tmp_path: Path,
) -> None:
    """A log shipper parses one format: the SDKs' and httpx's stdlib logging comes out as the
    same JSON lines as ours, and httpx no longer writes a line per LLM request."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    async with FakeOpenAI(reply="Hello from the fake.") as fake:
        llm = f"{{provider: openai, base_url: {fake.base_url!r}, api_key: {fake.api_key!r}}}"
        (folder / "a.yaml").write_text(
            pipeline_file("unused").replace(
                "llm: {provider: scripted, reply: 'unused', ttft_ms: 0, token_ms: 0}", f"llm: {llm}"
            )
        )
        with voxgate_serve(folder) as server:
            await wait_ready(server)
            async with session(server, "/ws/a") as client:
                assert await reply_of(client) == "Hello from the fake."
        assert fake.seen("chat"), "the reply came through the openai SDK and httpx"
    lines = server.log.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # each one JSON, or this raises
    assert "session_ended" in [e.get("event") for e in events]
    assert not [e for e in events if "HTTP Request" in str(e.get("event"))]


async def test_the_served_socket_sends_small_frames_at_once_without_nagle() -> None:
    """`voxgate serve` listens on its own socket (`gateway.server.listen`), which uvicorn hands
    to asyncio as this test does: the connections it accepts must have Nagle's algorithm off,
    or each frame after the first of a burst waits for the client's delayed ACK (~40 ms)."""
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handle(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    with listen("127.0.0.1", 0) as sock:
        async with await asyncio.start_server(handle, sock=sock):
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            async with asyncio.timeout(5):
                assert await accepted == 1
            writer.close()


def test_a_busy_port_says_which_and_how_to_choose_another(tmp_path: Path) -> None:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "a.yaml").write_text(pipeline_file("one"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", f"--pipelines={folder}", f"--port={port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr
    assert f"--port {port + 1}" in done.stderr
    assert '"serving"' not in done.stderr, "nothing may claim to serve on a port it did not get"


def test_a_model_that_will_not_load_says_which_before_serving(tmp_path: Path) -> None:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    missing = tmp_path / "nothing-here.onnx"
    (folder / "a.yaml").write_text(
        pipeline_file("one").replace("vad: {provider: none}", "vad: {provider: silero}")
        + f"turns: {{detector: smart_turn, model: {missing}}}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", f"--pipelines={folder}", "--port=0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"the end-of-turn model file {missing} does not exist" in done.stderr
    assert "Traceback" not in done.stderr
