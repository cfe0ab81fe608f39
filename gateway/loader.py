"""Reads pipeline files into `Pipeline`s: YAML with marks, `extends`, `${VAR}`, then checks.

Every later stage reports problems by key path; the marks recorded while reading turn a path
back into file:line:column, across `extends` too, so a mistake inherited from `_base.yaml`
points into `_base.yaml`. Interpolation runs after the merge, so a child that overrides a
parent's `${VAR}` does not need that variable set. A pipeline's `name` and `route` are its
own (never inherited), since two files serving the same route is an error. A block whose
`provider` changes is replaced, not merged: another provider's keys would be unknown to it.
This module and gateway/checks.py are the only readers of raw YAML data.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import msgspec
import yaml

from adapters.catalog import LLMProvider, STTProvider, TTSProvider
from gateway.checks import Converter, KeyPath, Marks, Spot, format_path, is_secret, shown
from gateway.errors import PipelineError, PipelineProblem
from gateway.pipeline import Pipeline, missing_keys, unusable

_SUFFIXES = (".yaml", ".yml")
_MERGE_TAG = "tag:yaml.org,2002:merge"
# `${NAME}` or `${NAME:-default}`; a bare `${` (group 1 unset) is a malformed reference.
_REFERENCE = re.compile(r"\$\{(?:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})?")
_NEVER_INHERITED = ("name", "route", "extends")
MAX_FILE_BYTES = 256 * 1024
"""A pipeline file is a few kilobytes; anything this large is not one."""
MAX_VALUES = 10_000
"""Values one file may expand to: YAML aliases can make a few hundred bytes expand to
billions (an "alias bomb"); a real pipeline has a few hundred."""
MAX_DEPTH = 64


def expand_paths(args: Sequence[str]) -> list[Path]:
    """Files as given; a directory means its pipelines, without `_*.yaml` partials."""
    paths: list[Path] = []
    problems: list[PipelineProblem] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.suffix in _SUFFIXES and not p.name.startswith("_") and p.is_file()
            )
            if not found:
                problems.append(_file_problem(arg, "no pipeline files (*.yaml) in this directory"))
            paths.extend(found)
        elif path.exists():
            paths.append(path)
        else:
            problems.append(_file_problem(arg, "no such file or directory"))
    if problems:
        raise PipelineError(problems)
    seen: set[Path] = set()
    unique: list[Path] = []
    for path in paths:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    return unique


def load_pipeline(path: Path, env: Mapping[str, str]) -> Pipeline:
    loaded = _load(path, env)
    if loaded.pipeline is None or loaded.problems:
        raise PipelineError(loaded.problems)
    return loaded.pipeline


def load_pipelines(paths: Sequence[Path], env: Mapping[str, str]) -> list[Pipeline]:
    """All or nothing: a server must not start with some of its routes silently missing."""
    loaded = [_load(path, env) for path in paths]
    # A partial's problem reaches every file that extends it; report it once.
    problems = list(dict.fromkeys(problem for one in loaded for problem in one.problems))
    by_route: dict[str, list[tuple[str, Spot]]] = {}
    for one in loaded:
        if one.pipeline is not None and one.route_spot is not None:
            by_route.setdefault(one.pipeline.route, []).append((one.file, one.route_spot))
    for route, same in by_route.items():
        for file, spot in same if len(same) > 1 else ():
            others = ", ".join(other for other, _ in same if other != file)
            problems.append(
                PipelineProblem(
                    spot.file,
                    spot.line,
                    spot.column,
                    "route",
                    f"`{route}` is also served by {others}; give each pipeline its own route",
                )
            )
    if problems:
        raise PipelineError(problems)
    return [one.pipeline for one in loaded if one.pipeline is not None]


def describe(p: Pipeline) -> str:
    """One line per pipeline for `voxgate validate` and start-up logs; never shows values."""
    stages: dict[str, STTProvider | LLMProvider | TTSProvider] = {
        "stt": p.stt,
        "llm": p.llm,
        "tts": p.tts,
    }
    names = " ".join(f"{stage}={_tag(block)}" for stage, block in stages.items())
    fallbacks = ", ".join(
        f"{stage}=" + ">".join(_tag(b) for b in block.fallback)
        for stage, block in stages.items()
        if block.fallback
    )
    return f"{p.name}  {p.route}  {names}" + (f" (fallback: {fallbacks})" if fallbacks else "")


def json_schema() -> dict[str, Any]:
    """For editors (yaml-language-server): completion and hover text while writing a file."""
    schema = msgspec.json.schema(Pipeline)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Voxgate pipeline",
        **schema,
    }


def run_validate(args: Sequence[str], env: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    try:
        pipelines = load_pipelines(expand_paths(args or ["pipelines"]), env)
    except PipelineError as e:
        for problem in e.problems:
            print(problem, file=err)
        files = len({problem.file for problem in e.problems})
        print(f"{len(e.problems)} problem(s) in {files} file(s)", file=err)
        return 1
    for pipeline in pipelines:
        print(describe(pipeline), file=out)
    return 0


def availability(p: Pipeline, env: Mapping[str, str]) -> str:
    """`ready`, or what the server's environment lacks for this pipeline (never a value)."""
    missing = missing_keys(p, env)
    if unusable(p, env):
        return f"unavailable: set {', '.join(missing)}"
    if missing:
        return f"ready; providers skipped until {', '.join(missing)} are set"
    return "ready"


def run_check(args: Sequence[str], env: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    """`voxgate validate`, then whether this environment can serve each pipeline: 1 when a
    route would refuse every session for want of an API key."""
    status = run_validate(args, env, io.StringIO(), err)
    if status:
        return status
    pipelines = load_pipelines(expand_paths(args or ["pipelines"]), env)
    for pipeline in pipelines:
        print(f"{describe(pipeline)}  [{availability(pipeline, env)}]", file=out)
    return 1 if any(unusable(p, env) for p in pipelines) else 0


def run_schema(out: TextIO) -> int:
    out.write(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
    return 0


def _tag(block: msgspec.Struct) -> str:
    return str(block.__struct_config__.tag)


def _file_problem(file: str, message: str) -> PipelineProblem:
    return PipelineProblem(file, None, None, "", message)


@dataclass
class _Loaded:
    file: str
    problems: list[PipelineProblem] = field(default_factory=list)
    pipeline: Pipeline | None = None
    route_spot: Spot | None = None


def _load(path: Path, env: Mapping[str, str]) -> _Loaded:
    loaded = _Loaded(str(path))
    document = _Reader(loaded.problems, path.parent.resolve()).compose(path, loaded.file, [])
    if document is not None:
        data, marks = document
        _interpolate(data, (), env, marks, loaded.problems)
        data.setdefault("name", path.stem)
        if isinstance(data["name"], str):
            data.setdefault("route", f"/ws/{data['name']}")
        converter = Converter(marks)
        loaded.pipeline = converter.pipeline(data)
        loaded.problems.extend(converter.problems)
        loaded.route_spot = marks.at(("route",))
    loaded.problems.sort(key=lambda p: (p.file != loaded.file, p.file, p.line or 0, p.column or 0))
    return loaded


class _Reader:
    """Reads one file and its `extends` chain into merged data plus the marks of every key.

    `extends` may only name `.yaml` files in the first file's own folder or below it: a
    pipeline file is configuration that an error message may quote, and no other file's
    content (`/etc/passwd`, `/proc/self/environ`) may ever be read or shown through it.
    """

    def __init__(self, problems: list[PipelineProblem], root: Path) -> None:
        self.problems = problems
        self.root = root

    def compose(
        self, path: Path, file: str, chain: list[tuple[Path, str]]
    ) -> tuple[dict[str, Any], Marks] | None:
        document = self._read(path, file)
        if document is None:
            return None
        data, marks = document
        extends = data.get("extends")
        if extends is None:
            return data, marks
        chain = [*chain, (path.resolve(), file)]
        if not isinstance(extends, str) or not extends:
            found = shown(extends, secret=False)
            self.problems.append(
                marks.problem(("extends",), f"expected a file name, found {found}", value=True)
            )
            return None
        parent = (path.parent / extends).resolve()
        parent_file = os.path.normpath(os.path.join(os.path.dirname(file), extends))
        if Path(extends).is_absolute() or not parent.is_relative_to(self.root):
            message = (
                f"`{extends}` is outside this pipeline's folder; `extends` names a file in "
                "the same folder or below it, like `_base.yaml`"
            )
            self.problems.append(marks.problem(("extends",), message, value=True))
            return None
        if parent.suffix not in _SUFFIXES:
            message = f"`{extends}` is not a pipeline file; `extends` names a `.yaml` file"
            self.problems.append(marks.problem(("extends",), message, value=True))
            return None
        if parent in [p for p, _ in chain]:
            names = [Path(f).name for _, f in chain] + [Path(parent_file).name]
            message = "extends cycle: " + " -> ".join(names)
            self.problems.append(marks.problem(("extends",), message, value=True))
            return None
        if not parent.is_file():
            message = f"`{extends}` not found (looked for {parent_file})"
            self.problems.append(marks.problem(("extends",), message, value=True))
            return None
        inherited = self.compose(parent, parent_file, chain)
        if inherited is None:
            return None
        base, base_marks = inherited
        for key in _NEVER_INHERITED:
            base.pop(key, None)
        merged_marks = Marks(
            {**base_marks.keys, **marks.keys}, {**base_marks.values, **marks.values}
        )
        return _merge(base, data), merged_marks

    def _read(self, path: Path, file: str) -> tuple[dict[str, Any], Marks] | None:
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            self.problems.append(_file_problem(file, f"cannot read the file: {e}"))
            return None
        if len(raw) > MAX_FILE_BYTES:
            message = f"larger than {MAX_FILE_BYTES // 1024} KiB: not a pipeline file"
            self.problems.append(_file_problem(file, message))
            return None
        try:
            loader = yaml.SafeLoader(text)
        except yaml.reader.ReaderError as e:  # a character YAML does not allow
            before = text[: e.position]
            at_line, at_column = before.count("\n") + 1, len(before) - before.rfind("\n")
            message = f"character {e.character:#x} is not allowed in a YAML file; remove it"
            self.problems.append(PipelineProblem(file, at_line, at_column, "", message))
            return None
        try:
            node = loader.get_single_node()
            if node is None:
                self.problems.append(
                    _file_problem(
                        file, "the file is empty; a pipeline needs at least `stt`, `llm` and `tts`"
                    )
                )
                return None
            marks = Marks()
            data = _Builder(loader, file, marks, self.problems).build(node, ())
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
            what = " ".join(part for part in (e.context, e.problem) if part)
            message = f"YAML syntax error: {what}"
            self.problems.append(PipelineProblem(file, line, column, "", message))
            return None
        except (_TooLarge, RecursionError) as e:
            reason = str(e) if isinstance(e, _TooLarge) else "it is nested too deeply"
            self.problems.append(_file_problem(file, f"not a pipeline file: {reason}"))
            return None
        finally:
            loader.dispose()
        if not isinstance(data, dict):
            found = "a list" if isinstance(data, list) else f"the value {data!r}"
            message = f"the file must be a mapping of keys (like `stt:`), found {found}"
            self.problems.append(marks.problem((), message))
            return None
        return data, marks


class _TooLarge(Exception):
    """The file expands beyond what any pipeline needs (aliases, nesting)."""


class _Builder:
    """Constructs plain data from a YAML node tree, recording each node's position."""

    def __init__(
        self, loader: yaml.SafeLoader, file: str, marks: Marks, problems: list[PipelineProblem]
    ) -> None:
        self.loader = loader
        self.file = file
        self.marks = marks
        self.problems = problems
        self.open: set[int] = set()
        self.built = 0

    def spot(self, node: yaml.Node) -> Spot:
        return Spot(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.built += 1
        if self.built > MAX_VALUES:
            raise _TooLarge(f"it expands to more than {MAX_VALUES} values (YAML aliases?)")
        if len(path) > MAX_DEPTH:
            raise _TooLarge(f"it nests keys more than {MAX_DEPTH} levels deep")
        self.marks.keys.setdefault(path, self.spot(node))
        self.marks.values[path] = self.spot(node)
        if id(node) in self.open:
            self.problems.append(self.marks.problem(path, "an alias refers to itself"))
            return None
        if isinstance(node, yaml.MappingNode):
            self.open.add(id(node))
            mapping = self._mapping(node, path)
            self.open.discard(id(node))
            return mapping
        if isinstance(node, yaml.SequenceNode):
            self.open.add(id(node))
            items = [self.build(item, (*path, n)) for n, item in enumerate(node.value)]
            self.open.discard(id(node))
            return items
        return self.loader.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[Any, Any]:
        own = sum(1 for key, _ in node.value if key.tag != _MERGE_TAG)
        self.loader.flatten_mapping(node)
        first_own = len(node.value) - own  # `<<:` merged keys come first and may be overridden
        result: dict[Any, Any] = {}
        seen: dict[Any, int] = {}
        for n, (key_node, value_node) in enumerate(node.value):
            key = self.loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool):
                spot = self.spot(key_node)
                self.problems.append(
                    PipelineProblem(
                        self.file,
                        spot.line,
                        spot.column,
                        format_path(path),
                        f"found {shown(key, secret=False)} as a key; keys are names",
                    )
                )
                continue
            child = (*path, str(key))
            self.marks.keys[child] = self.spot(key_node)
            if n >= first_own and key in seen:
                message = f"`{key}` appears twice in this mapping (first on line {seen[key]})"
                self.problems.append(self.marks.problem(child, message))
            if n >= first_own:
                seen[key] = self.spot(key_node).line
            result[key] = self.build(value_node, child)
        return result


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and not _switches_provider(old, value):
            merged[key] = _merge(old, value)
        else:
            merged[key] = value
    return merged


def _switches_provider(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return "provider" in old and "provider" in new and old["provider"] != new["provider"]


def _interpolate(
    data: Any, path: KeyPath, env: Mapping[str, str], marks: Marks, problems: list[PipelineProblem]
) -> None:
    """Replaces `${VAR}` references in place, in every string value below `data`.

    An unresolved reference stays as written, so it is reported once, not again as a
    missing value by the checks that follow.
    """
    items: Any = data.items() if isinstance(data, dict) else enumerate(data)
    for key, value in list(items):
        child = (*path, str(key) if isinstance(data, dict) else key)
        if isinstance(value, dict | list):
            _interpolate(value, child, env, marks, problems)
        elif isinstance(value, str) and "${" in value:
            resolve = functools.partial(
                _resolve, path=child, env=env, marks=marks, problems=problems
            )
            data[key] = _REFERENCE.sub(resolve, value)
            marks.interpolated.add(child)


def _resolve(
    match: re.Match[str],
    path: KeyPath,
    env: Mapping[str, str],
    marks: Marks,
    problems: list[PipelineProblem],
) -> str:
    name, default = match[1], match[2]
    if name is None:
        message = "a `${` that is not `${NAME}` or `${NAME:-default}`"
        problems.append(marks.problem(path, message, value=True))
        return match[0]
    value = env.get(name)
    if default is not None and not value:
        return default
    if value is None:
        where = format_path(path)
        hint = "" if is_secret(path) else f", or write `${{{name}:-default}}`"
        message = f"environment variable `{name}` is not set (used by `{where}`); set it{hint}"
        problems.append(marks.problem(path, message, value=True))
        marks.unresolved.add(path)
        return match[0]
    return value
