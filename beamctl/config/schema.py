"""Stage 2 of the config pipeline: check the data against schemas/beam.schema.json.

The schema is the single source of truth; this module only turns jsonschema's errors
into one-line messages that name the place and the fix.
"""

from __future__ import annotations

import difflib
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from beamctl.config import verdicts
from beamctl.config.parse import Document
from beamctl.config.problems import Problem

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "beam.schema.json"

_TYPE_WORDS = {
    "string": "a string", "integer": "a whole number", "number": "a number",
    "boolean": "true or false", "array": "a list", "object": "a mapping (key: value)",
    "null": "nothing",
}

# What an anyOf/oneOf field takes, in words, when the value is of none of its kinds.
_KINDS = {"gpu": "a GPU type, TYPE:COUNT, or a list of them"}

_PATTERN_HINTS = {
    "name": "use lowercase letters, digits and '-', starting with a letter (like my-app)",
    "handler": "write it as module:function, like app:handler",
    "on_start": "write it as module:function, like app:load_model",
    "python_version": "write it like \"3.11\"",
    "volumes.name": "use lowercase letters, digits, '-' and '_'",
    "secrets": "a secret's name is an environment variable name: letters, digits and '_'",
    "env": "an environment variable name is letters, digits and '_', not starting with a digit",
    "system_packages": "a Debian package name (lowercase), optionally =VERSION",
    "url": "write the scheme and host (and port) only, like https://api.example.com or http://10.0.0.2:8080",
}


@cache
def _schema_bytes() -> bytes:
    return SCHEMA_PATH.read_bytes()


@cache
def load_schema() -> dict[str, Any]:
    return json.loads(_schema_bytes())


@cache
def field_of(*path: str) -> dict[str, Any]:
    """One field's schema, e.g. field_of("rollout", "health_timeout")["default"] -> 300: the one source of
    defaults and bounds (config/model.py builds from it; the agent and the CLI read what they need)."""
    node = load_schema()
    for key in path:
        node = node["properties"][key]
    return node


RULES = "patterns-end-at-Z"  # in the verdict key: how this code reads the schema (a change re-checks all)


def _validator() -> Any:
    from jsonschema import Draft202012Validator  # ~90 ms to import: only when validating

    return Draft202012Validator(_anchored(load_schema()))


def _anchored(node: Any) -> Any:
    """The schema with each pattern's final `$` as `\\Z`: Python's `$` also matches before a final newline
    (ECMA's, which editors use, does not), so `name: "x\\n"` would pass here and fail later."""
    if isinstance(node, dict):
        return {k: (v[:-1] + "\\Z" if k == "pattern" and isinstance(v, str) and v.endswith("$")
                    and not v.endswith("\\$") else _anchored(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_anchored(x) for x in node]
    return node


def check(doc: Document) -> list[Problem]:
    """Every schema problem of the document. A document seen valid before is not checked again."""
    key = _verdict_key(doc.data)
    if key is not None and verdicts.known_valid(key):
        return []
    problems = explain_all(doc, _validator())
    if not problems and key is not None:
        verdicts.remember_valid(key)
    return problems


def explain_all(doc: Document, validator: Any) -> list[Problem]:
    """Every problem a jsonschema validator finds in the document, each at its own place."""
    problems = [p for error in validator.iter_errors(doc.data) for p in _explain(doc, error)]
    return list(dict.fromkeys(problems))  # `required` repeats itself once per missing key


def _verdict_key(data: Any) -> str | None:
    """The schema's fingerprint and the data as canonical JSON; None when JSON cannot name the data exactly."""
    import zlib  # not hashlib: loading OpenSSL's hashes costs ~20 ms; verdicts compares whole keys

    def refuse(value: Any) -> Any:
        raise TypeError(type(value).__name__)

    try:
        text = json.dumps(data, sort_keys=True, default=refuse, allow_nan=False)
    except (TypeError, ValueError):
        return None  # dates, NaN, ...: never cached
    schema = _schema_bytes()
    return f"schema {zlib.crc32(schema):08x} {len(schema)} {RULES}\n{text}"


def _explain(doc: Document, error: Any) -> list[Problem]:
    path = tuple(error.absolute_path)
    kw, want, got = error.validator, error.validator_value, error.instance
    if kw == "additionalProperties":
        return [_unknown_key(doc, path, key, error.schema) for key in _extra_keys(got, error.schema)]
    if kw == "required":
        missing = [k for k in want if k not in got]
        return [doc.problem(path, f"missing required key '{k}'") for k in missing]
    if "propertyNames" in error.schema_path:  # a bad key: point at the key itself
        return [doc.problem(path + (got,), f"{_shown(got)} is not a valid name: {_PATTERN_HINTS['env']}", key=True)]
    if kw in ("anyOf", "oneOf") and error.context:
        inner = _errors_of_its_kind(error)
        if inner:  # a kind allowed here, wrong inside: report each part that fails, at its own place
            return [p for e in inner for p in _explain(doc, e)]
    if kw == "type" and len(path) == 2 and path[0] == "gpu" and isinstance(path[1], int):
        return [doc.problem(path, _gpu_item_message(doc.source.get(path), got))]
    if kw == "type" and path[-1:] == ("python_version",) and _is_number(got):
        written = doc.source.get(path, str(got))
        return [doc.problem(path, f"must be a string: write it in quotes, \"{written}\" (unquoted, YAML "
                                  f"reads {written} as the number {got!r})")]
    return [doc.problem(path, _message(path, kw, want, got))]


def _errors_of_its_kind(error: Any) -> list[Any]:
    """The errors of the anyOf/oneOf branch whose `type` the value has; the branch with the fewest
    errors when several have it; [] when none does (the value is of a kind not allowed here)."""
    from jsonschema import Draft202012Validator

    def fits(branch: dict[str, Any]) -> bool:
        return any(Draft202012Validator.TYPE_CHECKER.is_type(error.instance, k) for k in _types(branch))

    by_branch: dict[int, list[Any]] = {}
    for e in error.context:
        by_branch.setdefault(e.relative_schema_path[0], []).append(e)
    fitting = [errs for i, errs in sorted(by_branch.items()) if fits(error.validator_value[i])]
    return min(fitting, key=len, default=[])


def _types(branch: dict[str, Any]) -> list[str]:
    kinds = branch.get("type", [])
    return [kinds] if isinstance(kinds, str) else kinds


def _gpu_item_message(written: str | None, got: Any) -> str:
    """One entry of a gpu list that is not a string: `- 42`, `- 4090` (a number to YAML), `- [H100]`."""
    from beamctl.config.gpu import canonical_name

    forms = "write a type like H100 or A10G, or TYPE:COUNT like H100:2"
    if not _is_number(got):
        return f"{_describe(got)} is not a GPU type ({forms})"
    written = written or str(got)
    name = canonical_name(written)
    return f"{written} is not a GPU type ({f'YAML reads it as a number: write {name}' if name else forms})"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _message(path: tuple, kw: str, want: Any, got: Any) -> str:
    field = next((p for p in reversed(path) if isinstance(p, str)), "")
    if kw == "type":
        return _type_message(field, want, got)
    if kw in ("anyOf", "oneOf"):
        return f"expected {_KINDS.get(field) or _kinds(want)}, got {_describe(got)}"
    if kw == "pattern":
        return _pattern_message(path, field, got)
    if kw in ("minimum", "exclusiveMinimum", "maximum"):
        bound = {"minimum": "at least", "exclusiveMinimum": "more than", "maximum": "at most"}[kw]
        return f"must be {bound} {want}, got {got}"
    if kw == "minItems":
        return "must list at least one item (or leave the key out)"
    if kw == "minLength":
        return "must not be empty"
    if kw == "uniqueItems":
        seen: list[Any] = []
        dup = next((x for x in got if x in seen or seen.append(x)), None)
        return f"lists {_describe(dup)} more than once"
    return f"{_describe(got)}: does not fit the schema ({kw})"


def _kinds(branches: list[dict[str, Any]]) -> str:
    """The kinds an anyOf/oneOf allows, from its branches' types: "a string or a list"."""
    kinds = [k for branch in branches for k in _types(branch)]
    return " or ".join(_TYPE_WORDS.get(k, k) for k in dict.fromkeys(kinds)) or "another form"


def _type_message(field: str, want: Any, got: Any) -> str:
    wants = " or ".join(_TYPE_WORDS.get(w, w) for w in ([want] if isinstance(want, str) else want))
    hint = ""
    if isinstance(got, str) and want in ("integer", "number", "boolean") and _reads_as(got, want):
        hint = " (remove the quotes)"
    elif field == "health_timeout" and isinstance(got, str):
        m = re.fullmatch(r"\s*(\d+)\s*(s|m|min|h)\s*", got)
        if m:
            seconds = int(m.group(1)) * {"s": 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
            hint = f" (write the seconds as a number: {seconds})"
    return f"expected {wants}, got {_describe(got)}{hint}"


def _reads_as(text: str, want: str) -> bool:
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return {"integer": int, "number": (int, float), "boolean": bool}[want] is type(value) or (
        want == "number" and _is_number(value))


def _pattern_message(path: tuple, field: str, got: str) -> str:
    if field == "memory":
        m = re.fullmatch(r"\s*([1-9]\d*)\s*([KMGT])(i?B|i)?\s*", got, re.I)  # 8GB, 8g, 8 GiB
        if m:
            return (f"{_shown(got)} is not a memory size: write {m.group(1)}{m.group(2).upper()}i "
                    "(binary units: Ki, Mi, Gi, Ti)")
        return f"{_shown(got)} is not a memory size: write a whole number with Ki, Mi, Gi or Ti, like 512Mi or 8Gi"
    if field == "max_input_size":
        return f"{_shown(got)} is not a size in Ki or Mi: write a whole number with Ki or Mi, like 256Ki or 8Mi"
    if path[:1] == ("volumes",):
        key = f"volumes.{field}"
    else:
        key = path[-2] if isinstance(path[-1], int) else field  # secrets[0] -> "secrets"
    hint = _PATTERN_HINTS.get(key, "see `beamctl schema` for the form it takes")
    return f"{_shown(got)} is not valid here: {hint}"


def _shown(text: str) -> str:
    """A value in a message, quoted; one with a control character (a newline) as Python writes it."""
    return repr(text) if any(ord(c) < 32 or ord(c) == 127 for c in text) else f"'{text}'"


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"the string '{value}'"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} ({value})"


def _extra_keys(instance: dict, schema: dict) -> list[str]:
    props = schema.get("properties", {})
    patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
    return [k for k in instance if k not in props and not any(p.search(k) for p in patterns)]


def _unknown_key(doc: Document, path: tuple, key: str, schema: dict) -> Problem:
    allowed = list(schema.get("properties", {}))
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.62)  # 0.6 offered rollout for colour (0.615)
    if close:
        hint = f"did you mean '{close[0]}'?"
    elif len(allowed) <= 8:
        hint = "allowed here: " + ", ".join(allowed)
    else:
        hint = "see `beamctl schema` for the keys allowed here (x- keys may hold YAML anchors)"
    return doc.problem(path + (key,), f"unknown key '{key}'; {hint}", key=True)
