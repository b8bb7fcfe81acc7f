"""`deploy` to SSH hosts, in phases: agents -> placement -> (build) -> lock -> ship -> rolling deploy.

1. `install_all`: every host's agent installed unless current (in parallel), and CRIU where the host
   lacks a usable one; a host that fails here is a failed result and takes no further part. For a
   checkpoint_enabled app, the hosts left without a usable CRIU are named then (`cold_boots`), with why.
2. `place`: the agents say which hosts can run the app (GPU preference, free GPUs: placement.py);
   none at all is NoGpuPlacement before anything is built or sent.
3. (the caller builds the image once, here)
4. the deploy lock on every placed host (locks.hold; held for the rest, released on any exit);
5. `ship.ship_images`: only the layers each host lacks, one stream per group of hosts;
6. `deploy_rolling`: the agent's `deploy` on each host (start the new version, READY within the
   health timeout, switch, retire the old one), `max_parallel` hosts at a time; when a batch has a
   failure the hosts after it are not touched (the health gate) and keep their version.
One host's failure is its own result and never hides another's success; `outcome` turns the results
into an exit code (all ready: OK, some: PARTIAL, none: FAILURE).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from beamctl.errors import BeamctlError, ExitCode

Progress = Callable[[Any], None]
ANSWER_SLACK_S = 60  # beyond the health timeout, for the agent's own work (image check, records)


def failed(host: str, reason: str, log_tail: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"host": host, "status": "failed", "reason": reason, "log_tail": log_tail or [], "version": None,
            "serving": None, "endpoint": None, **extra}


def skipped(host: str, reason: str) -> dict[str, Any]:
    return {**failed(host, reason), "status": "skipped"}


def _guard(name: str, fn: Callable[[], Any]) -> Any:
    """fn(), or a failed result for this host: one host's surprise never hides the others' results."""
    try:
        return fn()
    except BeamctlError as e:
        return failed(name, e.message)
    except (ConnectionError, OSError) as e:
        return failed(name, f"{name}: unreachable: the connection broke: {e or type(e).__name__}")
    except Exception as e:  # noqa: BLE001
        return failed(name, f"internal error: {type(e).__name__}: {e}")


def _each(entries: list[Any], fn: Callable[[Any], Any], workers: int | None = None) -> list[Any]:
    if not entries:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers or len(entries), len(entries))),
                            thread_name_prefix="rollout") as pool:
        return list(pool.map(fn, entries))


def install_all(ssh: Any, entries: list[Any], progress: Progress) -> dict[str, Any]:
    """name -> InstallResult, or a failed result for hosts whose agent could not be made current."""
    from beamctl.hosts.install import install_agent

    def one(entry: Any) -> Any:
        return _guard(entry.name, lambda: install_agent(ssh, ssh.resolve(entry.host, entry.name), progress,
                                                        name=entry.name))

    return dict(zip((e.name for e in entries), _each(entries, one)))


def cold_boots(installed: dict[str, Any]) -> dict[str, str]:
    """Hosts whose agent is in place but whose CRIU cannot checkpoint (from the install step): name -> why."""
    return {name: r.criu.problem for name, r in installed.items()
            if not isinstance(r, dict) and r.criu is not None and r.criu.problem is not None}


def cold_boot_lines(cold: dict[str, str]) -> list[str]:
    return [f"{name} will boot cold (no snapshot): {why}" for name, why in cold.items()]


def place(agents: dict[str, Any], prefs: tuple[str, ...], app: str | None = None) -> Any:
    """Which of these hosts run the app (placement.Placement); raises NoGpuPlacement when none can."""
    from beamctl.fleet import placement

    return placement.place(prefs, placement.gather(agents, prefs, app))


def deploy_request(ssh: Any, entry: Any, spec_json: dict[str, Any], secret_values: dict[str, str],
                   health_timeout: float, progress: Progress) -> dict[str, Any]:
    """The agent's `deploy` on one host (the image is there): its result as a per-host result."""
    from beamctl.agent.control import AgentClient
    from beamctl.hosts.install import BRIDGE_ARGV
    from beamctl.transport.ssh import SshTransport

    name = entry.name
    progress(f"{name}: starting the new version")
    target = ssh.resolve(entry.host, name)
    transport = SshTransport(target, list(BRIDGE_ARGV), ssh, read_timeout=health_timeout + ANSWER_SLACK_S)
    try:
        answer = AgentClient(transport).request("deploy", spec_json=spec_json, secret_values=secret_values,
                                                health_timeout=health_timeout)
    finally:
        transport.close()
    if not answer.get("ok"):
        hint = answer.get("hint")
        return failed(name, (answer.get("error") or "the agent failed") + (f" ({hint})" if hint else ""))
    r = answer["result"]
    return {"host": name, "status": r["status"], "reason": r.get("reason"), "log_tail": r.get("log_tail", []),
            "version": r.get("version"), "serving": r.get("serving"), "endpoint": r.get("endpoint"),
            "checkpoint": r.get("checkpoint")}


def deploy_rolling(ssh: Any, entries: list[Any], spec_json: dict[str, Any], secret_values: dict[str, str],
                   health_timeout: float, progress: Progress, max_parallel: int | None = None
                   ) -> list[dict[str, Any]]:
    """`max_parallel` hosts at a time (default all); after a batch with a failure, the rest are left alone."""
    batch = max(1, max_parallel or len(entries) or 1)
    results: list[dict[str, Any]] = []
    for i in range(0, len(entries), batch):
        group = entries[i:i + batch]
        if any(r["status"] != "ready" for r in results):
            bad = ", ".join(r["host"] for r in results if r["status"] != "ready")
            results += [skipped(e.name, f"not deployed: the rollout stopped after {bad} failed "
                                        "(it keeps its version; fix and deploy again)") for e in group]
            continue
        results += _each(group, lambda e: _guard(e.name, lambda: deploy_request(
            ssh, e, spec_json, secret_values, health_timeout, progress)))
    return results


def rollout(entries: list[Any], app: str, prefs: tuple[str, ...], build: Callable[[], Any],
            spec_for: Callable[[Any], dict[str, Any]], secret_values: dict[str, str], health_timeout: float,
            progress: Progress, max_parallel: int | None = None, lock_wait: float = 0.0,
            ssh: Any = None, checkpoints: bool = False) -> dict[str, Any]:
    """The whole deploy to `entries` (phases in the module's text); the summary with one result per host."""
    from beamctl.fleet import locks
    from beamctl.fleet.query import HostAgent
    from beamctl.fleet.ship import ship_images
    from beamctl.transport.ssh import Ssh

    ssh = ssh or Ssh()
    results: dict[str, dict[str, Any]] = {}
    installed = install_all(ssh, entries, progress)
    results.update({n: r for n, r in installed.items() if isinstance(r, dict)})
    cold = cold_boots(installed) if checkpoints else {}
    for line in cold_boot_lines(cold):
        progress(line)
    live = [e for e in entries if e.name not in results]
    agents = {e.name: HostAgent(e, ssh) for e in live}
    try:
        placed = place(agents, prefs, app) if live else None
        if placed is not None:
            results.update({n: skipped(n, why) for n, why in placed.skipped.items()})
            live = [e for e in live if e.name in placed.chosen]
        image = build()
        with locks.hold({e.name: agents[e.name] for e in live}, app, locks.holder_here(app, image.image),
                        lock_wait, progress) as held:
            results.update({n: failed(n, f"no deploy lock: {why}") for n, why in held.missing.items()})
            live = [e for e in live if e.name in held]
            progress(f"deploying {image.image} to {len(live)} host{'s' if len(live) != 1 else ''}"
                     + (f": {', '.join(e.name for e in live)}" if live else ""))
            shipped = ship_images(ssh, {e.name: e.host for e in live}, image.image, image.id, progress) \
                if live else {}
            for name, got in shipped.items():
                if isinstance(got, BeamctlError):
                    results[name] = failed(name, got.message)
            live = [e for e in live if e.name not in results]
            spec_json = spec_for(image)
            for r in deploy_rolling(ssh, live, spec_json, secret_values, health_timeout, progress, max_parallel):
                ship = shipped.get(r["host"])
                results[r["host"]] = {**r, "ship": ship.as_json() if ship is not None else None,
                                      "cold_boot": cold.get(r["host"])}
    finally:
        for a in agents.values():
            a.close()
    return summary(app, image.image, [results[e.name] for e in entries])


def summary(app: str, image: str, hosts: list[dict[str, Any]]) -> dict[str, Any]:
    """The deploy's result: the top-level version only when every ready host got the same one."""
    versions = {h.get("version") for h in hosts}
    version = versions.pop() if len(versions) == 1 else None
    return {"app": app, "version": version, "image": image, "hosts": hosts}


def outcome(hosts: list[dict[str, Any]]) -> ExitCode:
    ready = sum(h["status"] == "ready" for h in hosts)
    if hosts and ready == len(hosts):
        return ExitCode.OK
    return ExitCode.PARTIAL if ready else ExitCode.FAILURE
