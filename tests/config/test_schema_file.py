from __future__ import annotations

from pathlib import Path

import jsonschema

from beamctl.config.schema import SCHEMA_PATH, load_schema

REPO = Path(__file__).resolve().parents[2]


def _objects(schema, where="$"):
    """Every (place, schema) pair that declares properties."""
    if isinstance(schema, dict):
        if "properties" in schema:
            yield where, schema
        for key, value in schema.items():
            yield from _objects(value, f"{where}.{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            yield from _objects(value, f"{where}[{i}]")


def test_schema_is_valid_draft_2020_12():
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_every_property_has_a_description_and_unknown_keys_are_rejected():
    found = list(_objects(load_schema()))
    assert len(found) >= 3  # top level, image, volume items
    for where, obj in found:
        assert obj.get("additionalProperties") is False, where
        for key, prop in obj["properties"].items():
            assert prop.get("description"), f"{where}.{key} has no description"


def test_the_package_ships_the_same_schema_as_schemas_dir():
    assert SCHEMA_PATH.read_bytes() == (REPO / "schemas" / "beam.schema.json").read_bytes()


def test_schema_command_prints_it(cli):
    result = cli("schema")
    assert result.code == 0 and result.out == (REPO / "schemas" / "beam.schema.json").read_text()


def test_readme_reference_is_the_generated_one(cli):
    result = cli("schema", "--markdown")
    assert result.code == 0
    assert result.out in (REPO / "README.md").read_text(), "run: beamctl schema --markdown, paste into README"
