from __future__ import annotations

from pathlib import Path

import jsonschema

from beamctl.config.schema import SCHEMA_PATH, load_schema
from tests.conftest import schema_link

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


def test_every_modeline_in_the_repository_resolves_to_the_schema():
    linked = sorted(p for pattern in ("*.yaml", "*.yml") for p in REPO.rglob(pattern)
                    if ".git" not in p.parts and "yaml-language-server" in p.read_text(errors="replace"))
    names = [str(p.relative_to(REPO)) for p in linked]
    assert {"beam.yaml", "examples/hello/beam.yaml"} <= set(names)
    assert set(names) >= {str(p.relative_to(REPO)) for p in REPO.glob("examples/**/beam.yaml")}
    for path in linked:
        target = schema_link(path)
        assert target.is_file(), f"{path.relative_to(REPO)}: {target} does not exist"
        assert target.read_bytes() == SCHEMA_PATH.read_bytes(), path


def test_schema_write_puts_it_where_init_points(cli, tmp_path):
    result = cli("schema", "--write", cwd=tmp_path)
    assert (result.code, result.out, result.err) == (0, "", "created .beamctl/beam.schema.json\n")
    assert (tmp_path / ".beamctl" / "beam.schema.json").read_bytes() == cli("schema").out.encode()
    again = cli("schema", "--write", cwd=tmp_path)
    assert (again.code, again.err) == (0, ".beamctl/beam.schema.json is up to date\n")


def test_schema_write_refreshes_a_folder_s_copy_or_writes_a_file(cli, tmp_path):
    (tmp_path / ".beamctl").mkdir()
    (tmp_path / ".beamctl" / "beam.schema.json").write_text("{}")
    result = cli("schema", "--write", str(tmp_path))
    assert (result.code, result.err) == (
        0, f"refreshed {tmp_path / '.beamctl' / 'beam.schema.json'} (it differed from this beamctl's schema)\n")
    assert (tmp_path / ".beamctl" / "beam.schema.json").read_bytes() == SCHEMA_PATH.read_bytes()
    result = cli("schema", "--write", str(tmp_path / "editor" / "beam.json"))
    assert (result.code, result.err) == (0, f"created {tmp_path / 'editor' / 'beam.json'}\n")
    assert (tmp_path / "editor" / "beam.json").read_bytes() == SCHEMA_PATH.read_bytes()


def test_schema_path_without_write_is_refused(cli, tmp_path):
    result = cli("schema", str(tmp_path))
    assert (result.code, result.out) == (2, "")
    assert result.err == (f"error: {tmp_path}: a PATH is only taken with --write\n"
                          "hint: beamctl schema --write PATH\n")
    result = cli("schema", "--write", "--markdown", cwd=tmp_path)
    assert (result.code, result.err) == (
        2, "error: --write writes the JSON Schema; --markdown prints the reference: pick one\n")
    assert list(tmp_path.iterdir()) == []


def test_schema_write_names_a_place_it_cannot_write(cli, tmp_path):
    (tmp_path / "file").write_text("x")
    result = cli("schema", "--write", str(tmp_path / "file" / "beam.schema.json"))
    assert result.code == 2
    assert result.err == (f"error: cannot write {tmp_path / 'file' / 'beam.schema.json'}: "
                          f"{tmp_path / 'file'} is a file, not a folder\n")
