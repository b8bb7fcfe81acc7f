"""`beamctl build` against the real Docker Engine: reuse, code-only rebuilds, check mode, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("beamctl-cache")


@pytest.fixture
def make_app(tmp_path, shared_cache):
    """make_app(extra_yaml, app_py) -> (folder, name); the app's images are removed afterwards."""
    names = []

    def make(extra: str = "", app_py: str = "def handler(**kw):\n    return kw\n") -> tuple[Path, str]:
        name = f"itest-{uuid.uuid4().hex[:8]}"
        names.append(name)
        folder = tmp_path / name
        folder.mkdir()
        (folder / "app.py").write_text(app_py)
        (folder / "beam.yaml").write_text(f"name: {name}\nhandler: app:handler\n{extra}")
        return folder, name

    yield make
    for name in names:
        refs = subprocess.run(["docker", "images", "-q", f"beamctl/{name}"], capture_output=True, text=True)
        for image in set(refs.stdout.split()):
            subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


def beamctl(*args: str, cache: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full = dict(os.environ, BEAMCTL_CACHE_DIR=str(cache), **(env or {}))
    return subprocess.run([sys.executable, "-m", "beamctl", *args], capture_output=True, text=True, env=full,
                          timeout=900)


def tags(name: str) -> list[str]:
    out = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", f"beamctl/{name}"],
                         capture_output=True, text=True)
    return sorted(out.stdout.split())


def test_build_reuse_and_code_only_rebuild(make_app, shared_cache):
    folder, name = make_app()
    first = beamctl("build", "-f", str(folder), "--json", cache=shared_cache)
    assert first.returncode == 0, first.stderr
    built = json.loads(first.stdout)
    assert built["reused"] is False and built["layers_built"] >= 1  # the runtime layer may be cached
    assert tags(name) == [built["image"]]

    again = json.loads(beamctl("build", "-f", str(folder), "--json", cache=shared_cache).stdout)
    assert (again["reused"], again["layers_built"], again["image"]) == (True, 0, built["image"])

    (folder / "app.py").write_text("def handler(**kw):\n    return {'changed': True}\n")
    changed = json.loads(beamctl("build", "-f", str(folder), "--json", cache=shared_cache).stdout)
    assert changed["image"] != built["image"]
    assert (changed["layers_built"], changed["layers_cached"]) == (1, 1)  # app code only; runtime cached

    run = subprocess.run(["docker", "run", "--rm", changed["image"]], capture_output=True, text=True)
    assert run.returncode == 0 and "beamctl-runtime: ok: handler app:handler" in run.stdout


def test_numpy_app_builds_and_imports_in_the_image(shared_cache):
    proc = beamctl("build", "-f", str(REPO / "examples" / "vectors"), "--json", cache=shared_cache)
    assert proc.returncode == 0, proc.stderr
    image = json.loads(proc.stdout)["image"]
    run = subprocess.run(["docker", "run", "--rm", "--entrypoint", "python3", image, "-c",
                          "import numpy, app; print(numpy.__version__, app.load_model().shape)"],
                         capture_output=True, text=True)
    assert (run.returncode, run.stdout) == (0, "2.2.6 (256, 16)\n"), run.stderr


def test_an_app_that_cannot_import_is_never_tagged(make_app, shared_cache):
    folder, name = make_app(app_py="import numpy\n\ndef handler(**kw):\n    return kw\n")
    proc = beamctl("build", "-f", str(folder), cache=shared_cache)
    assert proc.returncode == 1
    assert ("error: the image was built but cannot run the app: beamctl-runtime: handler app:handler: "
            "importing 'app' failed: ModuleNotFoundError: No module named 'numpy'\n") in proc.stderr
    assert "Traceback" not in proc.stderr
    assert tags(name) == []


def test_unknown_apt_package_names_it(make_app, shared_cache):
    folder, name = make_app("image:\n  system_packages: [beamctl-no-such-package]\n")
    proc = beamctl("build", "-f", str(folder), cache=shared_cache)
    assert proc.returncode == 1
    assert ("error: apt cannot find the package 'beamctl-no-such-package' (image.system_packages): "
            "E: Unable to locate package beamctl-no-such-package\n") in proc.stderr
    assert tags(name) == []


def test_engine_not_running_says_how_to_start_it(make_app, shared_cache, tmp_path):
    folder, _ = make_app()
    proc = beamctl("build", "-f", str(folder), cache=shared_cache,
                   env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert proc.returncode == 3
    assert proc.stderr.startswith("error: cannot reach the Docker Engine: ")
    assert "hint: start it with `sudo systemctl start docker`" in proc.stderr and "Traceback" not in proc.stderr


def test_prune_keeps_the_newest(make_app, shared_cache):
    folder, name = make_app()
    images = []
    for i in range(3):
        (folder / "app.py").write_text(f"def handler(**kw):\n    return {i}\n")
        images.append(json.loads(beamctl("build", "-f", str(folder), "--json", cache=shared_cache).stdout))
    (folder / "app.py").write_text("def handler(**kw):\n    return 3\n")
    last = json.loads(beamctl("build", "-f", str(folder), "--json", "--prune", "--keep", "2",
                              cache=shared_cache).stdout)
    assert sorted(last["pruned"]) == sorted(i["image"] for i in images[:2])
    assert tags(name) == sorted([images[2]["image"], last["image"]])


def test_bad_config_builds_nothing(make_app, shared_cache):
    folder, name = make_app("memory: 8GB\n")
    proc = beamctl("build", "-f", str(folder), cache=shared_cache)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0].endswith("memory: '8GB' is not a memory size: write 8Gi "
                                                "(binary units: Ki, Mi, Gi, Ti)")
    assert tags(name) == []


def test_missing_handler_file_builds_nothing(make_app, shared_cache):
    folder, name = make_app()
    (folder / "app.py").unlink()
    proc = beamctl("build", "-f", str(folder), cache=shared_cache)
    assert proc.returncode == 2
    assert ("handler: module 'app' not found: expected app.py in the app folder (the folder holding "
            "beam.yaml)") in proc.stderr
    assert tags(name) == []
