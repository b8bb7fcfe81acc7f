"""serve's start-up: STARTING while on_start runs, READY after, FAILED apps exit 3, signals exit 0."""

from __future__ import annotations

import os
import signal
import time

SLOW_START = """
    import os, time
    def load():
        with open(os.environ["MARKS"], "a") as f:
            f.write("on_start\\n")
        time.sleep(float(os.environ.get("LOAD_S", "0.6")))
        return {"greeting": "hello"}
    def handler(context, **inputs):
        return context.on_start_value["greeting"]
"""


def test_health_goes_from_starting_to_ready_with_ordered_timings(serve, tmp_path):
    rt = serve(SLOW_START, BEAMCTL_ON_START="app:load", MARKS=str(tmp_path / "marks"))
    starting = rt.wait_for("STARTING")
    assert starting["pid"] == rt.proc.pid and starting["workers"] == 1 and starting["busy"] == 0
    ready = rt.wait_for("READY")
    t = ready["timings"]
    assert t["process_start"] <= t["imports_done"] <= t["on_start_start"] < t["on_start_end"] <= t["ready"]
    assert t["on_start_end"] - t["on_start_start"] >= 0.6
    assert t["ready"] <= time.monotonic()  # the host's clock: the agent compares these with its own
    out = rt.logs()[0]
    assert "beamctl-runtime: on_start complete in 0.6" in out and " s (imports 0.0" in out


def test_tasks_before_ready_get_503(serve, tmp_path):
    rt = serve(SLOW_START, BEAMCTL_ON_START="app:load", MARKS=str(tmp_path / "marks"), LOAD_S="2")
    rt.wait_for("STARTING")
    assert rt.request("POST", "/tasks", {"task_id": "t-1", "inputs": {}}) == (
        503, {"error": "not ready", "state": "STARTING"})
    assert rt.wait_for("READY")["served"] == 0


def test_on_start_runs_exactly_once(serve, tmp_path):
    marks = tmp_path / "marks"
    rt = serve(SLOW_START, BEAMCTL_ON_START="app:load", MARKS=str(marks), LOAD_S="0", BEAMCTL_WORKERS="3")
    rt.wait_for("READY")
    assert [rt.task(f"t-{i}")["result"] for i in range(5)] == ["hello"] * 5
    assert marks.read_text() == "on_start\n"


def test_no_on_start(serve):
    rt = serve("def handler(**inputs):\n    return inputs\n")
    t = rt.wait_for("READY")["timings"]
    assert t["imports_done"] is not None and t["on_start_start"] is None and t["on_start_end"] is None
    assert rt.task(x=1)["result"] == {"x": 1}


def test_on_start_failure_exits_3_with_the_apps_traceback(serve):
    rt = serve("""
        def load():
            weights = None
            check(weights)
        def check(weights):
            raise ValueError(f"no weights in {weights}")
        def handler(**inputs):
            return 1
    """, BEAMCTL_ON_START="app:load")
    assert rt.wait_exit() == 3
    out, err = rt.logs()
    lines = err.splitlines()
    assert lines[0] == "beamctl-runtime: on_start app:load failed: ValueError: no weights in None"
    assert lines[1] == "Traceback (most recent call last):"
    assert [line.split(", in ")[-1] for line in lines if "app.py" in line] == ["load", "check"]
    assert lines[-1] == "ValueError: no weights in None"
    assert "beamctl_runtime" not in err and "ready" not in out


def test_import_failure_exits_3(serve):
    rt = serve("import numpy_not_installed\ndef handler(): pass\n")
    assert rt.wait_exit() == 3
    assert rt.logs()[1].splitlines()[0] == (
        "beamctl-runtime: handler app:handler: importing 'app' failed: ModuleNotFoundError: "
        "No module named 'numpy_not_installed'")


def test_bad_settings_exit_2(serve):
    rt = serve("def handler(): pass\n", BEAMCTL_WORKERS="0")
    assert rt.wait_exit() == 2
    assert rt.logs()[1] == "beamctl-runtime: BEAMCTL_WORKERS='0': expected an integer from 1 to 256\n"


def test_cache_dir_is_exported_before_the_app_imports_and_created(serve, tmp_path):
    cache = tmp_path / "volume" / "models"
    rt = serve("""
        import os
        SEEN = {v: os.environ.get(v) for v in ("HF_HOME", "TRANSFORMERS_CACHE", "TORCH_HOME")}
        def handler():
            return {"seen": SEEN, "made": os.path.isdir(SEEN["HF_HOME"])}
    """, BEAMCTL_MODEL_CACHE=str(cache))
    rt.wait_for("READY")
    assert rt.task()["result"] == {"seen": dict.fromkeys(("HF_HOME", "TRANSFORMERS_CACHE", "TORCH_HOME"),
                                                         str(cache)), "made": True}


def test_sigterm_exits_0_at_once_even_inside_a_long_c_call(serve, tmp_path):
    """pbkdf2 runs for minutes in C without the GIL and never looks at signals (like a model load):
    the Python-level handler cannot run, so only the wakeup-fd watcher can stop it."""
    rt = serve("""
        import hashlib, threading, time
        def load():
            threading.Thread(target=time.sleep, args=(3600,)).start()  # non-daemon: must not hold exit
            return hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 2 ** 31 - 1)
        def handler(): pass
    """, BEAMCTL_ON_START="app:load")
    rt.wait_for("STARTING")
    time.sleep(0.2)  # inside on_start by now
    sent = time.monotonic()
    rt.proc.send_signal(signal.SIGTERM)
    assert rt.wait_exit(5) == 0
    assert time.monotonic() - sent < 1


def test_sigterm_while_ready_exits_0(serve):
    rt = serve("def handler(): pass\n")
    rt.wait_for("READY")
    os.kill(rt.proc.pid, signal.SIGTERM)
    assert rt.wait_exit(5) == 0
