"""Every app command over fake hosts (beamctl/hosts/fake.py), through the CLI: this machine alone and three
hosts, one of which fails mid-way. No Docker, no SSH: the build and the ship are the only other fakes
(`beamctl.image.build_app`, `beamctl.fleet.ship.ship_images`), and hosts come from the one seam every
command takes them from (`fleet.query.hosts_of`). The real parts: tests/fleet (SSH test hosts) and
tests/agent (the agent on Docker)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from beamctl.fleet import query
from beamctl.fleet.plan import Survey
from beamctl.fleet.ship import ShipResult
from beamctl.hosts.fake import FakeAgent, FakeHost

IMAGE = "beamctl/hello:0123456789ab"


class Built:
    image, id = IMAGE, "sha256:" + "ab" * 32


class World:
    """The fake hosts of one test, and what the build and the ship were asked."""

    def __init__(self, hosts: list[FakeHost]) -> None:
        self.hosts = hosts
        self.builds = 0
        self.shipped: list[list[str]] = []

    def __getitem__(self, name: str) -> FakeHost:
        return next(h for h in self.hosts if h.name == name)


def app_dir(tmp_path: Path, hosts: list[str]) -> Path:
    d = tmp_path / "hello"
    d.mkdir()
    (d / "app.py").write_text("def handler(context, **inputs):\n    return inputs\n")
    listed = "".join(f"  - root@{h}\n" for h in hosts)
    (d / "beam.yaml").write_text("name: hello\nhandler: app:handler\n" + (f"hosts:\n{listed}" if hosts else ""))
    return d


@pytest.fixture
def world(monkeypatch):
    def make(hosts: list[FakeHost]) -> World:
        w = World(hosts)

        def build(config, progress, keep=None):
            w.builds += 1
            return Built()

        def ship(remote, image_ref, image_id, progress):
            w.shipped.append([h.name for h in remote])
            return {h.name: ShipResult(h.name, "sent", 100, 0.1) for h in remote}

        monkeypatch.setattr("beamctl.image.build_app", build)
        monkeypatch.setattr("beamctl.fleet.ship.ship_images", ship)
        monkeypatch.setattr(query, "hosts_of", lambda entries, ssh=None: hosts)
        return w

    return make


def here(**kw) -> list[FakeHost]:
    return [FakeHost("local", local=True, **kw)]


def three(**fail) -> list[FakeHost]:
    """gpu1..gpu3; `fail` gives gpu2 its failures."""
    return [FakeHost("gpu1"), FakeHost("gpu2", fail=fail), FakeHost("gpu3")]


# --- deploy ----------------------------------------------------------------------------------------------

def test_deploy_here_is_one_line_and_the_local_agent_is_started_not_shipped(world, cli, tmp_path):
    w = world(here())
    r = cli("deploy", cwd=app_dir(tmp_path, []))
    assert r.code == 0, r.err
    assert f"deployed hello v1 ({IMAGE}); endpoint http://127.0.0.1:8000/hello (token: beamctl status hello)" in r.err
    assert w["local"].installs == 1 and w.shipped == [] and w.builds == 1
    assert w["local"].ops() == ["version", "deploy"]
    assert w["local"].agent.locks == {}  # taken for the deploy, given back


def test_deploy_here_json_keeps_its_shape(world, cli, tmp_path):
    world(here())
    r = cli("deploy", "--json", cwd=app_dir(tmp_path, []))
    assert json.loads(r.out) == {"app": "hello", "version": 1, "image": IMAGE, "hosts": [
        {"host": "local", "status": "ready", "reason": None, "checkpoint": None}]}


def test_deploy_here_when_the_agent_stops_mid_deploy_says_so_exit_3(world, cli, tmp_path):
    world(here(fail={"deploy": ConnectionError("the agent closed the connection")}))
    r = cli("deploy", cwd=app_dir(tmp_path, []))
    assert r.code == 3
    assert "error: the agent stopped during the deploy of hello" in r.err


def test_deploy_here_that_does_not_start_shows_the_log_and_fails(world, cli, tmp_path):
    world(here(agent=FakeAgent(start_fails={1: "ValueError: boom"})))
    r = cli("deploy", cwd=app_dir(tmp_path, []))
    assert r.code == 1
    assert "  | ValueError: boom" in r.err
    assert "v1 of hello did not start: ValueError: boom (nothing was serving before)" in r.err


def test_deploy_to_three_hosts_one_failing_mid_way_is_partial(world, cli, tmp_path):
    w = world(three(deploy=ConnectionError("reset")))
    r = cli("deploy", "--json", cwd=app_dir(tmp_path, ["gpu1", "gpu2", "gpu3"]))
    assert r.code == 5
    got = json.loads(r.out)
    assert [(h["host"], h["status"]) for h in got["hosts"]] == [("gpu1", "ready"), ("gpu2", "failed"),
                                                                ("gpu3", "ready")]
    assert got["hosts"][1]["reason"] == "gpu2: unreachable: the connection broke: reset"
    assert got["version"] is None and got["hosts"][0]["version"] == 1
    assert got["hosts"][0]["ship"]["action"] == "sent"
    assert w.builds == 1 and w.shipped == [["gpu1", "gpu2", "gpu3"]]
    assert "partial deploy: 2 of 3 hosts run the new version" in r.err
    assert all(h.agent.locks == {} for h in w.hosts)  # every lock given back, the failed host's too


def test_deploy_to_three_hosts_one_not_installed_never_builds_for_it(world, cli, tmp_path):
    w = world(three(install=ConnectionError("no route")))
    r = cli("deploy", cwd=app_dir(tmp_path, ["gpu1", "gpu2", "gpu3"]))
    assert r.code == 5
    assert w.shipped == [["gpu1", "gpu3"]] and w["gpu2"].asked == []
    assert "gpu2: hello not deployed: gpu2: unreachable: the connection broke: no route" in r.err


# --- Ctrl-C ----------------------------------------------------------------------------------------------

def ctrl_c(times: int = 1) -> None:
    """Ctrl-C as the terminal sends it: SIGINT to this process (the main thread, where the command runs)."""
    for _ in range(times):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)


def one_at_a_time(d: Path) -> Path:
    (d / "beam.yaml").write_text((d / "beam.yaml").read_text() + "rollout:\n  max_parallel: 1\n")
    return d


def switching(host: FakeHost, presses: int, release: threading.Event | None = None) -> None:
    """`host`'s deploy: Ctrl-C pressed `presses` times while it runs; it then ends (after `release`)."""
    def deploy(spec_json, secret_values, health_timeout=None, token=None):
        ctrl_c(presses)
        if release is not None:
            release.wait(10)
        return {"ok": True, "result": host.agent.op_deploy(spec_json, secret_values)}

    host.answers["deploy"] = lambda args: deploy(**args)


def test_ctrl_c_during_the_switch_waits_for_the_started_host_and_starts_no_other(world, cli, tmp_path):
    hosts = three()
    switching(hosts[0], presses=1)
    w = world(hosts)
    r = cli("deploy", cwd=one_at_a_time(app_dir(tmp_path, ["gpu1", "gpu2", "gpu3"])))
    assert r.code == 130, r.err
    assert "interrupted: gpu1 is switching to the new version and will finish (or keep the old one if the new " \
           "fails its health check); waiting for it; gpu2, gpu3 will not be started. Ctrl-C again to leave now" in r.err
    assert "ready  gpu1: hello v1" in r.err
    assert "error: gpu2: hello not deployed: not started: the deploy was interrupted (Ctrl-C) before this host's " \
           "turn; it keeps its version" in r.err
    assert r.err.rstrip().endswith("error: interrupted (Ctrl-C): the switch that had started finished; 1 of 3 hosts "
                                   "run the new version; the other 2 keep their version")
    assert [h.agent.active.get("hello") for h in hosts] == [1, None, None]
    assert "deploy" not in w["gpu2"].ops() and "deploy" not in w["gpu3"].ops()
    assert all(h.agent.locks == {} for h in hosts)  # given back


def test_ctrl_c_twice_leaves_at_once_and_names_what_each_host_does(world, cli, tmp_path):
    hosts = three()
    release = threading.Event()
    switching(hosts[0], presses=2, release=release)
    world(hosts)
    started = time.monotonic()
    r = cli("deploy", cwd=one_at_a_time(app_dir(tmp_path, ["gpu1", "gpu2", "gpu3"])))
    left_after = time.monotonic() - started
    release.set()
    assert r.code == 130 and left_after < 5, r.err
    assert "  gpu1: was switching: it finishes on its own, or keeps its old version if the new one fails its " \
           "health check\n  gpu2: not started: keeps its version\n  gpu3: not started: keeps its version\n" \
           "error: deploy interrupted during the switch\nhint: beamctl status APP shows where each host ended" in r.err
    for _ in range(50):  # the host goes on without us
        if hosts[0].agent.active.get("hello") == 1:
            break
        time.sleep(0.1)
    assert [h.agent.active.get("hello") for h in hosts] == [1, None, None]
    assert all(h.agent.locks == {} for h in hosts)


def test_ctrl_c_while_sending_changes_nothing_and_says_so(world, cli, tmp_path, monkeypatch):
    hosts = three()
    world(hosts)

    def ship(remote, image_ref, image_id, progress):
        raise KeyboardInterrupt

    monkeypatch.setattr("beamctl.fleet.ship.ship_images", ship)
    r = cli("deploy", cwd=app_dir(tmp_path, ["gpu1", "gpu2", "gpu3"]))
    assert r.code == 130
    assert "  gpu1: not changed: keeps its version\n" in r.err
    assert "error: deploy interrupted while sending the image: nothing changed on any host\nhint: layers that " \
           "reached a host whole are kept there: the next deploy sends only the rest" in r.err
    assert all("deploy" not in h.ops() and h.agent.locks == {} for h in hosts)


# --- rollback --------------------------------------------------------------------------------------------

def test_rollback_here_and_on_three_hosts(world, cli, tmp_path):
    w = world(here())
    d = app_dir(tmp_path, [])
    assert cli("deploy", cwd=d).code == 0 and cli("deploy", cwd=d).code == 0
    r = cli("rollback", "hello", cwd=d)
    assert r.code == 0 and "rolled back hello from v2 to v1" in r.err
    refused = cli("rollback", "hello", "--json", cwd=d)  # v1 is the first: nothing before it
    assert refused.code == 1 and json.loads(refused.out)["hosts"][0]["status"] == "refused"

    w = world(three(rollback=ConnectionError("reset")))
    for h in w.hosts:
        h.agent.op_deploy({"app": "hello", "image": "a"}, {})
        h.agent.op_deploy({"app": "hello", "image": "b"}, {})
    r = cli("rollback", "hello", "--json", "--host", "gpu1", cwd=tmp_path)
    assert r.code == 5
    assert [(h["host"], h["status"], h["version"]) for h in json.loads(r.out)["hosts"]] == [
        ("gpu1", "ready", 1), ("gpu2", "failed", None), ("gpu3", "ready", 1)]


# --- call, logs, status, tasks, profile, stop ------------------------------------------------------------

def served(hosts: list[FakeHost]) -> list[FakeHost]:
    for h in hosts:
        h.agent.op_deploy({"app": "hello", "image": IMAGE}, {})
    return hosts


def test_call_here_prints_the_result_and_names_the_task(world, cli, tmp_path):
    world(served(here()))
    r = cli("call", "hello", '{"name": "Ada"}', cwd=tmp_path)
    assert r.code == 0 and json.loads(r.out) == {"echo": {"name": "Ada"}}
    assert " cold " in r.err and "(beamctl profile t-" in r.err and " on " not in r.err


def test_call_on_three_hosts_goes_to_the_least_busy_and_survives_one_down(world, cli, tmp_path):
    w = world(served(three(status=ConnectionError("reset"))))
    busy = w["gpu1"].agent.op_status
    w["gpu1"].answers["status"] = lambda args: {"ok": True, "result": {"apps": [
        {**busy("hello")["apps"][0], "containers": [{"state": "ready", "busy": 2, "idle_s": 0}]}]}}
    r = cli("call", "hello", "--json", "--host", "gpu1", cwd=tmp_path)
    assert r.code == 0, r.err
    assert json.loads(r.out)["host"] == "gpu3" and "calling hello on gpu3" in r.err
    assert [op for op, _ in w["gpu3"].asked] == ["status", "call"]


def test_calls_to_three_idle_hosts_take_turns(world, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("BEAMCTL_CACHE_DIR", str(tmp_path / "cache"))
    world(served([FakeHost("gpu1"), FakeHost("gpu2"), FakeHost("gpu3")]))
    served_by = [json.loads(cli("call", "hello", "--json", "--host", "gpu1", cwd=tmp_path).out)["host"]
                 for _ in range(4)]
    assert served_by == ["gpu1", "gpu2", "gpu3", "gpu1"]


def test_logs_status_tasks_profile_and_stop_on_three_hosts_with_one_down(world, cli, tmp_path):
    w = world(served(three(logs=ConnectionError("reset"), status="the agent failed", tasks=EOFError(),
                           stop=ConnectionError("reset"))))
    task = w["gpu3"].agent.op_call("hello", {}, "t-0123456789ab")
    logs = cli("logs", "hello", "--host", "gpu1", cwd=tmp_path)
    assert logs.code == 5
    assert [line.split()[0] for line in logs.out.splitlines() if "v1 ready" in line] == ["gpu1", "gpu3"]
    assert "error: gpu2: unreachable: the connection broke: reset" in logs.err
    status = cli("status", "hello", "--json", "--host", "gpu1", cwd=tmp_path)
    assert status.code == 5
    assert [list(h) for h in json.loads(status.out)["hosts"]] == [["host", "status"], ["host", "error"],
                                                                   ["host", "status"]]
    tasks = cli("tasks", "--json", "--host", "gpu1", cwd=tmp_path)
    assert tasks.code == 5 and [(t["task_id"], t["host"]) for t in json.loads(tasks.out)] == [
        ("t-0123456789ab", "gpu3")]
    profile = cli("profile", task["task_id"], "--json", "--host", "gpu1", cwd=tmp_path)
    assert profile.code == 0 and json.loads(profile.out)["host"] == "gpu3"
    stop = cli("stop", "hello", "--host", "gpu1", cwd=tmp_path)
    assert stop.code == 5 and "gpu1: stopped hello v1 (volumes kept)" in stop.err


def test_logs_status_tasks_profile_and_stop_here(world, cli, tmp_path):
    w = world(served(here()))
    task = w["local"].agent.op_call("hello", {}, "t-0123456789ab")
    logs = cli("logs", "hello", cwd=tmp_path)
    assert logs.code == 0 and logs.err == "" and logs.out.splitlines()[0].split()[1:] == ["agent", "v1", "ready"]
    status = cli("status", "hello", "--json", cwd=tmp_path)
    assert json.loads(status.out)["apps"][0]["active_version"] == 1
    tasks = cli("tasks", "--json", cwd=tmp_path)
    assert [t["task_id"] for t in json.loads(tasks.out)] == [task["task_id"]] and "host" not in tasks.out
    profile = cli("profile", task["task_id"], cwd=tmp_path)
    assert profile.code == 0 and "host:" not in profile.out and "cold start, succeeded" in profile.out
    missing = cli("profile", "t-000000000000", cwd=tmp_path)
    assert missing.code == 1 and "error: no task t-000000000000" in missing.err
    stop = cli("stop", "hello", cwd=tmp_path)
    assert stop.code == 0 and "stopped hello v1 (volumes kept)" in stop.err
    again = cli("stop", "hello", cwd=tmp_path)  # stopping a stopped app is done
    assert again.code == 0 and again.err == "hello was already stopped (volumes kept)\n"
    gone = cli("logs", "nope", cwd=tmp_path)
    assert gone.code == 1 and "error: nope was never deployed here" in gone.err


def test_unlock_here_and_on_three_hosts(world, cli, tmp_path):
    w = world(here())
    w["local"].agent.op_lock_acquire("hello", {"who": "ada@desk", "pid": 7, "at": 0, "token": "x"})
    r = cli("unlock", "hello", cwd=tmp_path)
    assert r.code == 0 and "removed the lock held by ada@desk" in r.err and w["local"].agent.locks == {}
    world(three(lock_break=ConnectionError("reset")))
    r = cli("unlock", "hello", "--json", "--host", "gpu1", cwd=tmp_path)
    assert r.code == 5
    assert [(h["host"], h["error"] is None) for h in json.loads(r.out)["hosts"]] == [
        ("gpu1", True), ("gpu2", False), ("gpu3", True)]


def test_after_a_deploy_the_commands_find_the_app_by_name_from_any_folder(world, cli, tmp_path, monkeypatch):
    from beamctl.hosts import placed

    w = world(three())
    asked: list = []
    monkeypatch.setattr(query, "hosts_of", lambda entries, ssh=None: asked.append(entries) or w.hosts)
    assert cli("deploy", cwd=app_dir(tmp_path, ["gpu1", "gpu2", "gpu3"])).code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    asked.clear()
    called = cli("call", "hello", "--json", cwd=elsewhere)
    assert called.code == 0, called.err
    assert [e.name for e in asked[0]] == ["root@gpu1", "root@gpu2", "root@gpu3"]  # from the deploy's record
    task = json.loads(called.out)
    profile = cli("profile", task["task_id"], "--json", cwd=elsewhere)  # the hint `call` prints works as printed
    assert profile.code == 0 and json.loads(profile.out)["host"] == task["host"]
    asked.clear()
    assert cli("tasks", "--json", cwd=elsewhere).code == 0 and [e.name for e in asked[0]] == [
        "root@gpu1", "root@gpu2", "root@gpu3"]  # no name: every host known here
    assert placed.hosts_of_app("other") is None

    world(here())  # the app moves to this machine: its record goes
    (tmp_path / "local").mkdir()
    assert cli("deploy", cwd=app_dir(tmp_path / "local", [])).code == 0
    assert placed.hosts_of_app("hello") is None


def test_a_damaged_deploy_record_reads_as_none(tmp_path):
    from beamctl.hosts import placed

    path = tmp_path / "apps.json"
    for text in ("{not json", "[1, 2]", '{"hello": "gpu1"}', '{"hello": [{"name": "a"}]}'):
        path.write_text(text)
        assert placed.hosts_of_app("hello", path) is None
    placed.record("hello", None, path)  # the app moved to this machine: its damaged entry goes too
    assert json.loads(path.read_text()) == {}
    placed.record("hello", None, tmp_path / "none.json")
    assert not (tmp_path / "none.json").exists()  # nothing recorded, nothing written


def test_logs_n_is_n_lines_in_all_and_json_lines_are_one_object_each(world, cli, tmp_path):
    w = world(served(three()))
    for h in w.hosts:
        for i in range(5):
            h.agent._log("hello", f"{h.name} line {i}")
    r = cli("logs", "hello", "-n", "4", "--host", "gpu1", cwd=tmp_path)
    assert r.code == 0 and len(r.out.splitlines()) == 4  # not 4 per host
    stamps = [line.split()[1] for line in r.out.splitlines()]
    assert stamps == sorted(stamps)
    rows = [json.loads(line) for line in cli("logs", "hello", "-n", "3", "--json", "--host", "gpu1",
                                             cwd=tmp_path).out.splitlines()]
    assert len(rows) == 3 and all({"ts", "source", "text", "host"} <= set(row) for row in rows)
    assert [row["ts"] for row in rows] == sorted(row["ts"] for row in rows)
    everything = [json.loads(line) for line in cli("logs", "hello", "-n", "100", "--json", "--host", "gpu1",
                                                   cwd=tmp_path).out.splitlines()]
    assert rows == everything[-3:]  # the last 3 of all hosts together


def test_a_deploy_no_host_could_be_reached_for_exits_4_with_each_fix(world, cli, tmp_path):
    from beamctl.transport.errors import SshError

    def changed(name):
        return SshError(f"{name}: HOST KEY CHANGED", hint=f"ssh-keygen -R '{name}', then beamctl hosts trust {name}")

    world([FakeHost(n, fail={"install": changed(n)}) for n in ("gpu1", "gpu2", "gpu3")])
    r = cli("deploy", cwd=app_dir(tmp_path, ["gpu1", "gpu2", "gpu3"]))
    assert r.code == 4  # REMOTE: nothing about the app was wrong
    assert "hint: ssh-keygen -R 'gpu2', then beamctl hosts trust gpu2" in r.err
    world([FakeHost("gpu1", fail={"install": changed("gpu1")}),
           FakeHost("gpu2", agent=FakeAgent(start_fails={1: "ValueError: boom"}))])
    (tmp_path / "b").mkdir()
    assert cli("deploy", cwd=app_dir(tmp_path / "b", ["gpu1", "gpu2"])).code == 1  # the app failed on gpu2


def test_apps_lists_every_app_on_every_known_host(world, cli, tmp_path):
    w = world(served(three(status=ConnectionError("reset"))))
    w["gpu3"].agent.op_deploy({"app": "embed", "image": "beamctl/embed:1"}, {})
    w["gpu3"].agent.op_stop("hello")
    r = cli("apps", "--json", "--host", "gpu1", cwd=tmp_path)
    assert r.code == 5 and "error: gpu2: unreachable" in r.err
    assert [(a["app"], a["host"], a["version"], a["state"]) for a in json.loads(r.out)] == [
        ("embed", "gpu3", 1, "serving"), ("hello", "gpu1", 1, "serving"), ("hello", "gpu3", None, "stopped")]
    table = cli("apps", "--host", "gpu1", cwd=tmp_path).out.splitlines()
    assert table[0].split() == ["APP", "HOST", "VER", "STATE", "CONTAINERS", "BUSY", "CHECKPOINT"]
    assert table[1].split() == ["embed", "gpu3", "v1", "serving", "1", "0", "-"] and len(table) == 4


def test_deploy_dry_run_says_what_each_host_would_get_and_changes_nothing(world, cli, tmp_path, monkeypatch):
    hosts = [FakeHost("gpu1"), FakeHost("gpu2"), FakeHost("gpu3", fail={"version": ConnectionError("reset")})]
    hosts[0].agent.op_deploy({"app": "hello", "image": IMAGE}, {})
    w = world(hosts)
    surveyed: list = []
    monkeypatch.setattr("beamctl.fleet.plan.layer_survey",
                        lambda host, image: surveyed.append(host.name) or
                        (Survey(0, 5, 0) if host.name == "gpu1" else Survey(2, 5, 3_500_000)))
    r = cli("deploy", "--dry-run", "--json", cwd=app_dir(tmp_path, ["gpu1", "gpu2", "gpu3"]))
    assert r.code == 0, r.err
    plans = {p["host"]: p for p in json.loads(r.out)["hosts"]}
    assert plans["gpu1"]["action"].startswith("unchanged image: v1 keeps serving")
    assert (plans["gpu1"]["layers_missing"], plans["gpu2"]["layers_missing"]) == (0, 2)
    assert plans["gpu2"]["action"] == "start the first version" and plans["gpu2"]["agent"] == "current"
    assert plans["gpu3"]["agent"].startswith("would be installed") and plans["gpu3"]["layers_missing"] is None
    assert sorted(surveyed) == ["gpu1", "gpu2"] and w.builds == 1 and w.shipped == []
    for h in hosts:  # asked, never changed: no install, no lock, no deploy
        assert {op for op, _ in h.asked} <= {"version", "status"} and h.installs == 0
    text = cli("deploy", "--dry-run", cwd=tmp_path / "hello").out.splitlines()
    assert text[0] == f"hello: {IMAGE} (dry run: nothing was changed on any host)"
    assert text[2] == "gpu2: start the first version; agent current; layers to send: 2 of 5 (3.5 MB before compression)"
    assert plans["gpu2"]["bytes_missing"] == 3_500_000


# --- exec, shell -----------------------------------------------------------------------------------------

def test_exec_runs_in_a_ready_container_of_the_first_host_serving_and_passes_its_exit_status(world, cli, tmp_path):
    hosts = three()
    for h in hosts[1:]:
        h.agent.op_deploy({"app": "hello", "image": IMAGE}, {})
    hosts[1].attach_exit = 3
    world(hosts)
    r = cli("exec", "hello", "--", "ls", "-la", "/app", cwd=app_dir(tmp_path, ["gpu1", "gpu2", "gpu3"]))
    assert r.code == 3, r.err
    assert hosts[1].attached == [(["docker", "exec", "-i", "c0ffee000001", "ls", "-la", "/app"], False)]
    assert hosts[0].attached == hosts[2].attached == []
    assert "hello: container c0ffee000001 on gpu2" in r.err


def test_shell_starts_bash_or_sh_where_the_app_runs(world, cli, tmp_path):
    hosts = three()
    hosts[2].agent.op_deploy({"app": "hello", "image": IMAGE}, {})
    world(hosts)
    r = cli("shell", "hello", cwd=app_dir(tmp_path, ["gpu1", "gpu2", "gpu3"]))
    assert r.code == 0, r.err
    assert hosts[2].attached == [(["docker", "exec", "-i", "c0ffee000001", "sh", "-c",
                                   "command -v bash >/dev/null 2>&1 && exec bash || exec sh"], False)]


def test_exec_with_nothing_running_says_how_to_start_one(world, cli, tmp_path):
    hosts = three(version=ConnectionError("reset"), status=ConnectionError("reset"))
    hosts[0].agent.op_deploy({"app": "hello", "image": IMAGE}, {})
    hosts[0].agent.op_stop("hello")
    world(hosts)
    r = cli("exec", "hello", "--", "true", cwd=app_dir(tmp_path, ["gpu1", "gpu2", "gpu3"]))
    assert r.code == 1 and all(h.attached == [] for h in hosts)
    assert "error: no container of hello is running (no answer from: gpu2: unreachable: the connection broke: " \
           "reset)\nhint: it scaled to zero or was stopped: `beamctl call hello` starts one" in r.err
    bare = cli("exec", "hello", cwd=tmp_path)
    assert bare.code == 2 and "error: exec needs a command: beamctl exec APP -- CMD [ARGS...]" in bare.err


# --- token rotate ----------------------------------------------------------------------------------------

def test_token_rotate_gives_every_host_the_same_new_token_and_says_who_kept_the_old(world, cli, tmp_path):
    hosts = three(token_rotate=ConnectionError("reset"))
    for h in hosts:
        h.agent.op_deploy({"app": "hello", "image": IMAGE}, {})
    world(hosts)
    r = cli("token", "rotate", "hello", cwd=app_dir(tmp_path, ["gpu1", "gpu2", "gpu3"]))
    assert r.code == 5, r.err
    token = r.out.strip()
    assert len(token) >= 32 and hosts[0].agent.tokens["hello"] == hosts[2].agent.tokens["hello"] == token
    assert "hello" not in hosts[1].agent.tokens
    assert "hello: new token on gpu1, gpu3" in r.err and "error: gpu2: unreachable" in r.err
    assert "the hosts that did not answer keep the old token" in r.err
    assert token not in r.err  # the token on stdout only


def test_token_rotate_here_prints_only_the_token(world, cli, tmp_path):
    hosts = here()
    hosts[0].agent.op_deploy({"app": "hello", "image": IMAGE}, {})
    world(hosts)
    r = cli("token", "rotate", "hello", "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["hosts"] == ["local"] and data["token"] == hosts[0].agent.tokens["hello"] and data["failed"] == {}
    missing = cli("token", "rotate", "nope", cwd=tmp_path)
    assert missing.code != 0 and "nope was never deployed here" in missing.err and missing.out == ""


def test_a_deploy_gives_the_app_one_token_on_all_its_hosts(world, cli, tmp_path):
    """The token most hosts have now becomes every host's (issue 18's one front door needs one); a first
    deploy makes one for all."""
    from beamctl.fleet.rollout import app_token
    from beamctl.hosts.each import Reply

    old, other = "a" * 43, "b" * 43
    w = world(three())
    folder = app_dir(tmp_path, ["gpu1", "gpu2", "gpu3"])
    assert cli("deploy", "--json", cwd=folder).code == 0
    first = {h.agent.tokens.get("hello") for h in w.hosts}
    assert len(first) == 1 and len(first.pop() or "") >= 32  # made by the client, the same everywhere
    for h, token in zip(w.hosts, (other, old, old)):
        h.agent.tokens["hello"] = token  # as hosts deployed one by one before had them
    (folder / "app.py").write_text("def handler(context, **inputs):\n    return {}\n")
    r = cli("deploy", "--json", cwd=folder)
    assert r.code == 0, r.err
    assert [h.agent.tokens["hello"] for h in w.hosts] == [old, old, old]
    status = lambda t: Reply("h", {"apps": [{"app": "x", "token": t}]})  # noqa: E731
    assert app_token([status("p" * 40), status("q" * 40), status("q" * 40)], "x") == "q" * 40
    assert app_token([status("p" * 40), status("q" * 40)], "x") == "p" * 40  # a tie: the first host's
    assert app_token([Reply("h", error="never deployed here"), status(None)], "x") is None
