"""Remote commands are lists; every word reaches the remote program as exactly that word."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from beamctl.transport.ssh import SshTransport, command_line

WORDS = ["printf", "%s\\n", "a b", "$HOME", "; id", "it's", "`id`", "-oProxyCommand=x", "*", "", "new\nline",
         "ünï"]


def test_every_word_is_quoted():
    assert command_line(["docker", "load", "-i", "/tmp/a b"]) == "docker load -i '/tmp/a b'"
    assert command_line(["echo", "$(id)", ";", "x'y"]) == "echo '$(id)' ';' 'x'\"'\"'y'"


def test_a_posix_shell_hands_the_program_the_same_words():
    """What sshd does with the line: `$SHELL -c LINE`; the program must see WORDS[2:] unchanged."""
    out = subprocess.run(["sh", "-c", command_line(WORDS)], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:-1] == [w for w in WORDS[2:] for w in w.split("\n")]
    assert shlex.split(command_line(WORDS)) == WORDS


@pytest.mark.parametrize("bad", ["echo hi", [], ["echo", "nul\0byte"], ["echo", 3]])
def test_a_command_must_be_a_list_of_words(bad):
    with pytest.raises(ValueError):
        command_line(bad)


def test_a_transport_refuses_a_bad_command_before_connecting():
    with pytest.raises(ValueError):
        SshTransport("gpu1", "python3 -m beamctl.agent")  # type: ignore[arg-type]
