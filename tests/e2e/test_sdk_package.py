"""The JS SDK as an application gets it: `npm pack`ed, installed into a fresh app, imported.

Packing must build dist/ by itself (the package's `prepack`): an app imports `dist/`, and a
tarball without it fails with TS2307 at the first `import ... from "voxgate"`. So the pack
runs on a copy of sdk-js/ without dist/ (the working tree's may be left from an earlier build
and would hide a missing prepack). The app gets TypeScript and `ws` at the versions sdk-js
pins, from the npm registry through the user's npm cache, type-checks a consumer
(sdk-js/test/e2e/consumer.ts) with `--strict` under the two module resolutions apps use, and
runs it in Node against a real gateway.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.conftest import make_pipeline, run_node, running_gateway, wait_sessions_closed

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "sdk-js"
CONSUMER = SDK / "test" / "e2e" / "consumer.ts"
# Types for the consumer's `import { WebSocket } from "ws"`: what a TypeScript app using the
# README's Node recipe installs (@types/node at Node 20's, the oldest Node the SDK supports).
TYPES = {"@types/ws": "8.18.2", "@types/node": "20.19.43"}
# The app's install: from the user's npm cache when it can (reruns need no network), under
# npm's strictest install-script policy: the SDK must not ask an app to approve a script (a
# `prepare` would: npm lists it for tarball and directory installs).
NPM_INSTALL = ["install", "--no-audit", "--no-fund", "--prefer-offline", "--strict-allow-scripts"]
# tsc flags per module resolution: Node's own ESM rules, and a bundler's (Vite, esbuild, ...).
RESOLUTIONS = {
    "nodenext": ["--module", "nodenext", "--moduleResolution", "nodenext"],
    "bundler": ["--module", "esnext", "--moduleResolution", "bundler"],
}


def run(*command: str, cwd: Path) -> str:
    done = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, (
        f"`{' '.join(command)}` failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is needed for the JS SDK tests (Node.js 20 or newer)")
    return path


class Packed(NamedTuple):
    tarball: Path
    files: set[str]


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Packed:
    """`npm pack` of sdk-js/ as it would be published: the tarball and the files in it."""
    if not (SDK / "node_modules" / "typescript").is_dir():
        pytest.fail("sdk-js/node_modules is missing: run `make install` (it runs `npm ci`)")
    tmp = tmp_path_factory.mktemp("pack")
    source = tmp / "sdk-js"
    shutil.copytree(SDK, source, ignore=shutil.ignore_patterns("node_modules", "dist"))
    (source / "node_modules").symlink_to(SDK / "node_modules")
    out = run(tool("npm"), "pack", "--json", "--pack-destination", str(tmp), cwd=source)
    [pack] = json.loads(out)
    return Packed(tmp / pack["filename"], {file["path"] for file in pack["files"]})


@pytest.fixture(scope="module")
def app(packed: Packed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh ESM app with the tarball installed, and the consumer in it."""
    pins = json.loads((SDK / "package.json").read_text())["devDependencies"]
    app = tmp_path_factory.mktemp("app")
    manifest = {
        "name": "voxgate-consumer",
        "private": True,
        "type": "module",
        "dependencies": {"voxgate": f"file:{packed.tarball}", "ws": pins["ws"]},
        "devDependencies": {"typescript": pins["typescript"], **TYPES},
    }
    (app / "package.json").write_text(json.dumps(manifest, indent=2))
    run(tool("npm"), *NPM_INSTALL, cwd=app)
    shutil.copy(CONSUMER, app)
    return app


def tsc(app: Path, *flags: str) -> None:
    run(tool("npx"), "tsc", "--strict", "--target", "es2022", *flags, "consumer.ts", cwd=app)


def test_npm_pack_ships_the_built_sdk(packed: Packed) -> None:
    for module in sorted(path.stem for path in (SDK / "src").glob("*.ts")):
        built = {f"dist/{module}{ext}" for ext in (".js", ".js.map", ".d.ts", ".d.ts.map")}
        assert built <= packed.files, f"the tarball lacks {sorted(built - packed.files)}"
    assert "src/index.ts" in packed.files, "the maps point at the sources: they ship too"


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_consumer_type_checks_strictly(app: Path, resolution: str) -> None:
    tsc(app, "--noEmit", *RESOLUTIONS[resolution])


async def test_consumer_completes_a_text_turn(app: Path) -> None:
    tsc(app, *RESOLUTIONS["nodenext"])
    async with running_gateway(make_pipeline(vad={"provider": "none"})) as gw:
        result = await run_node(tool("node"), app / "consumer.js", gw.url())
        await wait_sessions_closed(gw)

    assert result["text"] == "Paris is the capital of France."
    assert result["tokens"] > 0
    assert result["output"] == {"codec": "pcm16", "sample_rate": 24000, "channels": 1}
    assert result["turn_end"]["reason"] == "completed"
    assert set(result["turn_end"]["metrics"]) >= {"llm_ttft_ms", "tts_ttfb_ms"}
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
