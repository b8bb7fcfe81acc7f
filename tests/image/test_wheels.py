"""Python packages resolved on the client: requirements files, pip's output, and the real thing (pip, PyPI)."""

from __future__ import annotations

import json
import os
import threading

import pytest

from beamctl.image import wheels
from beamctl.image.pip_text import chosen_wheels, explain
from beamctl.image.wheels import PackageError, install_tree, pip_platforms, read_requirements, resolve

PLATFORM = "manylinux2014_x86_64"


# --- requirements files ---------------------------------------------------------------------------------

def test_requirements_file_drops_comments_and_blanks_and_joins_continuations(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# models\nnumpy>=2  # fast arrays\n\n  torch==2.5.1 ; python_version >= '3.10'\n"
                    "requests[socks] \\\n  >=2.31\npkg @ https://example.org/pkg-1.0-py3-none-any.whl#sha256=ab\n")
    assert read_requirements(path) == [
        "numpy>=2", "torch==2.5.1 ; python_version >= '3.10'", "requests[socks]   >=2.31",
        "pkg @ https://example.org/pkg-1.0-py3-none-any.whl#sha256=ab"]


@pytest.mark.parametrize("line", ["-e .", "--index-url https://mirror.example/simple", "-r other.txt",
                                  "-c constraints.txt", "numpy==2.0 --hash=sha256:abcd"])
def test_requirements_file_refuses_pip_options_naming_the_line(tmp_path, line):
    path = tmp_path / "requirements.txt"
    path.write_text(f"numpy\n# a comment\n{line}\n")
    with pytest.raises(PackageError) as e:
        read_requirements(path)
    assert e.value.message == f"{path}:3: {line!r}: pip options are not supported in the requirements file"
    assert "pip config set global.index-url" in e.value.hint


def test_missing_requirements_file_is_a_package_error(tmp_path):
    with pytest.raises(PackageError, match="cannot read the requirements file .*nope.txt: No such file"):
        read_requirements(tmp_path / "nope.txt")


# --- platforms ------------------------------------------------------------------------------------------

def test_platforms_widen_a_glibc_version_to_every_older_one():
    tags = pip_platforms("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and tags[-2:] == ["manylinux_2_5_x86_64", "manylinux2014_x86_64"]
    assert "manylinux_2_17_x86_64" in tags and len(tags) == 25
    assert pip_platforms(PLATFORM) == [PLATFORM]  # pip itself widens it to 2010 and 1


# --- pip's output ---------------------------------------------------------------------------------------

NOT_FOUND = """Looking in indexes: https://pypi.org/simple
ERROR: Could not find a version that satisfies the requirement beamctl-no-such-package-xyz (from versions: none)
ERROR: No matching distribution found for beamctl-no-such-package-xyz""".splitlines()


def test_no_wheel_names_package_python_and_platform_in_two_lines():
    e = explain(NOT_FOUND, "3.11", PLATFORM)
    assert e.message == (
        "no wheel of beamctl-no-such-package-xyz for Python 3.11 on manylinux2014_x86_64\n"
        "  pip: Could not find a version that satisfies the requirement beamctl-no-such-package-xyz "
        "(from versions: none)")
    assert (e.package, e.python_version, e.platform) == ("beamctl-no-such-package-xyz", "3.11", PLATFORM)
    assert e.hint.startswith("check the name (beamctl-no-such-package-xyz on pypi.org); if it is right,")


def test_missing_dependency_names_who_needs_it():
    lines = ["Collecting num2words", "  Downloading num2words-0.5.14-py3-none-any.whl (163 kB)",
             "ERROR: Could not find a version that satisfies the requirement docopt>=0.6.2 (from num2words) "
             "(from versions: none)", "ERROR: No matching distribution found for docopt>=0.6.2"]
    e = explain(lines, "3.11", PLATFORM)
    assert e.message.splitlines()[0] == ("no wheel of docopt>=0.6.2 for Python 3.11 on manylinux2014_x86_64 "
                                         "(needed by num2words)")
    assert e.package == "docopt"


def test_a_pin_without_wheel_lists_the_versions_that_have_one_cut_short():
    versions = ", ".join(f"1.{i}.0" for i in range(200))
    lines = [f"ERROR: Could not find a version that satisfies the requirement numpy==0.0.1 (from versions: "
             f"{versions})", "ERROR: No matching distribution found for numpy==0.0.1"]
    e = explain(lines, "3.11", PLATFORM)
    assert e.message.startswith("no wheel of numpy==0.0.1 for Python 3.11 on manylinux2014_x86_64\n  pip: ")
    assert len(e.message.splitlines()[1]) <= 202 and e.message.endswith("...")
    assert e.hint.startswith("versions with a wheel for Python 3.11 on manylinux2014_x86_64: 1.0.0, 1.1.0")
    assert len(e.hint) <= 200


def test_unreachable_index_is_a_network_error_not_a_missing_package():
    lines = ["Looking in indexes: http://127.0.0.1:9/simple/",
             "WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after "
             "connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPConnection object "
             "at 0x7f0>: Failed to establish a new connection: [Errno 111] Connection refused')': /simple/numpy/",
             *NOT_FOUND[1:]]
    e = explain(lines, "3.11", PLATFORM)
    assert e.message == ("could not reach the package index to resolve packages for Python 3.11 on "
                         "manylinux2014_x86_64: Failed to establish a new connection: [Errno 111] Connection "
                         "refused")
    assert "needs no network" in e.hint


def test_conflict_shows_the_cause_not_the_advice():
    lines = """Collecting numpy==2.2.6
ERROR: Cannot install numpy==2.2.5 and numpy==2.2.6 because these package versions have conflicting dependencies.

The conflict is caused by:
    The user requested numpy==2.2.6
    The user requested numpy==2.2.5

To fix this you could try to:
1. loosen the range of package versions you've specified

ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/""".splitlines()
    e = explain(lines, "3.11", PLATFORM)
    assert e.message == ("the Python packages' requirements conflict:\n"
                         "  ERROR: Cannot install numpy==2.2.5 and numpy==2.2.6 because these package versions "
                         "have conflicting dependencies.\n  The user requested numpy==2.2.6\n"
                         "  The user requested numpy==2.2.5")


def test_invalid_requirement_and_unknown_failures_are_one_line():
    e = explain(["ERROR: Invalid requirement: 'numpy=2'"], "3.11", PLATFORM)
    assert e.message == "not a pip requirement: 'numpy=2'"
    e = explain(["Collecting x", "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES"], "3.11", PLATFORM,
                installing=True)
    assert e.message == ("pip could not install the wheels for Python 3.11 on manylinux2014_x86_64: "
                         "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES")


def test_chosen_wheels_come_from_saved_and_already_downloaded_lines():
    lines = ["Collecting requests", "  File was already downloaded /c/tmp/x/requests-2.34.2-py3-none-any.whl",
             "Collecting charset-normalizer<4,>=2 (from requests)",
             "Saved ./x/charset_normalizer-3.5.3-cp311-cp311-manylinux1_x86_64.whl",
             "Successfully downloaded requests charset-normalizer"]
    assert chosen_wheels(lines, "3.11", PLATFORM) == [
        "requests-2.34.2-py3-none-any.whl", "charset_normalizer-3.5.3-cp311-cp311-manylinux1_x86_64.whl"]
    with pytest.raises(PackageError, match="could not tell from pip's output which wheels it chose"):
        chosen_wheels(lines[:-1] + ["Successfully downloaded requests charset-normalizer idna"], "3.11", PLATFORM)


def test_entry_point_scripts_run_the_images_python(tmp_path):
    (tmp_path / "short").write_text("#!/home/me/.venv/bin/python\n# -*- coding: utf-8 -*-\nimport x\n")
    (tmp_path / "long").write_text("#!/bin/sh\n'''exec' \"/a/very/long/path/python\" \"$0\" \"$@\"\n' '''\n"
                                   "import y\n")
    (tmp_path / "shell").write_text("#!/bin/sh\necho hi\n")
    wheels._portable_scripts(tmp_path)
    assert (tmp_path / "short").read_text() == "#!/usr/bin/env python3\n# -*- coding: utf-8 -*-\nimport x\n"
    assert (tmp_path / "long").read_text() == "#!/usr/bin/env python3\nimport y\n"
    assert (tmp_path / "shell").read_text() == "#!/bin/sh\necho hi\n"


def test_no_requirements_need_no_pip(tmp_path):
    seen = []
    empty = resolve([], "3.11", tmp_path, seen.append)
    assert empty == resolve((), "3.12", tmp_path / "other", seen.append) and empty.wheels == ()
    assert seen == [] and not (tmp_path / "wheels").exists()
    tree = install_tree(empty, "3.11", tmp_path, seen.append)
    assert tree == tmp_path / "trees" / empty.key and list(tree.iterdir()) == []


# --- the real thing: pip and the package index ----------------------------------------------------------

@pytest.mark.integration
def test_numpy_resolves_installs_and_then_takes_the_lock(tmp_path):
    seen: list[str] = []
    first = resolve(["numpy"], "3.11", tmp_path, seen.append)
    assert [w.name.split("-")[0] for w in first.wheels] == ["numpy"]
    assert all(w.parent == tmp_path / "wheels" and w.is_file() for w in first.wheels)
    assert any("resolving 1 requirement(s) for Python 3.11 on manylinux2014_x86_64" in m for m in seen)

    seen.clear()
    again = resolve(["numpy"], "3.11", tmp_path, seen.append)
    assert again == first
    assert seen == ["packages: 1 wheels as locked (unchanged requirements)"]  # pip did not run

    tree = install_tree(first, "3.11", tmp_path, seen.append)
    assert tree == tmp_path / "trees" / first.key
    assert (tree / "numpy" / "__init__.py").is_file()
    assert not list(tree.glob("*.dist-info/direct_url.json"))  # no trace of this machine's cache
    scripts = list((tree / "bin").iterdir())
    assert scripts and all(s.read_text().startswith("#!/usr/bin/env python3\n") for s in scripts)
    stamps = {os.lstat(p).st_mtime for p in [tree, *tree.rglob("*")]}
    assert stamps == {wheels.FIXED_MTIME}
    assert install_tree(first, "3.11", tmp_path, seen.append) == tree


@pytest.mark.integration
def test_warm_wheel_cache_without_lock_downloads_nothing(tmp_path):
    first = resolve(["idna"], "3.11", tmp_path, lambda m: None)
    inode = first.wheels[0].stat().st_ino
    for lock in (tmp_path / "locks").iterdir():
        lock.unlink()
    seen: list[str] = []
    again = resolve(["idna"], "3.11", tmp_path, seen.append)
    assert again == first and first.wheels[0].stat().st_ino == inode
    assert not [m for m in seen if "Downloading" in m]
    assert not list((tmp_path / "tmp").iterdir())  # the work folder is gone


@pytest.mark.integration
def test_unknown_package_is_named(tmp_path):
    with pytest.raises(PackageError) as e:
        resolve(["beamctl-no-such-package-xyz"], "3.11", tmp_path, lambda m: None)
    assert e.value.package == "beamctl-no-such-package-xyz"
    assert e.value.message.startswith(
        "no wheel of beamctl-no-such-package-xyz for Python 3.11 on manylinux2014_x86_64\n  pip: ")
    assert not (tmp_path / "locks").exists() or not list((tmp_path / "locks").iterdir())


@pytest.mark.integration
def test_sdist_only_package_names_package_and_platform(tmp_path):
    # docopt has never published a wheel: every release on PyPI is a source archive
    with pytest.raises(PackageError) as e:
        resolve(["docopt==0.6.2"], "3.11", tmp_path, lambda m: None)
    assert e.value.message.splitlines()[0] == "no wheel of docopt==0.6.2 for Python 3.11 on manylinux2014_x86_64"
    assert (e.value.package, e.value.platform) == ("docopt", PLATFORM)


@pytest.mark.integration
def test_unreachable_index_fails_clearly(tmp_path, monkeypatch):
    for name, value in {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple/",
                        "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "", "PIP_RETRIES": "0",
                        "BEAMCTL_PIP_ENV": "1"}.items():  # asked for: the environment's index is used
        monkeypatch.setenv(name, value)
    with pytest.raises(PackageError) as e:
        resolve(["numpy"], "3.11", tmp_path, lambda m: None)
    assert e.value.message.startswith("could not reach the package index to resolve packages for Python 3.11")


@pytest.mark.integration
def test_two_builds_at_once_make_one_tree(tmp_path):
    resolved = resolve(["idna"], "3.11", tmp_path, lambda m: None)
    results, errors = [], []

    def build() -> None:
        try:
            results.append(install_tree(resolved, "3.11", tmp_path, lambda m: None))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results[0] == results[1]
    assert sorted(p.name for p in (tmp_path / "trees").iterdir()) == [resolved.key]
    assert (results[0] / "idna" / "__init__.py").is_file()


def test_a_cached_wheel_is_checked_against_its_first_download_on_every_use(tmp_path):
    cache = tmp_path / "wheels"
    cache.mkdir()
    wheel = cache / "demo-1.0-py3-none-any.whl"
    wheel.write_bytes(b"first download")
    digest = wheels.verified(wheel)
    assert (cache / ".sha256" / wheel.name).is_file() and wheels.verified(wheel) == digest
    stamp = wheel.stat()
    wheel.write_bytes(b"tampered later")  # same size, and the times put back: only ctime tells
    os.utime(wheel, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    with pytest.raises(PackageError, match="is not the file first downloaded"):
        wheels.verified(wheel)
    lock = tmp_path / "locks" / "k.json"
    lock.parent.mkdir()
    lock.write_text(json.dumps({"wheels": [{"file": wheel.name, "sha256": digest, "size": 14, "mtime_ns": 0}]}))
    with pytest.raises(PackageError):  # never taken from the lock either
        wheels._from_lock(lock, cache)
    fresh = tmp_path / "download" / wheel.name
    fresh.parent.mkdir()
    fresh.write_bytes(b"another build!")
    wheel.write_bytes(b"first download")  # the cache as it was; a different file under its name arrives
    with pytest.raises(PackageError, match="not the .* first downloaded under that name"):
        wheels._publish(fresh, wheel, wheels._sha256(fresh))


def test_another_index_from_the_environment_is_refused_unless_asked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://pypi.example.com/simple/")
    monkeypatch.delenv("BEAMCTL_PIP_ENV", raising=False)
    with pytest.raises(PackageError, match="PIP_EXTRA_INDEX_URL is set in the environment") as e:
        resolve(["idna"], "3.11", tmp_path, lambda m: None)
    assert "BEAMCTL_PIP_ENV=1" in e.value.hint and not list(tmp_path.glob("locks/*.json"))  # nothing locked
    assert wheels.pip_environment({"PIP_FIND_LINKS": "/opt/wheels", "PIP_CERT": "/x"}) == {
        "PIP_FIND_LINKS": "/opt/wheels", "PIP_CERT": "/x"}  # local folders and certificates: the user's own
    assert wheels.pip_environment({"PIP_INDEX_URL": "u", "BEAMCTL_PIP_ENV": "1"})["PIP_INDEX_URL"] == "u"


def test_two_threads_checking_one_new_wheel_at_once_both_get_its_digest(tmp_path):
    """Hosts are installed in parallel threads of one process, each checking the same new wheels: their
    records were written through one temporary name per process, and the second rename failed (the first
    had moved the file away). Seen in CI as a host that was `unreachable` during its agent install."""
    import hashlib
    import threading

    from beamctl.image import wheels

    for round_ in range(20):
        wheel = tmp_path / f"pkg{round_}-1.0-py3-none-any.whl"
        wheel.write_bytes(b"wheel %d" % round_ * 1000)
        got, errors = [], []
        start = threading.Barrier(4)

        def check() -> None:
            start.wait()
            try:
                got.append(wheels.verified(wheel))
            except Exception as e:  # noqa: BLE001 - what the test looks for
                errors.append(e)

        threads = [threading.Thread(target=check) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and got == [hashlib.sha256(wheel.read_bytes()).hexdigest()] * 4
