"""The pipeline file reference (docs/pipelines.md), written from the pipeline JSON Schema.

Users read one page to write a pipeline file; it is generated from the same types the loader
validates against (`voxgate schema --markdown`), and a test fails when the committed page
differs, so the reference cannot drift from what the gateway accepts.
"""

from __future__ import annotations

import json
from typing import Any

INTRO = """\
# Pipeline files: the reference

One YAML file in `pipelines/` per product; the gateway serves each on its `route`. This page
lists every key a file may hold, with its type, default and meaning. It is generated from the
gateway's own types (`voxgate schema --markdown > docs/pipelines.md`; a test keeps it current),
as is `pipelines/pipeline.schema.json`, which editors use for completion and hover text.

- Start from a shipped file: `pipelines/local.yaml` (offline, the default),
  `pipelines/private.yaml` (the same behind a token), `pipelines/openai.yaml`,
  `pipelines/deepgram-openai-cartesia.yaml`, `pipelines/scripted.yaml` (tests and load).
- `${VAR}` in any value is the environment variable `VAR` (the file is rejected when it is
  unset); `${VAR:-default}` falls back to `default` when `VAR` is unset or empty.
- `extends: base.yaml` starts from another file (mappings merge, lists and provider blocks
  whose `provider` changes are replaced); `name`, `route` and `extends` are never inherited.
  Files named `_*.yaml` are partials: only extended, never served.
- A provider block's `api_key` may be left out: the provider's own variable is used
  (`DEEPGRAM_API_KEY`, `OPENAI_API_KEY` for OpenAI's own API only, `CARTESIA_API_KEY`), as is
  `VOXGATE_TOKEN_SECRET` for `auth.secret`. A route whose keys are missing is served but
  refuses every session, naming them; `voxgate check` lists what each route lacks.
- `voxgate validate` reports every problem of every file at its line.
"""


def render(schema: dict[str, Any]) -> str:
    defs: dict[str, Any] = schema["$defs"]
    root = defs["Pipeline"]
    out = [INTRO, "## Top-level keys\n", _table(root, defs)]
    for key, prop in root["properties"].items():
        target = _ref(prop)
        if target is not None and "properties" in defs[target]:
            out.append(f"## `{key}`\n")
            if "description" in defs[target]:
                out.append(defs[target]["description"] + "\n")
            out.append(_table(defs[target], defs))
    for stage in ("stt", "llm", "tts"):
        mapping = root["properties"][stage]["discriminator"]["mapping"]
        out.append(f"## `{stage}` providers\n")
        out.append(
            "Every block takes `provider` and the keys below; `fallback` is a list of blocks "
            "of the same stage, tried in order when this one fails.\n"
        )
        for provider, ref in mapping.items():
            name = ref.rsplit("/", 1)[1]
            out.append(f"### `{stage}.provider: {provider}`\n")
            if "description" in defs[name]:
                out.append(defs[name]["description"] + "\n")
            out.append(_table(defs[name], defs))
    for key, prop in root["properties"].items():  # other blocks chosen by `provider` (store)
        if key in ("stt", "llm", "tts") or "discriminator" not in prop:
            continue
        out.append(f"## `{key}`\n")
        out.append("A block chosen by its `provider`; each takes the keys below.\n")
        for provider, ref in prop["discriminator"]["mapping"].items():
            name = ref.rsplit("/", 1)[1]
            out.append(f"### `{key}.provider: {provider}`\n")
            if "description" in defs[name]:
                out.append(defs[name]["description"] + "\n")
            out.append(_table(defs[name], defs))
    return "\n".join(out)


def _table(obj: dict[str, Any], defs: dict[str, Any]) -> str:
    required = set(obj.get("required", []))
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, prop in obj["properties"].items():
        if key == "provider" and "enum" in prop:  # the heading names the provider
            continue
        if key in required:
            default = "required"
        elif _ref(prop) in defs and "properties" in defs[str(_ref(prop))]:
            default = "see below"
        elif "discriminator" in prop and isinstance(prop.get("default"), dict):
            tag = prop["discriminator"]["propertyName"]
            default = f"`{tag}: {prop['default'][tag]}`"
        else:
            default = _default(prop.get("default", ...))
        rows.append(f"| `{key}` | {_type(prop, defs)} | {default} | {_description(prop, defs)} |")
    return "\n".join(rows) + "\n"


def _ref(prop: dict[str, Any]) -> str | None:
    ref = prop.get("$ref")
    return ref.rsplit("/", 1)[1] if isinstance(ref, str) else None


def _description(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    texts = [prop.get("description")] + [p.get("description") for p in prop.get("anyOf", [])]
    text = next((t for t in texts if t), None)
    target = _ref(prop)
    if text is None and target is not None:
        text = defs[target].get("description")
    return (text or "").replace("\n", " ").replace("|", "\\|")


def _type(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    if "anyOf" in prop:
        if "discriminator" in prop:
            refs = prop["discriminator"]["mapping"].values()
            blocks = [defs[ref.rsplit("/", 1)[1]].get("properties", {}) for ref in refs]
            return "a provider block" if all("fallback" in b for b in blocks) else "a block (below)"
        return " or ".join(_type(p, defs) for p in prop["anyOf"])
    target = _ref(prop)
    if target is not None:
        enum = defs[target].get("enum")
        if enum is not None:
            return "one of " + ", ".join(f"`{v}`" for v in enum)
        return "a mapping (below)"
    kind = prop.get("type")
    if kind == "array":
        item = prop.get("items", {})
        return (
            "a list of provider blocks"
            if "discriminator" in item
            else f"list of {_type(item, defs)}"
        )
    if kind == "object":
        return "mapping"
    words = {"integer": "integer", "number": "number", "string": "string", "boolean": "boolean"}
    text = words.get(str(kind), "null" if kind == "null" else str(kind))
    bounds = [
        f"{word} {prop[bound]}"
        for bound, word in (
            ("minimum", ">="),
            ("exclusiveMinimum", ">"),
            ("maximum", "<="),
            ("exclusiveMaximum", "<"),
            ("minLength", "length >="),
        )
        if bound in prop
    ]
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def _default(value: Any) -> str:
    if value is ...:  # made by a factory: the meaning says
        return "see meaning"
    if value is None:
        return "unset"
    if value in ([], {}):
        return "empty"
    return f"`{json.dumps(value)}`"
