"""What the app commands do, apart from how they look: deploy, call, tasks, profile, logs, status,
stop. Today every app runs on this machine's agent; the SSH fleet (next issue) fans these out."""

from __future__ import annotations

from typing import Any, Callable

from beamctl.config.model import AppConfig
from beamctl.errors import BeamctlError, UsageError


class AgentFailed(BeamctlError):
    """The agent refused or failed an operation; its words are the message."""


def _agent(autostart: bool = False) -> Any:
    from beamctl.agent.local import local_agent

    return local_agent(autostart=autostart)


def request(op: str, autostart: bool = True, **args: Any) -> Any:
    from beamctl.agent.control import answer_or_raise

    answer = _agent(autostart).request(op, **args)
    return answer_or_raise(answer, lambda message, hint: AgentFailed(message, hint))


def deploy(config: AppConfig, progress: Callable[[Any], None], health_timeout: float) -> dict[str, Any]:
    """Build, hand the image and secrets to the local agent, wait for READY; per-host results."""
    if config.hosts:
        raise UsageError(f"{config.file}: hosts are set, and deploying over SSH is not here yet",
                         hint="remove `hosts:` to deploy on this machine")
    from beamctl import secrets
    from beamctl.agent.spec import spec_from_config
    from beamctl.image import build_app

    secret_values = secrets.gather(config.secrets)  # before the build: fail fast on a missing secret
    if config.gpu:
        request("check_placement", gpu=[str(g) for g in config.gpu])  # no build for a host that can't run it
    image = build_app(config, progress)
    progress(f"deploying {image.image} to the local agent")
    client = _agent(autostart=True)
    from beamctl.agent.control import answer_or_raise

    answer = client.request("deploy", spec_json=spec_from_config(config, image.image).to_json(),
                            secret_values=secret_values, health_timeout=health_timeout)
    result = answer_or_raise(answer, lambda message, hint: AgentFailed(message, hint))
    return {"app": config.name, "version": result["version"], "image": image.image,
            "hosts": [{"host": "local", "status": result["status"], "reason": result["reason"],
                       "log_tail": result.get("log_tail", []), "serving": result.get("serving"),
                       "endpoint": result.get("endpoint")}]}
