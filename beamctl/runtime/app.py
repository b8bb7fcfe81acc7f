"""The app as `serve` sees it: its handler, called Beam's way, and what on_start returned."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional

from .entry import load

CONTEXT_NAMES = ("context", "ctx")  # a handler whose first parameter has one of these names gets it


class Context:
    """What a handler gets as `context`: the task's id, on_start's return value, the app's name."""

    __slots__ = ("task_id", "on_start_value", "app")

    def __init__(self, task_id: str, on_start_value: Any, app: str) -> None:
        self.task_id = task_id
        self.on_start_value = on_start_value
        self.app = app

    def __repr__(self) -> str:
        return f"Context(task_id={self.task_id!r}, app={self.app!r})"


class App:
    """The loaded app. `call(task_id, inputs)` runs the handler once, in the caller's thread."""

    def __init__(self, name: str, handler: Callable[..., Any]) -> None:
        self.name = name
        self.handler = handler
        self.wants_context = wants_context(handler)  # decided once, not per call
        self.on_start_value: Any = None

    def call(self, task_id: str, inputs: Dict[str, Any]) -> Any:
        if self.wants_context:
            return self.handler(Context(task_id, self.on_start_value, self.name), **inputs)
        return self.handler(**inputs)


def load_app(name: str, handler_spec: str, on_start_spec: Optional[str]):
    """Import the handler module and find both functions -> (App, on_start or None). Raises EntryError."""
    handler = load(handler_spec, "handler")
    on_start = load(on_start_spec, "on_start") if on_start_spec else None
    return App(name, handler), on_start


def wants_context(handler: Callable[..., Any]) -> bool:
    """True when the handler's first positional parameter is named `context` (or `ctx`)."""
    try:
        params = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: inputs only
        return False
    first = next(iter(params), None)
    return (first is not None and first.name in CONTEXT_NAMES
            and first.kind in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD))
