"""The deploy files agree with the server: ports, health paths, and what the image ships."""

from __future__ import annotations

import json
import os
import shlex
import tomllib
import zipfile
from pathlib import Path

from litestar.testing import TestClient

from gateway.app import PipelineTable, create_app
from tests.conftest import make_pipeline

ROOT = Path(__file__).resolve().parents[2]


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


def test_fly_waits_for_the_drain_and_both_flushes_before_it_kills() -> None:
    """SIGKILL during the store's flush would lose the turns a deploy's resume needs."""
    import inspect

    from gateway.server import make_server
    from gateway.store.conversations import ConversationStore
    from gateway.tracing import shutdown_tracing

    def default(fn: object, name: str) -> float:
        value: float = inspect.signature(fn).parameters[name].default  # type: ignore[arg-type]
        return value

    needed_s = (
        default(make_server, "drain_timeout_s")
        + default(ConversationStore, "drain_timeout_s")
        + default(shutdown_tracing, "timeout_s")
    )
    kill_timeout = tomllib.loads((ROOT / "fly.toml").read_text())["kill_timeout"]
    assert float(kill_timeout.removesuffix("s")) > needed_s


def test_demo_page_ships_in_the_wheel(tmp_path: Path) -> None:
    import subprocess

    uv = ROOT / ".uv" / "bin" / "uv"  # where `make install` puts it; the venv has no pip
    assert uv.exists(), "run `make install`: it installs uv into .uv/"
    subprocess.run(
        [str(uv), "build", "--wheel", "--quiet", "--out-dir", str(tmp_path), str(ROOT)],
        check=True,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
    )
    (wheel,) = tmp_path.glob("voxgate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gateway/static/index.html" in names
    assert not any(n.startswith("tests/") for n in names)


def test_the_image_installs_the_lock_without_dev_packages(tmp_path: Path) -> None:
    """The Dockerfile's build stage, replayed here: its COPY lines and its `uv sync` command,
    so the image (what `fly deploy` ships) gets exactly uv.lock, as `make install` does."""
    import shutil
    import subprocess
    import sys

    stage = (ROOT / "Dockerfile").read_text().split("\nFROM ")[1].replace("\\\n", " ")
    for line in stage.splitlines():
        if line.startswith("COPY "):
            *sources, target = shlex.split(line)[1:]
            for source in sources:
                dest = tmp_path / target / (Path(source).name if target.endswith("/") else "")
                copy = shutil.copytree if (ROOT / source).is_dir() else shutil.copy
                copy(ROOT / source, dest)
    (sync,) = [shlex.split(line) for line in stage.splitlines() if " uv sync " in line]
    args = sync[sync.index("uv") + 1 :]
    python = args.index("--python")
    del args[python : python + 2]
    args.remove("--no-cache")  # the test machine's cache is warm; the image's is empty
    args.append("--offline")  # from that cache as it is: no revalidation, no rebuild
    venv = tmp_path / "venv"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON_DOWNLOADS": "never"}
    uv = ROOT / ".uv" / "bin" / "uv"
    subprocess.run(
        [str(uv), *args, "--python", sys.executable, "--quiet"], cwd=tmp_path, env=env, check=True
    )
    assert not (venv / "bin" / "pytest").exists(), "dev packages stay out of the image"
    checked = subprocess.run(
        [str(venv / "bin" / "voxgate"), "validate", str(ROOT / "pipelines")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
