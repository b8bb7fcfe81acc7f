"""A task's cold-start profile as a waterfall drawn to scale: one SVG (no script, no external file) that
`beamctl profile TASK --svg/--html` writes and the dashboard's task page shows, beside the app's median
restored start and median cold boot. Pure: a task (as the agent's `task` answers it) in, text out."""

from __future__ import annotations

from html import escape
from typing import Any

PHASES = {"queue": "queue", "image_load": "image load", "container_start": "container start",
          "imports": "imports", "application_start": "application start (on_start)",
          "checkpoint_capture": "checkpoint capture", "checkpoint_restore": "checkpoint restore",
          "task_run": "task run", "other": "other"}
COLOURS = {"queue": "#9aa5b1", "image_load": "#7c5cff", "container_start": "#3b82f6", "imports": "#06b6d4",
           "application_start": "#f59e0b", "checkpoint_capture": "#ef4444", "checkpoint_restore": "#10b981",
           "task_run": "#22c55e", "other": "#cbd5e1"}
WIDTH, LABEL_W, ROW_H, PAD = 760, 210, 24, 12


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.1f} ms"


def rows(task: dict[str, Any]) -> list[tuple[str, str, float, float]]:
    """(phase, label, start, duration) in seconds, in the order they happen."""
    out, offset = [], 0.0
    for key, label in PHASES.items():
        value = (task.get("phases") or {}).get(key)
        if value is None:
            continue
        out.append((key, label, offset, float(value)))
        offset += float(value)
    return out


def svg(task: dict[str, Any], medians: dict[str, float | None] | None = None) -> str:
    """The waterfall: a row per phase, bars to one scale (the longest of the task and the medians shown),
    milliseconds beside each; under it, the task's total against the app's median restored and cold starts."""
    medians = {k: v for k, v in (medians or {}).items() if v}
    phases = rows(task)
    total = float(task.get("total") or sum(d for *_, d in phases) or 0.0)
    span = max([total, *medians.values(), 1e-6])
    bar_w = WIDTH - LABEL_W - 110
    scale = bar_w / span
    height = PAD * 2 + ROW_H * (len(phases) + 1 + len(medians)) + 8
    title = f"{task.get('task_id', '')} {task.get('app', '')} {task.get('start') or ''} start: {ms(total)}"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="waterfall" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" font-family="system-ui, sans-serif" font-size="12" '
           f'data-task="{escape(str(task.get("task_id", "")))}" data-total-ms="{total * 1000:.1f}">',
           f"<title>{escape(title)}</title>",
           f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>']
    y = PAD
    for key, label, start, dur in phases:
        x, w = LABEL_W + start * scale, max(dur * scale, 1.0 if dur > 0 else 0.0)
        out.append(f'<g class="phase" data-phase="{key}" data-ms="{dur * 1000:.1f}" data-start-ms="{start * 1000:.1f}">'
                   f'<text x="{LABEL_W - 8}" y="{y + 16}" text-anchor="end" fill="#1f2937">{escape(label)}</text>'
                   f'<rect x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="{ROW_H - 8}" rx="2" fill="{COLOURS[key]}"/>'
                   f'<text x="{x + w + 6:.1f}" y="{y + 16}" fill="#374151">{ms(dur)}</text></g>')
        y += ROW_H
    out.append(f'<line x1="{LABEL_W}" x2="{LABEL_W + bar_w}" y1="{y + 2}" y2="{y + 2}" stroke="#e5e7eb"/>')
    y += 6
    compare = [("this task", total, "#111827")] + [
        (f"median {kind} start", value, "#10b981" if kind == "restored" else "#6b7280")
        for kind, value in medians.items()]
    for label, value, colour in compare:
        w = max(value * scale, 1.0)
        kind = label.split()[1] if label.startswith("median") else "task"
        out.append(f'<g class="total" data-kind="{kind}" data-ms="{value * 1000:.1f}">'
                   f'<text x="{LABEL_W - 8}" y="{y + 16}" text-anchor="end" fill="#1f2937" font-weight="600">'
                   f'{escape(label)}</text>'
                   f'<rect x="{LABEL_W}" y="{y + 6}" width="{w:.1f}" height="{ROW_H - 12}" fill="{colour}" opacity="0.85"/>'
                   f'<text x="{LABEL_W + w + 6:.1f}" y="{y + 16}" fill="#374151">{ms(value)}</text></g>')
        y += ROW_H
    out.append("</svg>")
    return "\n".join(out)


def medians(recent: list[dict[str, Any]]) -> dict[str, float | None]:
    """The app's median total of restored starts and of cold boots among these tasks (None: none)."""
    out: dict[str, float | None] = {}
    for kind in ("restored", "cold"):
        values = sorted(t["total"] for t in recent if t.get("start") == kind and t.get("total"))
        out[kind] = values[len(values) // 2] if values else None
    return out


def html(task: dict[str, Any], medians_: dict[str, float | None] | None = None) -> str:
    """A page with the waterfall, for sharing (`beamctl profile --html`)."""
    head = (f"{task.get('task_id', '')}: {task.get('app', '')} v{task.get('version', '-')}, "
            f"{task.get('start') or '-'} start, {task.get('status', '')}, total {ms(task.get('total'))}")
    return ("<!doctype html><meta charset='utf-8'>"
            f"<title>{escape(str(task.get('task_id', '')))} cold-start profile</title>"
            "<body style='font-family:system-ui,sans-serif;margin:24px'>"
            f"<h2 style='font-size:16px'>{escape(head)}</h2>{svg(task, medians_)}</body>\n")
