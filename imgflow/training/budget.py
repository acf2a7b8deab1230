"""A run's time budget: the seconds it leaves training once the data stages have run and validate and export have their reserve (``imgflow.training.recipe``
plans training into them)."""

from __future__ import annotations

RESERVE_CPU_SECONDS = 16.0  # validate and export: this much CPU time (on the run's cores), plus RESERVE_SHARE of the budget
RESERVE_SHARE = 0.03


def reserve_seconds(budget: float, cores: float) -> float:
    """What validate and export are left of ``budget`` on ``cores`` CPU cores (or their quota): their
    work (loading, converting to ONNX, checking parity, quantizing) is CPU time, so a CPU-limited
    machine needs longer for it."""
    return RESERVE_CPU_SECONDS / max(min(cores, 2.0), 0.1) + RESERVE_SHARE * budget


def training_seconds(budget: float, spent: float, cores: float) -> float:
    """The seconds training may take: ``budget`` less the data stages' ``spent`` and the reserve."""
    return max(0.0, budget - spent - reserve_seconds(budget, cores))
