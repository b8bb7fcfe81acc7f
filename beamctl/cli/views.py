"""How app results look on a terminal: task tables, the profile waterfall, status, log lines. Pure:
each returns text (rich markup) for the console."""

from __future__ import annotations

from beamctl.waterfall import PHASES

import time
from typing import Any

from beamctl.units import human_bytes

BAR_WIDTH = 48  # characters for the whole task in `beamctl profile`
PHASE_LABELS = PHASES  # in the order they happen (waterfall.py draws them too)


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.1f} ms"


def profile(task: dict[str, Any], recent_cold: list[float]) -> list[str]:
    phases = task.get("phases") or {}
    total = task.get("total") or 0.0
    version = f"v{task['version']}" if task.get("version") is not None else "v-"
    start = f"[bold]{task['start']}[/] start, " if task.get("start") else ""
    lines = [f"[bold]{task['task_id']}[/]  {task['app']} {version}  {start}{task['status']}, "
             f"total {ms(task.get('total'))}"]
    scale = BAR_WIDTH / max(total, sum(phases.values()), 1e-9)  # one scale: a waterfall of the total
    offset = 0.0
    for key, label in PHASE_LABELS.items():
        if key not in phases:
            continue
        value = phases[key]
        lead = int(round(offset * scale))
        width = int(round(value * scale))
        bar = " " * min(lead, BAR_WIDTH) + ("█" * width if width else ("▏" if value else ""))
        lines.append(f"  {label:<30} {ms(value):>12}  [cyan]{bar}[/]")
        if key == "queue" and task.get("queued"):  # why it waited: the autoscaler could not start more
            lines.append(f"    [dim]{escape(task['queued'])}[/]")
        offset += value
    if recent_cold:
        avg = sum(recent_cold) / len(recent_cold)
        kind = "restored" if task.get("start") == "restored" else "cold"
        lines.append(f"  recent {kind} starts of {task['app']}: {len(recent_cold)}, average total {ms(avg)}")
    if task.get("error"):
        lines.append(f"  [red]error:[/] {escape(task['error'])}")
    for line in (task.get("trace") or "").splitlines():  # where the handler failed (its last lines)
        lines.append(f"  [dim]|[/] {escape(line)}")
    return lines


def tasks_table(tasks: list[dict[str, Any]], hosts: bool = False) -> list[str]:
    """With `hosts`, a HOST column (each task's "host") after the task id."""
    host_head = f" {'HOST':<16}" if hosts else ""
    head = (f"{'TASK':<16}{host_head} {'APP':<16} {'VER':>3} {'STATUS':<10} {'START':<8} {'TOTAL':>12} "
            f"{'RUN':>12}  WHEN")
    rows = [head]
    for t in tasks:
        run = (t.get("phases") or {}).get("task_run")
        when = time.strftime("%H:%M:%S", time.localtime(t["received"]))
        host = f" {t.get('host') or '-':<16}" if hosts else ""
        rows.append(f"{t['task_id']:<16}{host} {t['app']:<16} {t['version'] or '-':>3} {t['status']:<10} "
                    f"{t['start'] or '-':<8} {ms(t['total']):>12} {ms(run):>12}  {when}")
        if t.get("error") and t["status"] != "succeeded":  # why it failed, on its own line under it
            rows.append(f"  [red]└ {escape(t['error'])}[/]")
    return rows


def status(data: dict[str, Any]) -> list[str]:
    lines = [f"host: {use}"] if (use := host_usage(data.get("host"))) else []
    for app in data["apps"]:
        lines.append(f"[bold]{app['app']}[/]  active: v{app['active_version']}  {app['image'] or ''}"
                     if app["active_version"] else f"[bold]{app['app']}[/]  not running")
        if app.get("gateway"):
            lines.append(f"  address:  {app['gateway']['url']}/apps/{app['app']} (gateway "
                         f"{escape(app['gateway']['gateway'])}; beamctl call {app['app']} --gateway)")
        if app["endpoint"]:
            lines.append(f"  endpoint: {app['endpoint']}")
            lines.append(f"  token:    {app['token']}")
        if app.get("lock"):
            from beamctl.fleet.locks import describe

            lines.append(f"  locked:   {escape(describe(app['lock']))} (beamctl unlock {app['app']})")
        if (line := scaling(app.get("scaling"), len(app["containers"]))) and app["active_version"]:
            lines.append(f"  {line}")
        for c in app["containers"]:
            idle = f", idle {c['idle_s']:.0f} s" if c["idle_s"] else ""
            use = container_usage(c.get("usage"))
            lines.append(f"  container {c['id']} v{c['version']} {c['state']}, {c['busy']} busy{idle}"
                         + (f"; {use}" if use else ""))
        if not app["containers"] and app["active_version"]:
            lines.append("  no container running (scaled to zero: the next task starts one cold)")
        for v in app["versions"]:
            reason = f" ({v['reason']})" if v["reason"] else ""
            lines.append(f"  v{v['version']} {v['state']}{reason}  {v['image']}")
            if v.get("checkpoint"):
                lines.append(f"      checkpoint: {checkpoint(v['checkpoint'])}")
    return lines or ["no apps deployed on this machine"]


def scaling(scale: dict[str, Any] | None, running: int) -> str:
    """`containers: 3 of at most 4 (min 1), 2 tasks per container; 5 waiting; cannot start more: ...`,
    or "" for the default of one container and nothing waiting (an older agent says nothing)."""
    if not scale:
        return ""
    default = scale["max_containers"] == 1 and not scale["min_containers"]
    if default and not scale["waiting"] and not scale["blocked"]:
        return ""
    line = f"containers: {running} of at most {scale['max_containers']}"
    line += f" (min {scale['min_containers']})" if scale["min_containers"] else ""
    line += f", {scale['tasks_per_container']} tasks per container"
    if scale["waiting"]:
        line += f"; {scale['waiting']} waiting"
    if scale["blocked"]:
        line += f"; cannot start more: {escape(scale['blocked'])}"
    return line


def container_usage(use: dict[str, Any] | None) -> str:
    """`cpu 12.5%, mem 312.0 MB of 2.10 GB, gpu mem 20.10 GB` (what is known of it)."""
    if not use:
        return ""
    parts = []
    if use.get("cpu_pct") is not None:
        parts.append(f"cpu {use['cpu_pct']:.1f}%")
    if use.get("mem_used") is not None:
        limit = use.get("mem_limit")
        parts.append(f"mem {human_bytes(use['mem_used'])}" + (f" of {human_bytes(limit)}" if limit else ""))
    if use.get("gpu_mem"):
        parts.append(f"gpu mem {human_bytes(use['gpu_mem'])}")
    return ", ".join(parts)


def host_usage(host: dict[str, Any] | None) -> str:
    """`cpu 140% of 16 cores (load 1.52), mem 10.20 GB of 128.00 GB; gpu0 45% 30.10 GB of 141.00 GB`."""
    if not host:
        return ""
    parts = []
    if host.get("cpu_pct") is not None:
        load = f" (load {host['load1']:.2f})" if host.get("load1") is not None else ""
        parts.append(f"cpu {host['cpu_pct']:.0f}% of {host.get('cpus', '?')} cores{load}")
    if host.get("mem_used") is not None and host.get("mem_total"):
        parts.append(f"mem {human_bytes(host['mem_used'])} of {human_bytes(host['mem_total'])}")
    text = ", ".join(parts)
    gpus = [f"gpu{g['index']} {g['util_pct']:.0f}% {human_bytes(g['mem_used'])} of {human_bytes(g['mem_total'])}"
            for g in host.get("gpus") or []]
    return "; ".join([t for t in (text, ", ".join(gpus)) if t])


def checkpoint(snap: dict[str, Any]) -> str:
    """A version's snapshot in one phrase: `ready, 1.07 GB (captured in 0.91 s)`, `checkpoint_failed: why`."""
    state = snap["state"]
    if state == "ready":
        size = snap.get("size_bytes") or 0
        shown = human_bytes(size)
        took = f" (captured in {snap['capture_s']:.2f} s)" if snap.get("capture_s") is not None else ""
        held = ", in memory" if snap.get("in_memory") else ""
        return f"[green]ready[/], {shown}{took}{held}"
    color = "red" if state.endswith("failed") else "yellow"
    return f"[{color}]{state}[/]" + (f": {escape(snap['reason'])}" if snap.get("reason") else "")


SNAPSHOT_WORDS = {"checkpoint_failed": "failed", "restore_failed": "restore failed",
                  "incompatible": "outdated, captured again at the next cold boot"}
REASON_MAX = 160  # characters of a reason in a deploy's result line: its first line, never a CRIU log


def snapshot(snap: dict[str, Any]) -> str:
    """A deploy's snapshot state in one plain line: `snapshot: ready, 2.0 MB (captured in 0.40 s)`,
    `snapshot: failed (CRIU 4.1.1 < 4.2 ...)`."""
    if snap["state"] == "ready":
        return "snapshot: " + checkpoint(snap).replace("[green]ready[/]", "ready")
    reason = ((snap.get("reason") or "").strip().splitlines() or [""])[0]
    reason = reason if len(reason) <= REASON_MAX else reason[:REASON_MAX - 3].rstrip() + "..."
    return f"snapshot: {SNAPSHOT_WORDS.get(snap['state'], snap['state'])}" + (f" ({reason})" if reason else "")


def host_status(replies: list[Any]) -> list[str]:
    """Per host (Reply: host, result, error): its status block, each line prefixed by the host; or its error."""
    lines = []
    for r in replies:
        if r.error is not None:
            lines.append(f"[bold]{r.host}[/]  [red]error:[/] {escape(r.error)}")
            continue
        block = status(r.result) if r.result and r.result.get("apps") else ["no apps deployed"]
        lines.extend(f"[bold]{r.host}[/]  {line}" for line in block)
    return lines


def gateway_lines(app: str, where: dict[str, Any], door: dict[str, Any] | None, error: str | None) -> list[str]:
    """The app's one address, and each host's place in the door's rotation (HAProxy's word: UP, DOWN, ...)."""
    lines = [f"[bold]{app}[/]  address: {where['url']}/apps/{app} (gateway {escape(where['gateway'])})"]
    if error:
        lines.append(f"  [red]gateway:[/] {escape(error)}")
    elif door is not None:
        states = ", ".join(f"{s['host']} {s['state']}" for s in door.get("servers", [])) or "no host (stopped)"
        lines.append(f"  rotation: {states}")
    return lines


def escape(text: str) -> str:
    return text.replace("[", "\\[")


def host_log_line(entry: dict[str, Any], width: int = 12) -> str:
    return f"{entry['host']:<{width}} {log_line(entry)}"


def log_line(entry: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(entry["ts"])) + f".{int(entry['ts'] % 1 * 1000):03d}"
    return f"{stamp} {entry['source']:<12} {entry['text']}"


def stopped(app: str, result: dict[str, Any]) -> str:
    """`stop`'s line for one agent's answer (an app stopped before: done, said so)."""
    if result.get("already_stopped") or result.get("stopped_version") is None:
        return f"{app} was already stopped (volumes kept)"
    return f"stopped {app} v{result['stopped_version']} (volumes kept)"


def apps_table(rows: list[dict[str, Any]]) -> list[str]:
    """`beamctl apps`: every app and where it runs."""
    if not rows:
        return ["no apps deployed on the hosts known here"]
    head = f"{'APP':<20} {'HOST':<20} {'VER':>4} {'STATE':<15} {'CONTAINERS':>10} {'BUSY':>5}  CHECKPOINT"
    return [head] + [f"{r['app']:<20} {r['host']:<20} {('v' + str(r['version'])) if r['version'] else '-':>4} "
                     f"{r['state']:<15} {r['containers']:>10} {r['busy']:>5}  {r['checkpoint'] or '-'}" for r in rows]
