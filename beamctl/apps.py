"""What the app commands do, apart from how they look: deploy, call, tasks, profile, logs, status,
stop. Without `hosts:` an app runs on this machine's agent; `deploy` with `hosts:` goes to those
hosts over SSH (fleet/rollout.py); the other commands ask the app's hosts through fleet/query.py when
they are named (--host, -f, ./beam.yaml), and the local agent (`request`) otherwise."""

from __future__ import annotations

from typing import Any, Callable

from beamctl.config.model import AppConfig
from beamctl.errors import BeamctlError, ExitCode


class AgentFailed(BeamctlError):
    """The agent refused or failed an operation; its words are the message."""


class AgentStopped(BeamctlError):
    """The agent's stream ended before its answer: the agent stopped (killed, crashed) mid-request.
    ENVIRONMENT, as for an engine that is not running: neither the app nor the request was wrong, and
    the same command again (which starts the local agent; a host's supervisor restarts its) may work."""

    exit_code = ExitCode.ENVIRONMENT

    def __init__(self, op: str, app: str | None, task_id: str | None = None, host: str | None = None) -> None:
        super().__init__(*stopped_message(op, app, task_id, host))
        self.op, self.app, self.task_id, self.host = op, app, task_id, host


def stopped_message(op: str, app: str | None, task_id: str | None, host: str | None) -> tuple[str, str | None]:
    """What to say when the agent stopped during `op` (pure)."""
    agent = f"the agent on {host}" if host else "the agent"
    if task_id is not None:
        where = f" --host {host}" if host else ""
        return (f"{agent} stopped during task {task_id} of {app}; it will show as lost in: beamctl tasks {app}"
                f"{where}", None)
    if op in ("deploy", "rollback"):
        return (f"{agent} stopped during the {op} of {app}",
                f"{op} again: the agent starts again, and takes this {op}'s lock over as stale")
    return f"{agent} stopped while answering {op}", "run the command again (that starts the agent)"


def _agent(autostart: bool = False) -> Any:
    from beamctl.agent.local import local_agent

    return local_agent(autostart=autostart)


def request(op: str, autostart: bool = True, **args: Any) -> Any:
    from beamctl.agent.control import answer_or_raise

    client = _agent(autostart)
    try:
        answer = client.request(op, **args)
    except (ConnectionError, EOFError):
        raise AgentStopped(op, args.get("app")) from None
    return answer_or_raise(answer, lambda message, hint: AgentFailed(message, hint))


def call(app: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """One task on the local agent. Its id is made here, so a call cut off by the agent's death names it."""
    from beamctl.agent.control import new_task_id

    task_id = new_task_id()
    try:
        return request("call", app=app, inputs=inputs, task_id=task_id)
    except AgentStopped:
        raise AgentStopped("call", app, task_id) from None


def call_on_hosts(agents: list[Any], app: str, inputs: dict[str, Any], chosen: Callable[[str], None],
                  unanswered: Callable[[str], None]) -> tuple[dict[str, Any], str]:
    """One task on the least busy of these hosts' agents: (task, host). `chosen` hears the host picked;
    `unanswered`, one line per host that did not answer, when none serves the app."""
    from beamctl.agent.control import new_task_id
    from beamctl.fleet import query

    replies = query.ask_all(agents, "status", app=app)
    where = query.pick_host(replies, app)
    if where is None:
        for line in query.error_lines(replies):
            unanswered(line)
        raise AgentFailed(f"no host serves {app} ({len(agents)} asked)", hint="run `beamctl deploy` first")
    chosen(where)
    agent = next(a for a in agents if a.name == where)
    task_id = new_task_id()  # ours, so that a call cut off by the agent's death can name its task
    reply = query.ask_one(agent, "call", timeout=query.CALL_TIMEOUT_S, app=app, inputs=inputs, task_id=task_id)
    if reply.stopped:
        raise AgentStopped("call", app, task_id, where)
    if reply.error is not None:  # which host failed it (the agent's own words do not say)
        raise AgentFailed(reply.error if reply.error.startswith(f"{where}:") else f"{where}: {reply.error}")
    return reply.result, where


def deploy(config: AppConfig, progress: Callable[[Any], None], health_timeout: float | None = None,
           lock_wait: float = 0.0) -> dict[str, Any]:
    """Build, hand the image and secrets to the agent(s), wait for READY; per-host results.

    health_timeout: None takes beam.yaml's rollout.health_timeout."""
    timeout = health_timeout if health_timeout is not None else config.rollout.health_timeout_s
    if config.hosts:
        return deploy_ssh(config, progress, timeout, lock_wait)
    from beamctl import secrets
    from beamctl.agent.control import answer_or_raise
    from beamctl.agent.spec import spec_from_config
    from beamctl.fleet import locks
    from beamctl.image import build_app

    secret_values = secrets.gather(config.secrets)  # before the build: fail fast on a missing secret
    if config.gpu:
        request("check_placement", gpu=[str(g) for g in config.gpu], app=config.name)  # no build if it cannot run
    image = build_app(config, progress)
    progress(f"deploying {image.image} to the local agent")
    client = _agent(autostart=True)
    with locks.hold({"local": client}, config.name, locks.holder_here(config.name, image.image), lock_wait,
                    progress) as held:
        if "local" not in held:
            raise AgentFailed(f"no deploy lock from the local agent: {held.missing.get('local')}")
        try:
            answer = client.request("deploy", spec_json=spec_from_config(config, image.image).to_json(),
                                    secret_values=secret_values, health_timeout=timeout)
        except (ConnectionError, EOFError):
            raise AgentStopped("deploy", config.name) from None
    result = answer_or_raise(answer, lambda message, hint: AgentFailed(message, hint))
    return {"app": config.name, "version": result["version"], "image": image.image,
            "hosts": [{"host": "local", "status": result["status"], "reason": result["reason"],
                       "log_tail": result.get("log_tail", []), "serving": result.get("serving"),
                       "endpoint": result.get("endpoint"), "checkpoint": result.get("checkpoint")}]}


def deploy_ssh(config: AppConfig, progress: Callable[[Any], None], health_timeout: float,
               lock_wait: float = 0.0) -> dict[str, Any]:
    """Every host of beam.yaml's `hosts:`: agents, placement, one build here, lock, ship, rolling deploy."""
    from beamctl import secrets
    from beamctl.agent.spec import spec_from_config
    from beamctl.fleet import rollout
    from beamctl.hosts.inventory import which_hosts
    from beamctl.image import build_app

    entries, _ = which_hosts(config.hosts)
    secret_values = secrets.gather(config.secrets)  # before anything: fail fast on a missing secret
    return rollout.rollout(entries, config.name, tuple(str(g) for g in config.gpu),
                           build=lambda: build_app(config, progress),
                           spec_for=lambda image: spec_from_config(config, image.image).to_json(),
                           secret_values=secret_values, health_timeout=health_timeout, progress=progress,
                           max_parallel=config.rollout.max_parallel, lock_wait=lock_wait,
                           checkpoints=config.checkpoint_enabled)
