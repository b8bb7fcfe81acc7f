"""Planning and executing a build against the FakeEngine: reuse, tags, pruning, failures."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

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


def _layer(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar}


def _loaded(files: dict[str, bytes]) -> tuple[dict, dict, dict[str, bytes]]:
    """(manifest entry, config, {diffID: layer tar}) of an archive the FakeEngine loaded."""
    (entry,) = json.loads(files["manifest.json"])
    config = json.loads(files[entry["Config"]])
    layers = {d: files[p] for d, p in zip(config["rootfs"]["diff_ids"], entry["Layers"]) if p in files}
    return entry, config, layers


def test_context_holds_code_not_config_or_volumes(app):
    engine = FakeEngine()
    result = execute(_plan(app), "demo", engine, None, lambda e: None)
    (deps,) = engine.builds  # only the dependencies image is built by the engine
    assert list(deps) == ["Dockerfile"]  # no packages: the dependencies image holds no files of ours
    (loaded,) = engine.loads  # the app image is assembled and loaded
    entry, config, layers = _loaded(loaded)
    deps_layers = engine.image_config(_plan(app).deps_tag)["rootfs"]["diff_ids"]
    assert config["rootfs"]["diff_ids"][:len(deps_layers)] == deps_layers and len(deps_layers) == 1
    assert entry["RepoTags"] is None and len(entry["Layers"]) == 3
    assert list(layers) == config["rootfs"]["diff_ids"][1:]  # our two layers' tars, never the deps layer's
    assert len(loaded) == 2 + 2  # manifest, config, two layer.tar
    runtime, code = (_layer(layers[d]) for d in config["rootfs"]["diff_ids"][1:])
    from beamctl.image.build import RUNTIME_SOURCE

    names = sorted(f"opt/beamctl/lib/beamctl_runtime/{p.name}" for p in RUNTIME_SOURCE.glob("*.py"))
    assert sorted(n for n, m in runtime.items() if m.isfile()) == names
    assert "opt/beamctl/lib/beamctl_runtime/serve.py" in names
    assert sorted(code) == ["app", "app/app.py"]  # not beam.yaml, not the volume's data/
    assert result.image.startswith("beamctl/demo:") and len(result.image.split(":")[1]) == 16
    assert result.id == "sha256:" + hashlib.sha256(loaded[entry["Config"]]).hexdigest()
    assert engine.images == {result.image: result.id, _plan(app).deps_tag: engine.images[_plan(app).deps_tag]}
    assert not result.reused and (result.layers_built, result.layers_cached) == (2 + 0, 0)  # deps: no steps
    assert config["config"]["Labels"]["dev.beamctl.app"] == "demo"
    assert engine.checked == [result.id]


def test_same_inputs_reuse_the_tag_without_building(app):
    engine = FakeEngine()
    first = execute(_plan(app), "demo", engine, None, lambda e: None)
    notes = []
    second = execute(_plan(app), "demo", engine, None, notes.append)
    assert second.reused and second.image == first.image
    assert (len(engine.builds), len(engine.loads)) == (1, 1)  # deps built, app loaded, once
    assert notes == [f"reused {first.image}: nothing changed"]


def test_same_inputs_assemble_the_same_image_id(app):
    first, second = FakeEngine(), FakeEngine()
    a = execute(_plan(app), "demo", first, None, lambda e: None)
    b = execute(_plan(app), "demo", second, None, lambda e: None)
    assert a.id == b.id and first.loads == second.loads
    assert (b.layers_built, b.layers_cached) == (0, 2)  # the local layer cache held both tars


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
    first = execute(_plan(app, packages="numpy-set"), "demo", engine, lambda: _site(app), lambda e: None)
    assert len(engine.builds) == 1 and "site/numpy/__init__.py" in engine.builds[0]
    (app / "app.py").write_text("def handler(**kw):\n    return 2\n")
    notes = []
    second = execute(_plan(app, packages="numpy-set"), "demo", engine, lambda: _site(app), notes.append)
    assert len(engine.builds) == 1 and len(engine.loads) == 2  # no engine build at all
    assert any(str(n).endswith("(reused)") for n in notes)
    assert any(str(n).startswith("app layers: runtime ") and "(cached)" in str(n) for n in notes)
    _, before, _ = _loaded(engine.loads[0])
    _, after, layers = _loaded(engine.loads[1])
    changed = [i for i, (x, y) in enumerate(zip(before["rootfs"]["diff_ids"], after["rootfs"]["diff_ids"]))
               if x != y]
    assert changed == [len(after["rootfs"]["diff_ids"]) - 1]  # only the code layer
    assert not any(n.startswith("opt/beamctl/site") for d in layers for n in _layer(layers[d]))
    assert (second.layers_built, second.layers_cached) == (1, 1) and second.id != first.id


def test_an_image_the_engine_cannot_load_is_not_tagged(app):
    engine = FakeEngine(load_fails_with="the engine could not load the app image: no space left on device")
    with pytest.raises(BuildFailed, match="no space left"):
        execute(_plan(app), "demo", engine, None, lambda e: None)
    assert [r for r in engine.images if r.startswith("beamctl/demo:")] == [] and engine.checked == []


def _site(app):
    site = app.parent / "site"
    (site / "numpy").mkdir(parents=True, exist_ok=True)
    (site / "numpy" / "__init__.py").write_text("")
    return site
