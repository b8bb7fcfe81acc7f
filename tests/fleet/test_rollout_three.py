"""A rollout to three real test hosts (own sshd, own dockerd, own agent), through the CLI in-process.

One app, one fleet, in order: first deploy and a call on every host; a code-only redeploy (only the
code layer travels); a no-op redeploy (nothing travels); merged logs; rollback on every host; a held
deploy lock (refused with the holder, `--lock-wait`, `unlock`); a host paused before the rollout and
one paused during it (exit 5, the others move on, the paused host keeps serving its version, a rerun
converges); a stream cut in the middle of a layer (retried, the host's id checked, nothing loaded by
the cut stream); a host whose disk fills during the load (its old version keeps serving).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from beamctl.errors import ExitCode
from tests.fleet.conftest import hello_on_two_hosts

pytestmark = pytest.mark.integration
HOSTS = ("testhost-1", "testhost-2", "testhost-3")


@pytest.fixture(scope="module")
def three(fleet):
    return fleet(3)


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory):
    gen = hello_on_two_hosts(tmp_path_factory.mktemp("three"), "hello3")
    d = next(gen)
    text = (d / "beam.yaml").read_text().replace("hosts: [testhost-1, testhost-2]", f"hosts: [{', '.join(HOSTS)}]")
    (d / "beam.yaml").write_text(text)
    yield d
    next(gen, None)


def deploy(cli, app_dir, *extra):
    result = cli("deploy", "-f", str(app_dir), "--json", *extra)
    data = json.loads(result.out) if result.out.strip() else None
    return result, data


def by_host(data):
    return {h["host"]: h for h in data["hosts"]}


def greeting(app_dir: Path, word: str) -> None:
    app = app_dir / "app.py"
    text = app.read_text()
    start = text.index('{"greeting": "') + len('{"greeting": "')
    app.write_text(text[:start] + word + text[text.index('"', start):])


def call_each(cli, app_dir) -> dict[str, str]:
    out = {}
    for host in HOSTS:
        r = cli("call", "hello3", '{"name": "Ada"}', "--host", host, "--json")
        assert r.code == 0, r.err
        out[host] = json.loads(r.out)["result"]["message"]
    return out


def serving(host) -> list[str]:
    got = host.exec(["docker", "ps", "--filter", "label=dev.beamctl.app=hello3", "--format", "{{.Image}}"])
    return got.stdout.split()


def test_three_hosts_deploy_redeploy_noop_logs_rollback(cli, three, app_dir, monkeypatch):
    three.apply_env(monkeypatch)
    plain = three[2]  # a minimal Debian host: no zstd, no python3-venv; beamctl brings what it needs
    assert plain.kind == "plain"
    for tool in ("zstd", "criu"):
        assert plain.exec(["sh", "-c", f"command -v {tool}"], check=False).returncode != 0, tool
    assert plain.exec(["python3", "-c", "import ensurepip"], check=False).returncode != 0
    first, data = deploy(cli, app_dir)
    assert first.code == 0, first.err
    hosts = by_host(data)
    assert all(hosts[h]["status"] == "ready" for h in HOSTS), first.err
    full = {h: hosts[h]["ship"]["bytes_sent"] for h in HOSTS}
    assert all(n > 1_000_000 for n in full.values()), full
    assert call_each(cli, app_dir) == {h: "hello, Ada" for h in HOSTS}
    v1 = data["version"]
    tokens = {r["host"]: r["status"]["apps"][0]["token"]
              for r in json.loads(cli("status", "hello3", "--json").out)["hosts"]}
    assert len(set(tokens.values())) == 1 and len(tokens) == 3, tokens  # one token for the app on all hosts

    greeting(app_dir, "hi")
    planned = cli("deploy", "--dry-run", "--json", "-f", str(app_dir))  # asks, changes nothing
    assert planned.code == 0, planned.err
    for p in json.loads(planned.out)["hosts"]:
        assert (p["agent"], p["serving"], p["action"]) == ("current", v1, f"start a new version, then retire v{v1}")
        assert 0 < p["layers_missing"] < p["layers_total"], p  # the code layer only
    assert call_each(cli, app_dir) == {h: "hello, Ada" for h in HOSTS}  # still v1 everywhere
    second, data2 = deploy(cli, app_dir)
    assert second.code == 0, second.err
    for h, r in by_host(data2).items():
        assert r["status"] == "ready" and r["version"] == v1 + 1
        assert r["ship"]["action"] == "sent" and r["ship"]["layers_sent"] < r["ship"]["layers_total"]
        assert r["ship"]["bytes_sent"] < full[h] / 100, (h, r["ship"], full[h])  # < 1% of the first ship
    assert call_each(cli, app_dir) == {h: "hi, Ada" for h in HOSTS}

    again, data3 = deploy(cli, app_dir)
    assert again.code == 0, again.err
    assert {h: r["ship"]["bytes_sent"] for h, r in by_host(data3).items()} == {h: 0 for h in HOSTS}
    assert all(r["ship"]["action"] == "present" for r in data3["hosts"])
    assert {r["version"] for r in data3["hosts"]} == {v1 + 1}, data3  # unchanged: no new version

    logs = cli("logs", "hello3", "--file", str(app_dir), "-n", "200")
    assert logs.code == 0, logs.err
    assert {line.split()[0] for line in logs.out.splitlines() if line.split()} >= set(HOSTS), logs.out[-2000:]

    back = cli("rollback", "hello3", "-f", str(app_dir), "--json")
    assert back.code == 0, back.err
    assert {h["version"] for h in json.loads(back.out)["hosts"]} == {v1}, back.out
    assert call_each(cli, app_dir) == {h: "hello, Ada" for h in HOSTS}
    for h in three:
        assert len(serving(h)) == 1


def test_checkpoints_on_the_hosts_then_a_restored_start_over_ssh(cli, three, app_dir, monkeypatch, tmp_path):
    """examples/hello has checkpoint_enabled: each host's agent captured after on_start (runc + CRIU inside
    the test host); a copy with keep_warm_seconds: 2 on one host restores after scaling to zero."""
    three.apply_env(monkeypatch)
    status = cli("status", "hello3", "-f", str(app_dir), "--json")
    assert status.code == 0, status.err
    for h in json.loads(status.out)["hosts"]:
        app = h["status"]["apps"][0]
        active = next(v for v in app["versions"] if v["version"] == app["active_version"])
        assert active["checkpoint"]["state"] == "ready" and active["checkpoint"]["size_bytes"] > 1_000_000, h
    text = cli("status", "hello3", "-f", str(app_dir))
    assert sum("checkpoint: ready" in line for line in text.out.splitlines()) == len(HOSTS), text.out

    quick = tmp_path / "quick"
    quick.mkdir()
    (quick / "app.py").write_text((app_dir / "app.py").read_text())
    yaml = (app_dir / "beam.yaml").read_text().replace("name: hello3\n", "name: hello3q\n")
    yaml = yaml.replace("keep_warm_seconds: 60", "keep_warm_seconds: 2")
    (quick / "beam.yaml").write_text(yaml.replace(f"hosts: [{', '.join(HOSTS)}]", "hosts: [testhost-1]"))
    try:
        first = cli("deploy", "-f", str(quick))
        assert first.code == 0, first.err
        deadline = time.monotonic() + 30
        while True:
            st = json.loads(cli("status", "hello3q", "-f", str(quick), "--json").out)
            if not st["hosts"][0]["status"]["apps"][0]["containers"]:
                break
            assert time.monotonic() < deadline, "hello3q did not scale to zero"
            time.sleep(0.5)
        task = json.loads(cli("call", "hello3q", '{"name": "Ada"}', "-f", str(quick), "--json").out)
        assert task["start"] == "restored" and task["result"]["message"].endswith(", Ada"), task
        profile = json.loads(cli("profile", task["task_id"], "-f", str(quick), "--json").out)
        assert profile["phases"]["checkpoint_restore"] > 0 and "application_start" not in profile["phases"]
    finally:
        cli("stop", "hello3q", "-f", str(quick))
        subprocess.run(["docker", "rmi", "-f", *set(subprocess.run(
            ["docker", "images", "-q", "beamctl/hello3q"], capture_output=True, text=True).stdout.split())],
            capture_output=True)


def test_a_held_lock_refuses_then_waits_then_unlock_breaks_it(cli, three, app_dir, monkeypatch):
    from beamctl.fleet import locks
    from beamctl.hosts.host import SshHost
    from beamctl.transport.ssh import Ssh

    three.apply_env(monkeypatch)
    agents = [SshHost("testhost-2", "testhost-2", Ssh())]
    holder = {**locks.holder_here("hello3", "beamctl/hello3:other"), "who": "ada@elsewhere"}
    with locks.hold(agents, "hello3", holder, 0, lambda e: None):
        refused = cli("deploy", "-f", str(app_dir))
    assert refused.code == ExitCode.FAILURE, refused.err
    assert "testhost-2" in refused.err and "ada@elsewhere" in refused.err and "--lock-wait" in refused.err

    ctx = locks.hold(agents, "hello3", holder, 0, lambda e: None)
    ctx.__enter__()
    threading.Timer(3.0, lambda: ctx.__exit__(None, None, None)).start()
    started = time.monotonic()
    waited, data = deploy(cli, app_dir, "--lock-wait", "60")
    assert waited.code == 0, waited.err
    assert time.monotonic() - started >= 3.0

    stale = locks.hold(agents, "hello3", holder, 0, lambda e: None)
    stale.__enter__()  # never released: a dead deploy
    try:
        broken = cli("unlock", "hello3", "-f", str(app_dir))
        assert broken.code == 0, broken.err
        assert "ada@elsewhere" in broken.err or "ada@elsewhere" in broken.out
        ok, _ = deploy(cli, app_dir)
        assert ok.code == 0, ok.err
    finally:
        for a in agents:
            a.close()


def test_hosts_down_before_and_during_then_a_rerun_converges(cli, three, app_dir, monkeypatch):
    from beamctl.fleet import ship

    three.apply_env(monkeypatch)
    before = {h.name: serving(h) for h in three}
    greeting(app_dir, "hey")
    three[2].pause()
    try:
        partial, data = deploy(cli, app_dir)
    finally:
        three[2].unpause()
    assert partial.code == ExitCode.PARTIAL, partial.err
    hosts = by_host(data)
    assert (hosts["testhost-3"]["status"], hosts["testhost-1"]["status"]) == ("failed", "ready")
    assert "unreachable" in hosts["testhost-3"]["reason"] or "answer" in hosts["testhost-3"]["reason"]
    still = serving(three[2])
    assert still and set(still) <= set(before["testhost-3"]) and data["image"] not in still, (still, before)

    greeting(app_dir, "yo")
    mid = serving(three[1])
    real = ship.ship_images

    def pause_then_ship(targets, ref, image_id, progress):
        three[1].pause()  # after agents, placement and the lock: during the rollout
        try:
            return real(targets, ref, image_id, progress)
        finally:
            three[1].unpause()

    monkeypatch.setattr(ship, "ship_images", pause_then_ship)
    during, data2 = deploy(cli, app_dir)
    monkeypatch.setattr(ship, "ship_images", real)
    assert during.code == ExitCode.PARTIAL, during.err
    hosts2 = by_host(data2)
    assert hosts2["testhost-2"]["status"] == "failed" and hosts2["testhost-1"]["status"] == "ready"
    after = serving(three[1])  # the paused host keeps serving its version (an older one may still be retiring)
    assert after and set(after) <= set(mid) and data2["image"] not in after, (after, mid)

    rerun, data3 = deploy(cli, app_dir)
    assert rerun.code == 0, rerun.err
    assert len({h["version"] for h in data3["hosts"]}) >= 1
    assert call_each(cli, app_dir) == {h: "yo, Ada" for h in HOSTS}


def test_a_stream_cut_mid_layer_is_retried_and_the_disk_full_host_keeps_its_version(cli, three, app_dir,
                                                                                      monkeypatch):
    from beamctl.transport import bulk

    three.apply_env(monkeypatch)
    real_open = bulk.open_sink
    cut = {"done": False, "loaded_after_cut": None}

    class Cutting:
        def __init__(self, sink):
            self.sink, self.via, self.sent = sink, sink.via, 0

        def write(self, data):
            if not cut["done"] and self.sent > 2_000:
                cut["done"] = True
                self.sink.abort()  # the connection drops in the middle of the stream
            self.sink.write(data)
            self.sent += len(data)

        def finish(self, timeout):
            return self.sink.finish(timeout)

        def abort(self):
            self.sink.abort()

    def open_sink(conn, target, remote):
        sink = real_open(conn, target, remote)
        return Cutting(sink) if target.name == "testhost-1" and not cut["done"] else sink

    monkeypatch.setattr(bulk, "open_sink", open_sink)
    (app_dir / "big.bin").write_bytes(__import__("os").urandom(3_000_000))  # a layer worth cutting
    greeting(app_dir, "cut")
    result, data = deploy(cli, app_dir)
    monkeypatch.setattr(bulk, "open_sink", real_open)
    assert result.code == 0, result.err
    assert cut["done"]
    one = by_host(data)["testhost-1"]
    assert one["ship"]["attempts"] == 2 and one["status"] == "ready", one
    assert call_each(cli, app_dir) == {h: "cut, Ada" for h in HOSTS}

    full_host = three[2]
    before = serving(full_host)
    full_host.exec(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", "/var/lib/docker/tmp"])
    try:
        (app_dir / "big.bin").write_bytes(__import__("os").urandom(3_000_000))
        greeting(app_dir, "full")
        partial, data2 = deploy(cli, app_dir)
    finally:
        full_host.exec(["umount", "/var/lib/docker/tmp"])
    assert partial.code == ExitCode.PARTIAL, partial.err
    three_r = by_host(data2)["testhost-3"]
    assert three_r["status"] == "failed" and "no space left" in three_r["reason"].lower(), three_r
    assert "testhost-3: `load the image: docker load` exited with" in three_r["reason"], three_r  # host, step
    assert "unreachable" not in three_r["reason"], three_r
    now = serving(full_host)
    assert now and set(now) <= set(before) and data2["image"] not in now, (now, before)
    rerun, _ = deploy(cli, app_dir)
    assert rerun.code == 0, rerun.err


def test_two_deploys_at_once_the_second_is_refused_with_the_holder(three, app_dir, monkeypatch):
    import os
    import subprocess
    import sys

    three.apply_env(monkeypatch)
    app = app_dir / "app.py"
    app.write_text(app.read_text().replace("def load_model():\n", "def load_model():\n    time.sleep(4)  # overlap\n", 1)
                   if "time.sleep(4)" not in app.read_text() else app.read_text())
    greeting(app_dir, "twice")
    env = {**os.environ, **three.env}
    procs = [subprocess.Popen([sys.executable, "-m", "beamctl", "deploy", "-f", str(app_dir)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    errs = [e for _, e in outs]
    assert codes == [0, 1], errs
    refused = next(e for p, (_, e) in zip(procs, outs) if p.returncode == 1)
    assert "is locked by" in refused and "--lock-wait" in refused, refused
    assert call_each_cli(app_dir) == {h: "twice, Ada" for h in HOSTS}


def call_each_cli(app_dir):
    import os
    import subprocess
    import sys

    out = {}
    for host in HOSTS:
        done = subprocess.run([sys.executable, "-m", "beamctl", "call", "hello3", '{"name": "Ada"}', "--host", host,
                               "--json"], env=dict(os.environ), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        out[host] = json.loads(done.stdout)["result"]["message"]
    return out


SLOW = '''

_greet = handler


def handler(context, **inputs):
    time.sleep(inputs.get("sleep", 0))
    return _greet(context, **inputs)
'''


def test_a_burst_over_three_hosts_with_one_stopped_mid_burst_loses_no_task_and_runs_none_twice(three, app_dir,
                                                                                               monkeypatch):
    """Calls go to the least busy host; testhost-2 is stopped (the whole machine) while tasks run there.
    Each call either succeeds once or fails naming its task and the host that went away; calls after the
    stop go to the others; once it is back, its records hold each cut-off task (failed or lost); no task
    id is on two hosts."""
    import os
    import subprocess
    import sys

    three.apply_env(monkeypatch)
    app = app_dir / "app.py"
    if "_greet = handler" not in app.read_text():
        app.write_text(app.read_text() + SLOW)
    yaml = app_dir / "beam.yaml"
    if "autoscaler:" not in yaml.read_text():
        yaml.write_text(yaml.read_text() + "autoscaler:\n  max_containers: 2\n  tasks_per_container: 1\n")
    env = {**os.environ, **three.env}
    done = subprocess.run([sys.executable, "-m", "beamctl", "deploy", "-f", str(app_dir)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr

    procs, stopped_at = [], None
    for i in range(12):
        procs.append((time.monotonic(), subprocess.Popen(
            [sys.executable, "-m", "beamctl", "call", "hello3", json.dumps({"name": f"n{i}", "sleep": 2}), "--json"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        if i == 5:
            time.sleep(1.5)  # the first six are running (each host has some)
            three[1].stop(timeout=1)
            stopped_at = time.monotonic()
        time.sleep(0.2)
    outs = [(t, *p.communicate(timeout=300)) for t, p in procs]
    results = [(t, p.returncode, out, err) for (t, out, err), (_, p) in zip(outs, procs)]
    try:
        ok = [json.loads(out) for _, code, out, _ in results if code == 0]
        failed = [(t, err) for t, code, _, err in results if code != 0]
        for _, err in failed:  # cut off where it ran: said, with its task, never sent again
            assert "testhost-2" in err and "t-" in err and "Traceback" not in err, err
        assert all(t < stopped_at for t, _ in failed), failed  # calls after the stop all went elsewhere
        assert len(ok) + len(failed) == 12 and len(ok) >= 6, [r[1:] for r in results]
        assert sorted(r["result"]["message"] for r in ok) == sorted({r["result"]["message"] for r in ok})
    finally:
        three[1].start()
    listed = subprocess.run([sys.executable, "-m", "beamctl", "tasks", "hello3", "-n", "100", "--json"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr  # every host answered, testhost-2 too
    rows = json.loads(listed.stdout)
    ids = [r["task_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a task id on two hosts"
    for r in ok:
        assert [row["host"] for row in rows if row["task_id"] == r["task_id"]] == [r["host"]]
    for _, err in failed:  # each cut-off task is on its host's record: failed (the agent saw its engine
        # go first) or lost (the agent went first), never on another host
        (task_id,) = set(re.findall(r"t-[0-9a-f]{12}", err))
        assert [(row["host"], row["status"]) for row in rows if row["task_id"] == task_id] in (
            [("testhost-2", "failed")], [("testhost-2", "lost")]), (task_id, rows)
