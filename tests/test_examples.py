"""The shipped pipelines/ files stay valid, documented and in step with the shipped schema.

They are what a new user copies first, so a broken example is a broken first experience.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from gateway.config import VADProvider
from gateway.loader import expand_paths, load_pipeline, load_pipelines, run_schema
from gateway.protocol import InputCodec, OutputCodec

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
EXAMPLES = sorted(PIPELINES.glob("*.yaml"))


class AnyEnv(Mapping[str, str]):
    """Every variable set, so examples that need API keys validate without them."""

    def __getitem__(self, name: str) -> str:
        return f"test-{name.lower()}"

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def test_every_example_validates() -> None:
    pipelines = load_pipelines(expand_paths([str(PIPELINES)]), AnyEnv())
    assert {p.name for p in pipelines} >= {"local", "scripted"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_points_editors_at_the_schema(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=./pipeline.schema.json"


def test_shipped_schema_is_current() -> None:
    out = io.StringIO()
    assert run_schema(out) == 0
    shipped = (PIPELINES / "pipeline.schema.json").read_text()
    assert shipped == out.getvalue(), (
        "pipelines/pipeline.schema.json is stale; run "
        "`voxgate schema > pipelines/pipeline.schema.json`"
    )


def test_local_is_the_default_pipeline() -> None:
    p = load_pipeline(PIPELINES / "local.yaml", {})
    assert (p.name, p.route) == ("local", "/ws/local")
    assert set(p.input.codecs) == set(InputCodec), "browsers, apps and phones can all connect"
    assert (p.input.sample_rate, p.output.codec, p.output.sample_rate) == (
        16000,
        OutputCodec.PCM16,
        24000,
    )
    assert p.vad.provider is VADProvider.SILERO
    # Everything on this machine: no API key, no network, models from installed packages.
    names = [block.provider_name() for block in (p.stt, p.llm, p.tts, *p.tts.fallback)]
    assert names == ["whisper", "llama", "piper", "espeak"]
    assert not any(block.api_key or block.base_url for block in (p.stt, p.llm, p.tts))
    assert "one short sentence" in p.llm.system_prompt, "answers short enough to speak"
    assert p.llm.max_sentences == 2, "and never longer (gateway/guard.py)"


def test_scripted_is_the_issue_example() -> None:
    p = load_pipeline(PIPELINES / "scripted.yaml", {})
    assert p.route == "/ws/scripted"
    assert p.vad.provider is VADProvider.WEBRTC
    assert (p.stt.transcript, p.stt.latency_ms) == ("what is the capital of france", 150)
    assert (p.llm.reply, p.llm.ttft_ms, p.llm.token_ms) == (
        "Paris is the capital of France.",
        200,
        15,
    )
    assert p.tts.ttfb_ms == 80


def test_schema_descriptions_do_not_depend_on_msgspecs_docstring_handling() -> None:
    """msgspec 0.23 cleans class docstrings for the schema, 0.22 did not: every block's
    docstring is already clean, so both give the same shipped schema."""
    import inspect
    from typing import get_args

    import msgspec

    from adapters import catalog
    from gateway import config, pipeline

    blocks = [*get_args(catalog.STTProvider), *get_args(catalog.LLMProvider)]
    blocks += get_args(catalog.TTSProvider)
    structs = [
        cls
        for cls in [*vars(config).values(), *vars(pipeline).values(), *blocks]
        if isinstance(cls, type) and issubclass(cls, msgspec.Struct) and cls.__doc__
    ]
    assert len(structs) > 10
    assert [c.__name__ for c in structs if c.__doc__ != inspect.cleandoc(c.__doc__ or "")] == []


def test_pipeline_reference_is_current_and_explains_every_key() -> None:
    from gateway import reference
    from gateway.loader import json_schema

    rendered = reference.render(json_schema())
    shipped = (PIPELINES.parent / "docs" / "pipelines.md").read_text()
    assert shipped == rendered, (
        "docs/pipelines.md is stale: run `voxgate schema --markdown > docs/pipelines.md`"
    )
    rows = [line for line in rendered.splitlines() if line.startswith("| `")]
    assert len(rows) > 80
    assert [row for row in rows if row.endswith("|  |")] == [], "a key without a meaning"


def test_the_token_example_serves_once_its_secret_is_set() -> None:
    from gateway.config import AuthMode
    from gateway.pipeline import missing_keys, unusable

    p = load_pipeline(PIPELINES / "private.yaml", {})
    local = load_pipeline(PIPELINES / "local.yaml", {})
    assert p.auth.mode is AuthMode.TOKEN and (p.stt, p.llm, p.tts) == (
        local.stt,
        local.llm,
        local.tts,
    )
    assert unusable(p, {}) == ["auth"] and missing_keys(p, {}) == ["VOXGATE_TOKEN_SECRET"]
    assert unusable(p, {"VOXGATE_TOKEN_SECRET": "short"}) == ["auth"], "32 bytes at least"
    assert unusable(p, {"VOXGATE_TOKEN_SECRET": "x" * 32}) == []
