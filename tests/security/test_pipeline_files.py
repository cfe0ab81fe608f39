"""Hostile pipeline files: alias bombs, huge or deep files, control characters, and `extends`
pointed at files that are not pipelines. `voxgate validate` runs as a real process; a reload
must not stall the sessions of a running server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.app import PipelineTable
from gateway.loader import MAX_FILE_BYTES, load_pipelines
from gateway.reload import PipelineReloader

STAGES = "stt: {provider: scripted}\nllm: {provider: scripted}\ntts: {provider: scripted}\n"


def alias_bomb(levels: int, width: int) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for n in range(1, levels):
        lines.append(f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * width) + "]")
    return "\n".join(lines) + "\n" + STAGES


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    """`voxgate validate` in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "validate", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def validate_measured(path: Path, out: Path) -> tuple[int, str, float]:
    """`voxgate validate` of `path`: exit code, stderr and that process's own peak memory in
    MiB (os.wait4's rusage is the one child's; RUSAGE_CHILDREN would be the largest of every
    process this test run has started, browsers included)."""
    with out.open("w+") as err:
        child = subprocess.Popen(
            [sys.executable, "-m", "gateway", "validate", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return child.returncode, err.read(), usage.ru_maxrss / 1024


def test_an_alias_bomb_is_refused_without_expanding_it(tmp_path: Path) -> None:
    """Before: 7 levels x 9 (361 bytes) took 29.7 s and 2.83 GB."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb(levels=9, width=9))
    assert len(bomb.read_bytes()) < 1000
    code, stderr, peak_mib = validate_measured(bomb, tmp_path / "stderr")
    assert code == 1
    assert "expands to more than 10000 values" in stderr
    assert peak_mib < 400


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        ("a: " + "[" * 5000 + "]" * 5000 + "\n" + STAGES, "nested too deeply"),
        ("a:\n" + "".join(f"{'  ' * (n + 1)}k{n}:\n" for n in range(80)) + STAGES, "64 levels"),
        ("# " + "x" * (MAX_FILE_BYTES + 10) + "\n" + STAGES, "not a pipeline file"),
    ],
    ids=["deep flow", "deep keys", "huge"],
)
def test_deep_or_huge_files_are_refused(tmp_path: Path, content: str, expect: str) -> None:
    odd = tmp_path / "odd.yaml"
    odd.write_text(content)
    done = validate(odd)
    assert done.returncode == 1 and expect in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_control_character_is_a_located_error(tmp_path: Path) -> None:
    """Before: yaml.reader.ReaderError escaped `voxgate validate` as a traceback."""
    odd = tmp_path / "odd.yaml"
    odd.write_text(STAGES.replace("llm: {provider: scripted}", "llm: {provider: 'scr\x07ipted'}"))
    done = validate(odd)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"{odd}:2:" in done.stderr and "0x7 is not allowed" in done.stderr


@pytest.mark.parametrize(
    "extends",
    ["/etc/passwd", "../outside.yaml", "/proc/self/environ", "../../../../etc/passwd", "link.yaml"],
)
def test_extends_never_leaves_the_pipelines_folder(tmp_path: Path, extends: str) -> None:
    """Before: any file was followed and its first line printed in the error."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (tmp_path / "outside.yaml").write_text("secret_key_material: hunter2\n")
    (folder / "link.yaml").symlink_to("/etc/passwd")
    main = folder / "main.yaml"
    main.write_text(f"extends: {extends}\n" + STAGES)
    done = validate(main)
    assert done.returncode == 1
    assert "outside this pipeline's folder" in done.stderr
    assert "root:" not in done.stderr and "hunter2" not in done.stderr


def test_extends_names_only_yaml_files(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OPENAI_API_KEY=sk-live-123\n")
    main = tmp_path / "main.yaml"
    main.write_text("extends: .env\n" + STAGES)
    done = validate(main)
    assert done.returncode == 1 and "not a pipeline file" in done.stderr
    assert "sk-live" not in done.stderr


def test_extends_may_use_partials_in_subfolders(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "_base.yaml").write_text(STAGES)
    (tmp_path / "main.yaml").write_text("extends: shared/_base.yaml\nname: main\n")
    (pipeline,) = load_pipelines([tmp_path / "main.yaml"], {})
    assert pipeline.name == "main"


async def test_a_reload_runs_off_the_event_loop(tmp_path: Path) -> None:
    """Parsing, validating and loading models block; a reload must not freeze live calls.
    A 10 ms heartbeat keeps ticking while a large (but valid) file is read."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    options = "".join(f"    k{n}: [1, 2, 3, 4, 5, 6, 7, 8]\n" for n in range(990))
    for name in ("a", "b", "c"):  # about 0.2 s of YAML work each
        big = STAGES.replace("llm: {provider: scripted}\n", "")
        (folder / f"{name}.yaml").write_text(
            big + "llm:\n  provider: scripted\n  options:\n" + options
        )
    table = PipelineTable.of([])
    reloader = PipelineReloader([str(folder)], table, {})
    gaps: list[float] = []

    async def heartbeat() -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            now = loop.time()
            gaps.append(now - last)
            last = now

    beating = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.02)  # beating
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await reloader.reload()
    took = loop.time() - started
    await asyncio.sleep(0.02)  # the heartbeat notes the gap a blocked loop would leave
    beating.cancel()
    assert sorted(table.pipelines) == ["/ws/a", "/ws/b", "/ws/c"]
    assert max(gaps) < max(0.5 * took, 0.05), (max(gaps), took)


async def test_a_reload_loads_the_models_before_sessions_get_the_new_pipelines(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.yaml").write_text(STAGES + "vad: {provider: silero}\n")
    table = PipelineTable.of([])
    assert await PipelineReloader([str(tmp_path)], table, {}).reload()
    assert sorted(table.pipelines) == ["/ws/a"] and table.vad_models.loads == 1
    table.vad_models.close()


async def test_a_reload_whose_model_will_not_load_keeps_the_pipelines_served(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.yaml").write_text(STAGES)
    table = PipelineTable.of([])
    reloader = PipelineReloader([str(tmp_path)], table, {})
    assert await reloader.reload()
    missing = tmp_path / "nothing-here.onnx"
    (tmp_path / "a.yaml").write_text(
        STAGES + f"vad: {{provider: silero}}\nturns: {{detector: smart_turn, model: {missing}}}\n"
    )
    assert not await reloader.reload()
    assert table.pipelines["/ws/a"].turns.model is None, "the old pipeline is still served"
    logged = capsys.readouterr()
    assert "pipeline_reload_failed" in logged.out + logged.err
    assert "nothing-here.onnx" in logged.out + logged.err
    table.vad_models.close()
