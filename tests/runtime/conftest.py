"""Run `python -m beamctl_runtime serve` as the image does: a copy of the package beside an app folder."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[2] / "beamctl" / "runtime"
START_TIMEOUT_S = 15  # a cold interpreter on a loaded CI machine
# The runtime runs on the image's Python (3.9+): BEAMCTL_RUNTIME_PYTHON=python3.9 tests it on that one.
PYTHON = os.environ.get("BEAMCTL_RUNTIME_PYTHON") or sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """One runtime process: requests over one keep-alive connection, its logs after stop()."""

    def __init__(self, root: Path, env: dict) -> None:
        self.root, self.port = root, free_port()
        full = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{root / 'lib'}:{root / 'app'}",
                "BEAMCTL_APP": "demo", "BEAMCTL_HANDLER": "app:handler", "BEAMCTL_PORT": str(self.port),
                **env}
        self._out, self._err = open(root / "stdout", "w+"), open(root / "stderr", "w+")
        self.proc = subprocess.Popen([PYTHON, "-m", "beamctl_runtime", "serve", "--app-dir",
                                      str(root / "app")], env=full, cwd=root, stdout=self._out, stderr=self._err)
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | dict | None = None) -> tuple[int, dict]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.will_close:
            self.conn.close()
            self.conn = None
        return response.status, json.loads(data)

    def health(self) -> dict | None:
        """The health document, or None while nothing listens yet."""
        try:
            return self.request("GET", "/health")[1]
        except (ConnectionError, http.client.HTTPException, OSError):
            self.conn = None
            return None

    def task(self, task_id: str = "t-1", **inputs) -> dict:
        status, doc = self.request("POST", "/tasks", {"task_id": task_id, "inputs": inputs})
        assert status == 200, doc
        return doc

    def wait_for(self, state: str) -> dict:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            health = self.health()
            if health and health["state"] == state:
                return health
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}: {self.logs()[1]}"
            time.sleep(0.01)
        raise AssertionError(f"not {state} after {START_TIMEOUT_S} s: {self.logs()}")

    def wait_exit(self, timeout: float = START_TIMEOUT_S) -> int:
        return self.proc.wait(timeout)

    def logs(self) -> tuple[str, str]:
        return (self.root / "stdout").read_text(), (self.root / "stderr").read_text()

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._out.close()
        self._err.close()


@pytest.fixture
def serve(tmp_path):
    """serve(app_source, **env) -> Served, already started (not yet READY); stopped afterwards."""
    started = []

    def start(source: str, **env: str) -> Served:
        root = tmp_path / f"r{len(started)}"
        shutil.copytree(RUNTIME, root / "lib" / "beamctl_runtime",
                        ignore=shutil.ignore_patterns("__pycache__"))
        (root / "app").mkdir()
        (root / "app" / "app.py").write_text(textwrap.dedent(source))
        started.append(Served(root, env))
        return started[-1]

    yield start
    for served in started:
        served.stop()
