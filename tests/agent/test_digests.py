"""beamctl.agent.digests: snapshot files' digests, the manifest that holds them, and the check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from beamctl.agent import digests as dg

ABC = "4f8b42c22dd3729b519ba6f68d2da7cc5b2d606d05daed5ad5128cc03e6c6358"  # sha256(sha256(b"abc"))
EMPTY = "5df6e0e2761359d30a8275058e299fcc0381534545f55cf43e41983f5d4c9456"  # sha256(sha256(b""))
# bytes(range(256)) * (64 MiB / 256) + b"tail": sha256(sha256(chunk 1) + sha256(chunk 2))
TWO_CHUNKS = "bf067ad0d79accff4592560e7dab8a8cc53904d15c6b12011f70734c2cdd48f7"


def snapshot(folder: Path) -> dg.Manifest:
    folder.mkdir()
    (folder / "pages-1.img").write_bytes(bytes(range(256)) * (dg.CHUNK_BYTES // 256) + b"tail")
    (folder / "core-1.img").write_bytes(b"abc")
    (folder / "empty.img").write_bytes(b"")
    (folder / "manifest.json").write_text(dg.manifest_text(folder, ["pages-1.img", "core-1.img", "empty.img"]))
    return dg.parse_manifest((folder / "manifest.json").read_text())


def test_digests_are_sha256_of_the_chunks_sha256s(tmp_path: Path) -> None:
    snapshot(tmp_path / "s")
    for workers in (1, 3):  # the same whatever the threads
        assert dg.digest_files(tmp_path / "s", ["core-1.img", "empty.img", "pages-1.img"], workers) == {
            "core-1.img": ABC, "empty.img": EMPTY, "pages-1.img": TWO_CHUNKS}


def test_the_manifest_holds_size_and_digest_per_file(tmp_path: Path) -> None:
    manifest = snapshot(tmp_path / "s")
    assert json.loads((tmp_path / "s/manifest.json").read_text()) == {
        "digest": "sha256-of-64MiB-chunks",
        "files": {"core-1.img": {"size": 3, "digest": ABC}, "empty.img": {"size": 0, "digest": EMPTY},
                  "pages-1.img": {"size": dg.CHUNK_BYTES + 4, "digest": TWO_CHUNKS}}}
    assert manifest.has_digests and manifest.sizes() == {"core-1.img": 3, "empty.img": 0,
                                                         "pages-1.img": dg.CHUNK_BYTES + 4}
    assert dg.damage(tmp_path / "s", manifest) is None


def test_an_older_manifest_has_sizes_only() -> None:
    old = dg.parse_manifest('{"files": {"pages-1.img": 1000}}')
    assert old.files == {"pages-1.img": dg.Entry(1000, None)} and not old.has_digests
    for bad in ('{"files": [1]}', '[]', '{"digest": "md5", "files": {}}',
                '{"digest": "sha256-of-64MiB-chunks", "files": {"a": 1}}', '{"files": {"a": {"size": 1}}}'):
        with pytest.raises(ValueError):
            dg.parse_manifest(bad)


def test_a_flipped_byte_is_found(tmp_path: Path) -> None:
    manifest = snapshot(tmp_path / "s")
    with open(tmp_path / "s/pages-1.img", "r+b") as f:  # the second chunk: the tail
        f.seek(dg.CHUNK_BYTES + 1)
        f.write(bytes([ord("a") ^ 0xFF]))
    assert dg.damage(tmp_path / "s", manifest) == "damaged: pages-1.img does not match its digest"
    assert dg.damage(tmp_path / "s", manifest, skip=frozenset({"pages-1.img"})) is None  # trusted: not read


def test_a_missing_or_resized_file_is_found_before_any_hashing(tmp_path: Path) -> None:
    manifest = snapshot(tmp_path / "s")
    os.truncate(tmp_path / "s/pages-1.img", 10)
    skip = frozenset(manifest.files)  # sizes are checked even of trusted files
    assert dg.damage(tmp_path / "s", manifest, skip) == "damaged: pages-1.img has 10 bytes, 67108868 when captured"
    (tmp_path / "s/core-1.img").unlink()
    assert dg.damage(tmp_path / "s", manifest, skip) == "damaged: core-1.img is missing"
    old = dg.parse_manifest('{"files": {"empty.img": 0}}')
    assert dg.damage(tmp_path / "s", old) == "damaged: empty.img has no digest in the manifest"


def test_identity_changes_with_a_write_in_place(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    before = dg.identity(path)
    assert dg.identity(path) == before
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(b"x")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime set back: ctime still tells
    assert dg.identity(path) != before and path.stat().st_size == 3
