"""How schema errors inside anyOf/oneOf become problems: the deepest failing part, at its place.

beam.yaml's own schema has one such field (gpu: a string or a list); these schemas have the other
shapes (string-or-mapping, a list of string-or-mapping) so that a future field of that shape is
reported the same way.
"""

from __future__ import annotations

from jsonschema import Draft202012Validator

from beamctl.config.parse import parse
from beamctl.config.schema import explain_all

SCHEMA = {
    "type": "object",
    "properties": {
        "build": {"oneOf": [
            {"type": "string"},
            {"type": "object", "additionalProperties": False, "properties": {
                "context": {"type": "string"},
                "args": {"type": "array", "items": {"type": "string"}}}},
        ]},
        "mounts": {"anyOf": [
            {"type": "string"},
            {"type": "array", "items": {"anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "object", "required": ["path"], "properties": {"path": {"type": "string"}}},
            ]}},
        ]},
        "pick": {"oneOf": [
            {"type": "object", "required": ["a", "b"]},
            {"type": "object", "required": ["c"]},
        ]},
    },
}


def _lines(text: str) -> list[str]:
    doc, problems = parse(text.encode(), "f.yaml")
    assert problems == []
    return [p.render() for p in sorted(explain_all(doc, Draft202012Validator(SCHEMA)))]


def test_a_mapping_of_an_allowed_kind_is_reported_at_its_wrong_parts():
    assert _lines("build:\n  context: 3\n  args: [a, 4]\n  extra: 1\n") == [
        "f.yaml:2:12: build.context: expected a string, got the number 3",
        "f.yaml:3:13: build.args[1]: expected a string, got the number 4",
        "f.yaml:4:3: build.extra: unknown key 'extra'; allowed here: context, args",
    ]


def test_alternatives_inside_alternatives_are_followed_down_to_the_item():
    assert _lines('mounts:\n  - ok\n  - path: 3\n  - {}\n  - ""\n  - 5\n') == [
        "f.yaml:3:11: mounts[1].path: expected a string, got the number 3",
        "f.yaml:4:5: mounts[2]: missing required key 'path'",
        "f.yaml:5:5: mounts[3]: must not be empty",
        "f.yaml:6:5: mounts[4]: expected a string or a mapping (key: value), got the number 5",
    ]


def test_a_value_of_no_allowed_kind_names_the_kinds():
    assert _lines("build: 5\nmounts: {path: /x}\n") == [
        "f.yaml:1:8: build: expected a string or a mapping (key: value), got the number 5",
        "f.yaml:2:9: mounts: expected a string or a list, got a mapping",
    ]


def test_of_several_branches_of_its_kind_the_closest_one_is_reported():
    assert _lines("pick: {}\n") == ["f.yaml:1:7: pick: missing required key 'c'"]
