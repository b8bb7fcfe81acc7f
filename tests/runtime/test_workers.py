"""Workers: at most BEAMCTL_WORKERS handlers at once, the task timeout, warm-task latency."""

from __future__ import annotations

import http.client
import json
import socket
import statistics
import threading
import time

import pytest

SLEEPER = """
    import time
    def handler(seconds=0.0):
        time.sleep(seconds)
        return seconds
"""


def post_all(port: int, bodies: list[dict]) -> list[dict]:
    """POST each body on a connection of its own, all at once; the responses in order."""
    results: list[dict] = [{}] * len(bodies)

    def one(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/tasks", json.dumps(bodies[i]), {"Content-Type": "application/json"})
        results[i] = json.loads(conn.getresponse().read())
        conn.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_bound_how_many_handlers_run_at_once(serve, workers):
    rt = serve(SLEEPER, BEAMCTL_WORKERS=str(workers))
    rt.wait_for("READY")
    a, b = post_all(rt.port, [{"task_id": f"t-{i}", "inputs": {"seconds": 0.5}} for i in range(2)])
    assert a["status"] == b["status"] == "succeeded"
    first, second = sorted((a["timings"], b["timings"]), key=lambda t: t["start"])
    if workers == 2:
        assert second["start"] < first["end"]  # they overlap
    else:
        assert second["start"] >= first["end"]  # one after the other ...
        assert second["start"] - second["queued"] >= 0.4  # ... and the runtime says the second waited
    assert rt.health()["served"] == 2


def test_a_task_past_the_timeout_fails_and_its_worker_stays_busy_until_it_returns(serve):
    rt = serve(SLEEPER, BEAMCTL_TIMEOUT="0.3")
    rt.wait_for("READY")
    slow = rt.task("t-slow", seconds=1.5)
    assert (slow["status"], slow["result"], slow["error"]) == ("failed", None, "timed out after 0.3 s")
    assert 0.3 <= slow["timings"]["end"] - slow["timings"]["start"] < 1
    health = rt.health()
    assert (health["busy"], health["stuck"], health["served"]) == (1, 1, 1)
    quick = rt.task("t-quick")  # one worker: it waits for the stuck handler to return
    assert quick["status"] == "succeeded"
    assert quick["timings"]["start"] >= slow["timings"]["start"] + 1.5
    health = rt.health()
    assert (health["busy"], health["stuck"], health["served"]) == (0, 0, 2)
    out, err = rt.logs()
    assert "beamctl-runtime: task t-slow failed: timed out after 0.3 s\n(the handler is still running" in err
    assert "beamctl-runtime: task t-slow (timed out) finished after 1.5" in out


def test_warm_task_latency_has_no_delayed_ack_stalls(serve):
    """A no-op task over keep-alive takes well under a millisecond; a 40 ms Nagle stall would show."""
    rt = serve("def handler():\n    return None\n")
    rt.wait_for("READY")
    times = []
    for i in range(200):
        sent = time.perf_counter()
        rt.task(f"t-{i}")
        times.append(time.perf_counter() - sent)
    assert statistics.median(times) < 0.02, statistics.median(times)


def test_a_client_that_goes_away_mid_task_is_no_error(serve):
    rt = serve(SLEEPER)
    rt.wait_for("READY")
    body = json.dumps({"task_id": "t-gone", "inputs": {"seconds": 0.3}}).encode()
    with socket.create_connection(("127.0.0.1", rt.port)) as s:
        s.sendall(b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert rt.task("t-next")["status"] == "succeeded"
    deadline = time.monotonic() + 5
    while rt.health()["served"] < 2 and time.monotonic() < deadline:  # t-gone may have started last
        time.sleep(0.05)
    out, err = rt.logs()
    assert "task t-gone succeeded" in out and err == ""
