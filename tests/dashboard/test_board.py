"""The dashboard's data and server over fake hosts (no Docker, no browser; the browser and a real agent:
test_dashboard_browser.py), the waterfall drawn to scale, and `profile --svg/--html`."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from beamctl import waterfall
from beamctl.dashboard.data import Board
from beamctl.dashboard.server import serve
from beamctl.fleet import query
from beamctl.hosts.fake import FakeAgent, FakeHost


def fleet(down: str | None = None) -> list[FakeHost]:
    hosts = [FakeHost(f"h{i}", FakeAgent()) for i in (1, 2, 3)]
    for i, h in enumerate(hosts):
        h.agent.versions["hello"] = [{"version": 1, "spec": {"image": "beamctl/hello:1"}}]
        h.agent.active["hello"] = 1
        for n in range(i + 1):
            h.agent.op_call("hello", {"n": n})
        if h.name == down:
            h.fail = {op: ConnectionError(f"{h.name}: connection refused") for op in ("status", "tasks", "task", "logs")}
    return hosts


def test_a_host_down_is_said_and_the_others_are_complete():
    board = Board(fleet(down="h2"))
    apps = board.apps()
    assert [h["host"] for h in apps["apps"][0]["hosts"]] == ["h1", "h3"]
    assert [e["host"] for e in apps["errors"]] == ["h2"] and "connection refused" in apps["errors"][0]["error"]
    tasks = board.tasks()
    assert sorted({t["host"] for t in tasks["tasks"]}) == ["h1", "h3"] and len(tasks["tasks"]) == 1 + 3
    assert [e["host"] for e in tasks["errors"]] == ["h2"]
    assert {t["start"] for t in board.tasks(start="cold")["tasks"]} == {"cold"}
    assert len(board.tasks(start="cold")["tasks"]) == 2  # each host's first


def test_a_task_page_has_its_phases_to_scale_its_medians_and_its_log_lines():
    hosts = fleet()
    task_id = hosts[2].agent.task_rows[0]["task_id"]
    got = Board(hosts).task(task_id)
    assert got["host"] == "h3" and got["task"]["task_id"] == task_id
    assert [r["phase"] for r in got["rows"]] == [k for k in waterfall.PHASES if k in got["task"]["phases"]]
    assert got["medians"]["cold"] == pytest.approx(got["task"]["total"]) and got["medians"]["restored"] is None
    assert any(task_id in e["text"] for e in got["logs"])
    assert f'data-task="{task_id}"' in got["svg"]
    assert Board(hosts).task("t-000000000000") is None


def test_the_waterfall_is_drawn_to_one_scale_in_the_order_of_the_phases():
    task = {"task_id": "t-1", "app": "a", "start": "cold", "total": 1.0,
            "phases": {"task_run": 0.1, "queue": 0.05, "container_start": 0.25, "application_start": 0.6}}
    svg = waterfall.svg(task, {"restored": 0.2, "cold": 2.0})
    order = [k for k in ("queue", "container_start", "application_start", "task_run")]
    assert [r[0] for r in waterfall.rows(task)] == order
    starts = [r[2] for r in waterfall.rows(task)]
    assert starts == pytest.approx([0.0, 0.05, 0.30, 0.90])  # each begins where the one before ended
    import re

    widths = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'data-phase="(\w+)".*?<rect x="[\d.]+" y="\d+" width="([\d.]+)"', svg)}
    assert widths["application_start"] / widths["container_start"] == pytest.approx(0.6 / 0.25, rel=0.01)
    totals = dict(re.findall(r'class="total" data-kind="(\w+)" data-ms="([\d.]+)"', svg))
    assert totals == {"task": "1000.0", "restored": "200.0", "cold": "2000.0"}
    assert "<script" not in svg and "http" not in svg.replace("http://www.w3.org/2000/svg", "")  # self-contained
    assert waterfall.medians([{"start": "cold", "total": 3.0}, {"start": "cold", "total": 1.0},
                              {"start": "cold", "total": 2.0}, {"start": "warm", "total": 0.1}]) == {
        "restored": None, "cold": 2.0}


def test_the_server_wants_the_token_on_every_request():
    server = serve(Board(fleet()), "s3cret", 0)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        for path, headers in (("", {}), ("api/tasks", {"X-Beamctl-Token": "nope"}), ("api/apps?token=nope", {})):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(urllib.request.Request(base + path, headers=headers), timeout=5)
            assert e.value.code == 401
        with urllib.request.urlopen(base + "?token=s3cret", timeout=5) as r:
            page = r.read().decode()
            assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
        assert "<script" in page and "http://" not in page and "https://" not in page  # nothing from the network
        with urllib.request.urlopen(urllib.request.Request(base + "api/tasks", headers={"X-Beamctl-Token": "s3cret"})) as r:
            assert len(json.loads(r.read())["tasks"]) == 6
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(base + "api/task/t-000000000000",
                                                          headers={"X-Beamctl-Token": "s3cret"}))
        assert e.value.code == 404
    finally:
        server.shutdown()


def test_profile_writes_the_waterfall_to_share(cli, monkeypatch, tmp_path):
    hosts = fleet()
    monkeypatch.setattr(query, "hosts_of", lambda entries, ssh=None: hosts)
    monkeypatch.setenv("BEAMCTL_HOSTS_FILE", str(tmp_path / "hosts.yaml"))
    (tmp_path / "hosts.yaml").write_text("".join(f"- name: {h.name}\n  target: {h.name}\n" for h in hosts))
    task_id = hosts[0].agent.task_rows[0]["task_id"]
    out = tmp_path / "t.svg"
    done = cli("profile", task_id, "--svg", str(out))
    assert done.code == 0, done.err
    assert out.read_text().startswith("<svg") and f'data-task="{task_id}"' in out.read_text()
    page = tmp_path / "t.html"
    assert cli("profile", task_id, "--html", str(page)).code == 0
    assert "<svg" in page.read_text() and page.read_text().startswith("<!doctype html>")
