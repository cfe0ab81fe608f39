"""The layering the code promises (pyproject's import-linter contract has the whole picture):
checking a pipeline file loads no audio stack, model runtime or provider SDK, and the wire
protocol is a leaf a client can import alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HEAVY = [
    "av",
    "soxr",
    "onnxruntime",
    "ctranslate2",
    "faster_whisper",
    "llama_cpp",
    "piper",
    "openai",
    "deepgram",
    "cartesia",
    "redis",  # the `redis` store's client: imported only when such a store is built
    "gateway.audio",
    "gateway.session",
]


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def loaded(modules: set[str], package: str) -> bool:
    return any(m == package or m.startswith(f"{package}.") for m in modules)


def test_validating_every_shipped_pipeline_loads_no_audio_stack_runtime_or_sdk() -> None:
    code = (
        "from gateway.cli import main\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['validate', 'pipelines']) == 0\n"
    )
    modules = modules_after(code)
    assert "gateway.loader" in modules, "the probe did not validate anything"
    assert [p for p in HEAVY if loaded(modules, p)] == []


def test_the_wire_protocol_imports_nothing_of_ours_but_itself() -> None:
    modules = modules_after("import gateway.protocol")
    ours = {m for m in modules if loaded({m}, "gateway") or loaded({m}, "adapters")}
    assert ours == {"gateway", "gateway.protocol"}


def test_the_import_contract_holds() -> None:
    # The same check `make lint` runs, so a broken layer also fails a plain `pytest`.
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]


def test_no_other_installed_distribution_ships_a_gateway_or_adapters_package() -> None:
    # Our top-level names are generic: the app installs only into its own venv (make install)
    # or image (Dockerfile), and this check fails the day a dependency brings a clashing one.
    from importlib.metadata import distributions

    clashing = []
    for dist in distributions():
        if dist.metadata["Name"].lower() == "voxgate":
            continue
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if str(f).endswith(".py")}
        clashing += [f"{dist.metadata['Name']}: {t}" for t in tops & {"gateway", "adapters"}]
    assert clashing == []
