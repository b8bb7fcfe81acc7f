"""fleet/layers.py (which layers a host lacks; the archive without the held ones) and transport/bulk.py's ssh argv."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from beamctl.fleet import layers
from beamctl.transport import bulk
from beamctl.transport.sshconfig import Target


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def save_archive(blobs: list[bytes], folders: list[str], order: list[int] | None = None) -> bytes:
    """A `docker save` (legacy format) archive: folder per layer (VERSION, json with parent, layer.tar),
    config, manifest last; folders written in `order` (the engine writes them sorted by name)."""
    out = io.BytesIO()
    config = json.dumps({"rootfs": {"diff_ids": [digest(b) for b in blobs]}}).encode()
    with tarfile.open(fileobj=out, mode="w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("cfg.json", config)
        for i in order if order is not None else range(len(blobs)):
            meta = {"id": folders[i], **({"parent": folders[i - 1]} if i else {})}
            add(f"{folders[i]}/VERSION", b"1.0")
            add(f"{folders[i]}/json", json.dumps(meta).encode())
            add(f"{folders[i]}/layer.tar", blobs[i])
        add("manifest.json", json.dumps([{"Config": "cfg.json", "RepoTags": ["a:b"],
                                          "Layers": [f"{f}/layer.tar" for f in folders]}]).encode())
    return out.getvalue()


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


BLOBS = [b"base" * 1000, b"deps" * 2000, b"runtime" * 10, b"code" * 5]
FOLDERS = ["f3", "a1", "e2", "b0"]  # names unrelated to the chain order, as v1 ids are


def test_chain_ids_follow_the_engine_rule():
    d = [digest(b) for b in BLOBS[:3]]
    c = layers.chain_ids(d)
    assert c[0] == d[0]
    assert c[1] == "sha256:" + hashlib.sha256(f"{d[0]} {d[1]}".encode()).hexdigest()
    assert c[2] == "sha256:" + hashlib.sha256(f"{c[1]} {d[2]}".encode()).hexdigest()


def test_present_prefix_is_the_longest_common_start_of_any_held_image():
    ours = ["a", "b", "c", "d"]
    assert layers.present_prefix(ours, []) == 0
    assert layers.present_prefix(ours, [["a", "x"], ["a", "b", "c", "z"], ["b", "c"]]) == 3
    assert layers.present_prefix(ours, [["a", "b", "c", "d", "e"]]) == 4
    assert layers.parse_held('["a","b"]\nnot json\n[1]\n[]\n') == [["a", "b"], []]


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]])
def test_held_layers_are_left_out_whatever_order_the_folders_come_in(order):
    diff_ids = [digest(b) for b in BLOBS]
    out = io.BytesIO()
    stats = layers.filter_archive(io.BytesIO(save_archive(BLOBS, FOLDERS, order)), out, diff_ids, 2)
    got = members(out.getvalue())
    assert f"{FOLDERS[0]}/layer.tar" not in got and f"{FOLDERS[1]}/layer.tar" not in got
    assert got[f"{FOLDERS[2]}/layer.tar"] == BLOBS[2] and got[f"{FOLDERS[3]}/layer.tar"] == BLOBS[3]
    assert "manifest.json" in got and "cfg.json" in got and f"{FOLDERS[0]}/json" in got
    assert (stats.layers_sent, stats.layers_skipped) == (2, 2)
    assert stats.learned == {f: c for f, c in zip(FOLDERS, layers.chain_ids(diff_ids))}


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [2, 0, 3, 1]])
def test_layers_the_host_kept_from_a_cut_send_are_left_out_anywhere_in_the_chain(order):
    diff_ids = [digest(b) for b in BLOBS]
    out = io.BytesIO()
    kept = frozenset({diff_ids[1], diff_ids[3], "sha256:" + "0" * 64})
    stats = layers.filter_archive(io.BytesIO(save_archive(BLOBS, FOLDERS, order)), out, diff_ids, 0,
                                  leave_out=kept)
    got = sorted(n for n in members(out.getvalue()) if n.endswith("layer.tar"))
    assert got == sorted([f"{FOLDERS[0]}/layer.tar", f"{FOLDERS[2]}/layer.tar"])
    assert (stats.layers_sent, stats.layers_skipped) == (2, 2)


def test_the_survey_answer_names_the_staged_layers_apart_from_the_engines():
    d = "sha256:" + "ab" * 32
    text = f'["sha256:1"]\nstaged {d}\nstaged sha256:short\nstaged {d}x\n'
    assert layers.parse_held(text) == [["sha256:1"]] and layers.parse_staged(text) == frozenset({d})


def test_keep_from_zero_sends_everything_and_all_held_sends_no_layer():
    diff_ids = [digest(b) for b in BLOBS]
    src = save_archive(BLOBS, FOLDERS)
    whole = io.BytesIO()
    layers.filter_archive(io.BytesIO(src), whole, diff_ids, 0)
    assert {k: v for k, v in members(whole.getvalue()).items()} == members(src)
    none = io.BytesIO()
    stats = layers.filter_archive(io.BytesIO(src), none, diff_ids, len(diff_ids))
    assert not [n for n in members(none.getvalue()) if n.endswith("layer.tar")] and stats.layers_skipped == 4


def test_a_folder_whose_place_is_unknown_is_hashed_and_the_cache_remembers(tmp_path):
    diff_ids = [digest(b) for b in BLOBS]
    cache = layers.V1Ids(tmp_path / "v1ids.json")
    # the parent link of the code layer's folder is missing: only its digest can place it
    broken = save_archive(BLOBS, FOLDERS, [1, 3, 0, 2]).replace(b'"parent": "e2"', b'"parent": "zz"')
    out = io.BytesIO()
    stats = layers.filter_archive(io.BytesIO(broken), out, diff_ids, 3, cache)
    assert stats.spooled >= 1 and [n for n in members(out.getvalue()) if n.endswith("layer.tar")] == \
        [f"{FOLDERS[3]}/layer.tar"]
    again = layers.V1Ids(tmp_path / "v1ids.json")  # learned from the manifest, kept on disk
    assert again.get(FOLDERS[3]) == layers.chain_ids(diff_ids)[3]
    out2 = io.BytesIO()
    assert layers.filter_archive(io.BytesIO(broken), out2, diff_ids, 3, again).spooled == 0


def test_a_layer_that_appears_twice_is_sent_when_either_place_is_missing():
    blobs = [b"same", b"other", b"same"]
    diff_ids = [digest(b) for b in blobs]
    src = save_archive(blobs, ["x1", "x2", "x3"]).replace(b'"parent": "x2"', b'"parent": "q9"')  # same length: the tar stays whole
    out = io.BytesIO()
    layers.filter_archive(io.BytesIO(src), out, diff_ids, 2)
    assert "x3/layer.tar" in members(out.getvalue())


def target(**kw) -> Target:
    base = dict(name="gpu1", hostname="10.0.0.5", port=2222, user="root",
                user_known_hosts=(Path("/home/me/.ssh/known_hosts"),), global_known_hosts=())
    return Target(**{**base, **kw})


def test_openssh_gets_exactly_beamctls_trust_and_a_quoted_command(monkeypatch):
    monkeypatch.setattr(bulk.shutil, "which", lambda name: "/usr/bin/ssh")
    argv = bulk.openssh_argv(target(), ["/opt/py", "-m", "beamctl.agent.load_image"],
                             identity_files=[Path("/home/me/.ssh/id_ed25519")])
    assert argv[:3] == ["/usr/bin/ssh", "-F", "/dev/null"]
    opts = {argv[i + 1] for i, a in enumerate(argv) if a == "-o"}
    assert {"BatchMode=yes", "StrictHostKeyChecking=yes", "UpdateHostKeys=no",
            "UserKnownHostsFile=/home/me/.ssh/known_hosts", "GlobalKnownHostsFile=/dev/null"} <= opts
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "root"
    assert argv[argv.index("-i") + 1] == "/home/me/.ssh/id_ed25519"
    assert argv[-3:] == ["--", "10.0.0.5", "/opt/py -m beamctl.agent.load_image"]


def test_openssh_is_not_used_behind_a_jump_host_or_without_ssh(monkeypatch):
    monkeypatch.setattr(bulk.shutil, "which", lambda name: "/usr/bin/ssh")
    assert bulk.openssh_argv(target(jump=target(name="bastion")), ["true"]) is None
    monkeypatch.setattr(bulk.shutil, "which", lambda name: None)
    assert bulk.openssh_argv(target(), ["true"]) is None


def test_paths_with_spaces_are_quoted_for_openssh(monkeypatch):
    monkeypatch.setattr(bulk.shutil, "which", lambda name: "/usr/bin/ssh")
    argv = bulk.openssh_argv(target(user_known_hosts=(Path("/home/a b/kh"),)), ["true"], identity_files=[])
    assert 'UserKnownHostsFile="/home/a b/kh"' in argv
