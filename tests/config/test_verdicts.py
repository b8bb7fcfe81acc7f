from __future__ import annotations

import sys

from beamctl.config import schema, verdicts
from beamctl.config.parse import parse


def _doc(text: str):
    doc, problems = parse(text.encode(), "beam.yaml")
    assert problems == []
    return doc


def test_a_valid_document_is_remembered_and_an_invalid_one_is_not():
    good, bad = _doc("name: a\nhandler: m:f\n"), _doc("name: a\nhandler: m:f\ncpu: 0\n")
    assert schema.check(good) == [] and verdicts.known_valid(schema._verdict_key(good.data))
    assert len(schema.check(bad)) == 1 and not verdicts.known_valid(schema._verdict_key(bad.data))
    assert len(schema.check(bad)) == 1  # still checked every time


def test_key_depends_on_every_value():
    a = schema._verdict_key({"name": "a", "cpu": 1})
    assert a != schema._verdict_key({"name": "a", "cpu": 2})
    assert a != schema._verdict_key({"name": "a", "cpu": "1"})
    assert a == schema._verdict_key({"cpu": 1, "name": "a"})


def test_values_json_cannot_name_are_never_cached():
    import datetime

    assert schema._verdict_key({"name": datetime.date(2024, 1, 1)}) is None
    assert schema._verdict_key({"cpu": float("nan")}) is None


def test_a_remembered_document_skips_jsonschema(tmp_path):
    import subprocess

    (tmp_path / "m.py").write_text("def f(): pass\n")
    (tmp_path / "beam.yaml").write_text("name: a\nhandler: m:f\n")
    probe = ("import sys; from beamctl.cli import main; main(['validate']); "
             "print('jsonschema' in sys.modules)")
    import os

    env_cache = dict(os.environ, BEAMCTL_CACHE_DIR=str(tmp_path / "cache"))
    first = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                           env=env_cache)
    second = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                            env=env_cache)
    assert (first.stdout, second.stdout) == ("True\n", "False\n")


def test_an_entry_is_compared_in_full_not_by_its_name():
    key = schema._verdict_key({"name": "a", "handler": "m:f"})
    verdicts.remember_valid(key)
    entry = verdicts._entry(key)
    entry.write_text(key.replace('"a"', '"b"'))  # as if another document had the same checksum
    assert not verdicts.known_valid(key)
