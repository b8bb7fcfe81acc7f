"""serve in a real image: examples/hello built by beamctl, run by the Docker Engine as the agent runs it."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import need

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 30


def docker(*args: str) -> str:
    proc = subprocess.run([need("docker"), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def request(ip: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(ip, 8000, timeout=10)
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None,
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def hello_image():
    beamctl = Path(sys.executable).with_name("beamctl")
    proc = subprocess.run([str(beamctl), "build", "-f", str(REPO / "examples" / "hello"), "--json"],
                          capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["image"]


def test_hello_serves_a_task_and_stops_on_sigterm(hello_image):
    name = f"beamctl-itest-{uuid.uuid4().hex[:8]}"
    docker("run", "-d", "--name", name, "-e", "BEAMCTL_MODEL_CACHE=/cache/models", hello_image, "serve")
    try:
        ip = docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
        deadline, health = time.monotonic() + READY_TIMEOUT_S, {}
        while health.get("state") != "READY":
            assert time.monotonic() < deadline, f"not READY: {health} {docker('logs', name)}"
            try:
                health = request(ip, "GET", "/health")[1]
            except OSError:
                time.sleep(0.05)
        assert health["pid"] == 1 and health["timings"]["on_start_end"] is not None
        task_id = f"t-{uuid.uuid4().hex[:8]}"
        status, doc = request(ip, "POST", "/tasks", {"task_id": task_id, "inputs": {"name": "Ada"}})
        assert (status, doc["status"], doc["result"]) == (200, "succeeded",
                                                          {"message": "hello, Ada", "task": task_id})
        docker("exec", name, "test", "-d", "/cache/models")  # BEAMCTL_MODEL_CACHE was created
    finally:
        stopped = time.monotonic()
        subprocess.run([need("docker"), "stop", "-t", "10", name], capture_output=True, timeout=60)
        took = time.monotonic() - stopped
        code = docker("inspect", "-f", "{{.State.ExitCode}}", name)
        logs = subprocess.run([need("docker"), "logs", name], capture_output=True, text=True).stdout
        subprocess.run([need("docker"), "rm", "-f", name], capture_output=True, timeout=60)
    assert (code, took < 5) == ("0", True)  # PID 1 handles SIGTERM: no wait for the SIGKILL
    assert f"beamctl-runtime: task {task_id} succeeded in " in logs
