"""Turns one merged pipeline mapping into a `Pipeline`, finding every problem in one pass.

`msgspec.convert` stops at the first error and names it by a JSON path, but a person fixing a
YAML file wants every mistake at once, at its line, in plain words. So this module walks the
Structs' own fields itself: mappings, provider unions and lists of them are handled here
(unknown keys with a did-you-mean, a required `provider`, the allowed names), while every
leaf value is still converted by msgspec against the field's annotated type, so each
constraint is written once, in gateway/pipeline.py. Checks that depend on this build (a codec
needs a real implementation, mulaw has a fixed rate, token auth needs a secret) run on each
struct as soon as it is valid, so they are reported together with everything else.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Union, get_args, get_origin

import msgspec
import msgspec.inspect as mi

from gateway.config import MIN_SECRET_BYTES, VAD_RATES, Auth, Output, Tool
from gateway.errors import PipelineProblem
from gateway.pipeline import Pipeline
from gateway.protocol import MULAW_RATE, OPUS_RATES, OutputCodec
from gateway.store.config import MASK, redacted

KeyPath = tuple[str | int, ...]

SUPPORTED_VERSION = 1
# A key named like this holds a secret: `api_key`, `secret`, `token`, `*_key`, `*_password`...
# (and not `max_tokens` or `keyterm`, whose values an error message must show).
_SECRET_NAME = re.compile(r"(?:^|_)(?:key|secret|token|password)$")


@dataclass(frozen=True)
class Spot:
    file: str
    line: int
    column: int


@dataclass
class Marks:
    """Where each key and value came from (possibly different files, through `extends`)."""

    keys: dict[KeyPath, Spot] = field(default_factory=dict)
    values: dict[KeyPath, Spot] = field(default_factory=dict)
    interpolated: set[KeyPath] = field(default_factory=set)
    unresolved: set[KeyPath] = field(default_factory=set)
    """Values holding a `${VAR}` whose variable is unset: reported once, as unset."""

    def at(self, path: KeyPath, *, value: bool = False) -> Spot:
        """The nearest recorded spot: a default-filled key points at its parent block."""
        table = self.values if value else self.keys
        for end in range(len(path), -1, -1):
            spot = table.get(path[:end])
            if spot is not None:
                return spot
        raise KeyError(path)

    def problem(self, path: KeyPath, message: str, *, value: bool = False) -> PipelineProblem:
        spot = self.at(path, value=value)
        return PipelineProblem(spot.file, spot.line, spot.column, format_path(path), message)


def format_path(path: KeyPath) -> str:
    """`("stt", "fallback", 0, "provider")` -> `stt.fallback[0].provider`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


def is_secret(path: KeyPath) -> bool:
    if "headers" in path:  # a tool's headers: `Authorization: Bearer ...` and the like
        return True
    name = next((p for p in reversed(path) if isinstance(p, str)), "").lower()
    return _SECRET_NAME.search(name) is not None


def shown(value: Any, *, secret: bool) -> str:
    """A found value as an error message may show it; secrets become `***`."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if secret:
        return "`***`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"'{_masked(value)}'"
    return f"`{value}`"


def _masked(text: str) -> str:
    """Text with a URL's password masked: `store.url: 'http://:***@host'` (a Redis URL written
    with the wrong scheme must not show its password)."""
    if "://" not in text:
        return text
    try:
        return redacted(text)
    except ValueError:  # not a URL after all (an unclosed `[`): nothing of it is shown
        return MASK


def _bare(tp: Any) -> Any:
    return get_args(tp)[0] if get_origin(tp) is Annotated else tp


def _tagged(tp: Any) -> dict[str, type[msgspec.Struct]] | None:
    """Tag -> struct for a tagged Struct or a Union of them; None for any other type.

    The provider unions in adapters/catalog.py are the registry of provider names, so the
    allowed names always match what the schema accepts, whether a union has one member or many.
    """
    tp = _bare(tp)
    members = get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)
    if not all(
        isinstance(m, type)
        and issubclass(m, msgspec.Struct)
        and m.__struct_config__.tag_field is not None
        for m in members
    ):
        return None
    return {str(m.__struct_config__.tag): m for m in members}


def _struct_type(tp: Any) -> type[msgspec.Struct] | None:
    tp = _bare(tp)
    return tp if isinstance(tp, type) and issubclass(tp, msgspec.Struct) else None


def _optional_struct(tp: Any) -> type[msgspec.Struct] | None:
    """X for a `X | None` of a struct X (walked here when it is not null)."""
    tp = _bare(tp)
    if get_origin(tp) not in (Union, types.UnionType):
        return None
    members = [m for m in get_args(tp) if m is not type(None)]
    return _struct_type(members[0]) if len(members) == 1 else None


def _list_of_blocks(tp: Any) -> Any | None:
    """The item type of a list of structs (walked here); None for lists of leaves."""
    tp = _bare(tp)
    if get_origin(tp) is not list:
        return None
    (item,) = get_args(tp)
    return item if _tagged(item) is not None or _struct_type(item) is not None else None


def _did_you_mean(found: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(found, allowed, n=1)
    if close:
        return f"did you mean `{close[0]}`?"
    return "allowed: " + ", ".join(allowed)


# Why a value is not of a key's type, read from the type (msgspec.inspect) and the value, never
# from msgspec's English error messages, which any msgspec release may reword.
_KINDS: dict[type[mi.Type], str] = {
    mi.IntType: "an integer",
    mi.FloatType: "a number",
    mi.StrType: "a string",
    mi.BoolType: "true or false",
    mi.ListType: "a list",
    mi.DictType: "a mapping",
    mi.NoneType: "nothing (null)",
}
_PYTHON_KINDS: dict[type[mi.Type], Any] = {
    mi.IntType: int,
    mi.FloatType: float,
    mi.StrType: str,
    mi.BoolType: bool,
    mi.ListType: list,
    mi.DictType: dict,
    mi.NoneType: None,
}
_BOUND_WORDS = {"ge": "at least", "gt": "more than", "le": "at most", "lt": "less than"}


def _fits(value: Any, tp: Any, *, strict: bool) -> bool:
    try:
        msgspec.convert(value, tp, strict=strict)
    except msgspec.ValidationError:
        return False
    return True


def _is_kind(value: Any, info: mi.Type, *, strict: bool) -> bool:
    """`value` is of the type's kind (an integer for an integer type, whatever its bounds);
    not strict: also a string that reads as one (a value from an environment variable)."""
    kind = _PYTHON_KINDS.get(type(info), Any)
    return kind is Any or _fits(value, kind, strict=strict)


def _bounds(info: mi.Type) -> str:
    limits = ((word, getattr(info, bound, None)) for bound, word in _BOUND_WORDS.items())
    return " and ".join(f"{word} {limit}" for word, limit in limits if limit is not None)


def _length(info: mi.ListType | mi.DictType | mi.StrType, size: int) -> str | None:
    """The length rule `size` breaks, in words ("at least 1 item"); None if it breaks none."""
    unit = "character" if isinstance(info, mi.StrType) else "item"
    if info.min_length is not None and size < info.min_length:
        word, limit = "at least", info.min_length
    elif info.max_length is not None and size > info.max_length:
        word, limit = "at most", info.max_length
    else:
        return None
    return f"{word} {limit} {unit}{'' if limit == 1 else 's'}"


def explain(value: Any, tp: Any, path: KeyPath, *, strict: bool = True) -> tuple[KeyPath, str]:
    """Why `value` (which msgspec refused) is not a `tp`, as the innermost path that is wrong
    (an item of a list, a value of a mapping) and plain words saying what was found and what
    is allowed."""
    return _why(value, mi.type_info(tp), tp, path, strict)


def _why(value: Any, info: mi.Type, tp: Any, path: KeyPath, strict: bool) -> tuple[KeyPath, str]:
    seen = shown(value, secret=is_secret(path))
    if isinstance(info, mi.Metadata):
        return _why(value, info.type, tp, path, strict)
    if isinstance(info, mi.UnionType):
        same_kind = [t for t in info.types if _is_kind(value, t, strict=strict)]
        if len(same_kind) == 1 and not isinstance(same_kind[0], mi.NoneType):
            return _why(value, same_kind[0], tp, path, strict)
        wanted = " or ".join(_KINDS.get(type(t), "a valid value") for t in info.types)
        return path, f"expected {wanted}, found {seen}"
    if isinstance(info, mi.EnumType):
        allowed = ", ".join(str(e.value) for e in info.cls)
        return path, f"found {seen}; allowed: {allowed}"
    if isinstance(info, mi.LiteralType):
        return path, f"found {seen}; allowed: {', '.join(str(v) for v in info.values)}"
    if not _is_kind(value, info, strict=strict):
        return path, f"expected {_KINDS.get(type(info), 'a valid value')}, found {seen}"
    if (
        isinstance(info, mi.ListType | mi.DictType | mi.StrType)
        and isinstance(value, list | dict | str)
        and (length := _length(info, len(value)))
    ):
        return path, f"found {seen}; allowed: {length}"
    if isinstance(info, mi.ListType) and isinstance(value, list):
        item_tp = get_args(_bare(tp))[0] if get_args(_bare(tp)) else Any
        for n, item in enumerate(value):
            if not _fits(item, item_tp, strict=strict):
                return _why(item, info.item_type, item_tp, (*path, n), strict)
    if isinstance(info, mi.DictType) and isinstance(value, dict):
        value_tp = get_args(_bare(tp))[-1] if get_args(_bare(tp)) else Any
        for key, item in value.items():
            if not _fits(item, value_tp, strict=strict):
                return _why(item, info.value_type, value_tp, (*path, str(key)), strict)
    if isinstance(info, mi.IntType | mi.FloatType) and (bounds := _bounds(info)):
        return path, f"found {seen}; allowed: {bounds}"
    if isinstance(info, mi.StrType) and info.pattern is not None:
        return path, f"found {seen}; allowed: text matching `{info.pattern}`"
    return path, f"found {seen}; expected {_KINDS.get(type(info), 'a valid value')}"


CheckResult = Iterator[tuple[KeyPath, str]]


def _check_pipeline(p: Pipeline, raw: dict[str, Any]) -> CheckResult:
    if p.version != SUPPORTED_VERSION:
        yield ("version",), f"found `{p.version}`; this gateway reads version {SUPPORTED_VERSION}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", p.name):
        yield ("name",), f"found '{p.name}'; allowed: letters, digits, `-`, `_` and `.`"
    elif not re.fullmatch(r"/[^\s?#]*", p.route):
        yield (
            ("route",),
            f"found '{p.route}'; allowed: a path starting with `/`, like `/ws/{p.name}`",
        )
    rates = VAD_RATES.get(p.vad.provider)
    if rates is not None and p.input.sample_rate not in rates:
        allowed = " or ".join(str(r) for r in sorted(rates))
        yield (
            ("vad", "provider"),
            f"{p.vad.provider.value} VAD runs at {allowed} Hz but input.sample_rate is "
            f"{p.input.sample_rate}; set input.sample_rate to one of those",
        )
    yield from _check_tools(p)


def _check_output(o: Output, raw: dict[str, Any]) -> CheckResult:
    if o.codec is OutputCodec.OPUS and o.sample_rate not in OPUS_RATES:
        rates = ", ".join(str(r) for r in sorted(OPUS_RATES))
        yield (
            ("sample_rate" if "sample_rate" in raw else "codec",),
            f"opus encodes at {rates} Hz but output.sample_rate is {o.sample_rate}; "
            "set one of those",
        )
    elif o.codec is OutputCodec.MULAW and o.sample_rate != MULAW_RATE:
        where = "sample_rate" if "sample_rate" in raw else "codec"
        yield (
            (where,),
            (
                f"mulaw is {MULAW_RATE} Hz audio but output.sample_rate is {o.sample_rate}; "
                f"set `sample_rate: {MULAW_RATE}`"
            ),
        )


def _check_auth(a: Auth, raw: dict[str, Any]) -> CheckResult:
    if a.secret and len(a.secret.encode()) < MIN_SECRET_BYTES:
        yield (
            ("secret",),
            f"found a secret of {len(a.secret.encode())} bytes; HS256 needs at least "
            f"{MIN_SECRET_BYTES}: generate one with `openssl rand -hex 32`",
        )


def _check_tool(t: Tool, raw: dict[str, Any]) -> CheckResult:
    if t.http is not None and t.mcp is not None:
        yield ("mcp",), "a tool is `http` or `mcp`, not both; make them two entries"
    elif t.mcp is not None:
        for key in ("name", "description", "parameters"):
            if key in raw:
                yield (
                    (key,),
                    f"an `mcp` entry offers the server's own tools, which name and describe "
                    f"themselves; remove `{key}` (or `mcp.only` picks tools by name)",
                )
    elif t.name is None:
        kind = "an `http` tool" if t.http is not None else "a client tool (no `http` or `mcp`)"
        yield (), f"missing required key `name`: {kind} needs the name the LLM calls it by"
    if t.parameters.get("type") != "object":
        yield ("parameters",), "expected a JSON Schema object: `{type: object, properties: {...}}`"


def _check_tools(p: Pipeline) -> CheckResult:
    seen: set[str] = set()
    for n, tool in enumerate(p.tools):
        if tool.name is not None and tool.name in seen:
            yield ("tools", n, "name"), f"`{tool.name}` is already a tool of this pipeline"
        if tool.name is not None:
            seen.add(tool.name)


_CHECKS: dict[type[Any], Callable[[Any, dict[str, Any]], CheckResult]] = {
    Tool: _check_tool,
    Pipeline: _check_pipeline,
    Output: _check_output,
    Auth: _check_auth,
}
_INVALID: Any = object()


class Converter:
    """Builds one Pipeline, collecting problems instead of stopping at the first."""

    def __init__(self, marks: Marks) -> None:
        self.marks = marks
        self.problems: list[PipelineProblem] = []

    def pipeline(self, data: dict[str, Any]) -> Pipeline | None:
        result = self._struct(data, Pipeline, ())
        return None if result is _INVALID else result

    def _report(self, path: KeyPath, message: str, *, value: bool = True) -> Any:
        if path not in self.marks.unresolved:  # else "`VAR` is not set" says it all
            self.problems.append(self.marks.problem(path, message, value=value))
        return _INVALID

    def _value(self, value: Any, tp: Any, path: KeyPath) -> Any:
        if (tags := _tagged(tp)) is not None:
            return self._provider(value, tags, path)
        if (struct := _struct_type(tp)) is not None:
            return self._struct(value, struct, path)
        if value is not None and (struct := _optional_struct(tp)) is not None:
            return self._struct(value, struct, path)
        if (item_tp := _list_of_blocks(tp)) is not None:
            if not isinstance(value, list):
                return self._report(path, f"expected a list, found {shown(value, secret=False)}")
            items = [self._value(v, item_tp, (*path, n)) for n, v in enumerate(value)]
            return _INVALID if _INVALID in items else items
        strict = not any(p[: len(path)] == path for p in self.marks.interpolated)
        try:
            return msgspec.convert(value, tp, strict=strict)
        except msgspec.ValidationError:
            where, message = explain(value, tp, path, strict=strict)
            return self._report(where, message)

    def _provider(self, value: Any, tags: dict[str, type[msgspec.Struct]], path: KeyPath) -> Any:
        allowed = ", ".join(tags)
        if not isinstance(value, dict):
            return self._report(
                path,
                f"expected a provider block (a mapping with `provider: {allowed}`), "
                f"found {shown(value, secret=False)}",
            )
        if "provider" not in value:
            return self._report(path, f"missing `provider`; allowed: {allowed}", value=False)
        name = value["provider"]
        if not isinstance(name, str) or name not in tags:
            close = (
                difflib.get_close_matches(name, list(tags), n=1) if isinstance(name, str) else []
            )
            hint = f"did you mean `{close[0]}`? " if close else ""
            found = shown(name, secret=False)
            return self._report(
                (*path, "provider"), f"unknown provider {found}; {hint}allowed: {allowed}"
            )
        return self._struct(value, tags[name], path)

    def _struct(self, value: Any, cls: type[msgspec.Struct], path: KeyPath) -> Any:
        if not isinstance(value, dict):
            return self._report(
                path, f"expected a mapping of keys, found {shown(value, secret=False)}"
            )
        fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
        tag_field = cls.__struct_config__.tag_field
        names = sorted(fields) + ([tag_field] if tag_field else [])
        kwargs: dict[str, Any] = {}
        ok = True
        for key, item in value.items():
            if key == tag_field:
                continue
            info = fields.get(key) if isinstance(key, str) else None
            if info is None:
                hint = _did_you_mean(str(key), names)
                self._report((*path, str(key)), f"unknown key `{key}`; {hint}", value=False)
                ok = False
                continue
            converted = self._value(item, info.type, (*path, key))
            ok = ok and converted is not _INVALID
            kwargs[info.name] = converted
        for info in fields.values():
            if info.required and info.encode_name not in value:
                extra = ""
                if (tags := _tagged(info.type)) is not None:
                    extra = f" (a provider block; allowed providers: {', '.join(tags)})"
                self._report(path, f"missing required key `{info.encode_name}`{extra}", value=False)
                ok = False
        if not ok:
            return _INVALID
        result = cls(**kwargs)
        if (check := _CHECKS.get(cls)) is not None:
            for rel, message in check(result, value):
                self._report((*path, *rel), message)
        return result
