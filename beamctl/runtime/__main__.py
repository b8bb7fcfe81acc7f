"""`python -m beamctl_runtime [check|serve]`: the image's entrypoint.

check (the default command): import the handler module and find the app's functions; exit 0 when
the image can run the app, else 3 with one message naming what is missing.
serve: the container's main process under the agent (serve.py).
"""

from __future__ import annotations

import time

PROCESS_START = time.monotonic()  # first thing: the agent measures cold starts from here

import argparse  # noqa: E402 - after the clock on purpose
import os  # noqa: E402
import sys  # noqa: E402

if __package__ in (None, ""):  # run as a folder: python /opt/beamctl/lib/beamctl_runtime
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from beamctl_runtime.entry import EntryError, load  # type: ignore[no-redef]
    __package__ = "beamctl_runtime"
else:
    from .entry import EntryError, load

EXIT_APP_BROKEN = 3  # the image is built but cannot run the app


def check(app_dir: str) -> int:
    sys.path.insert(0, app_dir)
    started = time.monotonic()
    found = []
    try:
        for role, var in (("handler", "BEAMCTL_HANDLER"), ("on_start", "BEAMCTL_ON_START")):
            spec = os.environ.get(var)
            if spec:
                load(spec, role)
                found.append(f"{role} {spec}")
    except EntryError as e:
        print(f"beamctl-runtime: {e}", file=sys.stderr)
        if e.trace:
            print(e.trace, file=sys.stderr)
        return EXIT_APP_BROKEN
    if not found:
        print("beamctl-runtime: BEAMCTL_HANDLER is not set; the image was not built by beamctl",
              file=sys.stderr)
        return EXIT_APP_BROKEN
    print(f"beamctl-runtime: ok: {', '.join(found)} (imported in {time.monotonic() - started:.2f} s, "
          f"Python {sys.version.split()[0]})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="beamctl_runtime")
    parser.add_argument("mode", nargs="?", default="check", choices=["check", "serve"])
    parser.add_argument("--app-dir", default=os.environ.get("BEAMCTL_APP_DIR", "/app"))
    args = parser.parse_args(argv)
    if args.mode == "serve":
        from .serve import main as serve  # only serve pays for http.server
        serve(args.app_dir, PROCESS_START)
    return check(args.app_dir)


if __name__ == "__main__":
    sys.exit(main())
