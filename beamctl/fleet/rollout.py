"""`deploy` to SSH hosts: per host, in parallel, agent (installed unless current) -> image -> deploy.

The image is built once on the client (apps.deploy); each host then gets, on its own thread:
install_agent (nothing sent when current), ship_image (nothing sent when present), and the agent's
`deploy` request through the bridge (spec and secret values as data on the SSH channel, never argv).
One host's failure is its own result and never hides another's success; `outcome` turns the
results into an exit code (all ready: OK, some: PARTIAL, none: FAILURE).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from beamctl.errors import BeamctlError, ExitCode

Progress = Callable[[Any], None]


def failed(host: str, reason: str, log_tail: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"host": host, "status": "failed", "reason": reason, "log_tail": log_tail or [], "version": None,
            "serving": None, "endpoint": None, **extra}


ANSWER_SLACK_S = 60  # beyond the health timeout, for the agent's own work (image check, records)


def deploy_one(ssh: Any, entry: Any, image: Any, spec_json: dict[str, Any], secret_values: dict[str, str],
               health_timeout: float, progress: Progress) -> dict[str, Any]:
    """One host's whole deploy; BeamctlError and friends become a failed result."""
    from beamctl.agent.control import AgentClient
    from beamctl.fleet.install import BRIDGE_ARGV, install_agent
    from beamctl.fleet.ship import ship_image
    from beamctl.fleet.ssh import SshTransport

    start, name = time.monotonic(), entry.name
    try:
        target = ssh.resolve(entry.host, name)
        agent = install_agent(ssh, target, progress, name=name)
        shipped = ship_image(ssh, target, image.image, image.id, progress, name=name)
        progress(f"{name}: deploying {image.image}")
        transport = SshTransport(target, list(BRIDGE_ARGV), ssh, read_timeout=health_timeout + ANSWER_SLACK_S)
        try:
            answer = AgentClient(transport).request("deploy", spec_json=spec_json, secret_values=secret_values,
                                                    health_timeout=health_timeout)
        finally:
            transport.close()
        extra = {"agent": agent.action, "ship": shipped.as_json(), "seconds": time.monotonic() - start}
        if not answer.get("ok"):
            hint = answer.get("hint")
            return failed(name, (answer.get("error") or "the agent failed") + (f" ({hint})" if hint else ""),
                          **extra)
        r = answer["result"]
        return {"host": name, "status": r["status"], "reason": r.get("reason"), "log_tail": r.get("log_tail", []),
                "version": r.get("version"), "serving": r.get("serving"), "endpoint": r.get("endpoint"), **extra}
    except BeamctlError as e:
        return failed(name, e.message, seconds=time.monotonic() - start)
    except (ConnectionError, OSError) as e:
        return failed(name, f"{name}: unreachable: the connection broke: {e or type(e).__name__}",
                      seconds=time.monotonic() - start)
    except Exception as e:  # noqa: BLE001 - one host's surprise must not hide the others' results
        return failed(name, f"internal error: {type(e).__name__}: {e}", seconds=time.monotonic() - start)


def deploy_hosts(entries: list[Any], image: Any, spec_json: dict[str, Any], secret_values: dict[str, str],
                 health_timeout: float, progress: Progress, ssh: Any = None,
                 max_parallel: int | None = None) -> list[dict[str, Any]]:
    """Every host at once (or `max_parallel` at a time); one result per host, in the order given."""
    from beamctl.fleet.ssh import Ssh

    ssh = ssh or Ssh()
    if not entries:
        return []
    workers = max(1, min(max_parallel or len(entries), len(entries)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deploy") as pool:
        return list(pool.map(lambda e: deploy_one(ssh, e, image, spec_json, secret_values, health_timeout,
                                                  progress), entries))


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
