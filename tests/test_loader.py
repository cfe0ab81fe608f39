"""Pipeline loading: every broken file names its problem at the right line, and the rest works.

Broken files are written inline, next to what they must produce: the line a problem must be
reported at carries a `# <-` marker, so the table stays readable and line numbers stay right
when a case is edited.
"""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.config import VADProvider
from gateway.errors import PipelineError
from gateway.loader import (
    describe,
    expand_paths,
    json_schema,
    load_pipeline,
    load_pipelines,
    run_validate,
)

STAGES = """\
stt:
  provider: scripted
llm:
  provider: scripted
tts:
  provider: scripted
"""


@dataclass
class Case:
    id: str
    files: dict[str, str]
    expect: str
    line: int | None = -1  # -1: the line marked `# <-`
    load: list[str] = field(default_factory=lambda: ["main.yaml"])
    env: dict[str, str] = field(default_factory=dict)


def one(
    id: str,
    yaml: str,
    expect: str,
    *,
    stages: bool = True,
    line: int | None = -1,
    env: dict[str, str] | None = None,
) -> Case:
    """A case of one file, `main.yaml`; `stages` appends a valid stt, llm and tts."""
    text = textwrap.dedent(yaml) + (STAGES if stages else "")
    return Case(id, {"main.yaml": text}, expect, line=line, env=env or {})


CASES = [
    one(
        "silero at a rate it cannot run at",
        "input:\n  sample_rate: 24000\nvad:\n  provider: silero  # <-\n",
        "vad.provider: silero VAD runs at 8000 or 16000 Hz but input.sample_rate is 24000",
    ),
    one("bad type", "vad:\n  threshold: high  # <-\n", "expected a number, found 'high'"),
    one(
        "unknown key, did you mean",
        "vad:\n  min_silense_ms: 500  # <-\n",
        "vad.min_silense_ms: unknown key `min_silense_ms`; did you mean `min_silence_ms`?",
    ),
    one(
        "unknown top-level key",
        "sst:  # <-\n  provider: scripted\n",
        "unknown key `sst`; did you mean `stt`?",
    ),
    one(
        "unknown key without a close name lists the allowed ones",
        "turns:\n  zzz: 1  # <-\n",
        "unknown key `zzz`; allowed: backchannel_max_ms, backchannels, barge_in, detector",
    ),
    one(
        "misspelt provider",
        """\
            llm:
              provider: scriptd  # <-
            stt:
              provider: scripted
            tts:
              provider: scripted
            """,
        "llm.provider: unknown provider 'scriptd'; did you mean `scripted`? "
        "allowed: scripted, openai, llama",
        stages=False,
    ),
    one(
        "missing provider",
        """\
            llm:
              provider: scripted
            stt:  # <-
              transcript: hi
            tts:
              provider: scripted
            """,
        "stt: missing `provider`; allowed: scripted, deepgram, openai, whisper",
        stages=False,
    ),
    one(
        "fallback entry with a misspelt provider",
        """\
            stt:
              provider: scripted
              fallback:
                - provider: scriptid  # <-
            llm:
              provider: scripted
            tts:
              provider: scripted
            """,
        "stt.fallback[0].provider: unknown provider 'scriptid'; did you mean `scripted`?",
        stages=False,
    ),
    one(
        "fallback entry without a provider",
        """\
            tts:
              provider: scripted
              fallback:
                - ttfb_ms: 10  # <-
            stt:
              provider: scripted
            llm:
              provider: scripted
            """,
        "tts.fallback[0]: missing `provider`; allowed: scripted, cartesia, openai, piper, espeak",
        stages=False,
    ),
    one(
        "provider block that is not a mapping",
        "llm: scripted  # <-\nstt:\n  provider: scripted\ntts:\n  provider: scripted\n",
        "llm: expected a provider block (a mapping with `provider: scripted, openai, llama`), "
        "found 'scripted'",
        stages=False,
    ),
    one(
        "missing stage",
        "stt:  # <-\n  provider: scripted\nllm:\n  provider: scripted\n",
        "missing required key `tts` "
        "(a provider block; allowed providers: scripted, cartesia, openai, piper, espeak)",
        stages=False,
    ),
    one(
        "missing environment variable names it and the key",
        "auth:\n  mode: token\n  secret: ${VOXGATE_TOKEN_SECRET}  # <-\n",
        "auth.secret: environment variable `VOXGATE_TOKEN_SECRET` is not set "
        "(used by `auth.secret`)",
    ),
    one(
        "malformed reference",
        "auth:\n  secret: ${1abc}  # <-\n",
        "is not `${NAME}`",
    ),
    one(
        "interpolated value of the wrong type",
        "limits:\n  max_sessions: ${MAX}  # <-\n",
        "limits.max_sessions: expected an integer, found 'many'",
        env={"MAX": "many"},
    ),
    one(
        "extends a missing file",
        "extends: nope.yaml  # <-\n",
        "`nope.yaml` not found (looked for ",
    ),
    one("extends something that is not a file name", "extends: [a]  # <-\n", "a list"),
    Case(
        "extends cycle",
        files={
            "main.yaml": "extends: a.yaml\n",
            "a.yaml": "extends: b.yaml\n",
            "b.yaml": "vad: {}\nextends: a.yaml  # <-\n",
        },
        expect="extends cycle: main.yaml -> a.yaml -> b.yaml -> a.yaml",
    ),
    Case(
        "problem inherited from a partial points into the partial",
        files={
            "main.yaml": "extends: _base.yaml\n" + STAGES,
            "_base.yaml": "vad:\n  provider: silero\n  treshold: 0.4  # <-\n",
        },
        expect="unknown key `treshold`; did you mean `threshold`?",
    ),
    Case(
        "duplicate route names both files",
        files={
            "a.yaml": "route: /ws/same\n" + STAGES,
            "main.yaml": "name: b\nroute: /ws/same  # <-\n" + STAGES,
        },
        expect="a.yaml; give each pipeline its own route",
        load=["a.yaml", "main.yaml"],
    ),
    one(
        "input codec that is not a codec",
        "input:\n  codecs: [pcm16, flac]  # <-\n",
        "input.codecs[1]: found 'flac'; allowed: webm/opus, ogg/opus, mp4/aac, pcm16, mulaw",
    ),
    one(
        "no input codecs",
        "input:\n  codecs: []  # <-\n",
        "found an empty list; allowed: at least 1 item",
    ),
    one(
        "opus at a rate libopus cannot encode",
        "output:\n  codec: opus\n  sample_rate: 44100  # <-\n",
        "output.sample_rate: opus encodes at 8000, 12000, 16000, 24000, 48000 Hz but "
        "output.sample_rate is 44100",
    ),
    one(
        "mulaw at 24000",
        "output:\n  codec: mulaw\n  sample_rate: 24000  # <-\n",
        "mulaw is 8000 Hz audio but output.sample_rate is 24000",
    ),
    one(
        "mulaw at the default rate points at the codec",
        "output:\n  codec: mulaw  # <-\n",
        "set `sample_rate: 8000`",
    ),
    one(
        "token auth with a short secret",
        "auth:\n  mode: token\n  secret: ${S}  # <-\n",
        "auth.secret: found a secret of 5 bytes; HS256 needs at least 32",
        env={"S": "short"},
    ),
    one(
        "enum lists the allowed values",
        "turns:\n  end_of_turn: silence  # <-\n",
        "found 'silence'; allowed: vad, stt, vad_or_stt",
    ),
    one(
        "threshold out of range",
        "vad:\n  threshold: 1.5  # <-\n",
        "vad.threshold: found `1.5`; allowed: at least 0.0 and at most 1.0",
    ),
    one(
        "negative milliseconds",
        "turns:\n  min_barge_in_ms: -5  # <-\n",
        "found `-5`; allowed: at least 0",
    ),
    one(
        "list where a mapping is expected",
        "vad: [silero]  # <-\n",
        "vad: expected a mapping of keys, found a list",
    ),
    one(
        "wrong version",
        "version: 2  # <-\n",
        "version: found `2`; this gateway reads version 1",
    ),
    one(
        "route without a leading slash",
        "route: ws/x  # <-\n",
        "route: found 'ws/x'; allowed: a path starting with `/`",
    ),
    one("bad name", "name: my pipeline  # <-\n", "allowed: letters, digits"),
    one(
        "yaml syntax error",
        "vad:\n  threshold: 0.5\n   min_speech_ms: 3  # <-\n",
        "YAML syntax error",
    ),
    one("two documents", "vad: {}\n---  # <-\n", "expected a single document"),
    one(
        "key given twice",
        "vad: {}\nturns: {}\nvad: {}  # <-\n",
        "`vad` appears twice in this mapping",
    ),
    one("not a mapping", "- stt  # <-\n- llm\n", "must be a mapping", stages=False),
    one("empty file", "# only a comment\n", "the file is empty", stages=False, line=None),
    one(
        "a tool with no name and no mcp",
        "tools:\n  - description: Show a map.  # <-\n",
        "tools[0]: missing required key `name`: a client tool (no `http` or `mcp`) needs the name",
    ),
    one(
        "an mcp entry with a name",
        "tools:\n  - mcp: {url: 'http://127.0.0.1:9000/mcp'}\n    name: maps  # <-\n",
        "tools[0].name: an `mcp` entry offers the server's own tools",
    ),
    one(
        "two tools of one name",
        "tools:\n  - name: show_map\n  - name: show_map  # <-\n",
        "tools[1].name: `show_map` is already a tool of this pipeline",
    ),
    one(
        "a tool name the LLM APIs refuse",
        "tools:\n  - name: show map  # <-\n",
        "allowed: text matching `^[A-Za-z0-9_-]{1,64}$`",
    ),
    one(
        "an http tool and an mcp server in one entry",
        "tools:\n  - name: x\n    http: {url: 'http://a'}\n    mcp: {url: 'http://b'}  # <-\n",
        "a tool is `http` or `mcp`, not both",
    ),
    one(
        "a store nobody provides",
        "store:\n  provider: memcached  # <-\n",
        "store.provider: unknown provider 'memcached'; allowed: memory, redis",
    ),
    one(
        "a redis key in a memory store",
        "store:\n  provider: memory\n  url: redis://127.0.0.1:6379/0  # <-\n",
        "store.url: unknown key `url`",
    ),
    one(
        "a resume ttl of nothing",
        "store:\n  provider: redis\n  resume_ttl_s: 0  # <-\n",
        "store.resume_ttl_s: found `0`; allowed: at least 1",
    ),
    one(
        "a store without a provider",
        "store:  # <-\n  resume_ttl_s: 60\n",
        "store: missing `provider`; allowed: memory, redis",
    ),
    one(
        "tool parameters that are not an object schema",
        "tools:\n  - name: x\n    parameters: {type: string}  # <-\n",
        "expected a JSON Schema object",
    ),
]


def _write(tmp_path: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_broken_file_is_reported_at_its_line(case: Case, tmp_path: Path) -> None:
    _write(tmp_path, case.files)
    with pytest.raises(PipelineError) as caught:
        load_pipelines([tmp_path / name for name in case.load], case.env)
    marked = [n for n, text in case.files.items() if "# <-" in text] or ["main.yaml"]
    line = case.line
    if line == -1:
        lines = case.files[marked[0]].splitlines()
        line = next(n for n, text in enumerate(lines, 1) if "# <-" in text)
    problems = caught.value.problems
    matching = [p for p in problems if case.expect in str(p) and Path(p.file).name == marked[0]]
    assert matching, f"{case.expect!r} not in:\n{caught.value}"
    assert matching[0].line == line, str(caught.value)


def test_error_reads_file_line_column_path_message(tmp_path: Path) -> None:
    _write(tmp_path, {"p.yaml": "vad:\n  threshold: 2\n" + STAGES})
    with pytest.raises(PipelineError) as caught:
        load_pipeline(tmp_path / "p.yaml", {})
    assert str(caught.value) == (
        f"{tmp_path / 'p.yaml'}:2:14: vad.threshold: "
        "found `2`; allowed: at least 0.0 and at most 1.0"
    )


def test_all_problems_of_a_file_are_reported_together(tmp_path: Path) -> None:
    _write(tmp_path, {"p.yaml": "vad:\n  threshold: 2\nturns:\n  barge_in: maybe\nstt: {}\n"})
    with pytest.raises(PipelineError) as caught:
        load_pipeline(tmp_path / "p.yaml", {})
    assert [(p.line, p.path) for p in caught.value.problems] == [
        (1, ""),  # llm and tts are missing: reported at the top of the file
        (1, ""),
        (2, "vad.threshold"),
        (4, "turns.barge_in"),
        (5, "stt"),
    ]


def test_interpolation_with_defaults_and_inside_strings(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "p.yaml": STAGES.replace(
                "llm:\n  provider: scripted\n",
                "llm:\n  provider: scripted\n"
                "  model: ${MODEL:-small}\n"
                "  base_url: http://${HOST}:8080/v1\n"
                "  reply: ${EMPTY:-fallback}\n"
                "  timeout_ms: ${TIMEOUT:-2500}\n"
                "  system_prompt: '${HOST}'\n",
            )
        },
    )
    p = load_pipeline(tmp_path / "p.yaml", {"HOST": "10.0.0.1", "EMPTY": ""})
    assert (p.llm.model, p.llm.base_url, p.llm.reply) == (
        "small",
        "http://10.0.0.1:8080/v1",
        "fallback",
    )
    assert (p.llm.timeout_ms, p.llm.system_prompt) == (2500, "10.0.0.1")
    p = load_pipeline(tmp_path / "p.yaml", {"HOST": "h", "MODEL": "large", "TIMEOUT": "99"})
    assert (p.llm.model, p.llm.timeout_ms) == ("large", 99)


def test_secrets_never_appear_in_errors_or_describe(tmp_path: Path) -> None:
    secret = "sk-live-very-secret-0123456789abcdef"
    _write(
        tmp_path,
        {
            "good.yaml": "auth:\n  mode: token\n  secret: ${SECRET}\n"
            + STAGES.replace("provider: scripted\n", "provider: scripted\n  api_key: ${SECRET}\n"),
            "bad.yaml": 'auth:\n  secret: ["${SECRET}"]\n'
            "stt:\n  provider: scripted\n  api_key: 12345\n  api_token: ${SECRET}\n",
        },
    )
    env = {"SECRET": secret}
    assert secret not in describe(load_pipeline(tmp_path / "good.yaml", env))
    out, err = io.StringIO(), io.StringIO()
    assert run_validate([str(tmp_path)], env, out, err) == 1
    assert secret not in out.getvalue() + err.getvalue()
    assert "stt.api_key: expected a string or nothing (null), found `***`" in err.getvalue()
    assert "12345" not in err.getvalue()


def test_a_tool_header_is_never_shown_in_an_error(tmp_path: Path) -> None:
    text = "tools:\n  - name: x\n    http: {url: 'http://a', headers: {Authorization: 7}}\n"
    _write(tmp_path, {"main.yaml": text + STAGES})
    with pytest.raises(PipelineError) as caught:
        load_pipelines([tmp_path / "main.yaml"], {})
    assert "tools[0].http.headers.Authorization" in str(caught.value)
    assert "7" not in str(caught.value).split("Authorization")[1]


def test_values_of_keys_that_only_sound_secret_are_shown(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "p.yaml": STAGES.replace(
                "  provider: scripted\ntts", "  provider: scripted\n  max_tokens: eighty\ntts"
            )
        },
    )
    err = io.StringIO()
    assert run_validate([str(tmp_path / "p.yaml")], {}, io.StringIO(), err) == 1
    assert "llm.max_tokens: expected an integer, found 'eighty'" in err.getvalue()


def test_an_unset_variable_is_reported_as_unset_and_nothing_else(tmp_path: Path) -> None:
    _write(
        tmp_path, {"p.yaml": "auth:\n  mode: token\n  secret: ${VOXGATE_TOKEN_SECRET}\n" + STAGES}
    )
    with pytest.raises(PipelineError) as caught:
        load_pipeline(tmp_path / "p.yaml", {})
    (problem,) = caught.value.problems
    assert "`VOXGATE_TOKEN_SECRET` is not set" in problem.message
    assert "bytes" not in str(caught.value), "not a 23-byte secret: no secret at all"


def test_extends_merges_mappings_and_replaces_lists(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "_base.yaml": "route: /ws/base\n"
            "input:\n  codecs: [pcm16, mulaw]\n  sample_rate: 8000\n"
            "vad:\n  provider: silero\n  threshold: 0.3\n  min_silence_ms: 900\n" + STAGES,
            "child.yaml": "extends: _base.yaml\n"
            "input:\n  codecs: [mulaw]\n"
            "vad:\n  min_silence_ms: 400\n"
            "llm:\n  reply: Hi\n",
            "switch.yaml": "extends: child.yaml\nvad:\n  provider: webrtc\n",
        },
    )
    child = load_pipeline(tmp_path / "child.yaml", {})
    assert (child.name, child.route) == ("child", "/ws/child")  # never inherited
    assert [c.value for c in child.input.codecs] == ["mulaw"]
    assert child.input.sample_rate == 8000
    assert (child.vad.threshold, child.vad.min_silence_ms) == (0.3, 400)
    assert child.llm.reply == "Hi"
    switched = load_pipeline(tmp_path / "switch.yaml", {})
    # A block whose provider changes starts afresh: silero's threshold is not webrtc's.
    assert (switched.vad.provider, switched.vad.threshold) == (VADProvider.WEBRTC, 0.5)


def test_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "p.yaml": "stt:\n  provider: scripted\n  options: &fast\n    provider: scripted\n"
            "    ttft_ms: 1\n"
            "llm:\n  <<: *fast\n  token_ms: 2\n  ttft_ms: 3\n"
            "tts: {provider: scripted}\n"
        },
    )
    p = load_pipeline(tmp_path / "p.yaml", {})
    assert (p.llm.ttft_ms, p.llm.token_ms) == (3, 2)


def test_defaults_and_describe(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "Support-1.yaml": STAGES.replace(
                "stt:\n  provider: scripted\n",
                "stt:\n  provider: scripted\n  fallback:\n    - provider: scripted\n",
            )
        },
    )
    p = load_pipeline(tmp_path / "Support-1.yaml", {})
    assert (p.name, p.route) == ("Support-1", "/ws/Support-1")
    assert describe(p) == (
        "Support-1  /ws/Support-1  stt=scripted llm=scripted tts=scripted (fallback: stt=scripted)"
    )


def test_expand_paths(tmp_path: Path) -> None:
    for name in ("b.yaml", "a.yml", "_base.yaml", "notes.txt"):
        (tmp_path / name).write_text(STAGES)
    assert [p.name for p in expand_paths([str(tmp_path)])] == ["a.yml", "b.yaml"]
    explicit = [str(tmp_path / "_base.yaml"), str(tmp_path), str(tmp_path / "b.yaml")]
    assert [p.name for p in expand_paths(explicit)] == ["_base.yaml", "a.yml", "b.yaml"]
    with pytest.raises(PipelineError, match="no such file or directory"):
        expand_paths([str(tmp_path / "missing.yaml")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="no pipeline files"):
        expand_paths([str(tmp_path / "empty")])


def test_run_validate_reports_every_file(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "a.yaml": "vad:\n  threshold: 9\n" + STAGES,
            "b.yaml": "version: 3\n" + STAGES,
            "c.yaml": STAGES,
        },
    )
    out, err = io.StringIO(), io.StringIO()
    assert run_validate([str(tmp_path)], {}, out, err) == 1
    assert "a.yaml:2:14: vad.threshold" in err.getvalue()
    assert "b.yaml:1:10: version" in err.getvalue()
    assert err.getvalue().endswith("2 problem(s) in 2 file(s)\n")
    assert out.getvalue() == ""
    out, err = io.StringIO(), io.StringIO()
    assert run_validate([str(tmp_path / "c.yaml")], {}, out, err) == 0
    assert (out.getvalue(), err.getvalue()) == (
        "c  /ws/c  stt=scripted llm=scripted tts=scripted\n",
        "",
    )
    assert run_validate([str(tmp_path / "nope")], {}, out, err) == 1


def test_json_schema_is_marked_as_a_schema() -> None:
    schema = json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["$defs"]["Pipeline"]["required"] == ["stt", "llm", "tts"]


def test_problem_in_a_shared_partial_is_reported_once(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "_base.yaml": "vad:\n  treshold: 0.4\n",
            "a.yaml": "extends: _base.yaml\n" + STAGES,
            "b.yaml": "extends: _base.yaml\n" + STAGES,
        },
    )
    with pytest.raises(PipelineError) as caught:
        load_pipelines(expand_paths([str(tmp_path)]), {})
    assert [Path(p.file).name for p in caught.value.problems] == ["_base.yaml"]


def test_a_redis_store_comes_from_redis_url_and_never_shows_its_password(tmp_path: Path) -> None:
    from gateway.store import MemoryStoreConfig, RedisStoreConfig

    _write(tmp_path, {"p.yaml": "store:\n  provider: redis\n  url: ${REDIS_URL}\n" + STAGES})
    url = "redis://:hunter2@cache.internal:6379/0"
    p = load_pipeline(tmp_path / "p.yaml", {"REDIS_URL": url})
    assert p.store == RedisStoreConfig(url=url)
    assert "hunter2" not in repr(p) + describe(p)

    with pytest.raises(PipelineError) as caught:
        load_pipeline(tmp_path / "p.yaml", {"REDIS_URL": "http://:hunter2@cache.internal:6379"})
    assert "store.url: found 'http://:***@cache.internal:6379'" in str(caught.value)
    assert "hunter2" not in str(caught.value)

    _write(
        tmp_path,
        {
            "d.yaml": "store:\n  provider: redis\n  url: ${REDIS_URL:-redis://127.0.0.1:6379/0}\n"
            + STAGES
        },
    )
    assert load_pipeline(tmp_path / "d.yaml", {}).store == RedisStoreConfig()
    _write(tmp_path, {"m.yaml": STAGES})
    assert load_pipeline(tmp_path / "m.yaml", {}).store == MemoryStoreConfig(), "the default"
