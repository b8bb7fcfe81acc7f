"""`python -m beamctl.agent [--data-dir DIR] [--http HOST:PORT]`: run this host's agent."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import sys
import threading
from pathlib import Path

from beamctl import __version__
from beamctl.protocol.layout import default_data_dir

DEFAULT_HTTP = "127.0.0.1:8430"  # loopback by default; pass 0.0.0.0:8430 to serve other machines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="beamctl-agent", description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--http", default=DEFAULT_HTTP, help="address of the apps' HTTP endpoint (port 0: any)")
    parser.add_argument("--version", action="version", version=f"beamctl-agent {__version__}")
    args = parser.parse_args(argv)

    # The agent never talks to an engine over SSH, but docker-py imports paramiko when it is
    # installed (its SSH transport): +20 MiB RSS and +120 ms start-up for nothing. Block it here.
    sys.modules.setdefault("paramiko", None)  # type: ignore[arg-type]
    import docker

    from beamctl.agent import control, http_api
    from beamctl.agent.containers import DockerContainers
    from beamctl.agent.resident import budget_from_env
    from beamctl.agent.service import Agent

    try:
        snapshot_ram = budget_from_env()
    except ValueError as e:
        print(f"beamctl-agent: {e}", file=sys.stderr)
        return 2

    data_dir = args.data_dir
    os.umask(0o077)  # every file the agent (and what it runs) makes is its user's alone (agent/private.py)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = (data_dir / "agent.lock").open("a")  # held for the agent's life; the kernel drops it on death
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"beamctl-agent: another agent is running on {data_dir}", file=sys.stderr)
        return 3
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as e:
        print(f"beamctl-agent: cannot reach the Docker Engine: {e}", file=sys.stderr)
        return 3
    agent = Agent(data_dir, DockerContainers(client), snapshot_ram=snapshot_ram)
    agent.recover()
    host, _, port = args.http.rpartition(":")
    web = http_api.serve(agent, host or "127.0.0.1", int(port))
    agent.endpoint = f"http://{web.server_address[0]}:{web.server_address[1]}"
    agent.state.exposure.serve = lambda h, p, allowed: http_api.serve(agent, h, p, allowed=allowed)
    try:
        agent.state.exposure.start()  # where a gateway reaches this agent, as the last deploy said
    except Exception as e:  # noqa: BLE001 - the loopback endpoint and the control socket still serve
        print(f"beamctl-agent: the gateway's listener did not start: {e}", file=sys.stderr, flush=True)
    control.serve(agent, data_dir / "agent.sock")
    (data_dir / "agent.json").write_text(json.dumps({"pid": os.getpid(), "version": __version__,
                                                     "endpoint": agent.endpoint}))
    print(f"beamctl-agent {__version__}: {data_dir}, endpoint {agent.endpoint}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=agent.reap_forever, daemon=True, name="reaper").start()
    threading.Thread(target=agent.watch_deaths_forever, daemon=True, name="deaths").start()
    stop.wait()
    agent.shutdown()  # containers keep running: a restarted agent adopts them
    return 0


if __name__ == "__main__":
    sys.exit(main())
