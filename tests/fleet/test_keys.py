"""Client keys from files: which files, and passphrases asked through the prompt (once per key)."""

from __future__ import annotations

import pytest

from beamctl.transport.keys import KeyRing, _Locked
from beamctl.transport.sshconfig import load_config, resolve
from tests.fleet.conftest import keygen


def test_default_key_files_in_sshs_order_when_no_identity_file(home):
    for name in ("id_rsa", "id_ed25519"):
        (home.ssh / name).write_text("x")
    t = resolve("box", load_config(home.config))
    assert KeyRing().files(t) == [home.ssh / "id_ed25519", home.ssh / "id_rsa"]


def test_identity_files_replace_the_defaults(home):
    (home.ssh / "id_ed25519").write_text("x")
    home.config.write_text("Host box\n  IdentityFile ~/.ssh/special\n")
    t = resolve("box", load_config(home.config))
    assert KeyRing().files(t) == [home.ssh / "special"]


def test_a_plain_key_loads(home):
    key = KeyRing().load(keygen(home.key))
    assert key.get_name() == "ssh-ed25519"


def test_missing_and_unreadable_files_say_so(home):
    (home.ssh / "junk").write_text("not a key\n")
    ring = KeyRing()
    assert ring.load(home.ssh / "nope") == "missing"
    assert ring.load(home.ssh / "junk").startswith("unreadable: ")


def test_a_locked_key_without_a_prompt_is_refused(home):
    with pytest.raises(_Locked):
        KeyRing(prompt=None).load(keygen(home.key, passphrase="s3cret word"))


def test_a_locked_key_is_asked_for_once(home):
    path = keygen(home.key, kind="ecdsa", passphrase="s3cret word")
    asked = []

    def prompt(question: str) -> str:
        asked.append(question)
        return "s3cret word"

    ring = KeyRing(prompt=prompt)
    assert ring.load(path).get_name() == "ecdsa-sha2-nistp256"
    assert ring.load(path).get_name() == "ecdsa-sha2-nistp256"
    assert asked == [f"Enter passphrase for key {path}: "]


def test_three_wrong_passphrases_give_up(home):
    path = keygen(home.key, passphrase="right")
    answers = iter(["wrong1", "wrong2", "wrong3", "right"])
    assert KeyRing(prompt=lambda q: next(answers)).load(path) == "wrong passphrase"
    assert next(answers) == "right"  # asked three times, not four


def test_declining_to_answer_is_a_locked_key(home):
    path = keygen(home.key, passphrase="right")
    with pytest.raises(_Locked):
        KeyRing(prompt=lambda q: None).load(path)


@pytest.mark.parametrize("kind, extra, name", [("ed25519", [], "ssh-ed25519"),
                                               ("ecdsa", ["-m", "PEM"], "ecdsa-sha2-nistp256")])
def test_both_key_formats_open_with_the_right_passphrase(home, kind, extra, name):
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-a", "1", *extra, "-N", "pass phrase", "-C", "", "-f", str(home.key)],
                   check=True)
    answers = iter(["wrong", "pass phrase"])
    key = KeyRing(prompt=lambda q: next(answers)).load(home.key)
    assert not isinstance(key, str) and key.get_name() == name
