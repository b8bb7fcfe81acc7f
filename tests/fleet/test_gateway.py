"""One front door for an app on three real test hosts (issue 18): HAProxy on testhost-1 (carried there: the
test hosts have none), TLS with a certificate the test makes, the agents of testhost-2 and -3 open to
testhost-1's address only. In order: one address serves the app from every host; the token refused at the
door and the agents refused from anywhere else; reloads during traffic fail no task; a host that stops
answering leaves the rotation within seconds and comes back, tasks in flight on it fail with a clear
error, none runs twice; token rotation and stop follow at the door; a killed HAProxy is started again by
the agent, and a killed agent leaves the door serving."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.fleet.conftest import hello_on_two_hosts

pytestmark = pytest.mark.integration
HOSTS = ("testhost-1", "testhost-2", "testhost-3")
APP = "door"
PORT = 8443


@pytest.fixture(scope="module")
def three(fleet):
    return fleet(3)


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory, three):
    gen = hello_on_two_hosts(tmp_path_factory.mktemp("door"), APP)
    d = next(gen)
    ip = three[0].ip
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem"), "-days", "2", "-subj", f"/CN={ip}",
                    "-addext", f"subjectAltName=IP:{ip}"], check=True, capture_output=True)
    (d / "door.pem").write_text((d / "cert.pem").read_text() + (d / "key.pem").read_text())
    text = (d / "beam.yaml").read_text().replace("hosts: [testhost-1, testhost-2]", f"hosts: [{', '.join(HOSTS)}]")
    (d / "beam.yaml").write_text(text + f"gateway:\n  host: testhost-1\n  port: {PORT}\n  certificate: door.pem\n")
    yield d
    next(gen, None)


@pytest.fixture(scope="module")
def deployed(three, app_dir):
    """The first deploy, through the CLI in a subprocess (module scope: no monkeypatch here)."""
    import os
    import sys

    env = {**os.environ, **three.env}
    env.pop("SSH_AUTH_SOCK", None)
    done = subprocess.run([sys.executable, "-m", "beamctl", "deploy", "-f", str(app_dir), "--json"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


class Door:
    def __init__(self, three, app_dir: Path, token: str) -> None:
        self.ip, self.ca, self.token = three[0].ip, app_dir / "cert.pem", token

    def conn(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.ip, PORT, timeout=30,
                                           context=ssl.create_default_context(cafile=str(self.ca)))

    def post(self, token: str | None = "", conn=None, body: dict | None = None) -> tuple[int, dict]:
        c = conn or self.conn()
        token = self.token if token == "" else token
        c.request("POST", f"/apps/{APP}", body=json.dumps(body or {"name": "Ada"}).encode(),
                  headers={"Authorization": f"Bearer {token}"} if token else {})
        r = c.getresponse()
        data = json.loads(r.read() or b"{}")
        if conn is None:
            c.close()
        return r.status, data


def token_of(cli) -> str:
    rows = json.loads(cli("status", APP, "--json").out)["hosts"]
    tokens = {a["token"] for r in rows if "status" in r for a in r["status"]["apps"]}
    assert len(tokens) == 1, tokens
    return tokens.pop()


class Rotation:
    """The door's rotation, asked on testhost-1 over one SSH connection kept open (a poll takes ~0.1 s)."""

    def __enter__(self):
        from beamctl.fleet.query import hosts_of
        from beamctl.hosts.inventory import find

        self.host = hosts_of([find("testhost-1")])[0]
        return self

    def __exit__(self, *exc):
        self.host.close()

    def __call__(self) -> dict[str, str]:
        deadline = time.time() + 15
        while not (answer := self.host.request("gateway_status", timeout=20)).get("ok"):
            assert time.time() < deadline, answer  # the gateway's agent restarting (an earlier test killed it)
            time.sleep(0.2)
        route = next(a for a in answer["result"]["apps"] if a["app"] == APP)
        return {s["host"]: s["state"] for s in route["servers"]}


def tasks_on(cli, host: str, since: float) -> list[dict]:
    rows = json.loads(cli("tasks", APP, "--host", host, "-n", "5000", "--json").out)
    return [t for t in rows if t["received"] >= since]


def stream(door: Door, seconds: float, threads: int = 4) -> list[tuple[float, object, dict]]:
    """Tasks through the door, each on a new connection (as `beamctl call --gateway`): (sent, code, body)."""
    out: list = []
    end = time.time() + seconds

    def one() -> None:
        while time.time() < end:
            sent = time.time()
            try:
                code, body = door.post()
            except (OSError, http.client.HTTPException) as e:
                code, body = type(e).__name__, {}
            out.append((sent, code, body))

    ts = [threading.Thread(target=one) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def test_one_address_serves_the_app_from_every_host(cli, three, app_dir, deployed, monkeypatch):
    three.apply_env(monkeypatch)
    gw = deployed["gateway"]
    assert gw["url"] == f"https://{three[0].ip}:{PORT}" and gw["host"] == "testhost-1"
    assert [s["host"] for s in gw["servers"]] == list(HOSTS) and not gw["unexposed"]
    assert gw["haproxy"].startswith("carried 2.")  # the test hosts have no HAProxy: beamctl brought it
    door = Door(three, app_dir, token_of(cli))
    answers = [door.post(body={"name": f"n{i}"}) for i in range(12)]
    assert [c for c, _ in answers] == [200] * 12, answers
    ids = {b["task_id"] for _, b in answers}
    served = {h for h in HOSTS if ids & {t["task_id"] for t in tasks_on(cli, h, 0)}}
    assert len(served) >= 2, served  # least connections over the hosts, not one host
    through = cli("call", APP, '{"name": "Bo"}', "--gateway", "--cacert", str(app_dir / "cert.pem"), "-f", str(app_dir))
    assert through.code == 0 and "hello, Bo" in through.out, through.err
    untrusted = cli("call", APP, "--gateway", "-f", str(app_dir))
    assert untrusted.code != 0 and "not trusted" in untrusted.err and "--cacert" in untrusted.err
    status = cli("status", APP, "-f", str(app_dir))
    assert f"address: https://{three[0].ip}:{PORT}/apps/{APP}" in status.out
    assert "rotation: testhost-1 UP, testhost-2 UP, testhost-3 UP" in status.out, status.out


def test_the_token_is_checked_at_the_door_and_the_agents_answer_it_alone(cli, three, app_dir, deployed, monkeypatch):
    three.apply_env(monkeypatch)
    token = token_of(cli)
    door = Door(three, app_dir, token)
    before = sum(len(tasks_on(cli, h, 0)) for h in HOSTS)
    assert door.post("x" * 43)[0] == 401 and door.post(None)[0] == 401
    for host in three.hosts[1:]:  # from this machine, with the right token, straight to an agent: refused
        c = http.client.HTTPConnection(host.ip, 8430, timeout=10)
        c.request("POST", f"/apps/{APP}", body=b"{}", headers={"Authorization": f"Bearer {token}"})
        r = c.getresponse()
        assert r.status == 403 and "gateway only" in r.read().decode()
    assert sum(len(tasks_on(cli, h, 0)) for h in HOSTS) == before  # nothing ran
    cfg = three[0].exec(["sh", "-c", "cat /var/lib/beamctl/gateway/haproxy.cfg; "
                               "stat -c '%a %n' /var/lib/beamctl/gateway/haproxy.cfg "
                               "/var/lib/beamctl/gateway/certs/*/*.pem"]).stdout
    assert token not in cfg and "sha2(256)" in cfg
    modes = cfg.splitlines()[-2:] + three[1].exec(["stat", "-c", "%a %n", "/var/lib/beamctl/exposed.json"]).stdout.splitlines()
    assert all(line.startswith("600 ") for line in modes), modes


def test_reloads_during_traffic_fail_no_task(cli, three, app_dir, deployed, monkeypatch):
    three.apply_env(monkeypatch)
    door = Door(three, app_dir, token_of(cli))
    pids = set()
    got: list = []
    runner = threading.Thread(target=lambda: got.extend(stream(door, 12)))
    runner.start()
    for _ in range(2):  # an unchanged deploy routes again: HAProxy reloads on the same file
        time.sleep(1)
        again = cli("deploy", "-f", str(app_dir), "--json")
        assert again.code == 0, again.err
        pids.add(three[0].exec(["cat", "/var/lib/beamctl/gateway/haproxy.pid"]).stdout.strip())
    runner.join()
    assert len(pids) == 2  # two reloads, two new HAProxy processes
    failed = [(c, b) for _, c, b in got if c != 200]
    assert len(got) > 50 and not failed, (len(got), failed[:5])


def test_a_host_that_stops_answering_leaves_the_rotation_and_comes_back(cli, three, app_dir, deployed, monkeypatch):
    three.apply_env(monkeypatch)
    door = Door(three, app_dir, token_of(cli))
    began = time.time()
    got: list = []
    runner = threading.Thread(target=lambda: got.extend(stream(door, 16)))
    runner.start()
    with Rotation() as rotation:
        time.sleep(3)
        three[2].pause()  # the whole machine stops answering: TCP still accepted, nothing answered
        paused = time.time()
        try:
            while rotation()["testhost-3"] != "DOWN":
                assert time.time() - paused < 8, "testhost-3 still in the rotation"
                time.sleep(0.1)
            out_after = time.time() - paused
        finally:
            time.sleep(max(0.0, 10 - (time.time() - began)))
            three[2].unpause()
        back = time.time()
        while rotation()["testhost-3"] != "UP":
            assert time.time() - back < 8, "testhost-3 did not come back"
            time.sleep(0.1)
    runner.join()
    assert out_after < 4.5, out_after
    failed = [(t, c, b) for t, c, b in got if c != 200]
    assert len(failed) <= 4, failed  # at most the tasks in flight on testhost-3 (4 clients)
    assert all(t < paused + out_after for t, _, _ in failed), failed  # none sent after it left
    assert all(c in ("RemoteDisconnected", 502, 504) for _, c, _ in failed), failed
    ok_ids = [b["task_id"] for _, c, b in got if c == 200]
    assert len(ok_ids) == len(set(ok_ids)) > 50
    ran = [t for h in HOSTS for t in tasks_on(cli, h, began)]  # the earlier tests' all ended before
    assert len(ran) == len({t["task_id"] for t in ran})  # each task id on one host only
    assert len(ok_ids) <= len(ran) <= len(ok_ids) + len(failed), (len(ok_ids), len(ran), len(failed))  # none twice


def test_a_new_token_and_a_stop_follow_at_the_door(cli, three, app_dir, deployed, monkeypatch):
    three.apply_env(monkeypatch)
    old = token_of(cli)
    rotated = cli("token", "rotate", APP, "-f", str(app_dir))
    assert rotated.code == 0 and "gateway testhost-1" in rotated.err, rotated.err
    new = rotated.out.strip()
    assert Door(three, app_dir, old).post()[0] == 401
    assert Door(three, app_dir, new).post()[0] == 200
    stopped = cli("stop", APP, "-f", str(app_dir))
    assert stopped.code == 0 and "no host (stopped" in stopped.err, stopped.err
    code, body = Door(three, app_dir, new).post()
    assert code == 503 and "stopped" in body["error"]
    again = cli("deploy", "-f", str(app_dir), "--json")
    assert again.code == 0, again.err
    assert [s["host"] for s in json.loads(again.out)["gateway"]["servers"]] == list(HOSTS)
    assert Door(three, app_dir, new).post()[0] == 200


def test_a_killed_haproxy_comes_back_and_a_killed_agent_leaves_the_door_serving(cli, three, app_dir, deployed,
                                                                                 monkeypatch):
    three.apply_env(monkeypatch)
    door = Door(three, app_dir, token_of(cli))
    gw = three[0]
    gw.exec(["sh", "-c", "kill -9 $(cat /var/lib/beamctl/gateway/haproxy.pid)"])
    killed = time.time()
    while True:  # the agent's housekeeping starts it again
        try:
            if door.post()[0] == 200:
                break
        except OSError:
            pass
        assert time.time() - killed < 10, "HAProxy was not started again"
        time.sleep(0.2)
    gw.exec(["sh", "-c", "kill -9 $(python3 -c 'import json; print(json.load(open(\"/var/lib/beamctl/agent.json\"))[\"pid\"])')"])
    assert [door.post()[0] for _ in range(5)] == [200] * 5  # HAProxy outlives the agent, as containers do


def test_a_backend_agent_killed_comes_back_on_its_private_address_and_rejoins(cli, three, app_dir, deployed,
                                                                             monkeypatch):
    """kill -9 of testhost-2's agent: the door takes it out, its restart loop starts it again, the agent
    listens for the gateway again from DATA/exposed.json, the door takes it back; tasks meanwhile go to the
    others and no task runs twice."""
    three.apply_env(monkeypatch)
    door = Door(three, app_dir, token_of(cli))
    began = time.time()
    agent_pid = lambda: json.loads(three[1].exec(["cat", "/var/lib/beamctl/agent.json"]).stdout)["pid"]  # noqa: E731
    before = agent_pid()
    three[1].exec(["sh", "-c", "kill -9 $(python3 -c 'import json; print(json.load(open("
                               "\"/var/lib/beamctl/agent.json\"))[\"pid\"])')"])
    got, seen = [], set()
    with Rotation() as rotation:
        deadline = time.time() + 30
        while True:
            got.append(door.post())
            seen.add(rotation()["testhost-2"].split()[0])
            if "DOWN" in seen and rotation()["testhost-2"].startswith("UP"):
                break
            assert time.time() < deadline, f"testhost-2 not back in the rotation: {rotation()}"
            time.sleep(0.05)
    after = time.time()
    while not ids_on(cli, "testhost-2", after):  # it serves through the door again
        got.append(door.post())
        assert time.time() < after + 15, "no task reached testhost-2 after it came back"
    assert agent_pid() != before  # a new agent, not the old one that never died
    failed = [c for c, _ in got if c != 200]
    assert len(failed) <= 1 and set(failed) <= {502}, failed  # at most the one in flight at the kill
    ran = [t for h in HOSTS for t in tasks_on(cli, h, began)]
    assert len(ran) == len({t["task_id"] for t in ran}) <= len(got)  # none twice


def ids_on(cli, host: str, since: float) -> set[str]:
    return {t["task_id"] for t in tasks_on(cli, host, since)}


def test_a_second_app_on_other_hosts_shares_the_gateway_on_its_own_port(cli, three, app_dir, deployed, monkeypatch,
                                                                          tmp_path):
    three.apply_env(monkeypatch)
    gen = hello_on_two_hosts(tmp_path, "door2")
    d = next(gen)
    try:
        text = (d / "beam.yaml").read_text().replace("hosts: [testhost-1, testhost-2]", "hosts: [testhost-2, testhost-3]")
        (d / "beam.yaml").write_text(text + "gateway: {host: testhost-1, port: 8080, plain_http: true}\n")
        done = cli("deploy", "-f", str(d), "--json")
        assert done.code == 0, done.err
        assert "plain HTTP" in done.err  # said: the token crosses the network readable
        gw = json.loads(done.out)["gateway"]
        assert gw["url"] == f"http://{three[0].ip}:8080" and [s["host"] for s in gw["servers"]] == ["testhost-2", "testhost-3"]
        rows = json.loads(cli("status", "door2", "--json", "-f", str(d)).out)["hosts"]
        token = rows[0]["status"]["apps"][0]["token"]
        c = http.client.HTTPConnection(three[0].ip, 8080, timeout=30)
        c.request("POST", "/apps/door2", body=b'{"name": "Cy"}', headers={"Authorization": f"Bearer {token}"})
        r = c.getresponse()
        assert r.status == 200 and json.loads(r.read())["result"]["message"] == "hello, Cy"
        assert Door(three, app_dir, token_of(cli)).post()[0] == 200  # the first app, same HAProxy, still served
        assert Door(three, app_dir, token).post()[0] == 401  # one app's token opens no other app

        (d / "beam.yaml").write_text(text)  # the gateway taken out of beam.yaml: the door forgets the app
        again = cli("deploy", "-f", str(d), "--json")
        assert again.code == 0 and "testhost-1 no longer routes door2" in again.err, again.err
        with pytest.raises(OSError):  # its port was door2's alone: closed
            http.client.HTTPConnection(three[0].ip, 8080, timeout=5).request("GET", "/health")
        exposed = three[1].exec(["cat", "/var/lib/beamctl/exposed.json"]).stdout
        assert "door2" not in exposed and '"door"' in exposed  # the other app's gateway is still allowed
        assert Door(three, app_dir, token_of(cli)).post()[0] == 200
    finally:
        cli("stop", "door2", "-f", str(d))
        next(gen, None)


def test_the_dashboard_over_the_fleet_with_a_host_down(three, app_dir, deployed, browser, tmp_path):
    """`beamctl dashboard` over the three SSH test hosts with testhost-3 stopped (the module's last test:
    the host stays down): its rows say why, the other two are whole."""
    import os
    import sys

    from tests.browser import css, wait

    door = Door(three, app_dir, "")
    env = {**os.environ, **three.env}
    env.pop("SSH_AUTH_SOCK", None)
    rows = json.loads(subprocess.run([sys.executable, "-m", "beamctl", "status", APP, "-f", str(app_dir), "--json"],
                                     capture_output=True, text=True, env=env, timeout=120).stdout)["hosts"]
    door.token = rows[0]["status"]["apps"][0]["token"]
    ids = {door.post(body={"name": f"d{i}"})[1]["task_id"] for i in range(6)}

    def ran_on(host: str) -> set[str]:
        out = subprocess.run([sys.executable, "-m", "beamctl", "tasks", APP, "--host", host, "-n", "5000", "--json"],
                             capture_output=True, text=True, env=env, timeout=120).stdout
        return {t["task_id"] for t in json.loads(out)} & ids

    on_up = ran_on("testhost-1") | ran_on("testhost-2")
    three[2].stop()
    dash = subprocess.Popen([sys.executable, "-m", "beamctl", "dashboard", APP, "-f", str(app_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = dash.stdout.readline().strip()
        assert "token=" in url, dash.stderr.read() if dash.poll() is not None else url
        browser.get(url)
        err = wait(browser, lambda d: css(d, '.hosterr[data-host="testhost-3"]'), timeout=40)[0]
        assert "testhost-3" in err.text and ("refused" in err.text or "unreachable" in err.text), err.text
        shown = wait(browser, lambda d: dict(d.execute_script(  # one round trip for all rows: the table refreshes
            "return [...document.querySelectorAll('tr.task')].map(r => [r.dataset.taskId, r.cells[3].textContent])")))
        assert set(shown.values()) <= {"testhost-1", "testhost-2"}
        assert set(shown) & ids == on_up  # every task of the hosts that answer, none of the one down
        browser.get(url + "#/apps")
        wait(browser, lambda d: css(d, '.hosterr[data-host="testhost-3"]'), timeout=40)
        hosts = [r.get_attribute("data-host") for r in wait(browser, lambda d: css(d, f'.app[data-app="{APP}"] tr[data-host]'))]
        assert hosts == ["testhost-1", "testhost-2"]
        browser.save_screenshot(str(Path(os.environ.get("BEAMCTL_SCREENSHOTS") or tmp_path) / "fleet-host-down.png"))
    finally:
        dash.terminate()
        dash.wait(timeout=10)
