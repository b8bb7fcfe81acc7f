"""`python -m beamctl_runtime serve`: the container's main process when the agent runs it.

Start-up: the HTTP server first (so /health answers STARTING), then import the app, run on_start
once, READY. A broken app (import or on_start raises) prints why, the app's traceback, and exits
with EXIT_APP_BROKEN without ever serving a task. SIGTERM or SIGINT ends the process at once with 0.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import NoReturn, Optional

from . import server
from .log import complain, say
from .settings import Settings, SettingsError, export_cache_dir, load_secrets
from .state import FAILED, Runtime

EXIT_STOPPED = 0  # SIGTERM / SIGINT: the agent stopped the container
EXIT_BAD_SETTINGS = 2  # a BEAMCTL_* variable is wrong: the agent's bug, not the app's
EXIT_APP_BROKEN = 3  # importing the app or on_start raised: FAILED, never served a task


def main(app_dir: str, process_start: float) -> NoReturn:
    exit_now(serve(app_dir, process_start))


def serve(app_dir: str, process_start: float) -> int:
    _exit_on_signals()
    try:
        key = load_secrets()  # before anything reads the environment
        settings = Settings(os.environ, app_dir)
    except (SettingsError, OSError, ValueError) as e:
        complain(str(e))
        return EXIT_BAD_SETTINGS
    rt = Runtime(settings, process_start)
    rt.key = key
    try:
        server.start(settings.port, rt)
    except OSError as e:
        complain(f"cannot listen on port {settings.port}: {type(e).__name__}: {e}")
        return EXIT_BAD_SETTINGS
    from . import tasks  # the rest of the runtime, once /health answers
    from .pool import Pool

    failure = _start_app(rt)
    if failure:
        rt.state = FAILED  # for the moment until exit_now; the listening socket closes with the process
        complain(*failure)
        return EXIT_APP_BROKEN
    if settings.checkpoint:
        say("on_start done: paused for the agent's checkpoint")
        if not rt.pause_for_checkpoint(settings.checkpoint_wait_s):
            say(f"no checkpoint release within {settings.checkpoint_wait_s:g} s: serving without one")
        elif rt.restored:
            say(f"restored from a checkpoint (clock offset {rt.clock_offset:+.3f} s)")
    rt.become_ready(Pool(settings.workers, tasks.late))
    say(f"ready on port {settings.port} ({settings.workers} worker{'s' * (settings.workers > 1)}, "
        f"timeout {settings.timeout_s:g} s)")
    threading.Event().wait()  # the server and workers are daemon threads; a signal ends this
    return EXIT_STOPPED


def _start_app(rt: Runtime) -> Optional[tuple]:
    """Import the app and run on_start once (in this, the main thread: apps may set signal handlers).

    Sets rt.app; returns None, or (message, traceback) when the app cannot start.
    """
    from .app import load_app
    from .entry import EntryError, app_trace, one_line

    s = rt.settings
    sys.path.insert(0, s.app_dir)
    begin = time.monotonic()
    try:
        if s.cache_dir:
            export_cache_dir(s.cache_dir)
        rt.app, on_start = load_app(s.app, s.handler, s.on_start)
    except EntryError as e:
        return str(e), e.trace
    except OSError as e:  # the cache folder cannot be made
        return f"cache_dir {s.cache_dir}: {one_line(e)}", ""
    imports = rt.mark("imports_done") - begin
    if on_start is None:
        say(f"no on_start; imports took {imports:.2f} s")
        return None
    start = rt.mark("on_start_start")
    try:
        rt.app.on_start_value = on_start()
    except BaseException as e:  # noqa: BLE001 - SystemExit from on_start is a failed start too
        return f"on_start {s.on_start} failed: {one_line(e)}", app_trace(e)
    say(f"on_start complete in {rt.mark('on_start_end') - start:.2f} s (imports {imports:.2f} s)")
    return None


def _exit_on_signals() -> None:
    """SIGTERM/SIGINT end the process at once, even while on_start is deep in C code.

    A Python handler runs only between bytecodes of the main thread, which a model load can hold
    for minutes. So the handler also writes the signal to a pipe (set_wakeup_fd, done in C at
    delivery) that a watcher thread reads. os._exit, not sys.exit: an app's non-daemon threads
    must not keep a stopped container alive.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: exit_now(EXIT_STOPPED))
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def watch() -> None:
        while True:
            got = os.read(read_fd, 64)
            if not got or any(b in (signal.SIGTERM, signal.SIGINT) for b in got):
                exit_now(EXIT_STOPPED)

    threading.Thread(target=watch, name="beamctl-signals", daemon=True).start()


def exit_now(code: int) -> NoReturn:
    """Flush the logs and end the process without waiting for threads (see _exit_on_signals)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
