"""`hosts install` (beamctl/hosts/install.py) and the bridge (beamctl/agent/bridge.py).

Unit tests for the pure parts, then a real host of the test fleet: install, current, forced and
version upgrades, and a killed agent answered for by the bridge.
"""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from beamctl import __version__
from beamctl.agent import bridge, control
from beamctl.hosts import criu, install
from beamctl.protocol import layout
from beamctl.transport.remote import command_line

NO_AGENT = {"ok": False, "error": "no agent is running on this host"}


# --- pure parts ----------------------------------------------------------------------------------------

def test_the_systemd_unit_runs_the_venv_agent_and_restarts_it():
    assert "ExecStart=/opt/beamctl/agent/venv/bin/python -m beamctl.agent --data-dir /var/lib/beamctl\n" \
        in install.UNIT_TEXT
    assert "Restart=always\n" in install.UNIT_TEXT and "WantedBy=multi-user.target" in install.UNIT_TEXT
    assert "KillMode=process" in install.UNIT_TEXT  # stopping the agent never touches the apps' containers


def test_remote_commands_are_fixed_lists_with_quoted_arguments():
    argv = install.install_argv("background", "beamctl-0.1.0-py3-none-any.whl")
    assert argv[:2] == ["sh", "-c"] and argv[2] == install.INSTALL and argv[3] == "sh"
    assert argv[4:6] == ["background", "beamctl-0.1.0-py3-none-any.whl"]
    assert argv[6:] == [install.UNIT_TEXT, install.SUPERVISOR]
    line = command_line(argv)  # every word quoted for the login shell
    assert line.startswith("sh -c 'set -eu")
    assert install.probe_argv() == ["sh", "-c", install.PROBE + "\n" + criu.PROBE, "sh", install.PYTHON,
                                    install.DATA_DIR]
    assert layout.BRIDGE_ARGV == (install.PYTHON, "-m", "beamctl.agent.bridge", "--data-dir", "/var/lib/beamctl")
    assert (install.PYTHON, install.DATA_DIR) == (layout.PYTHON, layout.DATA_DIR)  # where the client reaches it
    assert "/pip\" install -q --no-index" in install.INSTALL  # never the network on the host; pip from its wheel
    assert "python3 -m venv --without-pip" in install.INSTALL  # no python3-venv (ensurepip) needed


def test_a_stale_supervisor_pid_kills_no_other_process(tmp_path):
    """After a reboot supervisor.pid names whatever process has that pid now: it must live on."""
    import subprocess
    import time

    script = tmp_path / "supervise.sh"
    script.write_text("#!/bin/sh\nsleep 30\n")
    script.chmod(0o755)
    stranger = subprocess.Popen(["sleep", "30"])
    supervisor = subprocess.Popen([str(script)])
    try:
        for pid, dies in ((stranger.pid, False), (supervisor.pid, True)):
            (tmp_path / "supervisor.pid").write_text(f"{pid}\n")
            subprocess.run(["sh", "-c", f"D={tmp_path}\n" + install.STOP_SUPERVISOR], check=True, timeout=10)
            proc = stranger if pid == stranger.pid else supervisor
            deadline = time.monotonic() + 5
            while dies and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert (proc.poll() is not None) == dies, pid
            assert not (tmp_path / "supervisor.pid").exists()
    finally:
        stranger.kill()
        supervisor.kill()


def test_probe_output_is_read_into_facts():
    facts = install.parse_probe("uid 0\narch x86_64\npython 3.11\nsystemd yes\nagent 0.0.9\nrunning 42\n")
    assert facts == {"uid": "0", "arch": "x86_64", "python": "3.11", "systemd": "yes", "agent": "0.0.9",
                     "running": "42"}
    assert "agent" not in install.parse_probe("uid 0\narch x86_64\npython 3.11\n")


def test_the_agent_wheel_is_built_once_per_content_and_holds_beamctl(tmp_path):
    wheel = install.agent_wheel(tmp_path)
    assert wheel.name == f"beamctl-{__version__}-py3-none-any.whl"
    assert install.agent_wheel(tmp_path) == wheel
    names = zipfile.ZipFile(wheel).namelist()
    assert "beamctl/agent/bridge.py" in names and "beamctl/agent/__main__.py" in names
    assert f"beamctl-{__version__}.dist-info/RECORD" in names
    assert not any("__pycache__" in n for n in names)


def test_the_bridge_answers_for_a_missing_agent_once_per_request(tmp_path):
    out = io.BytesIO()
    bridge.pump(io.BytesIO(b'{"op": "version"}\n{"op": "status"}\n'), out, tmp_path / "agent.sock")
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [{k: a[k] for k in ("ok", "error")} for a in answers] == [NO_AGENT, NO_AGENT]


def test_the_bridge_passes_lines_to_the_agent_socket_and_back(tmp_path):
    class FakeAgent:
        def about(self):
            return {"version": "9.9.9", "pid": 1}

    server = control.serve(FakeAgent(), tmp_path / "agent.sock")
    try:
        out = io.BytesIO()
        bridge.pump(io.BytesIO(b'{"op": "version"}\n\n{"op": "nope"}\n'), out, tmp_path / "agent.sock")
    finally:
        server.shutdown()
    first, second = [json.loads(line) for line in out.getvalue().splitlines()]
    assert first == {"ok": True, "result": {"version": "9.9.9", "pid": 1}}
    assert second["ok"] is False and "unknown operation" in second["error"]


# --- a real host ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def one(fleet):
    return fleet(1)


@pytest.fixture
def host(one, monkeypatch):
    one.apply_env(monkeypatch)
    return one[0]


def installed(cli, *args):
    result = cli("hosts", "install", *args, "--json")
    assert result.code == 0, result.err
    (r,) = json.loads(result.out)["hosts"]
    return r, result.err


def ask(host, op="version"):
    """The agent's raw answer through the bridge, on a connection of its own (hosts/host.SshHost)."""
    from beamctl.hosts.host import SshHost
    from beamctl.transport.ssh import Ssh

    reached = SshHost(host.name, host.name, Ssh())
    try:
        return reached.request(op)
    finally:
        reached.close()


@pytest.mark.integration
def test_install_then_current_then_forced_upgrade(cli, host):
    r, _ = installed(cli)
    assert (r["host"], r["action"], r["version"], r["ok"]) == (host.name, "installed", __version__, True)
    assert r["bytes_sent"] > 100_000
    has_systemd = host.exec(["sh", "-c", "test -d /run/systemd/system && echo yes || echo no"]).stdout.strip()
    assert r["supervisor"] == ("systemd" if has_systemd == "yes" else "background")
    answer = ask(host)
    assert answer["ok"] and answer["result"]["version"] == __version__ and answer["result"]["pid"] == r["pid"]
    packages = host.exec(["/opt/beamctl/agent/venv/bin/python", "-m", "pip", "list", "--format", "json"]).stdout
    names = {p["name"].lower() for p in json.loads(packages)}  # beamctl and the docker SDK's wheels only
    assert {"beamctl", "docker", "requests"} <= names and not names & {"typer", "rich", "paramiko", "jsonschema"}

    again, err = installed(cli, host.name)
    assert (again["action"], again["bytes_sent"], again["pid"]) == ("current", 0, r["pid"])
    assert "nothing sent" in err

    forced, _ = installed(cli, "--force")
    assert forced["action"] == "upgraded" and forced["bytes_sent"] > 0 and forced["pid"] != r["pid"]
    assert ask(host)["result"]["pid"] == forced["pid"]

    code = cli("hosts", "check", "--json")
    facts = json.loads(code.out)["hosts"][0]["facts"]
    assert (facts["agent_installed"], facts["agent_version"]) == (True, __version__)


@pytest.mark.integration
def test_an_older_agent_is_upgraded(cli, host):
    before = ask(host)["result"]["pid"]
    host.exec(["sh", "-c", "sed -i 's/^__version__ = .*/__version__ = \"0.0.1\"/' "
               "/opt/beamctl/agent/venv/lib/python3*/site-packages/beamctl/__init__.py"])
    old = host.exec([install.PYTHON, "-m", "beamctl.agent", "--version"]).stdout.strip()
    assert old == "beamctl-agent 0.0.1"

    r, _ = installed(cli)
    assert (r["action"], r["version"]) == ("upgraded", __version__) and r["pid"] != before
    assert host.exec([install.PYTHON, "-m", "beamctl.agent", "--version"]).stdout.strip() == \
        f"beamctl-agent {__version__}"


@pytest.mark.integration
def test_a_killed_agent_is_reported_by_the_bridge_and_started_again(cli, host):
    pid = ask(host)["result"]["pid"]
    kill_both = (f"kill $(cat {install.DATA_DIR}/supervisor.pid); kill {{pid}}; "
                 f"while kill -0 {{pid}} 2>/dev/null; do sleep 0.1; done")
    host.exec(["sh", "-c", kill_both.format(pid=pid)])  # as a reboot leaves a host without systemd
    answer = ask(host)  # the bridge starts the restart loop the install left, and the agent answers
    assert answer["ok"] and answer["result"]["pid"] != pid, answer
    pid = answer["result"]["pid"]

    # no loop to start again (a host an older beamctl installed had none): the bridge says so, install starts it
    host.exec(["sh", "-c", kill_both.format(pid=pid) + f"; mv {install.ROOT}/supervise.sh {install.ROOT}/off.sh"])
    answer = ask(host)
    assert {k: answer[k] for k in ("ok", "error")} == NO_AGENT, answer

    r, err = installed(cli)
    assert (r["action"], r["bytes_sent"]) == ("started", 0) and "not running" in err
    assert ask(host)["result"]["pid"] == r["pid"] != pid
