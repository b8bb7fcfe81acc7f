"""Network sandboxes: network namespaces made before they are needed, which app containers join.

Docker sets up a container's network (veth pair, bridge, address; libnetwork's prestart hook) when the
container starts, and again when a snapshot is restored into a new container: ~0.15 s of every start on
the machines measured, as much as CRIU takes to restore a small snapshot (docs/BENCHMARKS.md). A sandbox
is a small container of the app's image that only holds a network namespace, like a Kubernetes pod's
pause container. App containers are created with network mode `container:<sandbox>`, and the runtime is
reached at the sandbox's address. When an app container is removed, its sandbox is kept for the app's
next start (up to SPARES per app), so a start after scale-to-zero, cold or restored, finds its network
ready. A snapshot is captured and restored in this same mode: CRIU treats the namespace as external and
leaves it alone, and the restored runtime's listening socket comes back inside it.

One app container per sandbox at a time (every runtime listens on the same port). A spare that is not
running any more is discarded when taken. If a sandbox cannot be made (an image without the runtime's
interpreter), the container gets Docker's own network, as before sandboxes.

Sandboxes carry the agent's label and LABEL_SANDBOX=<app>; their LABEL_APP is overridden with "" so that
filters for an app's containers (`label=dev.beamctl.app=NAME`, inherited from the image) do not count them.
"""
from __future__ import annotations

import secrets
import threading
from typing import Any

SPARES = 4  # sandboxes kept per app for its next starts (each one a sleeping interpreter, ~8 MB)
LABEL_SANDBOX = "dev.beamctl.sandbox"
# PID 1 of the sandbox: sleeps until SIGTERM (a PID 1 without a handler would ignore it)
HOLD = "import signal,sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\nwhile True: signal.pause()"


class Sandboxes:
    def __init__(self, api: Any, label_app: str, label_agent: str) -> None:
        self.api = api
        self.label_app, self.label_agent = label_app, label_agent
        self._lock = threading.Lock()
        self._spare: dict[str, list[str]] = {}  # app -> running sandboxes no container uses
        self._used: dict[str, tuple[str, str]] = {}  # app container id -> (app, its sandbox's id)
        self._unusable: set[str] = set()  # images a sandbox could not be started from

    def network_mode(self, app: str, image: str, agent_id: str) -> str | None:
        """`container:<id>` of a running sandbox for one new container of `app`, or None (Docker's
        network). The caller passes the container's id to bound() once it is created."""
        while (sid := self._take_spare(app)) is not None:  # the engine is asked outside the lock
            if self._running(sid):
                return f"container:{sid}"
            self._discard(sid)
        if image in self._unusable:
            return None
        sid = self._make(app, image, agent_id)
        if sid is None:
            self._unusable.add(image)
            return None
        return f"container:{sid}"

    def bound(self, container_id: str, app: str, network_mode: str | None) -> None:
        if network_mode:
            with self._lock:
                self._used[container_id] = (app, network_mode.removeprefix("container:"))

    def unbind_failed(self, app: str, network_mode: str | None) -> None:
        """A container create that took this sandbox failed: the sandbox is spare again."""
        if network_mode:
            self._park(app, network_mode.removeprefix("container:"))

    def sandbox_of(self, container_id: str) -> str | None:
        with self._lock:
            got = self._used.get(container_id)
        return got[1] if got else None

    def users_of(self, sandbox_id: str) -> list[str]:
        """The app containers in this sandbox's network (one, or none)."""
        with self._lock:
            return [cid for cid, (_, sid) in self._used.items() if sid == sandbox_id]

    def released(self, container_id: str) -> None:
        """The app container is gone: its sandbox becomes a spare of the app (or goes, beyond SPARES)."""
        with self._lock:
            got = self._used.pop(container_id, None)
        if got is not None:
            self._park(*got)

    def forget(self, app: str) -> None:
        """The app stopped here: its spare sandboxes go."""
        with self._lock:
            spares = self._spare.pop(app, [])
        for sid in spares:
            self._discard(sid)

    def adopt(self, rows: list[dict[str, Any]]) -> None:
        """After an agent (re)start, from the engine's list of this agent's containers: the sandboxes in
        use are remembered, the others become spares (or go, beyond SPARES; stopped ones go)."""
        sandboxes = {r["Id"]: r for r in rows if LABEL_SANDBOX in (r.get("Labels") or {})}
        used: set[str] = set()
        for r in rows:
            mode = (r.get("HostConfig") or {}).get("NetworkMode", "")
            if r["Id"] not in sandboxes and mode.startswith("container:"):
                sid = next((s for s in sandboxes if s.startswith(mode.removeprefix("container:"))), None)
                if sid is not None:
                    used.add(sid)
                    with self._lock:
                        self._used[r["Id"]] = (sandboxes[sid]["Labels"][LABEL_SANDBOX], sid)
        for sid, r in sandboxes.items():
            if sid in used:
                continue
            if r.get("State") == "running":
                self._park(r["Labels"][LABEL_SANDBOX], sid)
            else:
                self._discard(sid)

    def address(self, sandbox_id: str) -> str:
        return self.api.inspect_container(sandbox_id)["NetworkSettings"]["IPAddress"]

    # ------------------------------------------------------------------------------------------
    def _take_spare(self, app: str) -> str | None:
        with self._lock:
            spares = self._spare.get(app)
            return spares.pop() if spares else None

    def _park(self, app: str, sid: str) -> None:
        with self._lock:
            spares = self._spare.setdefault(app, [])
            keep = len(spares) < SPARES and sid not in spares
            if keep:
                spares.append(sid)
        if not keep:
            self._discard(sid)

    def _make(self, app: str, image: str, agent_id: str) -> str | None:
        import docker

        sid = None
        try:
            entry = self.api.inspect_image(image)["Config"].get("Entrypoint") or []
            interpreter = entry[0] if entry else "python3"
            sid = self.api.create_container(
                image, entrypoint=[interpreter, "-c", HOLD], command=[],
                name=f"beamctl-{app}-net-{secrets.token_hex(3)}",
                labels={self.label_agent: agent_id, self.label_app: "", LABEL_SANDBOX: app},
                host_config=self.api.create_host_config(mem_limit=64 * 2**20))["Id"]
            self.api.start(sid)
            return sid
        except docker.errors.APIError:
            if sid is not None:
                self._discard(sid)
            return None

    def _running(self, sid: str) -> bool:
        import docker

        try:
            return bool(self.api.inspect_container(sid)["State"]["Running"])
        except docker.errors.NotFound:
            return False

    def _discard(self, sid: str) -> None:
        import docker

        try:
            self.api.remove_container(sid, force=True)
        except docker.errors.APIError:
            pass
