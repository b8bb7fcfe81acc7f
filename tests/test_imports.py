"""Imports only go downward (DESIGN.md, "Layers"): fleet -> hosts -> transport -> protocol, and none of them,
nor the packages below them, imports the CLI. The agent and its clients meet only in beamctl.protocol:
nothing outside beamctl.agent imports it, and it imports nothing of the client side. Every import counts,
those inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import beamctl

ROOT = Path(beamctl.__file__).parent
LAYERS = ("beamctl.protocol", "beamctl.transport", "beamctl.hosts", "beamctl.fleet")  # bottom first
BELOW = ("beamctl.agent", "beamctl.config", "beamctl.image", "beamctl.runtime")  # import none of the layers
CLIENT_TOP = ("beamctl.cli", "beamctl.console", "beamctl.apps")  # imported from none of the above
AGENT = "beamctl.agent"  # the host's side: imported by no module outside it


def imported(source: str, module: str) -> list[tuple[int, list[str]]]:
    """Each import statement's line and the names it may load: `import a` is a; `from a import b`, a and a.b
    (b may be a module: `from beamctl import fleet`). Inside functions too."""
    found: list[tuple[int, list[str]]] = []
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, [a.name]) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up one per extra dot
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.append((node.lineno, [base] + [f"{base}.{a.name}" for a in node.names]))
    return found


def within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def upward(source: str, module: str) -> list[str]:
    """This module's imports that break the rule, as 'line: name' (the first name of the statement that does)."""
    if within(module, LAYERS):
        level = next(i for i, p in enumerate(LAYERS) if within(module, (p,)))
        banned = LAYERS[level + 1:] + CLIENT_TOP + (AGENT,)
    elif within(module, (AGENT,)):
        banned = LAYERS[1:] + CLIENT_TOP + ("beamctl.image",)
    elif within(module, BELOW):
        banned = LAYERS + CLIENT_TOP + (AGENT,)
    else:
        banned = (AGENT,) if within(module, ("beamctl",)) else ()
    hits = [(line, next((n for n in names if within(n, banned)), None)) for line, names in imported(source, module)]
    return [f"{line}: {name}" for line, name in sorted(hits, key=lambda h: h[0]) if name is not None]


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        found.append((".".join(parts), path))  # a package's own module is beamctl.x.__init__
    return found


def test_imports_only_go_downward():
    broken = [f"{path.relative_to(ROOT.parent)}:{hit}" for module, path in modules()
              for hit in upward(path.read_text(encoding="utf-8"), module)]
    assert not broken, "imports against the layers (move the code down, not the import into a function):\n" + \
        "\n".join(broken)


def test_every_layer_is_a_package_with_modules():
    names = {m.removesuffix(".__init__") for m, _ in modules()}
    for package in LAYERS + BELOW:
        assert package in names and any(m.startswith(package + ".") for m in names), package


def test_an_upward_import_is_found_wherever_it_is_written():
    source = ("from beamctl.transport.ssh import Ssh\n"
              "from beamctl import fleet\n"
              "def f():\n"
              "    from beamctl.fleet.query import HostAgent\n"
              "    import beamctl.cli\n"
              "    from . import check\n")
    assert upward(source, "beamctl.hosts.install") == ["2: beamctl.fleet", "4: beamctl.fleet.query",
                                                        "5: beamctl.cli"]
    assert upward("from ..fleet import rollout\n", "beamctl.transport.ssh") == ["1: beamctl.fleet"]
    assert upward("from beamctl.hosts import inventory\n", "beamctl.agent.service") == ["1: beamctl.hosts"]
    assert upward("from beamctl.hosts import inventory\nfrom beamctl import console\n",
                  "beamctl.fleet.rollout") == ["2: beamctl.console"]
    assert upward("from beamctl.fleet import query\n", "beamctl.cli.app_cmds") == []
    assert upward("from beamctl.agent.control import handle\n", "beamctl.cli.app_cmds") == ["1: beamctl.agent.control"]
    assert upward("from beamctl.agent import gpus\n", "beamctl.fleet.placement") == ["1: beamctl.agent"]
    assert upward("from beamctl.transport.ssh import Ssh\n", "beamctl.agent.bridge") == ["1: beamctl.transport.ssh"]
    assert upward("from beamctl.protocol.wire import OPS\n", "beamctl.agent.control") == []
    assert upward("from beamctl.hosts.each import ask\n", "beamctl.protocol.wire") == ["1: beamctl.hosts.each"]


def test_the_agent_loads_only_what_its_own_environment_holds():
    """A host's agent runs in a venv of beamctl, the docker SDK and zstandard (hosts/install.py): importing
    every agent module must load nothing else that is not the standard library (a YAML parser once slipped
    in through config/, and every SSH host's agent failed to start)."""
    import subprocess
    import sys

    from beamctl.hosts.install import RUNTIME_REQUIREMENTS

    allowed = {r.split(">")[0].split("=")[0] for r in RUNTIME_REQUIREMENTS} | {"beamctl"}
    allowed |= {"requests", "urllib3", "certifi", "idna", "charset_normalizer"}  # the docker SDK's own
    names = sorted(".".join(p.relative_to(ROOT.parent).with_suffix("").parts) for p in (ROOT / "agent").glob("*.py")
                   if p.name != "__main__.py")
    probe = ("import importlib, sys\n"
             f"for name in {names!r}:\n    importlib.import_module(name)\n"
             "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    foreign = [m for m in loaded if m not in sys.stdlib_module_names and m not in allowed and not m.startswith("_")]
    assert foreign == [], f"the agent imports {foreign}, which a host's agent venv does not have"
