"""The in-container runtime's check mode, run as the image runs it: python -m beamctl_runtime."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[2] / "beamctl" / "runtime"


@pytest.fixture
def image_like(tmp_path):
    """/opt/beamctl/lib/beamctl_runtime and /app, as in an image."""
    shutil.copytree(RUNTIME, tmp_path / "lib" / "beamctl_runtime")
    (tmp_path / "app").mkdir()
    return tmp_path


def check(root, **env):
    full = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{root / 'lib'}:{root / 'app'}", **env}
    return subprocess.run([sys.executable, "-m", "beamctl_runtime", "check", "--app-dir", str(root / "app")],
                          capture_output=True, text=True, env=full, cwd=root)


def test_finds_both_functions(image_like):
    (image_like / "app" / "app.py").write_text("def handler(**kw): pass\ndef load(): pass\n")
    proc = check(image_like, BEAMCTL_HANDLER="app:handler", BEAMCTL_ON_START="app:load")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("beamctl-runtime: ok: handler app:handler, on_start app:load (imported in ")


@pytest.mark.parametrize("source, env, message", [
    ("def handler(): pass\n", {"BEAMCTL_HANDLER": "app:predict"},
     "beamctl-runtime: handler app:predict: module 'app' has no function 'predict'\n"),
    ("def handler(): pass\n", {"BEAMCTL_HANDLER": "app:handler", "BEAMCTL_ON_START": "app:load"},
     "beamctl-runtime: on_start app:load: module 'app' has no function 'load'\n"),
    ("handler = 3\n", {"BEAMCTL_HANDLER": "app:handler"},
     "beamctl-runtime: handler app:handler: 'handler' is a int, not a function\n"),
    ("", {}, "beamctl-runtime: BEAMCTL_HANDLER is not set; the image was not built by beamctl\n"),
])
def test_names_what_is_missing(image_like, source, env, message):
    (image_like / "app" / "app.py").write_text(source)
    proc = check(image_like, **env)
    assert (proc.returncode, proc.stderr) == (3, message)


def test_missing_dependency_is_reported_with_its_import_error(image_like):
    (image_like / "app" / "app.py").write_text("import numpy_not_installed\ndef handler(): pass\n")
    proc = check(image_like, BEAMCTL_HANDLER="app:handler")
    assert proc.returncode == 3
    first, *trace = proc.stderr.splitlines()
    assert first == ("beamctl-runtime: handler app:handler: importing 'app' failed: ModuleNotFoundError: "
                     "No module named 'numpy_not_installed'")
    assert trace[0] == "Traceback (most recent call last):"  # the app's traceback follows, for the logs


def test_missing_module(image_like):
    proc = check(image_like, BEAMCTL_HANDLER="inference:run")
    assert proc.returncode == 3 and "module 'inference' is not in the image" in proc.stderr


def test_the_traceback_shows_the_apps_own_frames(image_like):
    (image_like / "app" / "app.py").write_text("def handler(): pass\n\nraise ValueError('bad config')\n")
    proc = check(image_like, BEAMCTL_HANDLER="app:handler")
    lines = proc.stderr.splitlines()
    assert lines[0] == ("beamctl-runtime: handler app:handler: importing 'app' failed: ValueError: bad config")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[2].endswith("app.py\", line 3, in <module>") and lines[-1] == "ValueError: bad config"
    assert "importlib" not in proc.stderr
