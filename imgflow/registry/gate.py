"""The promotion gate: a small pure decision with its thresholds as parameters, and the figure it
judges (``score``: ``[gate] metric``, which a budgeted run's race and kept epoch follow too, so what
the run optimizes is what it is judged on).

Beside the floor and the tolerance on overall accuracy, a candidate is compared with the champion on
the same test records (``paired``): McNemar's exact test on the records where exactly one of them is
right says whether a difference is more than noise, overall and for each class's recall. A candidate
that is significantly worse overall, or on one class by more than ``max_class_drop``, is refused, with
the class named; a regression hidden in one class no longer hides behind the overall number. With
``slice_by``, the same rule applies to each slice's accuracy (a date partition, a source).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from imgflow.config import METRICS, GateConfig


def _worse(wins: int, losses: int) -> float:
    """One-sided exact McNemar p-value that the candidate is worse: P(at least ``losses`` of the
    ``wins + losses`` disagreements go the champion's way, were each a fair coin)."""
    from scipy.stats import binom

    total = wins + losses
    return 1.0 if total == 0 else float(binom.sf(losses - 1, total, 0.5))


@dataclass(frozen=True)
class ClassComparison:
    name: str
    records: int
    candidate_recall: float
    champion_recall: float
    p_worse: float  # the candidate's recall is lower than the champion's, beyond noise


@dataclass(frozen=True)
class SliceComparison:
    name: str
    records: int
    candidate_accuracy: float
    champion_accuracy: float
    p_worse: float


@dataclass(frozen=True)
class Paired:
    """Candidate and champion on the same test records."""

    records: int
    candidate_only: int  # records only the candidate gets right
    champion_only: int  # records only the champion gets right
    p_worse: float  # one-sided: the candidate is worse
    p_better: float  # one-sided: the candidate is better
    classes: tuple[ClassComparison, ...] = field(default=())
    slices: tuple[SliceComparison, ...] = field(default=())


def paired(
    labels: np.ndarray, candidate: np.ndarray, champion: np.ndarray, class_names: Sequence[str], slices: Sequence[str] | None = None
) -> Paired:
    """Compare the two models' predictions of the same ``labels``, overall, per class and, given each
    record's slice (``slices``), per slice."""
    right, rival = candidate == labels, champion == labels

    def within(mine: np.ndarray) -> tuple[int, float, float, float]:  # records, both rates, p(worse)
        won, lost = int((right & ~rival & mine).sum()), int((~right & rival & mine).sum())
        return int(mine.sum()), float(right[mine].mean()), float(rival[mine].mean()), _worse(won, lost)

    classes = [ClassComparison(name, *within(labels == index)) for index, name in enumerate(class_names) if (labels == index).any()]
    named = np.asarray(slices if slices is not None else [], dtype=object)
    cut = [SliceComparison(str(name), *within(named == name)) for name in sorted(set(named.tolist()))]
    wins, losses = int((right & ~rival).sum()), int((~right & rival).sum())
    return Paired(len(labels), wins, losses, _worse(wins, losses), _worse(losses, wins), tuple(classes), tuple(cut))


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: tuple[str, ...]
    candidate_accuracy: float
    champion_accuracy: float | None
    min_accuracy: float
    tolerance: float


def decide(
    candidate_accuracy: float,
    champion_accuracy: float | None,
    config: GateConfig,
    comparison: Paired | None = None,
    drifted: Mapping[str, Sequence[str]] | None = None,
) -> Decision:
    """Promote when the candidate clears the floor and is not worse than the champion beyond tolerance;
    with the paired ``comparison`` (the champion's predictions of the same records), also not
    significantly worse overall (McNemar, ``alpha``) nor on any class by more than ``max_class_drop``
    (``alpha`` over the number of classes: Bonferroni, so 22 classes do not make 22 chances of a false alarm).
    ``drifted``: the data (a partition) that drifted from the champion's, with the checks that did
    (``imgflow.stages.drift``): each is a reason, and refuses promotion when ``max_drift`` is "refuse".

    Both figures are ``config.metric`` (accuracy unless the spec says otherwise) on the same test split;
    ``champion_accuracy`` is None when there is no champion yet.
    """
    reasons = []
    promote = True
    name = config.metric  # the floor and the tolerance are in its terms
    if candidate_accuracy >= config.min_accuracy:
        reasons.append(f"{name} {candidate_accuracy:.4f} >= floor {config.min_accuracy:.4f}")
    else:
        promote = False
        reasons.append(f"{name} {candidate_accuracy:.4f} < floor {config.min_accuracy:.4f}")
    if champion_accuracy is None:
        reasons.append("no champion yet")
    elif candidate_accuracy >= champion_accuracy - config.tolerance:
        reasons.append(f"{name} {candidate_accuracy:.4f} >= champion {champion_accuracy:.4f} - tolerance {config.tolerance:.4f}")
    else:
        promote = False
        reasons.append(f"{name} {candidate_accuracy:.4f} < champion {champion_accuracy:.4f} - tolerance {config.tolerance:.4f}")
    if comparison is not None:
        promote = _judge_paired(comparison, config, reasons) and promote
    for where, checks in (drifted or {}).items():
        action = "refused" if config.max_drift == "refuse" else "flagged"
        promote = promote and config.max_drift != "refuse"
        reasons.append(f"{where} drifted from the champion's data, {action} (max_drift = {config.max_drift}): {'; '.join(checks)}")
    return Decision(
        promote=promote,
        reasons=tuple(reasons),
        candidate_accuracy=candidate_accuracy,
        champion_accuracy=champion_accuracy,
        min_accuracy=config.min_accuracy,
        tolerance=config.tolerance,
    )


def _judge_paired(comparison: Paired, config: GateConfig, reasons: list[str]) -> bool:
    """Add the paired test's reasons; False when it refuses the candidate."""
    fine = True
    counts = (
        f"of {comparison.records} test records, {comparison.candidate_only} only the candidate gets right and "
        f"{comparison.champion_only} only the champion"
    )
    if comparison.p_worse < config.alpha:
        fine = False
        reasons.append(f"significantly worse than the champion: {counts} (McNemar p = {comparison.p_worse:.3g} < {config.alpha})")
    elif comparison.p_better < config.alpha:
        reasons.append(f"better than the champion by more than noise: {counts} (McNemar p = {comparison.p_better:.3g})")
    else:
        reasons.append(
            f"no significant difference from the champion: {counts} (McNemar p = {min(comparison.p_worse, comparison.p_better):.3g})"
        )
    groups = [
        *[
            (f"class {c.name!r} recall", c.records, c.champion_recall, c.candidate_recall, c.p_worse, len(comparison.classes))
            for c in comparison.classes
        ],
        *[
            (
                f"slice {config.slice_by}={s.name} accuracy",
                s.records,
                s.champion_accuracy,
                s.candidate_accuracy,
                s.p_worse,
                len(comparison.slices),
            )
            for s in comparison.slices
        ],
    ]
    for what, records, before, after, p_worse, count in groups:
        level = config.alpha / max(1, count)  # Bonferroni within classes, and within slices
        if before - after > config.max_class_drop and p_worse < level:
            fine = False
            reasons.append(
                f"{what} fell from {before:.4f} to {after:.4f} on {records} records "
                f"(drop {before - after:.4f} > max_class_drop {config.max_class_drop}, McNemar p = {p_worse:.3g} < {level:.3g})"
            )
    return fine


def score(metric: str, labels: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray, classes: int) -> float:
    """``metric`` (``METRICS``: accuracy; balanced accuracy, the mean of the classes' recalls; macro F1,
    the mean of their F1 scores) of ``predicted`` class ids against ``labels``; classes absent from
    ``labels`` do not count towards the balanced figures (they have no recall)."""
    truth, guess = np.asarray(labels, "int64"), np.asarray(predicted, "int64")
    if truth.shape != guess.shape:
        raise ValueError(f"{len(truth)} labels against {len(guess)} predictions")
    if not len(truth):
        raise ValueError("no records to score")
    if metric == "accuracy":
        return float(np.mean(truth == guess))
    confusion = np.zeros((classes, classes), "int64")
    np.add.at(confusion, (truth, guess), 1)
    present = confusion.sum(axis=1) > 0
    right = np.diag(confusion).astype("float64")
    recall = right[present] / confusion.sum(axis=1)[present]
    if metric == "balanced_accuracy":
        return float(recall.mean())
    if metric == "macro_f1":
        precision = np.divide(right, confusion.sum(axis=0), out=np.zeros(classes), where=confusion.sum(axis=0) > 0)[present]
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(recall)), where=precision + recall > 0)
        return float(f1.mean())
    raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
