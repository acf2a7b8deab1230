import pytest

from imgflow.config import GateConfig
from imgflow.gate import decide

GATE = GateConfig(min_accuracy=0.9, tolerance=0.01)


@pytest.mark.parametrize(
    ("candidate", "champion", "promote"),
    [
        (0.95, None, True),  # first model, above the floor
        (0.90, None, True),  # exactly at the floor
        (0.89, None, False),  # below the floor
        (0.95, 0.955, True),  # a little worse, within tolerance
        (0.95, 0.97, False),  # worse than the champion beyond tolerance
        (0.85, 0.80, False),  # better than the champion but below the floor
    ],
)
def test_gate(candidate: float, champion: float | None, promote: bool) -> None:
    decision = decide(candidate, champion, GATE)
    assert decision.promote is promote
    assert len(decision.reasons) == 2
    assert decision.candidate_accuracy == candidate and decision.champion_accuracy == champion


def test_reasons_say_why() -> None:
    decision = decide(0.95, 0.97, GATE)
    assert "< champion 0.9700 - tolerance 0.0100" in decision.reasons[1]
