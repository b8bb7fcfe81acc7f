"""How many containers of an app's serving version a host runs (beam.yaml's `autoscaler`), as a value:
what the queue wants for a demand, within min and max (pure; agent/pool.py acts on it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Scale:
    """How many containers of the serving version this host runs (beam.yaml's `autoscaler`)."""

    max_containers: int = 1
    tasks_per_container: int = 0  # tasks queued and running per container before another starts; 0: workers
    min_containers: int = 0  # kept warm (and started again when they die)

    @classmethod
    def of(cls, spec: dict[str, Any]) -> "Scale":
        return cls(int(spec.get("max_containers") or 1), int(spec.get("tasks_per_container") or 0),
                   int(spec.get("min_containers") or 0))

    def wanted(self, demand: int, workers: int) -> int:
        """Containers for `demand` tasks (waiting and running), within min and max."""
        per = self.tasks_per_container or workers
        return max(self.min_containers, min(self.max_containers, math.ceil(demand / per)))
