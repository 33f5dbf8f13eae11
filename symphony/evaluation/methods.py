"""Methods compared by every eval: the registered cache policies (`symphony.runtime.policies`)."""
from __future__ import annotations

from symphony.errors import SymphonyError
from symphony.runtime.policies import POLICIES


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in POLICIES]
    if bad or not methods:
        raise SymphonyError(f"unknown method(s) {', '.join(bad) or '(none)'}; choose from {', '.join(POLICIES)}")
    return methods


def parse_lengths(text: str) -> list[int]:
    """'4k,8k,1M' or '4096,8192' -> token counts (k = 1024, M = 1024 * 1024)."""
    scale = {"k": 1024, "m": 1024 * 1024}
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        try:
            out.append(int(float(part[:-1]) * scale[part[-1]]) if part[-1] in scale else int(part))
        except (ValueError, OverflowError):  # not a number, or nan / inf
            raise SymphonyError(f"cannot read length '{part}'; use e.g. 4k,8k,1M or 4096,8192") from None
    if not out or min(out) <= 0:
        raise SymphonyError("lengths must be positive token counts")
    return out
