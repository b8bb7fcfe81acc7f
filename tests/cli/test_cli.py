from __future__ import annotations

import subprocess
import sys

from beamctl import __version__


def test_version(cli):
    result = cli("--version")
    assert (result.code, result.out) == (0, f"beamctl {__version__}\n")


def test_help_lists_only_working_commands(cli):
    result = cli("--help")
    assert result.code == 0
    section = result.out.split("Commands:")[1].splitlines()
    commands = [l.split()[0] for l in section if l.startswith("  ") and not l.startswith("   ")]
    assert commands == ["init", "validate", "schema", "build", "deploy", "call", "tasks", "profile", "logs",
                        "status", "stop", "exec", "shell", "rollback", "unlock", "apps", "dashboard", "hosts", "secrets",
                        "token"]


def test_unknown_option_is_a_usage_error(cli):
    result = cli("validate", "--bogus")
    assert result.code == 2
    assert "No such option: --bogus" in result.err
    assert "Traceback" not in result.err


def test_unknown_command(cli):
    result = cli("frobnicate")
    assert result.code == 2 and "No such command 'frobnicate'" in result.err


def test_internal_errors_are_one_line_without_traceback(cli, monkeypatch):
    import beamctl.config

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(beamctl.config, "validate_file", boom)
    result = cli("validate")
    assert result.code == 1
    assert result.err == ("error: internal error: RuntimeError: boom\n"
                          "hint: rerun with --debug for the traceback, and report it\n")


def test_debug_shows_the_traceback(monkeypatch, tmp_path):
    code = ("import beamctl.config as c\n"
            "def boom(*a, **k): raise RuntimeError('boom')\n"
            "c.validate_file = boom\n"
            "from beamctl.cli import main\nraise SystemExit(main(['--debug', 'validate']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "RuntimeError: boom" in proc.stderr


def test_console_script_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "beamctl", "validate", "-f", str(tmp_path / "x.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {tmp_path / 'x.yaml'}: no such file\n")
    assert proc.stdout == ""


def test_a_remote_command_that_failed_exits_4_whatever_its_own_status(monkeypatch, capsys):
    """A RemoteError carries the host command's status apart (remote_exit): beamctl exits REMOTE (4), never 127,
    and a command cut off (no status) is no crash."""
    from beamctl.cli import main
    from beamctl.transport.errors import RemoteError

    for remote in (127, None):
        def boom(*args, **kwargs):
            raise RemoteError("gpu1", "docker load", remote, "sh: 1: docker: not found")

        monkeypatch.setattr("beamctl.hosts.inventory.lookup", boom)
        assert main(["hosts", "check", "gpu1"]) == 4
        assert "error: gpu1: `docker load`" in capsys.readouterr().err
