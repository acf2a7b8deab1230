"""Drift: does new data look like the data the champion learned from? Pure statistics over profiles
(``imgflow.data.profile``) and the champion's views (``imgflow.serving.views``).

Each check has a test of "more than noise" and a size of "enough to matter", and drifts only when both
say so: with thousands of records a test finds trivial differences, with a few dozen a distance finds
noise. The tests share ``alpha`` (Bonferroni over the checks made, so adding checks adds no false alarms):

- a histogram (brightness, contrast, channel means, source sizes, labels, caption lengths): a chi-square
  test of homogeneity on the two tables of counts, and the Jensen-Shannon distance (base 2: 0 the same,
  1 disjoint) against ``max_distance``, as TFDV and Evidently compare categorical and binned features;
- the champion's penultimate-layer embeddings of held-out records: the squared maximum mean discrepancy
  (Gaussian kernel, median-distance bandwidth) and a permutation test, against ``max_mmd``;
- the champion's accuracy on the new labelled records against its accuracy on its own held-out records:
  Fisher's exact test (one-sided: worse), against ``max_accuracy_drop``. This is the drift that matters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from imgflow.config import DriftConfig
from imgflow.data.profile import Profile
from imgflow.serving.views import ModelView

_BLOCK = 250  # permutations scored at once
_SEED = 0  # the permutation test's: the same data gets the same p-value


@dataclass(frozen=True)
class Check:
    """One statistic of the new data against the reference: ``drifted`` when ``p_value`` is below the
    corrected level and ``size`` above ``threshold``."""

    name: str
    measure: str  # what ``size`` is: "js_distance", "mmd2", "accuracy_drop"
    size: float
    threshold: float
    p_value: float
    drifted: bool = False
    detail: str = ""


def js_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Jensen-Shannon distance (base 2) between two histograms' frequencies."""
    from scipy.spatial.distance import jensenshannon

    if not a.sum() or not b.sum():
        return 0.0
    return float(np.nan_to_num(jensenshannon(a / a.sum(), b / b.sum(), base=2)))


def homogeneity(a: np.ndarray, b: np.ndarray) -> float:
    """The chi-square test's p-value that two tables of counts come from one distribution (bins empty
    in both are dropped; 1.0 when fewer than two bins are left)."""
    from scipy.stats import chi2_contingency

    table = np.stack([a, b]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or not table[0].sum() or not table[1].sum():
        return 1.0
    return float(chi2_contingency(table, correction=False).pvalue)


def _label_counts(profile: Profile, names: Sequence[str]) -> np.ndarray:
    return np.array([profile.labels.get(name, 0) for name in names], np.int64)


def profile_checks(reference: Profile, new: Profile, config: DriftConfig) -> list[Check]:
    """A histogram check for every statistic both profiles have, and one of the labels."""
    checks = []
    for name in sorted(set(reference.counts) & set(new.counts)):
        a, b = reference.counts[name], new.counts[name]
        checks.append(Check(name, "js_distance", js_distance(a, b), config.max_distance, homogeneity(a, b)))
    names = sorted(set(reference.labels) | set(new.labels))
    a, b = _label_counts(reference, names), _label_counts(new, names)
    unseen = sorted(set(new.labels) - set(reference.labels))
    detail = f"classes the champion never saw: {', '.join(unseen)}" if unseen else ""
    checks.append(Check("labels", "js_distance", js_distance(a, b), config.max_distance, homogeneity(a, b), detail=detail))
    return checks


def _squared_distances(x: np.ndarray) -> np.ndarray:
    norms = (x * x).sum(axis=1)
    return np.maximum(norms[:, None] + norms[None, :] - 2 * x @ x.T, 0.0)


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int) -> tuple[float, float]:
    """The unbiased squared MMD between samples ``x`` and ``y`` (rows) with a Gaussian kernel whose
    bandwidth is the median pairwise distance of the pooled sample, and its permutation p-value (at
    best ``1 / (permutations + 1)``). The permutations are scored in blocks of matrix products: with
    ``a`` the indicator of a permuted ``x``, its within, across and total sums are quadratic forms."""
    pooled = np.concatenate([x, y]).astype(np.float64)
    distances = _squared_distances(pooled)
    median = np.median(distances[np.triu_indices(len(pooled), 1)])
    kernel = np.exp(-distances / max(median, 1e-12))
    np.fill_diagonal(kernel, 0.0)
    n, m = len(x), len(y)
    row_sums, total = kernel.sum(axis=1), kernel.sum()

    def statistics(groups: np.ndarray) -> np.ndarray:  # one row per assignment: 1 where a record is in x
        within_x = np.einsum("pi,pi->p", groups @ kernel, groups)
        to_x = groups @ row_sums  # the kernel's sums from x to everything
        within_y, across = total - 2 * to_x + within_x, to_x - within_x
        return within_x / (n * (n - 1)) + within_y / (m * (m - 1)) - 2 * across / (n * m)

    first = np.zeros((1, n + m))
    first[0, :n] = 1
    observed = float(statistics(first)[0])
    rng = np.random.default_rng(_SEED)
    exceed = 0
    for start in range(0, permutations, _BLOCK):
        count = min(_BLOCK, permutations - start)
        groups = (rng.permuted(np.tile(np.arange(n + m), (count, 1)), axis=1) < n).astype(np.float64)
        exceed += int((statistics(groups) >= observed).sum())
    return observed, (exceed + 1) / (permutations + 1)


def view_checks(reference: ModelView, new: ModelView, config: DriftConfig) -> list[Check]:
    """The champion's embeddings and accuracy: its held-out records against the new ones."""
    from scipy.stats import fisher_exact

    checks = []
    if len(reference) >= 2 and len(new) >= 2:
        # Enough permutations that a p-value can fall below alpha over a dozen checks.
        size, p_value = mmd_test(reference.embeddings, new.embeddings, permutations=max(1000, int(20 / config.alpha)))
        checks.append(Check("embeddings", "mmd2", size, config.max_mmd, p_value, detail=f"{len(reference)} against {len(new)} records"))
    (right, known), (new_right, new_known) = reference.right(), new.right()
    if known and new_known:
        before, after = right / known, new_right / new_known
        table = [[right, known - right], [new_right, new_known - new_right]]
        p_value = float(fisher_exact(table, alternative="greater").pvalue)
        detail = f"the champion's accuracy {before:.4f} on its held-out records, {after:.4f} on the new ones ({new_known} records)"
        checks.append(Check("champion_accuracy", "accuracy_drop", before - after, config.max_accuracy_drop, p_value, detail=detail))
    return checks


def judge(checks: list[Check], config: DriftConfig) -> list[Check]:
    """The checks with ``drifted`` set: p below ``alpha`` over the number of checks, size above its threshold."""
    level = config.alpha / max(1, len(checks))
    return [Check(c.name, c.measure, c.size, c.threshold, c.p_value, c.p_value < level and c.size > c.threshold, c.detail) for c in checks]


def describe(check: Check) -> str:
    """A check as a reason: what moved, by how much, and how sure."""
    measure = {"js_distance": "Jensen-Shannon distance", "mmd2": "squared MMD", "accuracy_drop": "accuracy drop"}[check.measure]
    text = f"{check.name}: {measure} {check.size:.3f} > {check.threshold} (p = {check.p_value:.2g})"
    return f"{text}; {check.detail}" if check.detail else text
