"""The agent's pure parts: container arguments, GPU placement, records, secrets, the control protocol."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from beamctl.protocol.wire import AgentClient
from beamctl.transport.local import LocalTransport
from beamctl.agent import control
from beamctl.protocol import gpus
from beamctl.agent.container_args import create_args
from beamctl.protocol.spec import AppSpec, VolumeSpec, spec_from_config
from beamctl.agent.store import Store
from beamctl.config import load
from tests.conftest import FIXTURES


def test_spec_from_config_round_trips_through_json():
    config, _ = load(FIXTURES / "good" / "full.yaml")
    spec = spec_from_config(config, "beamctl/sentiment:abc")
    assert AppSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert spec.gpu == ("H100",) and spec.volumes[1] == VolumeSpec("scratch", "/app/scratch")
    assert spec.secret_names == ("HF_TOKEN",) and "HF_TOKEN" not in json.dumps(spec.to_json()["env"])


def test_create_args_whole_value(monkeypatch):
    monkeypatch.setattr("secrets.token_hex", lambda n: "abcdef")
    spec = AppSpec("demo", "beamctl/demo:1", workers=2, timeout_s=30, cpu=0.5, memory_bytes=256 << 20,
                   volumes=(VolumeSpec("models", "/models"),), cache_dir="/models/cache", env={"A": "1"},
                   secret_names=("KEY",))
    args = create_args(spec, 3, "agent1", Path("/var/lib/beamctl"), {"KEY": "s3cret"})
    assert args == {
        "image": "beamctl/demo:1", "command": ["serve"], "name": "beamctl-demo-v3-abcdef",
        "environment": {"HOME": "/tmp", "A": "1", "KEY": "s3cret", "BEAMCTL_WORKERS": "2", "BEAMCTL_TIMEOUT": "30",
                        "BEAMCTL_PORT": "8000", "BEAMCTL_MODEL_CACHE": "/models/cache"},
        "labels": {"dev.beamctl.app": "demo", "dev.beamctl.version": "3", "dev.beamctl.agent": "agent1"},
        "volumes": {"/var/lib/beamctl/volumes/demo/models": {"bind": "/models", "mode": "rw"}},
        "nano_cpus": 500_000_000, "mem_limit": 256 << 20, "stop_signal": "SIGTERM",
        "tmpfs": {"/tmp": "rw,nosuid,nodev,size=67108864"},
        "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"], "pids_limit": 4096, "read_only": True,
        "log_config": {"type": "json-file", "config": {"max-size": "20m", "max-file": "3"}},
    }
    assert "s3cret" not in json.dumps(args["command"]) + args["name"]
    tiny = create_args(AppSpec("demo", "i", cpu=1e-10), 1, "a", Path("/d"), {})
    assert tiny["nano_cpus"] == 10_000_000  # 0 would be the engine's "unlimited"


SMI = """0, NVIDIA H100 80GB HBM3, 81559, 580.159.04
1, NVIDIA H100 80GB HBM3, 81559, 580.159.04
"""


def test_gpu_inventory_and_placement():
    found = gpus.parse(SMI)
    assert [(g.index, g.canonical, g.memory_mib) for g in found] == [(0, "H100", 81559), (1, "H100", 81559)]
    assert gpus.placement(("A100-80", "H100:2"), found) == ("H100", 2)
    assert gpus.placement((), []) == ("", 0)
    assert gpus.placement(("T4",), []) == "this host has no GPU (nvidia-smi lists none); the app asks for T4"
    assert gpus.placement(("H100:4",), found) == ("this host has NVIDIA H100 80GB HBM3, NVIDIA H100 80GB HBM3; "
                                                  "the app asks for H100:4")


def test_records_survive_reopening_and_cut_off_tasks_are_marked_lost(tmp_path):
    store = Store(tmp_path / "agent.db")
    assert store.ensure_app("demo", "sha256:" + "a" * 64) is True
    version = store.new_version("demo", "img", {"workers": 1})
    store.task_started("t-1", "demo", 100.0)
    store.task_started("t-2", "demo", 101.0)
    store.task_finished({"task_id": "t-1", "version": version, "status": "succeeded", "start": "cold",
                         "finished": 102.0, "phases": {"task_run": 0.5}, "total": 2.0, "result": {"x": 1},
                         "error": None, "container": "abc"})
    again = Store(tmp_path / "agent.db")
    assert again.mark_lost() == 1
    assert again.task("t-1")["result"] == {"x": 1} and again.task("t-2")["status"] == "lost"
    assert again.token_digest("demo") == "sha256:" + "a" * 64 and again.ensure_app("demo", "other") is False
    assert again.token_digest("demo") == "sha256:" + "a" * 64 and not again.has_app("nope")
    assert [t["task_id"] for t in again.tasks("demo", 10)] == ["t-2", "t-1"]


def test_secrets_come_from_env_then_a_private_file(tmp_path, monkeypatch):
    from beamctl import secrets

    path = tmp_path / "secrets.env"
    path.write_text("# mine\nA=from-file\nB=b-file\n")
    path.chmod(0o600)
    monkeypatch.setenv("BEAMCTL_SECRETS_FILE", str(path))
    monkeypatch.setenv("A", "from-env")
    assert secrets.gather(("A", "B")) == {"A": "from-env", "B": "b-file"}
    with pytest.raises(secrets.SecretError) as e:
        secrets.gather(("C",))
    assert e.value.message == "no value for secret C"
    path.chmod(0o644)
    with pytest.raises(secrets.SecretError) as e:
        secrets.gather(("B",))
    assert e.value.message == f"{path} can be read by other users (mode 644)" and e.value.hint == f"chmod 600 {path}"


class _FakeAgent:
    def status(self, app=None):
        return {"apps": [app]}

    def stop(self, app):
        from beamctl.protocol.errors import AgentError

        raise AgentError(f"{app} is not running here", hint="deploy it")


def test_control_protocol_answers_and_errors():
    agent = _FakeAgent()
    assert control.handle(agent, {"op": "status", "args": {"app": "x"}}) == {"ok": True, "result": {"apps": ["x"]}}
    assert control.handle(agent, {"op": "stop", "args": {"app": "x"}}) == {
        "ok": False, "error": "x is not running here", "hint": "deploy it", "data": {}}
    assert control.handle(agent, {"op": "rm -rf", "args": {}})["error"] == "unknown operation 'rm -rf'"
    assert control.handle(agent, {"op": "status", "args": {"bogus": 1}})["error"].startswith("bad arguments")


def test_control_socket_round_trip(tmp_path):
    server = control.serve(_FakeAgent(), tmp_path / "agent.sock")
    try:
        assert oct((tmp_path / "agent.sock").stat().st_mode & 0o777) == "0o600"
        client = AgentClient(LocalTransport(tmp_path / "agent.sock", timeout=5))
        assert client.request("status", app="a")["result"] == {"apps": ["a"]}
        assert client.request("status", app="b")["result"] == {"apps": ["b"]}  # same connection
        raw = socket.socket(socket.AF_UNIX)
        raw.connect(str(tmp_path / "agent.sock"))
        raw.sendall(b"not json\n")
        assert json.loads(raw.makefile().readline()) == {"ok": False, "error": "the request is not JSON"}
        raw.close()
    finally:
        server.shutdown()
        server.server_close()


def test_the_agent_never_inherits_the_users_secrets():
    from beamctl.transport.local import agent_env

    env = {"PATH": "/bin", "HOME": "/root", "API_TOKEN": "s3cret", "AWS_SECRET_ACCESS_KEY": "x",
           "DOCKER_HOST": "unix:///d.sock", "BEAMCTL_AGENT_HTTP": "127.0.0.1:0"}
    assert agent_env(env) == {"PATH": "/bin", "HOME": "/root", "DOCKER_HOST": "unix:///d.sock",
                              "BEAMCTL_AGENT_HTTP": "127.0.0.1:0"}


def test_a_container_being_deployed_is_never_idled_out():
    from beamctl.agent.pool import Live, Pool
    from beamctl.agent.profile import ContainerTimeline

    pool = Pool("demo", None, lambda v: {}, workers=1, keep_warm_s=60, on_event=lambda m: None,
                on_retire=lambda live: None)
    pool.version = 1
    new = Live("c2", 2, ContainerTimeline(0, 0), state="ready", last_used=0.0)
    old = Live("c1", 1, ContainerTimeline(0, 0), state="ready", last_used=0.0)
    pool.live = [old, new]
    pool.pending.add(2)
    assert pool.idle_out(now=100.0) == [old]  # v1 past keep_warm goes; v2, mid-deploy, stays
    pool.pending.clear()
    pool.version = 2
    assert pool.idle_out(now=100.0) == [new]


def test_log_lines_redrawn_with_carriage_returns_keep_their_time_and_last_text():
    from beamctl.agent.containers import _shown, _stamped

    ts, text = _stamped(_shown("2026-11-28T21:00:00.5Z Loading 10%\rLoading 50%\rLoading 100%\r"))
    assert text == "Loading 100%" and ts == 1795899600.5


def test_a_versions_health_timeout_travels_in_its_spec_and_older_records_take_the_schemas_default():
    from beamctl.protocol.spec import health_timeout
    from beamctl.agent.versions import unchanged

    config, _ = load(FIXTURES / "good" / "full.yaml")
    spec = spec_from_config(config, "beamctl/sentiment:abc")
    assert spec.health_timeout_s == config.rollout.health_timeout_s and spec.health_timeout == spec.health_timeout_s
    older = {k: v for k, v in spec.to_json().items() if k != "health_timeout_s"}
    assert health_timeout(older) == 300.0  # schemas/beam.schema.json rollout.health_timeout's default
    assert AppSpec.from_json(older).health_timeout == 300.0
    # waiting longer is no new version; anything that runs is
    row = {"spec": json.loads(json.dumps(spec.to_json()))}  # as stored
    assert unchanged(row, {**spec.to_json(), "health_timeout_s": 5.0}, {}, {})
    assert not unchanged(row, {**spec.to_json(), "workers": spec.workers + 1}, {}, {})


def test_an_agent_db_from_before_traces_gains_the_column_and_keeps_its_tasks(tmp_path):
    import sqlite3

    from beamctl.agent.store import Store

    db = sqlite3.connect(str(tmp_path / "agent.db"))
    db.executescript("CREATE TABLE tasks (id TEXT PRIMARY KEY, app TEXT NOT NULL, version INTEGER, status TEXT "
                     "NOT NULL, start TEXT, received REAL NOT NULL, finished REAL, phases TEXT, total REAL, "
                     "result TEXT, error TEXT, container TEXT);"
                     "INSERT INTO tasks (id, app, status, received) VALUES ('t-0123456789ab', 'a', 'failed', 1);")
    db.commit()
    db.close()
    store = Store(tmp_path / "agent.db")
    assert store.task("t-0123456789ab")["trace"] is None
    store.task_started("t-aaaaaaaaaaaa", "a", 2.0)
    store.task_finished({"task_id": "t-aaaaaaaaaaaa", "version": 1, "status": "failed", "start": "warm",
                         "finished": 3.0, "phases": {}, "total": 1.0, "result": None, "error": "E: x",
                         "trace": "Traceback\nE: x", "container": "c"})
    assert store.task("t-aaaaaaaaaaaa")["trace"] == "Traceback\nE: x"
    assert [t["task_id"] for t in store.tasks("a", 10, "failed")] == ["t-aaaaaaaaaaaa", "t-0123456789ab"]
    assert store.tasks(None, 10, "succeeded") == []


def test_an_older_agents_clear_tokens_move_out_of_the_database_and_loose_files_are_tightened(tmp_path):
    import sqlite3
    import stat

    from beamctl.agent import tokens
    from beamctl.agent.state import AgentState

    data = tmp_path / "data"
    (data / "logs").mkdir(parents=True)
    (data / "logs" / "demo.log").write_text("app output\n")
    os.chmod(data, 0o755)
    os.chmod(data / "logs" / "demo.log", 0o644)
    (data / "volumes" / "demo" / "models").mkdir(parents=True)
    os.chmod(data / "volumes" / "demo" / "models", 0o755)  # the app's: left as it is
    old = Store(data / "agent.db")
    old._q("INSERT INTO apps (app, token) VALUES (?, ?)", ("demo", "clear-token-" + "x" * 30))
    os.chmod(data / "agent.db", 0o644)

    state = AgentState(data, SimpleNamespace(), gpus=[], snapshot_ram=0)
    stored = state.store.token_digest("demo")
    assert stored == tokens.digest("clear-token-" + "x" * 30) and tokens.matches("clear-token-" + "x" * 30, stored)
    assert not tokens.matches("clear-token-" + "x" * 29, stored) and not tokens.matches("", None)
    assert tokens.read(data, "demo") == "clear-token-" + "x" * 30
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert (mode(data), mode(data / "agent.db"), mode(data / "logs" / "demo.log")) == (0o700, 0o600, 0o600)
    assert (mode(data / "tokens"), mode(data / "tokens" / "demo"), mode(data / "volumes")) == (0o700, 0o600, 0o700)
    assert mode(data / "volumes" / "demo" / "models") == 0o755
    raw = sqlite3.connect(data / "agent.db").execute("SELECT token FROM apps").fetchall()
    assert raw == [(stored,)]


def test_a_runtime_that_reads_a_file_gets_its_secrets_and_key_there_never_in_the_environment():
    spec = AppSpec("demo", "beamctl/demo:1", secret_names=("KEY",), runtime_api=2)
    values = {"KEY": "s3cret", "BEAMCTL_RUNTIME_KEY": "k" * 64}
    args = create_args(spec, 3, "agent1", Path("/d"), values, secrets_file=Path("/d/secrets/demo-v3.json"))
    assert "KEY" not in args["environment"] and "s3cret" not in json.dumps(args["environment"])
    assert args["volumes"]["/d/secrets/demo-v3.json"] == {"bind": "/run/beamctl/secrets.json", "mode": "ro"}
    assert args["runtime_key"] == "k" * 64
    old = create_args(AppSpec("demo", "i", secret_names=("KEY",)), 3, "a", Path("/d"), {"KEY": "s3cret"},
                      secrets_file=Path("/d/secrets/demo-v3.json"))  # a version whose image reads the environment
    assert old["environment"]["KEY"] == "s3cret" and "runtime_key" not in old and len(old["volumes"]) == 0


def test_the_runtimes_names_are_the_protocols():
    from beamctl.protocol import spec
    from beamctl.runtime import settings

    assert (settings.SECRETS_PATH, settings.RUNTIME_KEY, settings.KEY_HEADER) == (
        spec.SECRETS_PATH, spec.RUNTIME_KEY, spec.KEY_HEADER)


def test_the_runtime_loads_secrets_into_its_environment_and_keeps_the_key_out(tmp_path, monkeypatch):
    from beamctl.runtime import settings

    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"HF_TOKEN": "hf_x", "BEAMCTL_RUNTIME_KEY": "k" * 64}))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert settings.load_secrets(str(path)) == "k" * 64
    assert os.environ["HF_TOKEN"] == "hf_x" and "BEAMCTL_RUNTIME_KEY" not in os.environ
    assert settings.load_secrets(str(tmp_path / "none.json")) is None
    path.write_text("[1]")
    with pytest.raises(settings.SettingsError, match="not a JSON object"):
        settings.load_secrets(str(path))


def test_a_sealed_folder_is_its_own_mount_with_nosuid_and_nodev():
    from beamctl.agent import seal

    info = ("36 25 8:1 /data /var/lib/beamctl/volumes/a/my\\040models rw,nosuid,nodev,relatime shared:1 - ext4 "
            "/dev/vda rw\n37 25 8:1 /x /var/lib/beamctl/volumes/b/x rw,nosuid,relatime shared:1 - ext4 /dev/vda rw\n")
    assert seal.sealed(Path("/var/lib/beamctl/volumes/a/my models"), info)
    assert not seal.sealed(Path("/var/lib/beamctl/volumes/b/x"), info)  # nodev missing
    assert not seal.sealed(Path("/var/lib/beamctl/volumes/c/x"), info)  # not a mount at all
