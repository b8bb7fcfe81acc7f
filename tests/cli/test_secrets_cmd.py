"""`beamctl secrets set|ls|rm`: values from stdin, never argv or output; the file stays 0600 and keeps what the
user wrote by hand; deploy reads what `set` wrote (beamctl/secrets.py gather)."""

from __future__ import annotations

import io
import json
import os
import stat
import sys

import pytest

from beamctl import secrets


@pytest.fixture
def file(tmp_path, monkeypatch):
    path = tmp_path / "cfg" / "secrets.env"
    monkeypatch.setenv("BEAMCTL_SECRETS_FILE", str(path))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return path


def piped(monkeypatch, text):
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


def test_set_ls_rm_round_trip_and_the_value_is_never_shown(cli, file, monkeypatch):
    piped(monkeypatch, "hf_s3cr3t\n")
    r = cli("secrets", "set", "HF_TOKEN")
    assert r.code == 0 and "hf_s3cr3t" not in r.out + r.err and "(9 characters)" in r.err
    assert file.read_text() == "HF_TOKEN=hf_s3cr3t\n"
    assert stat.S_IMODE(file.stat().st_mode) == 0o600 and stat.S_IMODE(file.parent.stat().st_mode) == 0o700
    assert secrets.gather(("HF_TOKEN",)) == {"HF_TOKEN": "hf_s3cr3t"}  # what deploy hands the agent

    file.write_text("# mine\nDB_URL=postgres://x\n" + file.read_text())
    piped(monkeypatch, "new")
    assert cli("secrets", "set", "HF_TOKEN").code == 0
    assert file.read_text() == "# mine\nDB_URL=postgres://x\nHF_TOKEN=new\n"  # replaced; the rest kept

    monkeypatch.setenv("DB_URL", "from-env")
    listed = cli("secrets", "ls")
    assert listed.out.splitlines() == ["DB_URL  (the environment's value wins)", "HF_TOKEN"]
    assert "postgres" not in listed.out + listed.err
    assert json.loads(cli("secrets", "ls", "--json").out)["secrets"] == [
        {"name": "DB_URL", "environment_wins": True}, {"name": "HF_TOKEN", "environment_wins": False}]

    assert cli("secrets", "rm", "HF_TOKEN").err.startswith("removed HF_TOKEN")
    again = cli("secrets", "rm", "HF_TOKEN")
    assert again.code == 0 and again.err.startswith("no secret HF_TOKEN")
    assert file.read_text() == "# mine\nDB_URL=postgres://x\n"


@pytest.mark.parametrize("name, text, error", [
    ("9LIVES", "x", "'9LIVES' is not a secret name"),
    ("A", "", "the value of A is empty"),
    ("A", "two\nlines\n", "the value of A holds a line break or NUL: one line only"),
])
def test_bad_names_and_values_are_refused_and_nothing_is_written(cli, file, monkeypatch, name, text, error):
    piped(monkeypatch, text)
    r = cli("secrets", "set", name)
    assert r.code == 2 and f"error: {error}" in r.err
    assert not file.exists()


def test_a_file_others_can_read_is_refused_not_rewritten(cli, file, monkeypatch):
    file.parent.mkdir()
    file.write_text("A=1\n")
    os.chmod(file, 0o644)
    piped(monkeypatch, "2")
    r = cli("secrets", "set", "A")
    assert r.code == 2 and "can be read by other users" in r.err and "chmod 600" in r.err
    assert file.read_text() == "A=1\n"
