"""Find the app's functions: `module:function`, imported from the app folder."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Any, Callable


class EntryError(Exception):
    """The app's code cannot provide a function it names; the message says which and why."""

    def __init__(self, message: str, trace: str = "") -> None:
        super().__init__(message)
        self.trace = trace  # the app's own traceback, for the logs


def load(spec: str, role: str) -> Callable[..., Any]:
    module_name, _, func_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name or module_name.startswith(f"{e.name}."):
            raise EntryError(f"{role} {spec}: module '{module_name}' is not in the image (looked in "
                             f"{', '.join(p for p in sys.path if p)})") from None
        raise EntryError(f"{role} {spec}: importing '{module_name}' failed: {one_line(e)}",
                         app_trace(e)) from None
    except Exception as e:  # noqa: BLE001 - any import-time failure of user code
        raise EntryError(f"{role} {spec}: importing '{module_name}' failed: {one_line(e)}",
                         app_trace(e)) from None
    func = getattr(module, func_name, None)
    if func is None:
        raise EntryError(f"{role} {spec}: module '{module_name}' has no function '{func_name}'")
    if not callable(func):
        raise EntryError(f"{role} {spec}: '{func_name}' is a {type(func).__name__}, not a function")
    return func


def one_line(e: BaseException) -> str:
    """`ValueError: message` on one line, for log lines and task errors."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


_HERE = os.path.dirname(os.path.abspath(__file__))


def app_trace(e: BaseException) -> str:
    """The traceback of the app's own frames (not importlib's, not this package's)."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not f.filename.startswith("<frozen") and f.filename != importlib.__file__
              and os.path.dirname(os.path.abspath(f.filename)) != _HERE]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames),
             *traceback.format_exception_only(type(e), e)]
    return "".join(lines).rstrip()
