"""How the agent says no, on both sides of the wire.

The agent raises `AgentError` (message, hint, data) and answers it as `{"ok": false, ...}`; the client
turns such an answer into `AgentFailed`, and a stream that ends before its answer into `AgentStopped`.
"""

from __future__ import annotations

from typing import Any

from beamctl.errors import BeamctlError, ExitCode

AGENT_STOPPED = "agent_stopped"  # data.kind of the bridge's answer when the agent's socket closed mid-request


class AgentError(Exception):
    """Raised inside the agent: answered to the client, never a dropped connection."""

    def __init__(self, message: str, hint: str | None = None, **data: Any) -> None:
        super().__init__(message)
        self.message, self.hint, self.data = message, hint, data  # data["kind"]: "input" for bad inputs


class AgentFailed(BeamctlError):
    """The agent refused or failed an operation; its words are the message. `stopped`: the bridge answered
    for an agent whose socket closed mid-request."""

    def __init__(self, message: str, hint: str | None = None, stopped: bool = False) -> None:
        super().__init__(message, hint)
        self.stopped = stopped


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


def refusal(answer: dict[str, Any]) -> AgentFailed | None:
    """The failed answer as an error (None for a success); its data says whether the agent stopped."""
    if answer.get("ok"):
        return None
    return AgentFailed(answer.get("error") or "the agent failed", answer.get("hint"),
                       stopped=(answer.get("data") or {}).get("kind") == AGENT_STOPPED)
