from __future__ import annotations

import io
import tarfile

import pytest

from beamctl.image.context import collect, digest, write_tar
from beamctl.image.ignore import compile_rule, load_ignore


@pytest.mark.parametrize("pattern, path, matches", [
    ("*.log", "a.log", True), ("*.log", "deep/er/a.log", True), ("*.log", "a.logx", False),
    ("/build", "build/x.o", True), ("/build", "src/build/x.o", False),
    ("data/raw", "data/raw/1.csv", True), ("data/raw", "x/data/raw", False),
    ("**/tmp", "a/b/tmp/x", True), ("docs/**/*.md", "docs/a/b/c.md", True), ("docs/**/*.md", "docs/c.md", True),
    ("secret?.txt", "secret1.txt", True), ("secret?.txt", "secret12.txt", False),
])
def test_patterns(pattern, path, matches):
    assert bool(compile_rule(pattern).regex.match(path)) is matches


def _tree(root, files):
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_collect_applies_defaults_ignore_files_and_secrets(tmp_path):
    _tree(tmp_path, {
        "app.py": "x", "pkg/m.py": "y", "pkg/__pycache__/m.cpython-311.pyc": "c", ".git/HEAD": "ref",
        ".venv/bin/python": "", "notes.log": "l", "keep.log": "k", ".env": "TOKEN=1", "certs/server.pem": "p",
        "data/big.bin": "b", ".beamignore": "*.log\n!keep.log\n!.env\n/data\n",
        ".beamctl/beam.schema.json": "{}",
    })
    files = collect(tmp_path, load_ignore(tmp_path))
    assert [f.arcname for f in files.files] == ["app/app.py", "app/keep.log", "app/pkg/m.py"]
    assert files.secrets_skipped == (".env", "certs/server.pem")  # even though !.env re-includes it
    assert files.total_bytes == 3


def test_credentials_of_every_common_kind_and_case_stay_out_and_a_link_to_one_too(tmp_path):
    creds = ["secrets.env", ".git-credentials", ".docker/config.json", ".kube/config", ".pgpass",
             "infra/terraform.tfstate", "infra/terraform.tfstate.backup", "client_secret_123.json",
             ".ENV", "keys/ID_RSA", "Secrets.env", "conf/kubeconfig"]
    _tree(tmp_path, {"app.py": "x", "settings.py": "s", **{c: "secret" for c in creds}})
    (tmp_path / "config.txt").symlink_to(tmp_path / ".ENV")  # shipped under the link's name before
    files = collect(tmp_path, load_ignore(tmp_path))
    assert [f.arcname for f in files.files] == ["app/app.py", "app/settings.py"]
    assert set(files.secrets_skipped) == {".docker", ".kube", "config.txt", *(c for c in creds if "/" not in c
                                          or c.split("/")[0] not in (".docker", ".kube"))}


def test_symlinks_out_of_the_app_are_skipped(tmp_path):
    app = tmp_path / "app"
    _tree(app, {"app.py": "x", "inside.txt": "i"})
    (tmp_path / "outside.txt").write_text("o")
    (app / "link_in").symlink_to(app / "inside.txt")
    (app / "link_out").symlink_to(tmp_path / "outside.txt")
    files = collect(app, load_ignore(app))
    assert [f.arcname for f in files.files] == ["app/app.py", "app/inside.txt", "app/link_in"]
    assert files.links_skipped == ("link_out",)


def test_digest_changes_with_content_name_and_mode(tmp_path):
    _tree(tmp_path, {"a.py": "1"})
    first = digest(collect(tmp_path, load_ignore(tmp_path)).files)
    (tmp_path / "a.py").write_text("2")
    second = digest(collect(tmp_path, load_ignore(tmp_path)).files)
    (tmp_path / "a.py").chmod(0o755)
    third = digest(collect(tmp_path, load_ignore(tmp_path)).files)
    assert len({first, second, third}) == 3


def test_tar_is_deterministic(tmp_path):
    _tree(tmp_path, {"a.py": "1", "b/c.py": "2"})
    files = collect(tmp_path, load_ignore(tmp_path)).files
    blobs = []
    for _ in range(2):
        out = io.BytesIO()
        write_tar(out, "FROM x\n", files)
        blobs.append(out.getvalue())
        (tmp_path / "a.py").touch()  # a new mtime changes nothing
    assert blobs[0] == blobs[1]
    with tarfile.open(fileobj=io.BytesIO(blobs[0])) as tar:
        assert tar.getnames() == ["Dockerfile", "app/a.py", "app/b/c.py"]
        assert {m.mtime for m in tar} == {0} and {m.uid for m in tar} == {0}
