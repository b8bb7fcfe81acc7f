"""POST /tasks: the request body in, one handler run on a worker, the response body out."""

from __future__ import annotations

import json
import time
from typing import Any, Dict, Optional, Tuple

from .entry import app_trace, one_line
from .log import complain, say
from .pool import Job
from .state import Runtime

MAX_TASK_ID_CHARS = 256  # ids go into log lines; the agent's are far shorter
TRACE_LINES = 12  # of a failed handler's traceback, kept in the task's record (the whole one is in the logs)
_ENCODE = json.JSONEncoder(allow_nan=False).encode  # strict JSON: NaN is no JSON number


class BadRequest(Exception):
    """The body is not a task; the message says what is wrong (HTTP 400)."""


def parse(body: bytes) -> Tuple[str, Dict[str, Any]]:
    """`{"task_id": "...", "inputs": {...}}` -> (task_id, inputs); a missing `inputs` means {}."""
    try:
        doc = json.loads(body.decode("utf-8"))  # RFC 8259: JSON on the wire is UTF-8
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"the body is not JSON: {one_line(e)}") from None
    if not isinstance(doc, dict):
        raise BadRequest('the body must be a JSON object: {"task_id": "...", "inputs": {...}}')
    task_id = doc.get("task_id")
    if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_TASK_ID_CHARS \
            or not task_id.isprintable():
        raise BadRequest(f"task_id must be a string of 1 to {MAX_TASK_ID_CHARS} printable characters")
    inputs = doc.get("inputs", {})
    if not isinstance(inputs, dict):
        raise BadRequest(f"inputs must be a JSON object (the handler's keyword arguments), "
                         f"not {_json_type(inputs)}")
    return task_id, inputs


def run(rt: Runtime, task_id: str, inputs: Dict[str, Any], queued: float) -> bytes:
    """Run the task (waiting for a free worker) and return the response body; logs one line."""
    app, pool, timeout_s = rt.app, rt.pool, rt.settings.timeout_s
    job = pool.run(lambda: app.call(task_id, inputs), task_id, timeout_s)
    result_json, error, trace = "null", None, ""
    if job.abandoned:
        error, end = f"timed out after {timeout_s:g} s", time.monotonic()
        trace = "(the handler is still running: its worker counts as busy until it returns)"
    else:
        end = job.end
        if job.error is not None:
            error, trace = one_line(job.error), app_trace(job.error)
        else:
            result_json, error = _result_json(job.result)
    rt.count_served()
    start = job.start if job.start is not None else end
    status = "failed" if error else "succeeded"
    say(f"task {task_id} {status} in {end - start:.3f} s")
    if error:
        complain(f"task {task_id} failed: {error}", trace)
    head = json.dumps({"task_id": task_id, "status": status})
    clock = rt.host_clock  # the agent's clock, also in a restored process's own time namespace
    tail = json.dumps({"error": error, "timings": {"queued": clock(queued), "start": clock(start),
                                                   "end": clock(end)},
                       **({"trace": trace_tail(trace)} if error and trace else {})})
    return f'{head[:-1]}, "result": {result_json}, {tail[1:]}'.encode()  # result encoded once


def trace_tail(trace: str, lines: int = TRACE_LINES) -> str:
    """The last lines of the handler's traceback (where it failed), for the task's record."""
    kept = trace.splitlines()
    return "\n".join((["..."] if len(kept) > lines else []) + kept[-lines:])


def late(job: Job) -> None:
    """A handler that timed out has returned at last: its worker is free again."""
    outcome = one_line(job.error) if job.error is not None else "returned"
    say(f"task {job.label} (timed out) finished after {job.end - job.start:.3f} s: {outcome}")


def _result_json(result: Any) -> Tuple[str, Optional[str]]:
    try:
        return _ENCODE(result), None
    except (TypeError, ValueError, RecursionError) as e:
        kind = type(result).__name__
        error = f"handler returned a {kind}, which is not JSON-serializable"
        if str(e) != f"Object of type {kind} is not JSON serializable":  # the culprit is inside it
            error += f" ({' '.join(str(e).split()) or type(e).__name__})"
        return "null", error


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
