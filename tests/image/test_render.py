"""Rendered Dockerfiles, compared as whole strings with tests/image/golden/."""

from __future__ import annotations

from pathlib import Path

import pytest

from beamctl.config import load
from beamctl.image.render import render_app, render_deps
from tests.conftest import FIXTURES

GOLDEN = Path(__file__).parent / "golden"
DEPS_REF = "beamctl/deps:0123456789abcdef"
CASES = [
    ("minimal", "beamctl/base:bookworm-python3.11", "python3", False),
    ("full", "python:3.12-slim", "/usr/local/bin/python3", True),
    ("gpu_list_and_requirements", "beamctl/base:bookworm-python3.11", "python3", True),
]


@pytest.mark.parametrize("name, base, exe, packages", CASES)
def test_dockerfiles_match_golden(name, base, exe, packages):
    config, _ = load(FIXTURES / "good" / f"{name}.yaml")
    assert render_deps(config, base, exe, packages) == (GOLDEN / f"{name}.deps.Dockerfile").read_text()
    assert render_app(config, DEPS_REF, exe) == (GOLDEN / f"{name}.app.Dockerfile").read_text()


def test_layers_go_from_rarely_to_often_changed():
    config, _ = load(FIXTURES / "good" / "full.yaml")
    deps = render_deps(config, "b", "python3", True).splitlines()
    order = [next(i for i, l in enumerate(deps) if l.startswith(p)) for p in
             ("FROM", "RUN apt-get", "COPY site/", "RUN python3 -m compileall", "RUN echo")]
    assert order == sorted(order)
    app = render_app(config, DEPS_REF, "python3").splitlines()
    assert app[1] == f"FROM {DEPS_REF}" and app[3].startswith("COPY runtime/")
    assert app[-1] == "COPY app/ /app/"  # a code change rebuilds only the last layer


def test_system_package_names_are_quoted():
    config, _ = load(FIXTURES / "good" / "full.yaml")
    text = render_deps(config, "b", "python3", False)
    assert "--no-install-recommends ffmpeg libgl1 &&" in text and "COPY site/" not in text
