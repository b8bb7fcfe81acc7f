"""The app image assembled without `docker build`: deterministic layer tars, config, load archive, cache."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from beamctl.config import load
from beamctl.image import assemble, context, layer_cache, render
from beamctl.image.build import RUNTIME_SOURCE
from beamctl.image.ignore import load_ignore
from beamctl.paths import cache_dir

PARENT = {
    "architecture": "amd64", "os": "linux", "created": "2026-11-28T22:19:38.207929186Z",
    "config": {"Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8", "BEAMCTL_APP=old"], "Cmd": ["python3"],
               "Labels": {"dev.beamctl.deps": "1"}, "Hostname": "", "OnBuild": ["RUN x"], "User": ""},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64, "sha256:" + "2" * 64]},
    "history": [{"created": "2026-11-28T22:00:00Z", "comment": "Imported from -"},
                {"created": "2026-11-28T22:01:00Z", "created_by": "ENV LANG=C.UTF-8", "empty_layer": True},
                {"created": "2026-11-28T22:02:00Z", "created_by": "COPY site/ /opt/beamctl/site/"}],
}


@pytest.fixture
def app(tmp_path):
    folder = tmp_path / "app"
    (folder / "pkg" / "sub").mkdir(parents=True)
    (folder / "app.py").write_text("def handler(**kw):\n    return kw\n\ndef load():\n    pass\n")
    (folder / "pkg" / "sub" / "util.py").write_text("X = 1\n")
    (folder / "run.sh").write_text("#!/bin/sh\n")
    (folder / "run.sh").chmod(0o755)
    (folder / "beam.yaml").write_text("name: demo\nhandler: app:handler\non_start: app:load\n")
    return folder


def _inputs(folder: Path):
    config, _ = load(folder / "beam.yaml")
    spec = render.app_image(config, "/usr/bin/python3")
    files = context.collect(folder, load_ignore(folder, ("/beam.yaml",))).files
    return spec, context.tree_files(RUNTIME_SOURCE, "runtime/"), files


def _assemble(folder: Path) -> tuple[assemble.Assembled, bytes]:
    spec, runtime, files = _inputs(folder)
    out = io.BytesIO()
    image = assemble.assemble(PARENT, spec, runtime, files, out)
    return image, out.getvalue()


def _members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def _archive(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else b"") for m in tar}  # type: ignore[union-attr]


def test_same_inputs_give_the_same_bytes_and_ids(app):
    first, archive1 = _assemble(app)
    second, archive2 = _assemble(app)
    assert (first.id, first.config, first.diff_ids, archive1) == (second.id, second.config, second.diff_ids, archive2)
    assert first.id == "sha256:" + hashlib.sha256(first.config).hexdigest()
    assert [l.new for l in first.own] == [True, True] and [l.new for l in second.own] == [False, False]
    for layer in first.own:
        assert layer.diff_id == "sha256:" + hashlib.sha256(layer.path.read_bytes()).hexdigest()


def test_a_code_change_changes_only_the_code_layer_and_the_id(app):
    before, _ = _assemble(app)
    os.utime(app / "app.py", (1, 1))  # times never matter
    assert _assemble(app)[0].id == before.id
    (app / "app.py").write_text("def handler(**kw):\n    return 2\n\ndef load():\n    pass\n")
    after, _ = _assemble(app)
    assert before.diff_ids[:-1] == after.diff_ids[:-1] and before.diff_ids[-1] != after.diff_ids[-1]
    assert after.id != before.id and [l.new for l in after.own] == [False, True]


def test_layer_tars_are_normalised_with_parent_folders(app):
    image, _ = _assemble(app)
    runtime, code = (_members(l.path.read_bytes()) for l in image.own)
    names = [m.name for m in code]
    assert names == ["app", "app/app.py", "app/pkg", "app/pkg/sub", "app/pkg/sub/util.py", "app/run.sh"]
    assert names == sorted(names) and not any(n.startswith("/") for n in names)
    modes = {m.name: (m.type, m.mode) for m in code}
    assert modes["app/pkg"] == (tarfile.DIRTYPE, 0o755) and modes["app/run.sh"] == (tarfile.REGTYPE, 0o755)
    assert modes["app/app.py"] == (tarfile.REGTYPE, 0o644)
    for m in runtime + code:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
    rnames = [m.name for m in runtime]
    assert rnames[:4] == ["opt", "opt/beamctl", "opt/beamctl/lib", "opt/beamctl/lib/beamctl_runtime"]
    assert all(m.isdir() and m.mode == 0o755 for m in runtime[:4])
    assert sorted(rnames[4:]) == sorted(f"opt/beamctl/lib/beamctl_runtime/{p.name}"
                                        for p in RUNTIME_SOURCE.glob("*.py"))
    raw = image.own[1].path.read_bytes()
    assert b"app/pkg/" in raw  # folders carry the trailing slash, as docker's tars do


def test_config_merges_the_parents(app):
    image, _ = _assemble(app)
    doc = json.loads(image.config)
    assert image.config == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    cfg = doc["config"]
    assert cfg["Env"] == ["PATH=/usr/bin:/bin", "LANG=C.UTF-8", "BEAMCTL_APP=demo", "BEAMCTL_HANDLER=app:handler",
                          "BEAMCTL_APP_DIR=/app", "BEAMCTL_ON_START=app:load"]
    assert cfg["Entrypoint"] == ["/usr/bin/python3", "-m", "beamctl_runtime"] and cfg["Cmd"] == ["check"]
    assert cfg["WorkingDir"] == "/app"
    assert cfg["Labels"] == {"dev.beamctl.deps": "1", "dev.beamctl.app": "demo", "dev.beamctl.parent-layers": "2"}
    assert "OnBuild" not in cfg and "Hostname" not in cfg and "User" not in cfg
    assert (doc["architecture"], doc["os"], doc["created"]) == ("amd64", "linux", PARENT["created"])
    assert doc["rootfs"] == {"type": "layers", "diff_ids": PARENT["rootfs"]["diff_ids"] +
                             [l.diff_id for l in image.own]}
    assert list(image.diff_ids) == doc["rootfs"]["diff_ids"]
    made = [h for h in doc["history"] if not h.get("empty_layer")]
    assert len(made) == len(doc["rootfs"]["diff_ids"]) and doc["history"][:3] == PARENT["history"]
    assert [h.get("created_by") for h in made[-2:]] == ["COPY runtime/ /opt/beamctl/lib/beamctl_runtime/",
                                                        "COPY app/ /app/"]
    assert layer_cache.own_layers(image.config) == (doc["rootfs"]["diff_ids"], 2)


def test_the_archive_carries_only_our_layers(app):
    image, archive = _assemble(app)
    files = _archive(archive)
    (entry,) = json.loads(files["manifest.json"])
    config_name = image.id.removeprefix("sha256:") + ".json"
    assert entry == {"Config": config_name, "RepoTags": None,
                     "Layers": [d.removeprefix("sha256:") + "/layer.tar" for d in image.diff_ids]}
    assert files[config_name] == image.config
    tars = {n for n in files if n.endswith("/layer.tar")}
    assert tars == {l.diff_id.removeprefix("sha256:") + "/layer.tar" for l in image.own}
    for layer in image.own:
        assert files[layer.diff_id.removeprefix("sha256:") + "/layer.tar"] == layer.path.read_bytes()
    assert image.archive_bytes == len(archive)


def test_the_layer_cache(app):
    image, _ = _assemble(app)
    layers, configs = cache_dir() / "layers", cache_dir() / "configs"
    for folder in (layers, configs):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())
        assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]
    for layer in image.own:
        assert layer_cache.layer_path(layer.diff_id) == layer.path
    assert layer_cache.layer_path(PARENT["rootfs"]["diff_ids"][0]) is None  # the deps image's: not ours
    assert layer_cache.layer_path("../../etc/passwd") is None
    assert layer_cache.config_bytes(image.id) == image.config and layer_cache.config_bytes("sha256:" + "0" * 64) is None
    out = io.BytesIO()  # what shipping does for a host that lacks only the code layer
    assemble.write_archive(out, image.config, {image.own[1].diff_id: layer_cache.layer_path(image.own[1].diff_id)},
                           tags=["beamctl/demo:0123"])
    files = _archive(out.getvalue())
    assert sorted(n for n in files if n.endswith(".tar")) == [image.own[1].diff_id.removeprefix("sha256:") + "/layer.tar"]
    assert json.loads(files["manifest.json"])[0]["RepoTags"] == ["beamctl/demo:0123"]


def test_prune_cache_drops_the_oldest_but_never_the_protected(app):
    first, _ = _assemble(app)
    for i, layer in enumerate(first.own):
        os.utime(layer.path, (1000 + i, 1000 + i))
    (app / "app.py").write_text((app / "app.py").read_text() + "changed = 1\n")
    second, _ = _assemble(app)
    code_before = first.own[1]
    removed = layer_cache.prune_cache(keep_bytes=0, protect=[second.own[1].diff_id])
    assert code_before.diff_id in removed and second.own[1].diff_id not in removed
    assert layer_cache.layer_path(code_before.diff_id) is None and layer_cache.layer_path(second.own[1].diff_id)


def test_config_from_inspect_rebuilds_history():
    inspect = {"Architecture": "amd64", "Os": "linux", "Created": "2026-11-28T22:19:38.2Z",
               "Config": {"Env": ["A=1"]}, "RootFS": {"Layers": ["sha256:" + "a" * 64, "sha256:" + "b" * 64,
                                                                "sha256:" + "c" * 64]}}
    history = [  # newest first, as the engine answers
        {"Created": 30, "CreatedBy": "/bin/sh -c true", "Size": 0, "Comment": ""},
        {"Created": 20, "CreatedBy": "/bin/sh -c #(nop) COPY dir:x in /opt/ ", "Size": 10},
        {"Created": 10, "CreatedBy": "/bin/sh -c #(nop)  ENV A=1", "Size": 0},
        {"Created": 0, "CreatedBy": "", "Size": 5, "Comment": "Imported from -"},
    ]
    doc = assemble.config_from_inspect(inspect, history)
    assert doc["history"] == [
        {"created": "1970-01-01T00:00:00Z", "comment": "Imported from -"},
        {"created": "1970-01-01T00:00:10Z", "created_by": "/bin/sh -c #(nop)  ENV A=1", "empty_layer": True},
        {"created": "1970-01-01T00:00:20Z", "created_by": "/bin/sh -c #(nop) COPY dir:x in /opt/ "},
        {"created": "1970-01-01T00:00:30Z", "created_by": "/bin/sh -c true"},  # a RUN that changed nothing
    ]
    assert doc["rootfs"]["diff_ids"] == inspect["RootFS"]["Layers"] and doc["created"] == inspect["Created"]
    odd = assemble.config_from_inspect(inspect, history[1:])  # cannot match: one entry per layer instead
    assert [h.get("empty_layer") for h in odd["history"]] == [None] * 3


# ---------------------------------------------------------------- against the real engine

@pytest.mark.integration
def test_hello_assembled_through_the_engine(tmp_path):
    from beamctl.image import build_app

    name = f"itest-asm-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / name
    folder.mkdir()
    examples = Path(__file__).resolve().parents[2] / "examples" / "hello"
    (folder / "app.py").write_text((examples / "app.py").read_text())
    (folder / "beam.yaml").write_text((examples / "beam.yaml").read_text().replace("name: hello", f"name: {name}"))
    try:
        config, _ = load(folder / "beam.yaml")
        first = build_app(config, lambda e: None)
        assert not first.reused and first.image.startswith(f"beamctl/{name}:")
        assert layer_cache.config_bytes(first.id) is not None
        assert first.id == "sha256:" + hashlib.sha256(layer_cache.config_bytes(first.id)).hexdigest()
        run = subprocess.run(["docker", "run", "--rm", first.image], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "beamctl-runtime: ok: handler app:handler" in run.stdout, run.stderr
        inspect = json.loads(subprocess.run(["docker", "image", "inspect", first.image], capture_output=True,
                                            text=True).stdout)[0]
        diff_ids, parent = layer_cache.own_layers(layer_cache.config_bytes(first.id))
        assert inspect["RootFS"]["Layers"] == diff_ids and len(diff_ids) == parent + 2
        assert [layer_cache.layer_path(d) is not None for d in diff_ids] == [False] * parent + [True, True]

        # the same inputs, from scratch: the same id
        subprocess.run(["docker", "rmi", first.image], capture_output=True, check=True)
        again = build_app(config, lambda e: None)
        assert (again.id, again.reused) == (first.id, False)

        (folder / "app.py").write_text((folder / "app.py").read_text() + "\nCHANGED = True\n")
        started = time.monotonic()
        changed = build_app(load(folder / "beam.yaml")[0], lambda e: None)
        seconds = time.monotonic() - started
        print(f"code-only rebuild (base, plan, assemble, load, check, tag): {seconds:.2f} s")
        assert changed.id != first.id and (changed.layers_built, changed.layers_cached) == (1, 1)
        new_layers, _ = layer_cache.own_layers(layer_cache.config_bytes(changed.id))
        assert new_layers[:-1] == diff_ids[:-1] and new_layers[-1] != diff_ids[-1]
        assert seconds < 30  # generous: the point is printed above
    finally:
        refs = subprocess.run(["docker", "images", "-q", f"beamctl/{name}"], capture_output=True, text=True)
        for image in set(refs.stdout.split()):
            subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
