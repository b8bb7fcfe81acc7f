"""What long work shows while it runs: build steps, lines, and a bar per host while images ship.

On a terminal, ship events (fleet.stream.ShipProgress, from several threads) drive one rich progress
bar per host with bytes sent and speed, and the other events print above the bars; elsewhere (CI logs,
pipes) each host gets a plain line at most every LOG_EVERY_S seconds, then its final line.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from beamctl import console

LOG_EVERY_S = 5.0


def _markup(event: Any) -> str | None:
    """The line an event prints (rich markup), or None for a build step that wrote no layer."""
    from beamctl.image.steps import Step

    if isinstance(event, Step):
        if not event.writes_layer:
            return None
        return (f"  [{event.index}/{event.total}] {console.escape(event.instruction[:90])}  "
                f"{'[dim]cached[/]' if event.cached else '[green]built[/]'}")
    return f"[dim]{console.escape(str(event))}[/]"


def _line(event: Any) -> None:
    text = _markup(event)
    if text is not None:
        console.say(text)


class _Plain:
    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, event: Any) -> None:
        host = getattr(event, "host", None)
        if host is not None and hasattr(event, "sent"):
            now = time.monotonic()
            with self._lock:
                due = event.done or now - self._last.get(host, 0.0) >= LOG_EVERY_S
                if due:
                    self._last[host] = now
            if not due:
                return
        _line(event)


class _Bars:
    def __init__(self) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), console=console._rich(), transient=False)
        self.tasks: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __call__(self, event: Any) -> None:
        host = getattr(event, "host", None)
        if host is None or not hasattr(event, "sent"):
            text = _markup(event)
            if text is not None:
                self.progress.console.print(text, highlight=False)
            return
        with self._lock:
            if host not in self.tasks:
                if not self.tasks:
                    self.progress.start()
                self.tasks[host] = self.progress.add_task(host, total=None)
        task = self.tasks[host]
        self.progress.update(task, completed=event.sent, total=event.sent if event.done else None)

    def stop(self) -> None:
        if self.tasks:
            self.progress.stop()


@contextmanager
def reporter() -> Iterator[Callable[[Any], None]]:
    """The progress callback for one command; bars are drawn only on a terminal."""
    if not sys.stderr.isatty():
        yield _Plain()
        return
    bars = _Bars()
    try:
        yield bars
    finally:
        bars.stop()
