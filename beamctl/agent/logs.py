"""An app's log: its containers' output (kept in a file once a container is gone) merged with the
agent's events ("cold start", "scaled to zero"), by time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LOG_FILE_MAX_BYTES = 64 << 20  # per app; older half dropped when passed (logs are for humans, not audit)


def _path(data_dir: Path, app: str) -> Path:
    return data_dir / "logs" / f"{app}.log"


def save(data_dir: Path, app: str, container_id: str, lines: list[tuple[float, str]]) -> None:
    path = _path(data_dir, app)
    with path.open("a", encoding="utf-8") as f:
        for ts, text in lines:
            f.write(f"{ts:.6f}\t{container_id[:12]}\t{text}\n")
    if path.stat().st_size > LOG_FILE_MAX_BYTES:
        data = path.read_bytes()
        cut = data.index(b"\n", len(data) // 2) + 1
        path.write_bytes(data[cut:])


def _saved(data_dir: Path, app: str) -> list[tuple[float, str, str]]:
    path = _path(data_dir, app)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        ts, _, rest = line.partition("\t")
        source, _, text = rest.partition("\t")
        try:
            out.append((float(ts), source, text))
        except ValueError:
            continue
    return out


def merged(data_dir: Path, app: str, running: list[tuple[str, list[tuple[float, str]]]],
           events: list[tuple[float, str]], since: float, tail: int, task_id: str | None) -> list[dict[str, Any]]:
    entries = _saved(data_dir, app)
    for container_id, lines in running:
        entries += [(ts, container_id[:12], text) for ts, text in lines]
    entries += [(ts, "agent", message) for ts, message in events]
    picked = [e for e in entries if e[0] > since and (task_id is None or task_id in e[2])]
    picked.sort(key=lambda e: e[0])
    return [{"ts": ts, "source": source, "text": text} for ts, source, text in picked[-tail:]]
