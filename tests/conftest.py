from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from beamctl.cli import main

FIXTURES = Path(__file__).parent / "config" / "fixtures"


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own beamctl cache; nothing is read from or written to ~/.cache."""
    monkeypatch.setenv("BEAMCTL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def _private_client_config(tmp_path_factory, monkeypatch):
    """Each test gets its own host inventory and deploy record (hosts/placed.py): none from ~/.config."""
    monkeypatch.setenv("BEAMCTL_HOSTS_FILE", str(tmp_path_factory.mktemp("config") / "hosts.yaml"))


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run beamctl in-process: cli(*args, cwd=DIR) -> Result(code, stdout, stderr)."""

    def run(*args: str, cwd: Path | None = None) -> Result:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def schema_link(yaml_file: Path) -> Path:
    """Where an editor looks for yaml_file's schema: its yaml-language-server modeline's $schema,
    resolved the way yaml-language-server does (a relative path is relative to the YAML file)."""
    import re

    for line in yaml_file.read_text(encoding="utf-8").splitlines():
        m = re.match(r"#\s*yaml-language-server\s*:.*\$schema[=:]\s*(\S+)", line)
        if m:
            assert "://" not in m.group(1), f"{yaml_file}: {m.group(1)} is an address, not a file here"
            return (yaml_file.parent / m.group(1)).resolve()
    raise AssertionError(f"{yaml_file} has no yaml-language-server modeline")


@pytest.fixture(scope="module")
def browser():
    """Headless chromium through chromium-driver (tests/browser.py), one per module."""
    from tests import browser as chromium

    driver = chromium.start()
    yield driver
    driver.quit()
