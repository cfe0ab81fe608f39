"""What a round of tool calls adds to a reply: typed turns over a real socket to a gateway in its
own process, scripted LLM and TTS (known latencies), with and without one tool round.

    .venv/bin/python bench/tools.py [--turns 30]

For each kind of tool (an `http` tool POSTing to a web API on loopback, a client tool the
benchmark answers at once, an MCP tool on a real FastMCP server on loopback) it measures the
text sent -> first reply audio, and reports the round's added latency: that time minus the
same without tools, minus the scripted LLM's second time to first token (the model being asked
again, which no gateway can save). What remains is the gateway's share of a tool round plus
the tool's own call on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_process import free_port, start_server  # noqa: E402
from gateway import protocol  # noqa: E402
from gateway.client import AudioChunk, VoiceClient  # noqa: E402
from tests.fakes.mcp_server import tool_server  # noqa: E402
from tests.fakes.webapi import WebAPI  # noqa: E402

TTFT_MS = 100
ORDER = {"type": "object", "properties": {"order": {"type": "string"}}}


def pipeline(
    name: str,
    tools: list[dict[str, Any]],
    call: str | None,
    arguments: dict[str, Any] | None = None,
) -> dict[str, Any]:
    llm: dict[str, Any] = {
        "provider": "scripted",
        "reply": "Your order has shipped.",
        "ttft_ms": TTFT_MS,
        "token_ms": 5,
    }
    if call is not None:
        args = arguments or {"order": "A17"}
        llm |= {"tool_calls": [{"name": call, "arguments": args}]}
        llm |= {"after_tools": "Your order has shipped."}
    return {
        "name": name,
        "vad": {"provider": "none"},
        "stt": {"provider": "scripted"},
        "llm": llm,
        "tts": {"provider": "scripted", "ttfb_ms": 30},
        "tools": tools,
        "tool_use": {"filler": None},
        "limits": {"control_frames_per_s": 1000},
    }


async def first_audio_ms(client: VoiceClient, on_call: Callable[[protocol.ToolCall], Any]) -> float:
    loop = asyncio.get_running_loop()
    sent = loop.time()
    await client.send(protocol.Text(text="where is my order A17"))
    first: float | None = None
    while True:
        event = await client.recv()
        if isinstance(event, protocol.ToolCall) and event.runs_on == "client":
            await client.send(on_call(event))
        if isinstance(event, AudioChunk) and event.payload and first is None:
            first = loop.time()
        if isinstance(event, protocol.TurnEnd):
            assert first is not None, "no audio"
            return (first - sent) * 1000


def answer(call: protocol.ToolCall) -> protocol.ToolOutput:
    return protocol.ToolOutput(call_id=call.call_id, output={"status": "shipped"})


@asynccontextmanager
async def gateway(folder: Path, pipelines: list[dict[str, Any]]) -> AsyncIterator[int]:
    for p in pipelines:
        (folder / f"{p['name']}.yaml").write_text(yaml.safe_dump(p))
    port = free_port()
    server, _ = await asyncio.to_thread(start_server, port, folder)
    try:
        yield port
    finally:
        server.terminate()
        await asyncio.to_thread(server.wait)


async def run(turns: int) -> None:
    with WebAPI({"status": "shipped"}) as api, tempfile.TemporaryDirectory() as tmp:
        async with tool_server() as mcp_server:
            http_tool = {"name": "order_status", "description": "An order.", "parameters": ORDER}
            client_tool = {**http_tool, "name": "order_card"}
            cases = {
                "none": pipeline("none", [], None),
                "http": pipeline(
                    "http", [{**http_tool, "http": {"url": api.url("/orders")}}], "order_status"
                ),
                "client": pipeline("client", [client_tool], "order_card"),
                "mcp": pipeline(
                    "mcp", [{"mcp": {"url": mcp_server.url}}], "weather", {"city": "Lyon"}
                ),
            }
            async with gateway(Path(tmp), list(cases.values())) as port:
                results = {}
                for name in cases:
                    url = f"ws://127.0.0.1:{port}/ws/{name}"
                    async with VoiceClient.connect(url) as client:
                        await client.start()
                        await first_audio_ms(client, answer)  # warm: connections, listings
                        results[name] = [await first_audio_ms(client, answer) for _ in range(turns)]
    base = statistics.median(results["none"])
    print(f"text -> first audio, {turns} turns each; scripted LLM ttft {TTFT_MS} ms")
    print(f"{'tools':8} {'p50 ms':>8} {'p90 ms':>8} {'round adds p50 ms':>18}")
    for name, times in results.items():
        p50 = statistics.median(times)
        p90 = statistics.quantiles(times, n=10)[-1]
        added = "" if name == "none" else f"{p50 - base - TTFT_MS:18.1f}"
        print(f"{name:8} {p50:8.1f} {p90:8.1f} {added}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=30)
    asyncio.run(run(parser.parse_args().turns))


if __name__ == "__main__":
    main()
