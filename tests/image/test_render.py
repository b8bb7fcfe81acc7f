"""Rendered Dockerfiles, compared as whole strings with tests/image/golden/."""

from __future__ import annotations

from pathlib import Path

import pytest

from beamctl.config import load
from beamctl.image.render import render
from tests.conftest import FIXTURES

GOLDEN = Path(__file__).parent / "golden"
CASES = [
    ("minimal", "beamctl/base:bookworm-python3.11", "python3", False),
    ("full", "python:3.12-slim", "/usr/local/bin/python3", True),
    ("gpu_list_and_requirements", "beamctl/base:bookworm-python3.11", "python3", True),
]


@pytest.mark.parametrize("name, base, exe, packages", CASES)
def test_dockerfile_matches_golden(name, base, exe, packages):
    config, _ = load(FIXTURES / "good" / f"{name}.yaml")
    assert render(config, base, exe, packages) == (GOLDEN / f"{name}.Dockerfile").read_text()


def test_layers_go_from_rarely_to_often_changed():
    config, _ = load(FIXTURES / "good" / "full.yaml")
    lines = render(config, "b", "python3", True).splitlines()
    order = [next(i for i, l in enumerate(lines) if l.startswith(p)) for p in
             ("FROM", "RUN apt-get", "COPY site/", "RUN echo", "COPY runtime/", "COPY app/")]
    assert order == sorted(order)
    assert lines[-1] == "COPY app/ /app/"  # a code change rebuilds only the last layer


def test_system_package_names_are_quoted():
    config, _ = load(FIXTURES / "good" / "full.yaml")
    text = render(config, "b", "python3", False)
    assert "--no-install-recommends ffmpeg libgl1 &&" in text and "COPY site/" not in text
