"""The promotion gate: a small pure decision with its thresholds as parameters."""

from __future__ import annotations

from dataclasses import dataclass

from imgflow.config import GateConfig


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: tuple[str, ...]
    candidate_accuracy: float
    champion_accuracy: float | None
    min_accuracy: float
    tolerance: float


def decide(candidate_accuracy: float, champion_accuracy: float | None, config: GateConfig) -> Decision:
    """Promote when the candidate clears the floor and is not worse than the champion beyond tolerance.

    Both accuracies must come from the same test split; ``champion_accuracy`` is None when there is
    no champion yet.
    """
    reasons = []
    promote = True
    if candidate_accuracy >= config.min_accuracy:
        reasons.append(f"accuracy {candidate_accuracy:.4f} >= floor {config.min_accuracy:.4f}")
    else:
        promote = False
        reasons.append(f"accuracy {candidate_accuracy:.4f} < floor {config.min_accuracy:.4f}")
    if champion_accuracy is None:
        reasons.append("no champion yet")
    elif candidate_accuracy >= champion_accuracy - config.tolerance:
        reasons.append(
            f"accuracy {candidate_accuracy:.4f} >= champion {champion_accuracy:.4f} - tolerance {config.tolerance:.4f}"
        )
    else:
        promote = False
        reasons.append(
            f"accuracy {candidate_accuracy:.4f} < champion {champion_accuracy:.4f} - tolerance {config.tolerance:.4f}"
        )
    return Decision(
        promote=promote,
        reasons=tuple(reasons),
        candidate_accuracy=candidate_accuracy,
        champion_accuracy=champion_accuracy,
        min_accuracy=config.min_accuracy,
        tolerance=config.tolerance,
    )
