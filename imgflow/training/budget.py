"""A run's time budget: durations as a spec or a flag writes them, and the seconds it leaves training
once the data stages have run and validate and export have their reserve (``imgflow.training.recipe``
plans training into them)."""

from __future__ import annotations

import re

RESERVE_CPU_SECONDS = 16.0  # validate and export: this much CPU time (on the run's cores), plus RESERVE_SHARE of the budget
RESERVE_SHARE = 0.03


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``"15m"``, ``"90s"``, ``"1h30m"`` or ``"600"`` (seconds); a
    ``ValueError`` for anything else."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        seconds = float(text)
    else:
        match = _DURATION.fullmatch(text)
        if not text or match is None or not any(match.groups()):
            raise ValueError(f'{text!r} is not a duration such as "15m", "90s" or "1h30m"')
        hours, minutes, secs = (float(part or 0) for part in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if seconds <= 0:
        raise ValueError(f"{text!r} is no time at all: a budget must be above 0")
    return seconds


def is_duration(text: str) -> bool:
    try:
        parse_duration(text)
    except ValueError:
        return False
    return True


def reserve_seconds(budget: float, cores: float) -> float:
    """What validate and export are left of ``budget`` on ``cores`` CPU cores (or their quota): their
    work (loading, converting to ONNX, checking parity, quantizing) is CPU time, so a CPU-limited
    machine needs longer for it."""
    return RESERVE_CPU_SECONDS / max(min(cores, 2.0), 0.1) + RESERVE_SHARE * budget


def training_seconds(budget: float, spent: float, cores: float) -> float:
    """The seconds training may take: ``budget`` less the data stages' ``spent`` and the reserve."""
    return max(0.0, budget - spent - reserve_seconds(budget, cores))
