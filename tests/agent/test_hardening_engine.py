"""App containers as restricted as they can run (issue 16), seen from inside a real container and from a
local account on the host: no capabilities, no privilege gained by exec, read-only root with a writable
/tmp, a pids and a log limit, volumes bound `nosuid,nodev` behind folders only root can enter."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.agent.test_agent_engine import docker

pytestmark = pytest.mark.integration

PROBE = '''\
import os, shutil


def handler(**inputs):
    out = {"home": os.environ.get("HOME")}
    try:
        open("/written-to-root", "w")
        out["root_fs"] = "writable"
    except OSError as e:
        out["root_fs"] = e.strerror
    with open("/tmp/scratch", "w") as f:
        out["tmp"] = f.write("ok")
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    out["cap_eff"], out["no_new_privs"] = status["CapEff"].strip(), status["NoNewPrivs"].strip()
    out["data_mount"] = [line.split()[3] for line in open("/proc/mounts") if line.split()[1] == "/data"]
    shutil.copy("/bin/dash", "/data/sh")
    os.chmod("/data/sh", 0o4755)  # what a hostile app would leave for a local account on the host
    out["setuid_left"] = oct(os.stat("/data/sh").st_mode & 0o7777)
    return out
'''


def as_nobody(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv],
                          capture_output=True, text=True)


def test_an_app_container_is_restricted_and_its_volume_gives_a_local_user_nothing(host):
    app, folder = host.app("hard", "volumes:\n  - name: data\n    mount_path: /data\n", PROBE)
    host.ok("deploy", "-f", str(folder))
    got = host.call(app)
    assert got["status"] == "succeeded", got
    out = got["result"]
    assert out["root_fs"] == "Read-only file system" and out["tmp"] == 2 and out["home"] == "/tmp"
    assert out["cap_eff"] == "0000000000000000" and out["no_new_privs"] == "1"
    (options,) = out["data_mount"]
    assert {"nosuid", "nodev", "rw"} <= set(options.split(",")), options
    assert out["setuid_left"] == "0o4755"

    (cid,) = docker("ps", "-q", "--filter", f"label=dev.beamctl.app={app}").split()
    config = json.loads(docker("inspect", cid))[0]["HostConfig"]
    assert (config["CapDrop"], config["SecurityOpt"], config["PidsLimit"], config["ReadonlyRootfs"]) == (
        ["ALL"], ["no-new-privileges"], 4096, True)
    assert config["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "3", "max-size": "20m"}}
    assert config["NanoCpus"] > 0

    # a local account, with every folder above the agent's opened to it: the volume's own folders stop it
    left = host.volume(app) / "sh"
    opened = []
    for up in host.agent_dir.parents:
        mode = up.stat().st_mode & 0o777
        if not mode & 0o001:
            opened.append((up, mode))
            os.chmod(up, mode | 0o001)
    try:
        tried = as_nobody("/bin/sh", "-c", f"{left} -p -c 'id -u'")  # the exec itself as nobody (setpriv
        # looks a program up before its capabilities go)
        assert tried.returncode != 0 and "Permission denied" in tried.stderr, tried
        assert as_nobody("ls", str(host.agent_dir / "volumes")).returncode != 0
    finally:
        for up, mode in reversed(opened):
            os.chmod(up, mode)
    # on the host too, the folder is its own nosuid,nodev mount: a setuid file there runs as whoever runs it
    mounts = [line.split() for line in open("/proc/self/mountinfo") if line.split()[4] == str(host.volume(app))]
    assert mounts and {"nosuid", "nodev"} <= set(mounts[-1][5].split(",")), mounts


ATTACK = """\
import json, sys, urllib.request, urllib.error
url = sys.argv[1]
out = {}
for path, body in (("/health", None), ("/tasks", b'{"task_id": "t-000000000000", "inputs": {}}'),
                   ("/checkpoint/release", b'{"restored": false}')):
    request = urllib.request.Request(url + path, data=body, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            out[path] = r.status
    except urllib.error.HTTPError as e:
        out[path] = e.code
print(json.dumps(out))
"""


def test_another_container_on_the_bridge_cannot_talk_to_an_apps_runtime(host):
    app, folder = host.app("fenced", "keep_warm_seconds: 300\nsecrets: [API_TOKEN]\n",
                           "import os\n\ndef handler(**inputs):\n    return {'token': len(os.environ['API_TOKEN'])}\n")
    host.ok("deploy", "-f", str(folder), env=host.env(API_TOKEN="t" * 20))
    assert host.call(app)["result"] == {"token": 20}  # the agent's own requests carry the key
    (cid,) = docker("ps", "-q", "--filter", f"label=dev.beamctl.app={app}").split()
    inspected = json.loads(docker("inspect", cid))[0]
    sandbox = inspected["HostConfig"]["NetworkMode"].removeprefix("container:")
    address = json.loads(docker("inspect", sandbox))[0]["NetworkSettings"]["IPAddress"]
    assert address, "the sandbox has an address on the default bridge"
    got = subprocess.run(["docker", "run", "--rm", "--entrypoint", "python3", inspected["Config"]["Image"], "-c",
                          ATTACK, f"http://{address}:8000"], capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == {"/health": 403, "/tasks": 403, "/checkpoint/release": 403}
    assert host.call(app)["status"] == "succeeded"  # and the app serves on


USERS = '''\
import os


def handler(**inputs):
    with open("/data/written", "w") as f:
        f.write("mine")
    before = os.stat("/data/old/file")
    return {"uid": os.getuid(), "gid": os.getgid(), "secret": len(os.environ.get("API_TOKEN", "")),
            "old_file_uid": before.st_uid, "old_readable": open("/data/old/file").read()}
'''
USERS_YAML = "volumes:\n  - name: data\n    mount_path: /data\nsecrets: [API_TOKEN]\n"


def test_each_app_runs_as_its_own_user_who_owns_its_volume_and_secrets(host):
    """Two apps get two uids of app_users' range (no local user's), each owns its volume (a file root wrote
    there before, as an older agent or a root app did, too) and its version's secrets file (0400); the
    opt-out `run_as_root: true` runs as root and changes nothing it does not need to."""
    seen = {}
    for role, extra in (("user-a", ""), ("user-b", ""), ("user-root", "run_as_root: true\n")):
        app, folder = host.app(role, USERS_YAML + extra, USERS)
        old = host.volume(app) / "old"
        old.mkdir(parents=True, exist_ok=True)
        (old / "file").write_text("from before")
        os.chmod(old / "file", 0o600)  # root's alone, as root left it
        host.ok("deploy", "-f", str(folder), env=host.env(API_TOKEN="t" * 24))
        got = host.call(app)
        assert got["status"] == "succeeded", got
        seen[role] = (app, got["result"])

    a, b, root = seen["user-a"][1], seen["user-b"][1], seen["user-root"][1]
    assert 61000 <= a["uid"] <= 64999 and 61000 <= b["uid"] <= 64999 and a["uid"] != b["uid"], (a, b)
    for app, out in (seen["user-a"], seen["user-b"]):
        uid = out["uid"]
        assert (out["gid"], out["secret"], out["old_file_uid"], out["old_readable"]) == (uid, 24, uid, "from before")
        volume = host.volume(app)
        assert {p.lstat().st_uid for p in [volume, *volume.rglob("*")]} == {uid}
        secrets = host.agent_dir / "secrets" / f"{app}-v1.json"
        st = secrets.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (uid, 0o400)
        (cid,) = docker("ps", "-q", "--filter", f"label=dev.beamctl.app={app}").split()
        assert json.loads(docker("inspect", cid))[0]["Config"]["User"] == f"{uid}:{uid}"
        assert host.beamctl("exec", app, "--", "id", "-u").out.strip() == str(uid)  # exec: the app's user too
    assert (root["uid"], root["old_file_uid"], root["secret"]) == (0, 0, 24)
    assert (host.volume(seen["user-root"][0]) / "written").stat().st_uid == 0

    # the uid is the app's for good: a redeploy keeps it
    app, folder = host.app("user-a", USERS_YAML, USERS + "\nAGAIN = 1\n")
    host.ok("deploy", "-f", str(folder), env=host.env(API_TOKEN="t" * 24))
    assert host.call(app)["result"]["uid"] == a["uid"]


def test_an_app_with_snapshots_runs_as_its_user_where_criu_can_snapshot_it_else_as_root_and_says_so(host):
    """CRIU reads a process's limits to snapshot it (prlimit), which for another uid takes CAP_SYS_RESOURCE;
    hosts that drop it even for root (this sandbox does) run a checkpointed app as root, and say so."""
    from beamctl.agent import app_users

    code = "import os\n\ndef setup():\n    pass\n\ndef handler(**inputs):\n    return {'uid': os.getuid()}\n"
    app, folder = host.app("user-ckpt", "on_start: app:setup\ncheckpoint_enabled: true\nkeep_warm_seconds: 1\n", code)
    host.ok("deploy", "-f", str(folder))
    status = host.status(app)
    assert status["versions"][0]["checkpoint"]["state"] == "ready", status["versions"][0]
    host.wait_scaled_to_zero(app)
    got = host.call(app)
    assert got["start"] == "restored", got
    logs = host.ok("logs", app).out
    if app_users.can_snapshot_others():
        assert 61000 <= got["result"]["uid"] <= 64999 and "runs as root" not in logs
    else:
        assert got["result"]["uid"] == 0 and "v1 runs as root: this host's agent lacks CAP_SYS_RESOURCE" in logs


def test_inputs_over_the_apps_max_input_size_are_refused_unread(host):
    from tests.agent.test_agent_engine import http

    code = "def handler(**inputs):\n    return {'n': len(inputs.get('blob', ''))}\n"
    app, folder = host.app("small-in", "max_input_size: 1Ki\nkeep_warm_seconds: 300\n", code)
    host.ok("deploy", "-f", str(folder))
    assert host.call(app, {"blob": "x" * 1000})["result"] == {"n": 1000}  # 1013 bytes of JSON: under 1 KiB
    refused = host.beamctl("call", app, json.dumps({"blob": "x" * 1100}))
    assert refused.code != 0 and f"more than {app}'s max_input_size (1Ki)" in refused.err, refused.err
    assert "Traceback" not in refused.err
    status = host.status(app)
    code_, body = http(status["endpoint"], json.dumps({"blob": "x" * 1100}).encode(), status["token"])
    assert code_ == 413 and "max_input_size (1Ki)" in body["error"], body
    assert [t["status"] for t in host.ok("tasks", app, "--json").json()] == ["succeeded"]  # no task for either
