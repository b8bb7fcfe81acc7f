"""Every bad fixture is rejected with exactly the lines in its .expected file, exit code 2."""

from __future__ import annotations

import json

import pytest

from tests.conftest import FIXTURES

BAD = FIXTURES / "bad"
CASES = sorted(p.stem for p in BAD.glob("*.yaml"))


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", CASES)
def test_bad_file_is_rejected_with_its_lines(cli, name):
    result = cli("validate", "-f", f"{name}.yaml", cwd=BAD)
    assert result.code == 2
    assert result.out == ""
    assert result.err == (BAD / f"{name}.expected").read_text()


@pytest.mark.parametrize("name", CASES)
def test_bad_file_json_names_every_error(cli, name):
    result = cli("validate", "-f", f"{name}.yaml", "--json", cwd=BAD)
    report = json.loads(result.out)
    assert result.code == 2 and report["ok"] is False
    expected = [l for l in (BAD / f"{name}.expected").read_text().splitlines()
                if ": warning: " not in l and not l.endswith(("error", "errors")) and "error, " not in l
                and "errors, " not in l]
    rendered = [f"{e['file']}:{e['line']}:{e['column']}: {e['path']}: {e['message']}" for e in report["errors"]]
    assert rendered == expected
    assert set(report) == {"ok", "errors", "warnings"}


def test_problems_are_sorted_by_line(cli):
    result = cli("validate", "-f", "many_problems_sorted.yaml", "--json", cwd=BAD)
    lines = [(e["line"], e["column"]) for e in json.loads(result.out)["errors"]]
    assert lines == sorted(lines) and len(lines) == 6


def _alternatives(schema, path=()):
    """(field, ...) of every property whose value may take one of several forms (anyOf / oneOf)."""
    for key, prop in schema.get("properties", {}).items():
        if "anyOf" in prop or "oneOf" in prop:
            yield path + (key,)
        yield from _alternatives(prop, path + (key,))
        yield from _alternatives(prop.get("items", {}), path + (key,))


def test_every_field_of_several_forms_has_corpus_cases_for_a_wrong_kind_and_a_wrong_part():
    from beamctl.config.problems import format_path
    from beamctl.config.schema import load_schema

    expected = "".join(p.read_text() for p in BAD.glob("*.expected"))
    fields = [format_path(path) for path in _alternatives(load_schema())]
    assert "gpu" in fields
    for field in fields:
        assert f": {field}: expected " in expected, f"no corpus case gives {field} a value of the wrong kind"
        assert f": {field}[" in expected or f": {field}." in expected, f"no corpus case breaks a part of {field}"
