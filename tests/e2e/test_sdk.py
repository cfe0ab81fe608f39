"""The JS SDK (sdk-js/) in step with the gateway: its schema copy, and a real turn across languages.

The SDK's TypeScript types are generated from `sdk-js/protocol.schema.json`, a copy of
`protocol.json_schema()`; the first test fails when that copy is stale (the node test
`sdk-js/test/generated.test.mjs` checks the TypeScript against the copy). The e2e tests run the
built SDK in Node against a real gateway on loopback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway import cli, protocol
from tests.conftest import make_pipeline, run_node, running_gateway, wait_sessions_closed

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "sdk-js"
SCHEMA = SDK / "protocol.schema.json"
REGENERATE = (
    "regenerate it: `.venv/bin/python -m gateway schema --protocol > sdk-js/protocol.schema.json`"
    " then `cd sdk-js && npm run generate`, and commit both files"
)
LONG_REPLY = (
    "Paris is the capital of France. It has been the heart of French life for centuries, "
    "with museums, cafes, bridges and parks that visitors remember for the rest of their lives."
)


def test_sdk_schema_is_the_gateways_protocol_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert json.loads(SCHEMA.read_text()) == protocol.json_schema(), (
        f"sdk-js/protocol.schema.json differs from gateway.protocol.json_schema(): {REGENERATE}"
    )
    assert cli.main(["schema", "--protocol"]) == 0
    assert SCHEMA.read_text() == capsys.readouterr().out, (
        f"sdk-js/protocol.schema.json is not the output of `python -m gateway schema --protocol`: "
        f"{REGENERATE}"
    )


@pytest.fixture(scope="module")
def node() -> str:
    """Node, with the SDK's dev dependencies installed and dist/ freshly built."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed for the JS SDK tests (Node.js 20 or newer)")
    if not (SDK / "node_modules" / "ws").is_dir():
        pytest.fail("sdk-js/node_modules is missing: run `make install` (it runs `npm ci`)")
    build = subprocess.run(
        [npm, "run", "--silent", "build"], cwd=SDK, capture_output=True, text=True, check=False
    )
    assert build.returncode == 0, f"npm run build failed:\n{build.stdout}\n{build.stderr}"
    return node


async def run_text_turn(node: str, url: str, *args: str) -> dict[str, Any]:
    return await run_node(node, SDK / "test" / "e2e" / "text-turn.mjs", url, *args)


async def test_js_client_completes_a_text_turn(node: str) -> None:
    async with running_gateway(make_pipeline(vad={"provider": "none"})) as gw:
        result = await run_text_turn(node, gw.url())
        await wait_sessions_closed(gw)

    assert result["text"] == "Paris is the capital of France."
    assert result["audio_chunks"] > 0 and result["audio_bytes"] > 0
    assert result["seqs"] == list(range(result["audio_chunks"]))
    assert result["last_chunk"]
    assert result["turn_end"]["reason"] == "completed"
    assert set(result["turn_end"]["metrics"]) >= {"llm_ttft_ms", "tts_ttfb_ms"}
    assert result["output"] == {"codec": "pcm16", "sample_rate": 24000, "channels": 1}
    assert result["states"] == [
        "connecting",
        "ready",
        "listening",
        "thinking",
        "speaking",
        "listening",
        "closing",
        "closed",
    ]
    assert result["warnings"] == []


async def test_js_client_interrupt_stops_the_turns_audio(node: str) -> None:
    pipeline = make_pipeline(vad={"provider": "none"}, llm={"reply": LONG_REPLY})
    async with running_gateway(pipeline) as gw:
        result = await run_text_turn(node, gw.url(), "--interrupt")
        await wait_sessions_closed(gw)

    assert result["audio_chunks"] == 1, "no audio of the turn after client.interrupt()"
    assert result["audio_after_interrupt"] == 0
    turn_id = result["turn_end"]["turn_id"]
    assert result["interrupted"] == [turn_id]
    assert result["turn_end"]["reason"] == "interrupted"
