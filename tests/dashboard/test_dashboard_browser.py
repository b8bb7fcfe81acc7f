"""`beamctl dashboard` in a real headless browser (Debian's chromium and chromium-driver, through Selenium),
over a real agent on the Docker engine: the tasks table fills and follows new tasks, a click on a restored
task and on a cold one shows its waterfall whose phases are `beamctl profile --json`'s, the logs page
follows a task's output as it runs, the apps page shows each checkpoint, and without the token nothing is
served. A second page over three hosts, one of them down, says why for that host and shows the others.
Screenshots of the pages land in $BEAMCTL_SCREENSHOTS (default: the test's tmp folder)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.agent.test_agent_engine import Host
from tests.browser import css, wait

pytestmark = pytest.mark.integration

APP_CODE = """
import time

def setup():
    time.sleep(0.5)
    return {"ready": True}

def handler(context, n=0, say=None, wait=0):
    if say:
        print(say, flush=True)
    time.sleep(wait)
    return {"n": n}
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("agent"), tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("apps"))
    yield h
    h.cleanup()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    d = Path(os.environ.get("BEAMCTL_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def apps(host):
    """An app with checkpoints (restored starts) and one without (cold starts), each called after scaling
    to zero, and once warm."""
    restored, rfolder = host.app("dash", "keep_warm_seconds: 2\non_start: app:setup\ncheckpoint_enabled: true\n",
                                 APP_CODE)
    cold, cfolder = host.app("dashcold", "keep_warm_seconds: 2\non_start: app:setup\n", APP_CODE)
    host.ok("deploy", "-f", str(rfolder))
    host.ok("deploy", "-f", str(cfolder))
    host.wait_scaled_to_zero(restored)
    host.wait_scaled_to_zero(cold)
    calls = {"restored": host.call(restored, {"n": 1}), "cold": host.call(cold, {"n": 2}),
             "warm": host.call(cold, {"n": 3})}
    assert {k: c["start"] for k, c in calls.items()} == {"restored": "restored", "cold": "cold", "warm": "warm"}
    return {"restored": restored, "cold": cold, "calls": calls}


@pytest.fixture(scope="module")
def dashboard(host, apps):
    """`beamctl dashboard --port 0` as a user runs it; its URL from its first line."""
    proc = subprocess.Popen(host.argv("dashboard", "--port", "0"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=host.env(), cwd=host.apps_dir)
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:") and "token=" in url, proc.stderr.read() if proc.poll() else url
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def phases_on_page(driver) -> dict[str, float]:
    rows = wait(driver, lambda d: css(d, "#phases tr[data-phase]"))
    return {r.get_attribute("data-phase"): float(r.get_attribute("data-ms")) for r in rows}


def test_a_click_on_a_task_shows_its_waterfall_as_profile_says(host, apps, dashboard, browser, shots):
    browser.get(dashboard)
    calls = apps["calls"]
    for kind, call in calls.items():
        wait(browser, lambda d: css(d, f'tr.task[data-task-id="{call["task_id"]}"]'))
    browser.save_screenshot(str(shots / "tasks.png"))
    later = host.call(apps["cold"], {"n": 9})  # the table follows without a reload
    wait(browser, lambda d: css(d, f'tr.task[data-task-id="{later["task_id"]}"]'), timeout=10)

    css(browser, "#f-start")[0].send_keys("restored")  # the start filter
    wait(browser, lambda d: {r.get_attribute("data-start") for r in css(d, "tr.task")} == {"restored"})
    for kind in ("restored", "cold"):
        if kind == "cold":
            browser.get(dashboard)
        row = wait(browser, lambda d: css(d, f'tr.task[data-task-id="{calls[kind]["task_id"]}"]'))[0]
        row.click()
        shown = phases_on_page(browser)
        profile = host.ok("profile", calls[kind]["task_id"], "--json").json()
        assert shown == {k: round(v * 1000, 1) for k, v in profile["phases"].items()}, (kind, shown, profile)
        assert (("checkpoint_restore" in shown) == (kind == "restored")) and ("application_start" in shown) == (kind == "cold")
        bars = css(browser, "#waterfall g.phase")
        assert [b.get_attribute("data-phase") for b in bars] == list(shown)  # drawn in the order they happened
        widths = {b.get_attribute("data-phase"): float(b.find_element("css selector", "rect").get_attribute("width"))
                  for b in bars}
        big = max(shown, key=shown.get)
        assert widths[big] == max(widths.values())  # to scale: the longest phase has the longest bar
        median = css(browser, f'#waterfall g.total[data-kind="{kind}"]')  # the app's median start of its kind
        assert median and float(median[0].get_attribute("data-ms")) > 0
        assert "median restored start" in browser.page_source and "median cold boot" in browser.page_source
        browser.save_screenshot(str(shots / f"task-{kind}.png"))


def test_logs_follow_a_running_task_and_apps_show_checkpoints(host, apps, dashboard, browser, shots):
    browser.get(dashboard.replace("/?", "/?") + f"#/logs/{apps['cold']}")
    wait(browser, lambda d: css(d, "#logs"))
    marker = f"marker-{time.time_ns()}"
    caller = threading.Thread(target=host.call, args=(apps["cold"], {"say": marker, "wait": 3}))
    caller.start()
    began = time.monotonic()
    wait(browser, lambda d: marker in (css(d, "#logs")[0].text or ""), timeout=15)
    assert caller.is_alive() or time.monotonic() - began < 3.5  # seen while the task still ran
    caller.join()
    browser.save_screenshot(str(shots / "logs.png"))

    browser.get(dashboard + "#/apps")
    card = wait(browser, lambda d: css(d, f'.app[data-app="{apps["restored"]}"]'))[0]
    assert "ready" in card.text and "MB" in card.text  # its checkpoint: ready, with its size
    browser.save_screenshot(str(shots / "apps.png"))


def test_nothing_is_served_without_the_token(dashboard):
    base = dashboard.split("?")[0]
    for path in ("", "api/tasks", "api/apps", "api/logs?app=x"):
        for headers in ({}, {"X-Beamctl-Token": "wrong"}):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(urllib.request.Request(base + path, headers=headers), timeout=10)
            assert e.value.code == 401
    token = dashboard.split("token=")[1]
    with urllib.request.urlopen(urllib.request.Request(base + "api/tasks", headers={"X-Beamctl-Token": token})) as r:
        assert r.status == 200 and json.loads(r.read())["tasks"]


def test_one_host_down_says_why_and_the_others_are_complete(browser, shots):
    from beamctl.dashboard.data import Board
    from beamctl.dashboard.server import serve
    from beamctl.hosts.fake import FakeAgent, FakeHost

    hosts = [FakeHost(f"testhost-{i}", FakeAgent()) for i in (1, 2, 3)]
    for h in hosts:
        h.agent.versions["hello"] = [{"version": 1, "spec": {"image": "beamctl/hello:1"}}]
        h.agent.active["hello"] = 1
        h.agent.op_call("hello", {"n": 1})
    hosts[1].fail = {op: ConnectionError("testhost-2: no route to host") for op in ("status", "tasks", "logs", "task")}
    server = serve(Board(hosts), "tok", 0)
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/?token=tok")
        err = wait(browser, lambda d: css(d, '.hosterr[data-host="testhost-2"]'))[0]
        assert "no route to host" in err.text
        rows = wait(browser, lambda d: css(d, "tr.task") if len(css(d, "tr.task")) == 2 else None)
        assert sorted(r.find_elements("css selector", "td")[3].text for r in rows) == ["testhost-1", "testhost-3"]
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/?token=tok#/apps")
        wait(browser, lambda d: css(d, '.hosterr[data-host="testhost-2"]'))
        hosts_shown = [r.get_attribute("data-host") for r in wait(browser, lambda d: css(d, ".app tr[data-host]"))]
        assert hosts_shown == ["testhost-1", "testhost-3"]
        browser.save_screenshot(str(shots / "one-host-down.png"))
    finally:
        server.shutdown()
