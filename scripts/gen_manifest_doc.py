"""Write docs/manifest.md and docs/manifest.schema.json from the manifest's pydantic models
(bpfcompat.matrix.manifest.Manifest and every model it reaches), so the reference cannot
drift from what the tool accepts.

Usage: .venv/bin/python scripts/gen_manifest_doc.py [--check]
With --check, exit 1 (and write nothing) when either file differs from the models.

Every key's meaning and examples come from its Field(description=..., examples=[...]);
types, bounds and defaults from the models themselves. A key without a description is an
error here, so a key added to the models cannot go undocumented.
"""

from __future__ import annotations

import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from bpfcompat.matrix.manifest import Manifest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "manifest.md"
SCHEMA = ROOT / "docs" / "manifest.schema.json"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


# --- walking the models ---------------------------------------------------------------------


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Models named anywhere in a field's annotation (lists, unions, Annotated, dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def _container(annotation: Any) -> type | None:
    """list or dict when the field holds its models in one, else None."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _container(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        kinds = {_container(a) for a in typing.get_args(annotation)} - {None}
        return kinds.pop() if kinds else None
    return origin if origin in (list, dict) else None


def _below(key: str, annotation: Any) -> str:
    """The path of the models a field holds: `maps[]`, `expect.kernels.<key>`, `expect`."""
    kind = _container(annotation)
    return key + ("[]" if kind is list else ".<key>" if kind is dict else "")


def _example_of(annotation: Any, model: type[BaseModel]) -> Any:
    value = example(model)
    kind = _container(annotation)
    return [value] if kind is list else {"<key>": value} if kind is dict else value


def sections(root: type[BaseModel] = Manifest) -> list[tuple[str, type[BaseModel]]]:
    """(path, model) for the top level and every nested model, depth first in field
    order: ("", Manifest), ("programs[]", ProgramExpectation), ..."""
    out: list[tuple[str, type[BaseModel]]] = []

    def visit(path: str, model: type[BaseModel]) -> None:
        out.append((path, model))
        for name, field in model.model_fields.items():
            key = f"{path}.{name}" if path else name
            for sub in _models_in(field.annotation):
                visit(_below(key, field.annotation), sub)

    visit("", root)
    return out


def undocumented(root: type[BaseModel] = Manifest) -> list[str]:
    """Keys with no description, and leaf keys (not a nested model) with no example."""
    problems = []
    for path, model in sections(root):
        if not (model.__doc__ or "").strip() and path:
            problems.append(f"{path}: model {model.__name__} has no docstring")
        for name, field in model.model_fields.items():
            key = f"{path}.{name}" if path else name
            if not field.description:
                problems.append(f"{key}: no description=")
            if not field.examples and not _models_in(field.annotation):
                problems.append(f"{key}: no examples=")
    return problems


def example(model: type[BaseModel] = Manifest) -> dict[str, Any]:
    """A manifest using every key, each with its first example value."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if field.examples:
            out[name] = field.examples[0]
            continue
        subs = _models_in(field.annotation)
        if subs:
            out[name] = _example_of(field.annotation, subs[0])
    return out


# --- rendering ---------------------------------------------------------------------------------


def _anchor(path: str) -> str:
    return "top-level-keys" if not path else re.sub(r"[^a-z0-9_-]", "", path.lower())


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip() or "-"


def _code(text: str) -> str:
    return f"`{text}`"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _bounds(schema: dict[str, Any]) -> str:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    parts = []
    if low is not None:
        parts.append(("> " if "exclusiveMinimum" in schema else "≥ ") + _number(low))
    if high is not None:
        parts.append(("< " if "exclusiveMaximum" in schema else "≤ ") + _number(high))
    return f" ({', '.join(parts)})" if parts else ""


def render_type(schema: dict[str, Any], defs: dict[str, Any], paths: dict[str, str]) -> str:
    """A JSON Schema fragment as words: `integer (≥ 1)`, `list of programs[]`, ..."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        path = paths.get(name, name)
        return f"mapping, see [`{path}`](#{_anchor(path)})"
    if "anyOf" in schema:
        parts = [s for s in schema["anyOf"] if s.get("type") != "null"]
        return " or ".join(render_type(s, defs, paths) for s in parts)
    if "const" in schema:
        return _code(json.dumps(schema["const"]))
    if "enum" in schema:
        return "one of " + ", ".join(_code(json.dumps(v)) for v in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items", {})
        least = f" (at least {schema['minItems']})" if schema.get("minItems") else ""
        if "$ref" in items:
            path = paths.get(items["$ref"].rsplit("/", 1)[-1], "")
            return f"list of mappings{least}, see [`{path}`](#{_anchor(path)})"
        return f"list{least} of {render_type(items, defs, paths)}"
    if kind == "object":
        values = schema.get("additionalProperties")
        if not isinstance(values, dict) and schema.get("patternProperties"):
            values = next(iter(schema["patternProperties"].values()))  # keys that are names
        if isinstance(values, dict):
            return f"mapping of string to {render_type(values, defs, paths)}"
        return "mapping"
    if kind == "string":
        rules = []
        if "minLength" in schema or "maxLength" in schema:
            rules.append(f"{schema.get('minLength', 0)}–{schema.get('maxLength', '∞')} characters")
        if "pattern" in schema:
            rules.append(f"matching `{schema['pattern']}`")
        return "string" + (f" ({', '.join(rules)})" if rules else "")
    if kind in ("integer", "number", "boolean"):
        return kind + _bounds(schema)
    return json.dumps(schema)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        value = value.model_dump()
    return _code(json.dumps(value))


def _yaml(key: str, value: Any) -> str:
    text = yaml.safe_dump({key: value}, default_flow_style=True, width=10**6, sort_keys=False)
    return text.strip()[1:-1].strip()  # drop the outer braces of the flow mapping


def build_schema() -> dict[str, Any]:
    schema = Manifest.model_json_schema()
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "bpfcompat manifest",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def render() -> str:
    """The whole of docs/manifest.md."""
    problems = undocumented()
    if problems:
        raise SystemExit("undocumented manifest keys:\n  " + "\n  ".join(problems))
    schema = Manifest.model_json_schema()
    defs = schema.get("$defs", {})
    found = sections()
    paths = {model.__name__: path for path, model in reversed(found) if path}
    full = yaml.safe_dump(example(), sort_keys=False, width=88, allow_unicode=True)
    out = [
        "# Manifest reference",
        "",
        "<!-- Generated by scripts/gen_manifest_doc.py from the pydantic models in",
        "     src/bpfcompat/matrix/manifest.py; do not edit. tests/test_manifest_doc.py fails",
        "     when this file or docs/manifest.schema.json differs from the models. -->",
        "",
        "A manifest tells the validator what your project's own loader does that a generic "
        "loader cannot guess: which maps it sizes at run time, which program of a group it "
        "loads, which programs must attach, and commands that prove the programs work. "
        "bpfcompat reads `<name>.manifest.yaml` beside `<name>.bpf.o`, else `manifest.yaml` "
        "in the object's directory; `--manifest FILE` applies one manifest to every artifact "
        "given. Unknown keys are errors, and values are never coerced (`required: 1` is an "
        "error, not `true`): a typo fails loudly instead of being ignored.",
        "",
        "The JSON Schema [manifest.schema.json](manifest.schema.json) states the same rules "
        "for editors; with the YAML language server, put "
        "`# yaml-language-server: $schema=<path or URL of manifest.schema.json>` on the "
        "first line of a manifest.",
        "",
        "## Every key at once",
        "",
        "Every key with an example value, to show where each one goes: the values are "
        "independent examples, not one loader's settings, and a manifest usually needs only "
        "a few of the keys.",
        "",
        "```yaml",
        full.rstrip(),
        "```",
    ]
    for path, model in found:
        props = (defs.get(model.__name__) or schema)["properties"]
        title = "Top-level keys" if not path else f"`{path}`"
        out += ["", f"## {title}", ""]
        if path:
            out += [" ".join((model.__doc__ or "").split()), ""]
        out += ["| Key | Type | Default | Meaning | Example |", "|---|---|---|---|---|"]
        for name, field in model.model_fields.items():
            key = f"{path}.{name}" if path else name
            kind = render_type(props[name], defs, paths)
            ex = _code(_yaml(name, field.examples[0])) if field.examples else "see below"
            out.append(
                f"| `{key}` | {_cell(kind)} | {_cell(_default(field))} | "
                f"{_cell(field.description or '')} | {_cell(ex)} |"
            )
    return "\n".join(out) + "\n"


def render_schema() -> str:
    return json.dumps(build_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    files = {DOC: render(), SCHEMA: render_schema()}
    if "--check" in argv:
        stale = [p for p, text in files.items() if not p.is_file() or p.read_text() != text]
        for path in stale:
            print(f"{path} is stale: run scripts/gen_manifest_doc.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
