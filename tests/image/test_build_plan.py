"""Planning and executing a build against the FakeEngine: reuse, tags, pruning, failures."""

from __future__ import annotations

import pytest

from beamctl.config import load
from beamctl.image.build import execute, plan, prune
from beamctl.image.engine import BuildFailed
from beamctl.image.fake import FakeEngine


@pytest.fixture
def app(tmp_path):
    (tmp_path / "app.py").write_text("def handler(**kw):\n    return kw\n")
    (tmp_path / "beam.yaml").write_text("name: demo\nhandler: app:handler\nvolumes:\n"
                                        "  - {name: d, mount_path: ./data}\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "weights.bin").write_text("w" * 100)
    return tmp_path


def _plan(app, base_id="sha256:base", packages=None):
    config, _ = load(app / "beam.yaml")
    return plan(config, "base:1", base_id, "python3", packages)


def test_context_holds_code_not_config_or_volumes(app):
    engine = FakeEngine()
    result = execute(_plan(app), "demo", engine, None, lambda e: None)
    deps, files = engine.builds
    assert list(deps) == ["Dockerfile"]  # no packages: the dependencies image holds no files of ours
    from beamctl.image.build import RUNTIME_SOURCE

    runtime = sorted(f"runtime/{p.name}" for p in RUNTIME_SOURCE.glob("*.py"))
    assert sorted(files) == sorted(["Dockerfile", "app/app.py", *runtime])
    assert "runtime/__main__.py" in runtime and "runtime/serve.py" in runtime
    assert result.image.startswith("beamctl/demo:") and len(result.image.split(":")[1]) == 16
    assert engine.images == {result.image: result.id, _plan(app).deps_tag: engine.images[_plan(app).deps_tag]}
    assert not result.reused
    assert "LABEL dev.beamctl.app=demo" in files["Dockerfile"].decode().splitlines()


def test_same_inputs_reuse_the_tag_without_building(app):
    engine = FakeEngine()
    first = execute(_plan(app), "demo", engine, None, lambda e: None)
    notes = []
    second = execute(_plan(app), "demo", engine, None, notes.append)
    assert second.reused and second.image == first.image and len(engine.builds) == 2  # deps + app, once
    assert notes == [f"reused {first.image}: nothing changed"]


@pytest.mark.parametrize("change", ["code", "base", "packages", "new file"])
def test_every_input_changes_the_tag(app, change):
    before = _plan(app).tag
    if change == "code":
        (app / "app.py").write_text("def handler(**kw):\n    return 1\n")
        after = _plan(app).tag
    elif change == "base":
        after = _plan(app, base_id="sha256:other").tag
    elif change == "packages":
        after = _plan(app, packages="abc").tag
    else:
        (app / "util.py").write_text("")
        after = _plan(app).tag
    assert after != before


def test_volume_contents_do_not_change_the_tag(app):
    before = _plan(app).tag
    (app / "data" / "weights.bin").write_text("different")
    assert _plan(app).tag == before


def test_failed_build_tags_nothing(app):
    engine = FakeEngine(fail_with="boom")
    with pytest.raises(BuildFailed):
        execute(_plan(app), "demo", engine, None, lambda e: None)
    assert engine.images == {}


def test_prune_keeps_the_newest(app):
    engine = FakeEngine()
    refs = []
    for i in range(5):
        (app / "app.py").write_text(f"def handler(**kw):\n    return {i}\n")
        refs.append(execute(_plan(app), "demo", engine, None, lambda e: None).image)
    engine.images["beamctl/other:1"] = "sha256:o"
    engine.created["beamctl/other:1"] = "2026-01-01T00:00:00Z"
    removed = prune(engine, "demo", 2, refs[-1])
    assert set(removed) == set(refs[:3])
    assert set(engine.images) == {refs[3], refs[4], "beamctl/other:1", _plan(app).deps_tag}


def test_an_image_that_fails_its_check_is_not_tagged(app):
    engine = FakeEngine(check_result=(3, "beamctl-runtime: handler app:handler: importing 'app' failed: "
                                         "No module named 'numpy'"))
    with pytest.raises(BuildFailed) as e:
        execute(_plan(app), "demo", engine, None, lambda e: None)
    assert e.value.message == ("the image was built but cannot run the app: beamctl-runtime: handler "
                               "app:handler: importing 'app' failed: No module named 'numpy'")
    assert [r for r in engine.images if r.startswith("beamctl/demo:")] == [] and len(engine.checked) == 1
    assert engine.removed_ids == engine.checked  # the untagged image does not linger either


def test_a_code_change_builds_only_the_app_image_and_sends_only_app_files(app):
    engine = FakeEngine()
    execute(_plan(app, packages="numpy-set"), "demo", engine, lambda: _site(app), lambda e: None)
    assert len(engine.builds) == 2 and "site/numpy/__init__.py" in engine.builds[0]
    (app / "app.py").write_text("def handler(**kw):\n    return 2\n")
    notes = []
    execute(_plan(app, packages="numpy-set"), "demo", engine, lambda: _site(app), notes.append)
    assert len(engine.builds) == 3 and not any(n.startswith("site/") for n in engine.builds[2])
    assert any(str(n).endswith("(reused)") for n in notes)


def _site(app):
    site = app.parent / "site"
    (site / "numpy").mkdir(parents=True, exist_ok=True)
    (site / "numpy" / "__init__.py").write_text("")
    return site
