"""`beamctl hosts ls | check | trust | add | remove`: the inventory and the trust in each host."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from beamctl import console
from beamctl.cli import app
from beamctl.cli.config_cmds import JsonOpt
from beamctl.errors import ExitCode, UsageError

hosts_app = typer.Typer(name="hosts", no_args_is_help=True, rich_markup_mode=None,
                        help="The hosts apps deploy to: inventory, SSH trust, and what each host offers.")
app.add_typer(hosts_app, name="hosts")

AppFileOpt = typer.Option(None, "-f", "--file", help="Also the hosts of this beam.yaml (which win for its app).")


def _ssh():  # type: ignore[no-untyped-def]
    from beamctl.hosts.trust import session

    return session(console.ask_secret)


def _app_hosts(file: Optional[Path]):  # type: ignore[no-untyped-def]
    if file is None:
        return None
    from beamctl.config import load

    config, warnings = load(file)
    for w in warnings:
        console.line(w.render())
    return config.hosts


@hosts_app.command("ls")
def ls(file: Optional[Path] = AppFileOpt, json: bool = JsonOpt,
       usage: bool = typer.Option(False, "--usage", help="Also ask each host's agent what the host uses now: "
                                                         "CPU, memory, GPUs (connects to every host).")) -> int:
    """List the inventory (~/.config/beamctl/hosts.yaml), and beam.yaml's hosts with -f."""
    from beamctl.cli.host_views import inventory_lines
    from beamctl.hosts import inventory

    entries, path = inventory.load(), inventory.inventory_file()
    app_hosts = _app_hosts(file)
    used, source = inventory.which_hosts(app_hosts)
    replies = _usage(used) if usage else []
    if json:
        app_json = None if file is None else {"file": str(file), "hosts": [h.target for h in app_hosts]}
        console.emit_json({"inventory": {"file": str(path), "hosts": [e.as_json() for e in entries]},
                           "app": app_json, "used": {"source": source, "hosts": [e.as_json() for e in used]},
                           **({"usage": {r.host: (r.result or {}).get("host") if r.ok else {"error": r.error}
                                         for r in replies}} if usage else {})})
        return _usage_outcome(replies)
    for line in inventory_lines(entries):
        console.line(line)
    if usage:
        from beamctl.cli.views import host_usage

        for r in replies:
            text = host_usage((r.result or {}).get("host")) or "no numbers (an agent older than this beamctl)" \
                if r.ok else f"error: {r.error}"
            console.out(f"{r.host}: {text}")
    where = console.escape(str(path))
    console.say(f"[dim]{len(entries)} host{'s' * (len(entries) != 1)} in {where}[/]" if entries else
                f"no hosts in {where}; add one with: beamctl hosts add NAME user@host")
    if app_hosts:
        console.say(console.escape(f"{file} names its own hosts, which win for that app: "
                                   + ", ".join(h.target for h in app_hosts)))
    return _usage_outcome(replies)


def _usage(entries: list[Any]) -> list[Any]:
    """Each host's agent's `status` (its `host` part is the host's use now); one Reply per host."""
    from beamctl.fleet import query
    from beamctl.hosts.each import ask_all

    hosts = query.hosts_of(entries)
    try:
        return ask_all(hosts, "status")
    finally:
        for h in hosts:
            h.close()


def _usage_outcome(replies: list[Any]) -> int:
    from beamctl.hosts.each import outcome

    return outcome(replies) if replies else ExitCode.OK


@hosts_app.command()
def check(hosts: list[str] = typer.Argument(None, help="Inventory names or targets (default: all)."),
          file: Optional[Path] = AppFileOpt, json: bool = JsonOpt) -> int:
    """Connect to each host at once: its prerequisites (each with a fix), GPUs, agent, and whether it can checkpoint."""
    from beamctl.cli.host_views import check_lines, summary
    from beamctl.hosts import inventory
    from beamctl.hosts.check import check_hosts

    entries = inventory.lookup(hosts) if hosts else inventory.which_hosts(_app_hosts(file))[0]
    if not entries:
        raise UsageError("no hosts to check", hint="add one with: beamctl hosts add NAME user@host[:port]")
    results = check_hosts(entries, _ssh())
    if json:
        console.emit_json({"hosts": [r.as_json() for r in results]})
    else:
        for r in results:
            for line in check_lines(r):
                console.line(line)
        console.say(console.escape(summary(results)))
    return ExitCode.OK if all(r.ok for r in results) else ExitCode.REMOTE


@hosts_app.command()
def trust(hosts: list[str] = typer.Argument(..., help="Inventory names or targets."),
          yes: bool = typer.Option(False, "--yes", "-y", help="Accept the keys offered now (for scripts).")) -> int:
    """Show each host's key fingerprint and, once you confirm it, add it to ~/.ssh/known_hosts."""
    from beamctl.errors import BeamctlError
    from beamctl.hosts import inventory

    entries = inventory.lookup(list(hosts))
    ssh, codes = _ssh(), []
    for entry in entries:
        try:
            codes.append(_trust_one(ssh, entry, yes))
        except BeamctlError as e:
            if len(entries) == 1:
                raise
            console.error(e.message, e.hint)  # one host's refusal (a changed key) never stops the others
            codes.append(int(e.exit_code))
    return max(codes, default=ExitCode.OK)


def _trust_one(ssh: Any, entry: Any, yes: bool) -> int:
    from beamctl.hosts import trust as trusting

    offered = trusting.offer(ssh, entry.host, entry.name)
    offer = offered.text
    who = console.escape(f"{entry.name} ({offered.target.known_as})")
    if offered.known:
        console.say(f"{who} is already trusted: {offer}")
        return ExitCode.OK
    console.say(f"{who} offers the host key {offer}")
    if not yes:
        answer = console.confirm("Is that the host's fingerprint, and add it to known_hosts?")
        if answer is None:
            raise UsageError(f"no terminal to ask whether to trust {offer}",
                             hint=f"compare it with the host's (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub "
                             f"there), then: beamctl hosts trust {entry.name} --yes")
        if not answer:
            console.say(f"{console.escape(entry.name)}: not trusted; nothing was written")
            return ExitCode.FAILURE
    path = trusting.accept(offered)
    console.say(f"[green]trusted[/] {who}: accepted {offer}; added to {console.escape(str(path))}")
    return ExitCode.OK


@hosts_app.command()
def add(name: str = typer.Argument(..., help="A short name, like gpu1."),
        target: str = typer.Argument(..., help="user@host[:port], [ipv6]:port, or an ~/.ssh/config alias."),
        label: list[str] = typer.Option(None, "--label", "-l", help="KEY=VALUE (repeatable)."),
        address: str = typer.Option(None, "--address", help="Its private IP address, where an app's gateway "
                                                            "reaches its agent (default: its target's).")) -> int:
    """Add a host to the inventory (no connection is made; trust it next)."""
    from beamctl.hosts import inventory

    labels = {}
    for item in label or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--label {item!r}: write KEY=VALUE")
        labels[key] = value
    path = inventory.add(inventory.make_entry(name, target, labels, address))
    console.say(console.escape(f"added {name} ({target}) to {path}"))
    console.say(f"next: beamctl hosts trust {name}, then beamctl hosts check {name}")
    return ExitCode.OK


@hosts_app.command()
def remove(name: str = typer.Argument(..., help="The inventory name.")) -> int:
    """Remove a host from the inventory (its known_hosts line stays)."""
    from beamctl.hosts import inventory

    path = inventory.remove(name)
    console.say(console.escape(f"removed {name} from {path}"))
    return ExitCode.OK


@hosts_app.command()
def install(hosts: list[str] = typer.Argument(None, help="Inventory names or targets (default: all)."),
            file: Optional[Path] = AppFileOpt,
            force: bool = typer.Option(False, "--force", help="Send and restart the agent even when current."),
            json: bool = JsonOpt) -> int:
    """Install or upgrade this beamctl's agent on each host at once (no network needed there), and CRIU for
    checkpoints where the host has no CRIU >= 4.2 (this machine's, from BEAMCTL_CRIU_PREFIX or /opt/beamctl/criu)."""
    from beamctl.cli.host_views import install_lines
    from beamctl.hosts import inventory
    from beamctl.hosts.host import ssh_hosts
    from beamctl.hosts.install import install_hosts

    entries = inventory.lookup(hosts) if hosts else inventory.which_hosts(_app_hosts(file))[0]
    if not entries:
        raise UsageError("no hosts to install on", hint="add one with: beamctl hosts add NAME user@host[:port]")
    targets = ssh_hosts(entries, _ssh())
    try:
        results = install_hosts(targets, lambda text: console.line(text), force)
    finally:
        for h in targets:
            h.close()
    if json:
        console.emit_json({"hosts": [r.as_json() for r in results]})
    for r in results:
        if r.ok:
            for line in install_lines(r):
                console.line(line)
        else:
            console.error(r.error or "failed", r.hint)
    return ExitCode.OK if all(r.ok for r in results) else ExitCode.REMOTE
