"""The host agent against the real Docker Engine, driven through the real CLI (issue 4's scenarios).

One agent per module (its own BEAMCTL_AGENT_DIR), started by the first CLI call; teardown kills it
and removes every container with its agent label and the test apps' images. Apps scale to zero
after `keep_warm_seconds: 2`, so cold starts are real container starts.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
PREFIX = f"it{secrets.token_hex(3)}"  # app names unique to this run: images and labels never collide
KEEP_WARM_S = 2  # short enough to wait out, long enough that back-to-back CLI calls stay warm
ZERO_WAIT_S = 30  # keep_warm + the reaper's period + a stop, on a loaded machine
CLI_TIMEOUT_S = 180  # a deploy builds its image first


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def unmount_under(folder: Path) -> None:
    """Every mount below `folder` (deepest first), as a test's teardown leaves none behind."""
    inside = str(folder.resolve()) + "/"
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if line.split()[4].startswith(inside)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", point], capture_output=True)


@dataclass
class Host:
    """One agent data folder and the CLI pointed at it."""

    agent_dir: Path
    cache_dir: Path
    apps_dir: Path
    apps: set[str] = field(default_factory=set)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("API_TOKEN", "BEAMCTL_DEBUG")}
        env.update(PYTHONPATH=str(REPO),  # the CLI and agent of this checkout (a venv may point at another)
                   BEAMCTL_AGENT_DIR=str(self.agent_dir), BEAMCTL_AGENT_HTTP="127.0.0.1:0",
                   BEAMCTL_CACHE_DIR=str(self.cache_dir),
                   BEAMCTL_SECRETS_FILE=str(self.apps_dir / "no-secrets.env"), **extra)
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "beamctl", *args]

    def beamctl(self, *args: str, env: dict[str, str] | None = None) -> Run:
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, env=env or self.env(),
                              cwd=self.apps_dir, timeout=CLI_TIMEOUT_S)
        return Run(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, env: dict[str, str] | None = None) -> Run:
        run = self.beamctl(*args, env=env)
        assert run.code == 0, f"beamctl {' '.join(args)} -> {run.code}\n{run.err}"
        return run

    def app(self, role: str, yaml: str, code: str) -> tuple[str, Path]:
        """Write an app folder (beam.yaml + app.py); returns (name, folder)."""
        name = f"{PREFIX}-{role}"
        self.apps.add(name)
        folder = self.apps_dir / name
        folder.mkdir(exist_ok=True)
        (folder / "beam.yaml").write_text(f"name: {name}\nhandler: app:handler\n" + textwrap.dedent(yaml))
        (folder / "app.py").write_text(textwrap.dedent(code))
        return name, folder

    def status(self, app: str) -> dict[str, Any]:
        return self.ok("status", app, "--json").json()["apps"][0]

    def agent_pid(self) -> int:
        return json.loads((self.agent_dir / "agent.json").read_text())["pid"]

    def agent_id(self) -> str:
        return (self.agent_dir / "agent-id").read_text().strip()

    def volume(self, app: str, volume: str = "data") -> Path:
        return self.agent_dir / "volumes" / app / volume

    def wait_scaled_to_zero(self, app: str) -> None:
        deadline = time.monotonic() + ZERO_WAIT_S
        while self.status(app)["containers"]:
            assert time.monotonic() < deadline, f"{app} still has containers after {ZERO_WAIT_S} s"
            time.sleep(0.3)

    def call(self, app: str, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        args = ["call", app, json.dumps(inputs or {}), "--json"]
        return self.ok(*args).json()

    def cleanup(self) -> None:
        for pid in agent_pids(self.agent_dir):
            stop_process(pid)
        if (self.agent_dir / "agent-id").exists():
            left = docker("ps", "-aq", "--filter", f"label=dev.beamctl.agent={self.agent_id()}").split()
            if left:
                docker("rm", "-f", *left)
        unmount_under(self.agent_dir)  # the agent's nosuid,nodev mounts of volume folders (agent/seal.py)
        for app in self.apps:
            images = set(docker("images", "-q", f"beamctl/{app}").split())
            images |= set(docker("images", "-q", "--filter", f"label=dev.beamctl.app={app}").split())
            if images:
                docker("rmi", "-f", *images)


def docker(*args: str) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)
    return proc.stdout


def containers_of(app: str) -> list[str]:
    """Every container, running or not, made from one of the app's images (they carry its label)."""
    return docker("ps", "-aq", "--filter", f"label=dev.beamctl.app={app}").split()


def agent_pids(agent_dir: Path) -> list[int]:
    """Agent processes serving `agent_dir` (zombies excluded), found through /proc."""
    want = ["-m", "beamctl.agent", "--data-dir", str(agent_dir)]
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z" and any(argv[i:i + 4] == want for i in range(len(argv))):
            out.append(int(proc.name))
    return out


def gone(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def stop_process(pid: int, timeout: float = 10) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)



def http(url: str, body: bytes, token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# scale to zero, cold and warm starts, on_start once per container, volumes -------------------------

LIFE_YAML = f"""\
on_start: app:setup
keep_warm_seconds: {KEEP_WARM_S}
volumes:
  - name: data
    mount_path: /data
"""
LIFE_CODE = """\
import os, re, socket

VERSION = {version}


def container_id():  # the hostname is the network sandbox's (agent/sandboxes.py), not the container's
    found = re.search("[0-9a-f]{{64}}", open("/proc/self/cgroup").read())
    return found.group(0)[:12] if found else socket.gethostname()


def setup():
    with open("/data/starts.txt", "a") as f:
        f.write(container_id() + "\\n")


def handler(**inputs):
    if "note" in inputs:
        with open("/data/notes.txt", "a") as f:
            f.write(inputs["note"] + "\\n")
    notes = open("/data/notes.txt").read().split() if os.path.exists("/data/notes.txt") else []
    return {{"v": VERSION, "notes": notes}}
"""


@dataclass
class Lifecycle:
    app: str
    folder: Path
    calls: list[dict[str, Any]]  # cold, warm, warm, cold
    profiles: list[dict[str, Any]]
    tasks: dict[str, dict[str, Any]]  # by task id
    starts: list[str]  # the on_start lines (container hostnames) right after the calls


@pytest.fixture(scope="module")
def lifecycle(host: Host) -> Lifecycle:
    """deploy; scale to zero; call (cold), call, call (warm); scale to zero; call (cold)."""
    app, folder = host.app("life", LIFE_YAML, LIFE_CODE.format(version=1))
    host.ok("deploy", "-f", str(folder))
    host.wait_scaled_to_zero(app)
    calls = [host.call(app, {"n": 1}), host.call(app, {"n": 2}), host.call(app, {"n": 3})]
    host.wait_scaled_to_zero(app)
    calls.append(host.call(app, {"n": 4}))
    profiles = [host.ok("profile", c["task_id"], "--json").json() for c in calls]
    tasks = {t["task_id"]: t for t in host.ok("tasks", app, "--json", "-n", "100").json()}
    starts = (host.volume(app) / "starts.txt").read_text().splitlines()
    return Lifecycle(app, folder, calls, profiles, tasks, starts)


def test_cold_after_scale_to_zero_then_warm_then_cold_again_with_profiles(lifecycle):
    assert [c["start"] for c in lifecycle.calls] == ["cold", "warm", "warm", "cold"]
    assert all(c["status"] == "succeeded" and c["result"]["v"] == 1 for c in lifecycle.calls)
    for p in lifecycle.profiles:
        assert set(p["phases"]) == {"queue", "image_load", "container_start", "imports", "application_start",
                                    "task_run", "other"}
        assert abs(sum(p["phases"].values()) - p["total"]) <= 0.05 * p["total"], p
    cold, warm = lifecycle.profiles[0], lifecycle.profiles[1]
    assert cold["start"] == "cold" and cold["phases"]["container_start"] > 0 and cold["phases"]["imports"] > 0
    assert warm["start"] == "warm"
    assert {k: warm["phases"][k] for k in ("image_load", "container_start", "application_start")} == {
        "image_load": 0, "container_start": 0, "application_start": 0}


def test_on_start_ran_exactly_once_per_container(lifecycle):
    containers = [lifecycle.tasks[c["task_id"]]["container"] for c in lifecycle.calls]
    assert containers[0] == containers[1] == containers[2] != containers[3]  # warm calls reuse the cold one
    assert len(lifecycle.starts) == 3 == len(set(lifecycle.starts))  # deploy + two cold starts
    assert {containers[0], containers[3]} < set(lifecycle.starts)  # short container ids


def test_volume_data_survives_redeploy_and_stop(host, lifecycle):
    app, folder = lifecycle.app, lifecycle.folder
    assert host.call(app, {"note": "kept"})["result"] == {"v": 1, "notes": ["kept"]}

    (folder / "app.py").write_text(LIFE_CODE.format(version=2))
    host.ok("deploy", "-f", str(folder))
    assert host.status(app)["active_version"] == 2
    assert host.call(app)["result"] == {"v": 2, "notes": ["kept"]}

    assert host.ok("stop", app).err.strip() == f"stopped {app} v2 (volumes kept)"
    assert host.ok("stop", app).err.strip() == f"{app} was already stopped (volumes kept)"  # done, exit 0
    never = host.beamctl("stop", "never-deployed")
    assert (never.code, never.err.strip()) == (1, "error: never-deployed was never deployed here")
    assert host.status(app)["active_version"] is None and containers_of(app) == []
    assert host.beamctl("call", app).code == 1

    host.ok("deploy", "-f", str(folder))
    assert host.status(app)["active_version"] == 3
    assert host.call(app)["result"] == {"v": 2, "notes": ["kept"]}
    assert (host.volume(app) / "notes.txt").read_text() == "kept\n"


# failures at start-up and at run time -------------------------------------------------------------

BOOT_CODE = """\
def setup():
    {body}


def handler(**inputs):
    return {{"v": {version}}}
"""


def test_on_start_exception_fails_the_deploy_and_the_old_version_keeps_serving(host):
    app, folder = host.app("boot", "on_start: app:setup\n", BOOT_CODE.format(body="return 1", version=1))
    host.ok("deploy", "-f", str(folder))
    (folder / "app.py").write_text(BOOT_CODE.format(
        body='raise ValueError("weights missing at /data/w.bin")', version=2))

    failed = host.beamctl("deploy", "-f", str(folder))
    assert failed.code == 1
    assert (f"error: v2 of {app} did not start: on_start app:setup failed: ValueError: weights missing at "
            f"/data/w.bin (v1 keeps serving)") in failed.err
    assert "  | Traceback (most recent call last):" in failed.err
    assert '  |   File "/app/app.py", line 2, in setup' in failed.err
    assert "  | ValueError: weights missing at /data/w.bin" in failed.err

    assert host.call(app)["result"] == {"v": 1}
    status = host.status(app)
    assert status["active_version"] == 1
    assert [(v["version"], v["state"]) for v in status["versions"]] == [(1, "active"), (2, "failed")]


WORK_CODE = """\
def handler(**inputs):
    if inputs.get("fail"):
        raise RuntimeError("asked to fail")
    return {"echo": inputs}
"""


@pytest.fixture(scope="module")
def work(host: Host) -> str:
    """An app that stays warm (keep_warm 300 s): one container for the tests below."""
    app, folder = host.app("work", "keep_warm_seconds: 300\n", WORK_CODE)
    host.ok("deploy", "-f", str(folder))
    return app


def test_handler_exception_fails_the_task_and_the_container_serves_on(host, work):
    before = [c["id"] for c in host.status(work)["containers"]]
    assert len(before) == 1

    failed = host.beamctl("call", work, '{"fail": true}', "--json")
    assert failed.code == 1
    task = failed.json()
    assert (task["status"], task["error"], task["result"]) == ("failed", "RuntimeError: asked to fail", None)
    assert f"error: task {task['task_id']} failed: RuntimeError: asked to fail" in failed.err
    record = host.ok("profile", task["task_id"], "--json").json()  # where it failed, kept with the task
    assert record["trace"].splitlines() == ["Traceback (most recent call last):",
                                            '  File "/app/app.py", line 3, in handler',
                                            '    raise RuntimeError("asked to fail")',
                                            "RuntimeError: asked to fail"]
    shown = host.ok("profile", task["task_id"]).out
    assert "  | RuntimeError: asked to fail" in shown and '  |   File "/app/app.py", line 3, in handler' in shown
    assert [t["task_id"] for t in host.ok("tasks", work, "--failed", "--json").json()] == [task["task_id"]]

    after = host.call(work, {"x": 1})
    assert (after["status"], after["start"], after["result"]) == ("succeeded", "warm", {"echo": {"x": 1}})
    assert [c["id"] for c in host.status(work)["containers"]] == before
    listed = {r["app"]: r for r in host.ok("apps", "--json").json()}  # this machine: no hosts known here
    assert (listed[work]["host"], listed[work]["state"], listed[work]["containers"]) == ("local", "serving", 1)


def test_http_endpoint_checks_token_and_body(host, work):
    status = host.status(work)
    url, token = status["endpoint"], status["token"]
    assert url.startswith("http://127.0.0.1:") and url.endswith(f"/apps/{work}") and len(token) >= 32

    assert http(url, b'{"who": "http"}', None)[0] == 401
    assert http(url, b'{"who": "http"}', token[:-1] + ("x" if token[-1] != "x" else "y"))[0] == 401
    code, body = http(url, b'{"who": "http"}', token)
    assert (code, body["status"], body["result"]) == (200, "succeeded", {"echo": {"who": "http"}})
    code, body = http(url, b"not json", token)
    assert code == 400 and "not JSON" in body["error"]
    code, body = http(url, b"[1, 2]", token)
    assert code == 400 and "JSON object" in body["error"]


def test_exec_runs_in_the_warm_container_here_and_its_status_is_ours(host, work):
    (container,) = [c["id"] for c in host.status(work)["containers"]]
    run = host.beamctl("exec", work, "--", "sh", "-c", "echo $((6 * 7)) > /tmp/exec-here; cat /tmp/exec-here; exit 4")
    assert (run.code, run.out) == (4, "42\n"), run.err
    assert f"{work}: container {container}" in run.err and " on " not in run.err  # this machine: no host named
    seen = subprocess.run(["docker", "exec", container, "cat", "/tmp/exec-here"], capture_output=True, text=True)
    assert seen.stdout == "42\n"


def test_status_says_what_the_host_and_each_container_use(host, work):
    data = host.ok("status", work, "--json").json()
    (row,) = data["apps"][0]["containers"]
    assert 0 < row["usage"]["mem_used"] < row["usage"]["mem_limit"] and row["usage"]["cpu_pct"] is not None
    assert 0 < data["host"]["mem_used"] < data["host"]["mem_total"] and data["host"]["cpus"] >= 1
    text = host.ok("status", work).out
    assert text.startswith("host: cpu ") and f"  container {row['id']} v" in text and "; cpu " in text


def as_nobody(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv],
                          capture_output=True, text=True)


def test_the_data_folder_is_roots_alone_and_holds_no_token_in_the_clear(host, work):
    token = host.status(work)["token"]
    data = host.agent_dir
    opened: list[tuple[Path, int]] = []  # let others through every folder above it: only its own mode guards
    for up in data.parents:
        mode = up.stat().st_mode & 0o777
        if not mode & 0o001:
            opened.append((up, mode))
            os.chmod(up, mode | 0o001)
    try:
        assert as_nobody("ls", str(data)).returncode != 0
        grep = as_nobody("grep", "-rl", token, str(data))
        assert token not in grep.stdout and "Permission denied" in grep.stderr
        assert as_nobody("cat", str(data / "agent.db")).returncode != 0
    finally:
        for up, mode in reversed(opened):
            os.chmod(up, mode)
    assert data.stat().st_mode & 0o777 == 0o700
    loose = [p for p in data.rglob("*") if p.stat().st_mode & 0o077 and not p.is_socket()
             and p.relative_to(data).parts[0] != "volumes"]
    assert loose == []  # 0600 files, 0700 folders (logs, the database and its -wal, tokens, secrets)
    for db in data.glob("agent.db*"):  # only the token's digest is recorded
        assert token.encode() not in db.read_bytes()
    assert (data / "tokens" / work).read_text() == token


def test_token_rotate_refuses_the_old_token_at_once(host, work):
    status = host.status(work)
    url, old = status["endpoint"], status["token"]
    new = host.ok("token", "rotate", work).out.strip()
    assert len(new) >= 32 and new != old
    assert http(url, b"{}", old)[0] == 401
    assert http(url, b"{}", new)[0] == 200
    assert host.status(work)["token"] == new


def test_call_with_inputs_that_are_not_json_is_a_usage_error(host, work):
    run = host.beamctl("call", work, "not json")
    assert run.code == 2 and run.out == ""
    assert run.err.startswith("error: inputs is not JSON: Expecting value: line 1 column 1 (char 0)")
    assert "Traceback" not in run.err


def test_killed_agent_restarts_and_adopts_the_idle_container(host, work):
    host.call(work, {"before": "kill"})
    containers = [c["id"] for c in host.status(work)["containers"]]
    tasks_before = {t["task_id"]: t for t in host.ok("tasks", "--json", "-n", "1000").json()}
    old_pid = host.agent_pid()

    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not gone(old_pid):
        assert time.monotonic() < deadline
        time.sleep(0.02)

    after = host.call(work, {"after": "kill"})
    assert (after["status"], after["start"]) == ("succeeded", "warm")
    assert host.agent_pid() != old_pid and agent_pids(host.agent_dir) == [host.agent_pid()]
    assert [c["id"] for c in host.status(work)["containers"]] == containers
    tasks_after = {t["task_id"]: t for t in host.ok("tasks", "--json", "-n", "1000").json()}
    assert {k: tasks_after[k] for k in tasks_before} == tasks_before
    assert after["task_id"] in tasks_after


# concurrency -----------------------------------------------------------------------------------------

def test_two_deploys_at_once_one_is_refused(host):
    slow = "\n\ndef slow():\n    import time\n    setup()\n    time.sleep(3)\n"  # the deploys overlap
    app, folder = host.app("twin", LIFE_YAML.replace("app:setup", "app:slow"), LIFE_CODE.format(version=1) + slow)
    host.ok("build", "-f", str(folder))  # both deploys reuse it: they reach the agent together
    host.ok("status")  # the agent runs already (two agents starting at once is the next test)

    procs = [subprocess.Popen(host.argv("deploy", "-f", str(folder)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=host.env(), cwd=host.apps_dir)
             for _ in range(2)]
    outs = [p.communicate(timeout=CLI_TIMEOUT_S) for p in procs]
    runs = [Run(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]
    assert sorted(r.code for r in runs) == [0, 1], [r.err for r in runs]
    refused = next(r for r in runs if r.code == 1)
    assert f"error: local: {app} is locked by " in refused.err  # the deploy lock (fleet/locks.py)
    assert "--lock-wait" in refused.err and f"beamctl unlock {app}" in refused.err

    assert [v["version"] for v in host.status(app)["versions"]] == [1]
    assert len((host.volume(app) / "starts.txt").read_text().splitlines()) == 1
    assert len(containers_of(app)) == 1


def test_commands_at_once_on_a_host_without_agent_start_one_agent(tmp_path_factory):
    fresh = Host(tmp_path_factory.mktemp("agent-race"), tmp_path_factory.mktemp("cache-race"),
                 tmp_path_factory.mktemp("apps-race"))
    try:
        procs = [subprocess.Popen(fresh.argv("status", "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=fresh.env(), cwd=fresh.apps_dir) for _ in range(3)]
        outs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outs]
        assert len({json.loads(out)["agent"]["pid"] for out, _ in outs}) == 1
        assert agent_pids(fresh.agent_dir) == [fresh.agent_pid()]
    finally:
        fresh.cleanup()


# refusals: GPU, secrets -------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this host may have a T4")
def test_gpu_app_is_refused_on_a_host_without_gpu(host):
    app, folder = host.app("gpu", "gpu: T4\n", WORK_CODE)
    run = host.beamctl("deploy", "-f", str(folder))
    assert run.code == 1
    assert "error: this host has no GPU (nvidia-smi lists none); the app asks for T4" in run.err
    assert containers_of(app) == []
    assert f"{app} was never deployed here" in host.beamctl("status", app).err


SECRET_CODE = """\
import os


def handler(**inputs):
    print("handler ran; the environment has", len(os.environ), "names")
    return {"has": "API_TOKEN" in os.environ, "len": len(os.environ.get("API_TOKEN", ""))}
"""


def test_secret_reaches_the_app_and_nothing_else(host):
    app, folder = host.app("secret", "secrets: [API_TOKEN]\nkeep_warm_seconds: 300\n", SECRET_CODE)
    missing = host.beamctl("deploy", "-f", str(folder))
    assert missing.code == 2
    assert "error: no value for secret API_TOKEN" in missing.err
    assert "export API_TOKEN=... before deploying" in missing.err
    assert containers_of(app) == []

    value = "s3cr3t-" + secrets.token_hex(16)
    deployed = host.ok("deploy", "-f", str(folder), env=host.env(API_TOKEN=value))
    assert host.call(app)["result"] == {"has": True, "len": len(value)}

    for run in (deployed, host.ok("status", app, "--json"), host.ok("logs", app), host.ok("tasks", "--json")):
        assert value not in run.out + run.err
    (container,) = containers_of(app)
    inspected = docker("inspect", container)
    assert value not in inspected  # not in the environment, argv, labels: a read-only file the runtime reads
    mounts = {m["Destination"]: m for m in json.loads(inspected)[0]["Mounts"]}
    assert mounts["/run/beamctl/secrets.json"]["RW"] is False
    for path in [host.agent_dir / "agent.log", *host.agent_dir.glob("agent.db*"),
                 *(host.agent_dir / "logs").glob("*")]:
        assert value.encode() not in path.read_bytes(), path
    st = (host.agent_dir / "secrets" / f"{app}-v1.json").stat()  # the app's own user's alone (app_users.py)
    assert st.st_mode & 0o777 == 0o400 and 61000 <= st.st_uid <= 64999
