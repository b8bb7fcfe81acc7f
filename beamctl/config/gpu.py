"""GPU type names: the canonical list, tolerant input, and `TYPE:COUNT`."""

from __future__ import annotations

import re
from dataclasses import dataclass

CANONICAL = ("T4", "L4", "A10G", "A100-40", "A100-80", "H100", "H200",
             "RTX4090", "RTX5090", "L40S", "B200")
MAX_GPUS_PER_CONTAINER = 8  # the most any one machine of these types carries
CPU_WORDS = frozenset({"", "NONE", "CPU"})

_KEY = {re.sub(r"[^A-Z0-9]", "", c): c for c in CANONICAL}
_KEY |= {"4090": "RTX4090", "5090": "RTX5090", "GEFORCERTX4090": "RTX4090"}
# Words in device names that name a vendor, form factor or memory size, not another chip.
_NOISE = re.compile(r"NVIDIA|GEFORCE|TESLA|SXM\d?|PCIE|NVL|HBM\dE?|\d+GB")


class GpuNameError(ValueError):
    pass


@dataclass(frozen=True)
class GpuChoice:
    type: str  # canonical name
    count: int = 1

    def __str__(self) -> str:
        return self.type if self.count == 1 else f"{self.type}:{self.count}"


def canonical_name(raw: str) -> str | None:
    """'nvidia h100', 'H100 80GB HBM3', 'A100-SXM4-40GB' -> canonical name; None when unknown."""
    words = re.findall(r"[A-Z0-9]+", raw.upper())
    if "A100" in words or any(w.startswith("A100") for w in words):
        rest = "".join(words).split("A100", 1)[1]
        return "A100-80" if "80" in rest else "A100-40" if "40" in rest else None
    key = "".join(w for w in words if not _NOISE.fullmatch(w))
    return _KEY.get(key)


def parse_choice(raw: str) -> GpuChoice | None:
    """One `gpu` entry: 'H100', 'h100:2', 'nvidia rtx 4090'. None means CPU only."""
    text = raw.strip()
    if text.upper() in CPU_WORDS:
        return None
    name, sep, count_text = text.rpartition(":")
    if not sep:
        name, count_text = text, "1"
    if not re.fullmatch(r"-?\d+", count_text.strip()):
        raise GpuNameError(f"'{raw}': the count after ':' must be a whole number, like H100:2")
    count = int(count_text)
    if not 1 <= count <= MAX_GPUS_PER_CONTAINER:
        raise GpuNameError(f"'{raw}': the GPU count must be between 1 and {MAX_GPUS_PER_CONTAINER}, "
                           f"not {count} (omit `gpu`, or write `gpu: none`, for a CPU-only app)")
    canonical = canonical_name(name)
    if canonical is None:
        raise GpuNameError(_unknown(name))
    return GpuChoice(canonical, count)


def _unknown(name: str) -> str:
    if re.sub(r"[^A-Z0-9]", "", name.upper()).endswith("A100"):
        return f"'{name}' is ambiguous: write A100-40 or A100-80 (the memory size in GB)"
    import difflib

    close = difflib.get_close_matches(name.upper().replace(" ", ""), CANONICAL, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else "."
    return f"unknown GPU type '{name}'{hint} Known types: {', '.join(CANONICAL)}"
