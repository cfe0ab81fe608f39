"""The deploy files agree with the server: ports, health paths, and what the image ships."""

from __future__ import annotations

import json
import shlex
import tomllib
import zipfile
from pathlib import Path

from litestar.testing import TestClient

from gateway.app import PipelineTable, create_app
from tests.conftest import make_pipeline

ROOT = Path(__file__).resolve().parent.parent


def dockerfile_cmd() -> list[str]:
    line = next(x for x in (ROOT / "Dockerfile").read_text().splitlines() if x.startswith("CMD "))
    cmd: list[str] = json.loads(line.removeprefix("CMD "))
    return cmd


def test_fly_checks_and_port_match_the_server() -> None:
    fly = tomllib.loads((ROOT / "fly.toml").read_text())
    service = fly["http_service"]
    cmd = dockerfile_cmd()
    assert str(service["internal_port"]) == cmd[cmd.index("--port") + 1]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0", "Fly's proxy cannot reach 127.0.0.1"
    with TestClient(create_app(PipelineTable.of([make_pipeline()]))) as client:
        for check in service["checks"]:
            assert client.get(check["path"]).status_code == 200, shlex.quote(check["path"])


def test_demo_page_ships_in_the_wheel(tmp_path: Path) -> None:
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    (wheel,) = tmp_path.glob("voxgate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gateway/static/index.html" in names
    assert not any(n.startswith("tests/") for n in names)
