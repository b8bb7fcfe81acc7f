"""The base image: pulling with a bound, the debootstrap root file system, and the real engine."""

from __future__ import annotations

import json
import threading
import time

import docker
import pytest

from beamctl.config.verdicts import cache_dir
from beamctl.image import base, rootfs
from beamctl.image.base import OWN_BASE, BaseImageError, resolve_base


class _Api:
    """Stands in for the SDK's low-level client: `pull` yields the given events, then blocks or raises."""

    def __init__(self, events=(), error=None, block=None):
        self.events, self.error, self.block = list(events), error, block

    def pull(self, ref, stream, decode):
        yield from self.events
        if self.error is not None:
            raise self.error
        if self.block is not None:
            self.block.wait(30)


class _Client:
    def __init__(self, api):
        self.api = api


# --- pulling ---------------------------------------------------------------------------------------------

def test_a_pull_without_word_from_the_engine_gives_up_after_the_stall_bound():
    release = threading.Event()
    started = time.monotonic()
    try:
        reason = base.pull(_Client(_Api(block=release)), "python:3.11-slim", lambda m: None, stall_s=0.2)
    finally:
        release.set()
    assert reason == "no answer from the registry within 0.2 s"
    assert time.monotonic() - started < 5


def test_a_pull_passes_on_overall_statuses_and_returns_a_stream_error():
    seen = []
    events = [{"status": "Pulling from library/python"}, {"status": "Downloading", "id": "a1b2"},
              {"error": "manifest for python:3.99-slim not found"}]
    reason = base.pull(_Client(_Api(events)), "python:3.99-slim", seen.append)
    assert reason == "manifest for python:3.99-slim not found"
    assert seen == ["base: python:3.99-slim: Pulling from library/python"]


def test_a_failed_pull_gives_the_engines_own_words():
    error = docker.errors.APIError("500 Server Error for http+docker://localhost/v1.41/images/create",
                                   explanation='Get "https://registry-1.docker.io/v2/": no such host')
    assert base.pull(_Client(_Api(error=error)), "x:1", lambda m: None) == \
        'Get "https://registry-1.docker.io/v2/": no such host'


# --- the debootstrap root file system ---------------------------------------------------------------------

def test_trim_drops_caches_and_docs_and_points_apt_at_the_mirror(tmp_path):
    files = ["var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease", "var/lib/apt/lists/lock",
             "var/cache/apt/pkgcache.bin", "var/cache/apt/archives/python3_3.11.2-1+b1_amd64.deb",
             "var/log/dpkg.log", "usr/share/doc/python3/changelog.gz", "usr/share/doc/python3/copyright",
             "usr/share/man/man1/python3.1.gz", "usr/share/locale/de/LC_MESSAGES/apt.mo",
             "usr/share/locale/locale.alias", "etc/resolv.conf", "etc/hostname", "usr/bin/python3"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    (tmp_path / "var/lib/apt/lists/partial").mkdir()
    (tmp_path / "etc/apt").mkdir()
    rootfs.trim(tmp_path)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["etc/apt/sources.list", "etc/dpkg/dpkg.cfg.d/beamctl-slim", "etc/hostname",
                    "etc/resolv.conf", "usr/bin/python3", "usr/share/doc/python3/copyright",
                    "usr/share/locale/locale.alias"]
    assert (tmp_path / "var/lib/apt/lists/partial").is_dir()
    assert (tmp_path / "etc/hostname").read_text() == ""  # not the build machine's name
    assert (tmp_path / "etc/apt/sources.list").read_text().splitlines()[0] == \
        "deb http://deb.debian.org/debian bookworm main"


def test_debootstrap_phases_are_passed_on_but_not_every_package():
    seen: list[str] = []
    state: set[str] = set()
    for line in ["I: Retrieving InRelease", "I: Resolving dependencies of base packages...",
                 "I: Retrieving libc6 2.36-9", "I: Retrieving python3 3.11.2-1", "I: Validating libc6 2.36-9",
                 "I: Unpacking the base system...", "I: Unpacking libc6:amd64...",
                 "I: Base system installed successfully."]:
        rootfs._report(line, seen.append, state)
    assert seen == ["base: debootstrap: Resolving dependencies of base packages...",
                    "base: debootstrap: Retrieving packages...", "base: debootstrap: Unpacking the base system...",
                    "base: debootstrap: Base system installed successfully."]


def test_missing_debootstrap_points_at_the_setup_script(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(rootfs, "PATH", str(tmp_path))  # where beamctl would otherwise look (sbin)
    with pytest.raises(BaseImageError) as e:
        rootfs.debootstrap(tmp_path / "root", lambda m: None)
    assert e.value.message.startswith("debootstrap is not installed")
    assert e.value.hint.startswith("install debootstrap (")


def test_remove_tree_removes_a_work_folder(tmp_path):
    (tmp_path / "w" / "rootfs" / "etc").mkdir(parents=True)
    (tmp_path / "w" / "rootfs" / "etc" / "x").write_text("x")
    rootfs.remove_tree(tmp_path / "w")
    assert not (tmp_path / "w").exists()


@pytest.mark.integration
def test_failed_debootstrap_says_why_keeps_its_log_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(rootfs, "MIRROR", "http://127.0.0.1:9/debian")  # nothing listens on port 9
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(BaseImageError) as e:
        rootfs.debootstrap(work / "rootfs", lambda m: None)
    assert e.value.message == ("debootstrap failed (exit 1): E: Failed getting release file "
                               "http://127.0.0.1:9/debian/dists/bookworm/Release")
    log = cache_dir() / rootfs.LOG_NAME
    assert e.value.hint.startswith(f"its output is in {log};") and "Connection refused" in log.read_text()
    rootfs.remove_tree(work)
    assert not work.exists()


# --- the real engine ------------------------------------------------------------------------------------

@pytest.fixture
def client():
    try:
        c = docker.from_env()
        c.ping()
    except docker.errors.DockerException as e:
        pytest.fail(f"Docker Engine unreachable ({e}): run ./scripts/setup.sh")
    yield c
    c.close()


@pytest.fixture
def own_base(client):
    """beamctl/base, built here if it is not there yet (~1 minute, once per machine)."""
    seen: list[str] = []
    image = base._build_own(client, seen.append)
    return image, seen


def python_version_in(client, image_id: str) -> str:
    return client.containers.run(image_id, ["python3", "--version"], remove=True).decode().strip()


@pytest.mark.integration
def test_default_base_runs_python_3_11(client):
    seen: list[str] = []
    found = resolve_base(client, "3.11", None, seen.append)
    assert found.ref in (OWN_BASE, "python:3.11-slim") and found.id.startswith("sha256:")
    assert (found.python, found.python_exe.endswith("python3")) == ("3.11", True)
    assert found.platform.startswith("manylinux_2_") and found.platform.endswith("_x86_64")
    assert python_version_in(client, found.id).startswith("Python 3.11.")


@pytest.mark.integration
def test_own_base_is_built_once_with_apt_usable_and_labelled(client, own_base):
    image, seen = own_base
    assert OWN_BASE in image.tags and image.labels["beamctl.python"] == "3.11"
    assert not seen or seen[0] == f"base: building {OWN_BASE} with debootstrap (about a minute, once)"
    assert "LANG=C.UTF-8" in image.attrs["Config"]["Env"]
    again: list[str] = []
    assert base._build_own(client, again.append).id == image.id and again == []  # reused, not rebuilt
    out = client.containers.run(image.id, ["sh", "-c", "python3 --version; cat /etc/apt/sources.list"],
                                remove=True).decode().splitlines()
    assert out[0].startswith("Python 3.11.") and "deb http://deb.debian.org/debian bookworm main" in out


@pytest.mark.integration
def test_override_that_is_nowhere_fails_fast_with_the_fix(client):
    started = time.monotonic()
    with pytest.raises(BaseImageError) as e:
        resolve_base(client, "3.11", "beamctl-test/no-such-image:0", lambda m: None)
    assert time.monotonic() - started < 30  # a bound, not a benchmark: no registry may hang us
    assert e.value.message.startswith("base image beamctl-test/no-such-image:0 is not here and could not be "
                                      "pulled: ")
    assert e.value.hint.startswith("load it first (docker load -i FILE")


@pytest.mark.integration
def test_override_with_another_python_is_refused_and_probed_once(client, own_base):
    image, _ = own_base
    with pytest.raises(BaseImageError) as e:
        resolve_base(client, "3.12", OWN_BASE, lambda m: None)
    assert e.value.message == f"base image {OWN_BASE} has Python 3.11, but image.python_version is 3.12"
    assert e.value.hint.startswith('set image.python_version to "3.11"')
    known = json.loads((cache_dir() / base.PROBE_CACHE).read_text())
    assert known[image.id][:2] == ["3.11", "/usr/bin/python3"]
    assert resolve_base(client, "3.11", OWN_BASE, lambda m: None).python == "3.11"
    assert not client.containers.list(all=True, filters={"label": "beamctl.role=probe"})  # removed


@pytest.mark.integration
def test_python_3_12_without_a_pullable_slim_image_says_what_to_do(client):
    if base.pull(client, "python:3.12-slim", lambda m: None) is None:  # a registry is reachable here
        assert resolve_base(client, "3.12", None, lambda m: None).python == "3.12"
        return
    with pytest.raises(BaseImageError) as e:
        resolve_base(client, "3.12", None, lambda m: None)
    assert e.value.message.startswith("no base image with Python 3.12: python:3.12-slim is not here and "
                                      "could not be pulled (")
    assert e.value.message.endswith("and beamctl's own Debian base has Python 3.11 only")
    assert e.value.hint.startswith("set image.base_image to an image you have with Python 3.12")


@pytest.mark.integration
def test_a_malformed_override_is_a_base_image_error(client):
    with pytest.raises(BaseImageError, match="base image 'Not A Ref': .*invalid reference format"):
        resolve_base(client, "3.11", "Not A Ref", lambda m: None)
