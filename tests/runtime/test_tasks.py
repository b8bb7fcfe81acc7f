"""POST /tasks: both handler styles, failures that keep the container serving, bad bodies."""

from __future__ import annotations

import pytest

GREETER = """
    def load():
        return {"greeting": "hello"}
    def handler(context, **inputs):
        return {"message": f"{context.on_start_value['greeting']}, {inputs['name']}",
                "task": context.task_id, "app": context.app}
"""


def test_context_style_handler(serve):
    rt = serve(GREETER, BEAMCTL_ON_START="app:load")
    rt.wait_for("READY")
    doc = rt.task("t-42", name="Ada")
    assert doc["task_id"] == "t-42" and doc["status"] == "succeeded" and doc["error"] is None
    assert doc["result"] == {"message": "hello, Ada", "task": "t-42", "app": "demo"}
    t = doc["timings"]
    assert t["queued"] <= t["start"] <= t["end"]
    assert "beamctl-runtime: task t-42 succeeded in 0.0" in rt.logs()[0]


@pytest.mark.parametrize("source, inputs, result", [
    ("def handler(ctx, a):\n    return [ctx.task_id, a]\n", {"a": 1}, ["t-1", 1]),
    ("def handler(a, b=2):\n    return a + b\n", {"a": 1}, 3),
    ("def handler(**inputs):\n    return inputs\n", {"context": "an input"}, {"context": "an input"}),
    ("class H:\n    def __call__(self, context, x):\n        return x\nhandler = H()\n", {"x": None}, None),
])
def test_handlers_get_context_only_when_their_first_parameter_asks(serve, source, inputs, result):
    rt = serve(source)
    rt.wait_for("READY")
    assert rt.task(**inputs)["result"] == result


def test_a_handler_exception_fails_the_task_and_the_container_keeps_serving(serve):
    rt = serve("""
        def handler(n):
            return 10 // check(n)
        def check(n):
            if n < 0:
                raise ValueError(f"n must be >= 0, not {n}")
            return n
    """)
    rt.wait_for("READY")
    doc = rt.task("t-bad", n=-1)
    assert (doc["status"], doc["result"], doc["error"]) == ("failed", None, "ValueError: n must be >= 0, not -1")
    trace = doc["trace"].splitlines()  # the app's own frames, for the task's record
    assert trace[0] == "Traceback (most recent call last):" and trace[-1] == "ValueError: n must be >= 0, not -1"
    assert [t for t in trace if t.lstrip().startswith("File")][-1].endswith("line 6, in check")
    assert "beamctl_runtime" not in doc["trace"] and "trace" not in rt.task("t-fine", n=1)
    assert rt.task("t-zero", n=0)["error"] == "ZeroDivisionError: integer division or modulo by zero"
    assert rt.task("t-good", n=5)["result"] == 2
    assert rt.task("t-args", m=1)["error"] == "TypeError: handler() got an unexpected keyword argument 'm'"
    health = rt.health()
    assert (health["served"], health["busy"], health["state"]) == (5, 0, "READY")
    out, err = rt.logs()
    assert "beamctl-runtime: task t-bad failed in 0.0" in out
    lines = err.splitlines()
    first = lines.index("beamctl-runtime: task t-bad failed: ValueError: n must be >= 0, not -1")
    assert lines[first + 1] == "Traceback (most recent call last):"
    assert lines[first + 2].endswith('app.py", line 3, in handler')
    assert "beamctl_runtime" not in err


@pytest.mark.parametrize("returned, error", [
    ("{1, 2}", "handler returned a set, which is not JSON-serializable"),
    ("object()", "handler returned a object, which is not JSON-serializable"),
    ("{'x': {1}}", "handler returned a dict, which is not JSON-serializable "
                   "(Object of type set is not JSON serializable)"),
    ("[float('nan')]", "handler returned a list, which is not JSON-serializable "
                       "(Out of range float values are not JSON compliant"),  # 3.13 adds ": nan)"
])
def test_a_result_that_is_not_json_fails_the_task(serve, returned, error):
    rt = serve(f"def handler():\n    return {returned}\n")
    rt.wait_for("READY")
    doc = rt.task("t-1")
    assert (doc["status"], doc["result"]) == ("failed", None) and doc["error"].startswith(error)
    assert f"beamctl-runtime: task t-1 failed: {doc['error']}\n" in rt.logs()[1]


@pytest.mark.parametrize("body, error", [
    (b"{not json", "the body is not JSON: JSONDecodeError: Expecting property name enclosed in double "
                   "quotes: line 1 column 2 (char 1)"),
    (b"\xff\xfe\xfd", "the body is not JSON: UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in "
                      "position 0: invalid start byte"),
    (b"[]", 'the body must be a JSON object: {"task_id": "...", "inputs": {...}}'),
    (b'{"inputs": {}}', "task_id must be a string of 1 to 256 printable characters"),
    (b'{"task_id": "t\\n1"}', "task_id must be a string of 1 to 256 printable characters"),
    (b'{"task_id": "t-1", "inputs": [1]}',
     "inputs must be a JSON object (the handler's keyword arguments), not an array"),
    (b'{"task_id": "t-1", "inputs": null}',
     "inputs must be a JSON object (the handler's keyword arguments), not null"),
])
def test_bad_bodies_get_400_on_a_connection_that_stays_open(serve, body, error):
    rt = serve("def handler(**inputs):\n    return inputs\n")
    rt.wait_for("READY")
    assert rt.request("POST", "/tasks", body) == (400, {"error": error})
    conn = rt.conn
    assert rt.task(a=1)["result"] == {"a": 1} and rt.conn is conn  # same keep-alive connection
    assert rt.health()["served"] == 1


def test_missing_inputs_mean_no_arguments(serve):
    rt = serve("def handler():\n    return 'ok'\n")
    rt.wait_for("READY")
    assert rt.request("POST", "/tasks", {"task_id": "t-1"})[1]["result"] == "ok"


def test_unknown_paths_and_methods(serve):
    rt = serve("def handler(): pass\n")
    rt.wait_for("READY")
    assert rt.request("GET", "/nope") == (404, {"error": "no such path: GET /nope (try /health)"})
    assert rt.request("POST", "/health", {}) == (404, {"error": "no such path: POST /health (try /tasks)"})
    assert rt.request("DELETE", "/tasks") == (501, {"error": "Unsupported method ('DELETE')"})
    assert rt.health()["state"] == "READY"  # a new connection after each closed one


def test_a_long_traceback_keeps_its_last_lines_in_the_record():
    from beamctl.runtime.tasks import TRACE_LINES, trace_tail

    trace = "\n".join(f"line {i}" for i in range(40))
    kept = trace_tail(trace).splitlines()
    assert kept[0] == "..." and kept[1:] == [f"line {i}" for i in range(40 - TRACE_LINES, 40)]
    assert trace_tail("a\nb") == "a\nb"
