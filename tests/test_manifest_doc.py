"""docs/manifest.md and docs/manifest.schema.json are generated from the manifest models:
committed files equal to the generator's output, every key described with an example, and
the schema agreeing with the models on real and broken manifests."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel, Field

from bpfcompat.errors import ConfigError
from bpfcompat.matrix.config import load_manifest
from bpfcompat.matrix.manifest import Manifest
from conftest import EXAMPLES, ROOT


def _gen() -> Any:
    spec = importlib.util.spec_from_file_location(
        "gen_manifest_doc", ROOT / "scripts" / "gen_manifest_doc.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _gen()
SCHEMA = json.loads((ROOT / "docs" / "manifest.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def test_committed_docs_are_generated_from_the_models() -> None:
    assert (ROOT / "docs" / "manifest.md").read_text() == GEN.render(), (
        "docs/manifest.md is stale: run .venv/bin/python scripts/gen_manifest_doc.py"
    )
    assert (ROOT / "docs" / "manifest.schema.json").read_text() == GEN.render_schema(), (
        "docs/manifest.schema.json is stale: run .venv/bin/python scripts/gen_manifest_doc.py"
    )
    assert GEN.main(["--check"]) == 0


def test_every_key_of_every_model_is_documented() -> None:
    assert GEN.undocumented() == [], (
        "give these keys Field(description=..., examples=[...]) in matrix/config.py"
    )
    doc = GEN.render()
    for path, model in GEN.sections():
        for name, field in model.model_fields.items():
            key = f"{path}.{name}" if path else name
            assert f"| `{key}` |" in doc, key
            assert field.description and " ".join(field.description.split()) in doc, key


def test_the_walk_follows_whatever_the_models_hold() -> None:
    """A key added to a nested model (as the lead is adding to maps and programs) is found,
    and one without a description or example is reported, not silently left out."""

    class Inner(BaseModel):
        """A nested model."""

        value_size: int = Field(0, description="Bytes per value.", examples=[8])
        undocumented_key: int = 0

    class Outer(BaseModel):
        items: list[Inner] = Field(default_factory=list, description="Some items.")
        single: Inner | None = Field(None, description="One item.")
        by_name: dict[str, Inner] = Field(default_factory=dict, description="Named items.")

    paths = [(p, m.__name__) for p, m in GEN.sections(Outer)]
    assert paths == [("", "Outer"), ("items[]", "Inner"), ("single", "Inner"),
                     ("by_name.<key>", "Inner")]  # fmt: skip
    assert GEN.undocumented(Outer) == [
        f"{path}.undocumented_key: {what}"
        for path in ("items[]", "single", "by_name.<key>")
        for what in ("no description=", "no examples=")
    ]
    assert GEN.example(Outer) == {
        "items": [{"value_size": 8}],
        "single": {"value_size": 8},
        "by_name": {"<key>": {"value_size": 8}},
    }


def test_the_full_example_is_a_valid_manifest(tmp_path: Path) -> None:
    example = GEN.example()
    VALIDATOR.validate(example)
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(example, sort_keys=False))
    manifest = load_manifest(path)
    assert set(manifest.model_fields_set) == set(Manifest.model_fields)


def test_every_field_example_is_accepted_by_model_and_schema() -> None:
    for path, model in GEN.sections():
        base = GEN.example(model)
        for name, field in model.model_fields.items():
            for value in field.examples or []:
                candidate = {**base, name: value}
                model.model_validate(candidate)
                sub = SCHEMA if not path else SCHEMA["$defs"][model.__name__]
                jsonschema.Draft202012Validator({**sub, "$defs": SCHEMA["$defs"]}).validate(
                    candidate
                )


def _example_manifests() -> list[Path]:
    return sorted(EXAMPLES.glob("*/manifest.yaml")) + sorted(EXAMPLES.glob("*/*.manifest.yaml"))


@pytest.mark.parametrize("path", _example_manifests(), ids=lambda p: p.parent.name)
def test_schema_accepts_the_example_manifests(path: Path) -> None:
    load_manifest(path)
    VALIDATOR.validate(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize(
    "text",
    [
        "mpas: []",  # unknown key
        "maps: [{name: a=b, max_entries: 4}]",  # separator in a name
        "maps: [{name: m, max_entries: 0}]",
        "maps: [{name: m, max_entries: many}]",
        "maps: [{name: m, max_entries: true}]",  # never coerced
        "programs: [{name: p, attach: {required: 1}}]",
        "programs: [{name: p, attach: {requird: true}}]",
        "program_variants: [{group: g, programs: []}]",
        "functional_tests: [{name: t, command: echo, timeout: 5 parsecs}]",
        "functional_tests: [{name: t, command: echo, timeout: 601}]",
        "functional_tests: [{name: t, command: echo, expect_exit_code: 256}]",
        "functional_tests: [{name: t}]",  # command is required
        "retries: 6",
        "metadata: {owner: 3}",
    ],
)
def test_schema_and_models_refuse_the_same_broken_manifests(tmp_path: Path, text: str) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError):
        load_manifest(path)
    assert not VALIDATOR.is_valid(yaml.safe_load(text)), text


def test_rules_only_the_models_check_are_written_in_the_meaning(tmp_path: Path) -> None:
    """Cross-field and arithmetic rules the schema cannot state are in the descriptions."""
    doc = GEN.render()
    assert "At least one of max_entries, inner_ringbuf_bytes, value_size and key_size" in doc
    assert "a power of two" in doc
    for text in ("maps: [{name: m}]", "maps: [{name: m, inner_ringbuf_bytes: 12288}]"):
        path = tmp_path / "manifest.yaml"
        path.write_text(text + "\n")
        with pytest.raises(ConfigError):
            load_manifest(path)
