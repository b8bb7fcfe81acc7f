"""The test-host image's recipe hash follows the CRIU prefix it copies (a new CRIU means new hosts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fleet import hosts


def test_recipe_hash_changes_with_the_criu_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = tmp_path / "criu"
    (prefix / "usr/sbin").mkdir(parents=True)
    (prefix / "usr/sbin/criu").write_bytes(b"criu 4.1.1")
    (prefix / "PACKAGES").write_text("criu\nlibc6\n")
    monkeypatch.setattr(hosts, "CRIU_PREFIX", prefix)
    old = hosts.recipe_hash()
    assert hosts.recipe_hash() == old
    (prefix / "usr/sbin/criu").write_bytes(b"criu 4.2.1")  # install-criu.sh's upgrade replaces the binary
    new = hosts.recipe_hash()
    assert new != old
    (prefix / "PACKAGES").write_text("criu\nlibc6\nlibnet9\n")
    assert hosts.recipe_hash() not in (old, new)
