"""What is wrong with the data's *content*: suspected label errors, near-duplicates, outliers.

The clean stage catches what is wrong with a file; this finds what a model would trip on, from two
views of every record (``imgflow.stages.audit`` streams them in):

- its **look**: the pixels at most 32x32, reduced to ``DIMS`` principal components, centred and
  unit-length. Two records whose looks are within ``threshold`` cosine distance are near-duplicates
  (a resize, a re-encoding), and their perceptual hashes (``dhash``) differ in few bits when they are
  the same picture re-encoded;
- its **meaning**: a model's embedding (the champion's penultimate layer, or EfficientNet-Lite0's
  ImageNet features) reduced the same way, or the look itself. Its nearest neighbours vote for a label,
  leaving the record itself out: these out-of-sample probabilities feed cleanlab's confident learning
  (``cleanlab.filter.find_label_issues``); a label is suspected where cleanlab doubts it and most of the
  vote (``MAJORITY``) goes to one other label, the one suggested.

Outliers (``outliers``): blank images; images whose look the principal components leave mostly
unexplained (noise, a corrupted-looking or off-domain picture), and records far from all their
neighbours by meaning, each beyond Tukey's far fence of the data's own figures.

A neighbour vote rather than a k-fold logistic regression on the same features: the regression's
probabilities are flatter, so more correct labels look doubtful (benchmarks/RESULTS.md, "The audit"),
and the vote comes free with the neighbour search that near-duplicates need anyway.

Memory stays flat in the number of records: the reduction is fitted on the first ``FIT_RECORDS``
records (fewer when they are long) and applied batch by batch, so only ``DIMS`` floats a record are
kept; the neighbour search (faiss: exact, or an HNSW graph on large data) never builds the n x n matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DIMS = 32  # principal components kept of a look or an embedding
FIT_RECORDS = 10_000  # the records the reduction is fitted on (the first ones), at most
FIT_FLOATS = 8_000_000  # ... and at most this many floats of them: the fit's copies dominate the audit's memory
LOOK_SIDE = 32  # a look is the image at most this many pixels a side
NEIGHBOURS = 10  # a record's neighbours: its label vote, its outlier score, its near-duplicate candidates
# A label is suspected only where at least this share of the vote goes to one other label: cleanlab alone
# also doubts the records of categories that overlap (clip-art's), where the vote is split.
MAJORITY = 0.5
EXACT_RECORDS = 50_000  # up to this many records the neighbour search is exact (its cost grows with the square)
HNSW_LINKS, HNSW_SEARCH = 32, 64  # beyond: an HNSW graph's links per node, and its search breadth


def look(images: np.ndarray) -> np.ndarray:
    """uint8 images [N, H, W, C] as float32 rows at most ``LOOK_SIDE`` pixels a side (a box filter:
    the mean of each cell), so resizing or re-encoding an image barely moves its row."""
    n, height, width, channels = images.shape
    step_h, step_w = -(-height // LOOK_SIDE), -(-width // LOOK_SIDE)
    if step_h == 1 and step_w == 1:
        return images.reshape(n, -1).astype(np.float32)
    pad_h, pad_w = (-height) % step_h, (-width) % step_w
    padded = np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge").astype(np.float32)
    cells = padded.reshape(n, padded.shape[1] // step_h, step_h, padded.shape[2] // step_w, step_w, channels)
    return cells.mean(axis=(2, 4)).reshape(n, -1)


def dhash(images: np.ndarray) -> np.ndarray:
    """A 64-bit difference hash of each uint8 image [N, H, W, C]: the grey image averaged into 9x8
    cells (PIL's box filter), and whether each cell is brighter than its left neighbour by more than a
    grey level (so that a flat background does not flip bits on rounding). The same picture resized or
    re-encoded keeps nearly all of its bits."""
    from PIL import Image

    grey = images.astype(np.float32).mean(axis=3)
    cells = np.stack([np.asarray(Image.fromarray(image, mode="F").resize((9, 8), Image.Resampling.BOX)) for image in grey])
    bits = (cells[:, :, 1:] > cells[:, :, :-1] + 1.0).reshape(len(images), 64)  # a grey level's margin: flat areas tie
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between two arrays of 64-bit hashes."""
    return np.bitwise_count(np.bitwise_xor(a, b))


class Reducer:
    """Rows reduced to ``DIMS`` principal components, fitted on the first ``FIT_RECORDS`` rows fed in (fewer
    for long rows: ``FIT_FLOATS``; kept until then), then applied to each batch as it comes; ``result()`` gives every row, centred
    and unit-length, in order, and ``unexplained()`` each row's share of its variation that the
    components miss (near 1: a row unlike the data the components were fitted on)."""

    def __init__(self) -> None:
        self._waiting: list[np.ndarray] = []
        self._held = 0
        self._reduced: list[np.ndarray] = []
        self._unexplained: list[np.ndarray] = []
        self._pca: Any = None  # sklearn's PCA, once fitted

    def add(self, rows: np.ndarray) -> None:
        if self._pca is not None:
            self._reduce(rows)
            return
        self._waiting.append(rows.astype(np.float32))
        self._held += len(rows)
        if self._held >= min(FIT_RECORDS, FIT_FLOATS // max(rows.shape[1], 1)):
            self._fit()

    def _fit(self) -> None:
        from sklearn.decomposition import PCA

        rows = np.concatenate(self._waiting)
        self._waiting = []
        dims = max(1, min(DIMS, rows.shape[0] - 1, rows.shape[1]))
        self._pca = PCA(dims, svd_solver="randomized" if dims < min(rows.shape) // 2 else "full", random_state=0).fit(rows)
        self._reduce(rows)

    def _reduce(self, rows: np.ndarray) -> None:
        reduced = self._pca.transform(rows).astype(np.float32)
        total = np.square(rows - self._pca.mean_).sum(axis=1)
        self._reduced.append(reduced)
        self._unexplained.append(np.clip(1.0 - np.square(reduced).sum(axis=1) / np.maximum(total, 1e-9), 0.0, 1.0))

    def _done(self) -> bool:
        if self._pca is None and self._waiting:
            self._fit()
        return self._pca is not None

    def result(self) -> np.ndarray:
        if not self._done():
            return np.zeros((0, DIMS), np.float32)
        rows = np.concatenate(self._reduced)
        rows -= rows.mean(axis=0)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return rows / np.maximum(norms, 1e-12)

    def unexplained(self) -> np.ndarray:
        return np.concatenate(self._unexplained) if self._done() else np.zeros(0, np.float32)


def nearest(rows: np.ndarray, k: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """Each unit-length row's ``k`` nearest other rows by cosine distance: (indices [N, k] int64,
    distances [N, k] float32), nearest first, with faiss: an exact search up to ``EXACT_RECORDS`` rows,
    beyond them an HNSW graph (approximate: its quadratic cost grows too fast; built on one thread, so
    the same rows give the same graph). Neither holds more than the rows and their graph in memory."""
    import faiss

    n = len(rows)
    k = max(0, min(k, n - 1))
    if k == 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32)
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    index: Any
    if n <= EXACT_RECORDS:
        index = faiss.IndexFlatIP(rows.shape[1])
        index.add(rows)
    else:
        index = faiss.IndexHNSWFlat(rows.shape[1], HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            index.add(rows)
        finally:
            faiss.omp_set_num_threads(threads)
        index.hnsw.efSearch = HNSW_SEARCH
    similarity, found = index.search(rows, k + 1)
    # Each row's own entry out (normally first; an exact copy may tie with it), else its farthest.
    own = found == np.arange(n)[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    keep = np.ones_like(own)
    keep[np.arange(n), drop] = False
    indices = found[keep].reshape(n, k).astype(np.int64)
    distances = np.maximum(1.0 - similarity[keep].reshape(n, k), 0.0).astype(np.float32)
    return indices, distances


def vote(indices: np.ndarray, distances: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """Out-of-sample label probabilities [N, classes]: each record's neighbours' labels (itself left
    out), nearer ones weighing more (1 / distance), smoothed so that no class is impossible."""
    weights = 1.0 / (distances.astype(np.float64) + 1e-3)
    probabilities = np.zeros((len(labels), classes))
    np.add.at(probabilities, (np.repeat(np.arange(len(labels)), indices.shape[1]), labels[indices].ravel()), weights.ravel())
    probabilities /= np.maximum(probabilities.sum(axis=1, keepdims=True), 1e-12)
    return 0.98 * probabilities + 0.02 / classes


@dataclass(frozen=True)
class LabelIssue:
    """A record whose given label its neighbours doubt: the label they suggest, and cleanlab's label
    quality score (0: surely wrong, 1: surely right)."""

    index: int
    given: int
    suggested: int
    score: float


def label_issues(labels: np.ndarray, probabilities: np.ndarray) -> list[LabelIssue]:
    """cleanlab's confident learning on ``probabilities`` where the vote mostly backs another label: the
    suspected label errors, most doubtful first. Classes with fewer than two records cannot be judged:
    none is found then."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    present = np.bincount(labels, minlength=probabilities.shape[1])
    if len(labels) < 10 or (present[present > 0] < 2).any() or (present > 0).sum() < 2:
        return []
    flagged = find_label_issues(labels, probabilities, filter_by="prune_by_noise_rate", n_jobs=1)
    scores = get_label_quality_scores(labels, probabilities)
    suggested = probabilities.argmax(axis=1)
    backed = probabilities[np.arange(len(labels)), suggested] >= MAJORITY
    found = [LabelIssue(int(i), int(labels[i]), int(suggested[i]), float(scores[i])) for i in np.flatnonzero(flagged & backed)]
    # Most doubtful first; among equal scores, where the neighbours agree most on another label.
    return sorted(found, key=lambda issue: (issue.score, -probabilities[issue.index, issue.suggested]))


@dataclass(frozen=True)
class Pairs:
    """Pairs of records that look the same (lower index first), closest first: their cosine
    ``distance`` and how many of their perceptual hashes' 64 bits differ (the fewer, the likelier the
    same picture re-encoded). Arrays, not objects: a data set of near-identical pictures has about ten
    pairs a record."""

    first: np.ndarray  # int64
    second: np.ndarray  # int64
    distance: np.ndarray  # float32
    hash_bits: np.ndarray  # int64


def near_duplicates(indices: np.ndarray, distances: np.ndarray, hashes: np.ndarray, threshold: float) -> Pairs:
    """Every pair of records within ``threshold`` of each other among their nearest neighbours, once
    each, closest first."""
    rows, cols = np.nonzero(distances <= threshold)
    others = indices[rows, cols]
    low, high = np.minimum(rows, others), np.maximum(rows, others)
    _, first = np.unique(low * max(len(indices), 1) + high, return_index=True)
    low, high, distance = low[first], high[first], distances[rows, cols][first]
    order = np.lexsort((low, distance))
    low, high = low[order].astype(np.int64), high[order].astype(np.int64)
    return Pairs(low, high, distance[order].astype(np.float32), hamming(hashes[low], hashes[high]).astype(np.int64))


BLANK_SPREAD = 2.0  # grey levels: an image whose pixels vary less than this is blank


def blank(images: np.ndarray) -> np.ndarray:
    """Whether each uint8 image [N, H, W, C] is blank: one flat colour (its pixels' standard
    deviation under ``BLANK_SPREAD`` grey levels)."""
    return images.reshape(len(images), -1).std(axis=1) < BLANK_SPREAD


def outlier_scores(distances: np.ndarray) -> np.ndarray:
    """Each record's mean distance to its nearest neighbours: high for a record unlike any other."""
    return distances.mean(axis=1) if distances.shape[1] else np.zeros(len(distances), np.float32)


def far(scores: np.ndarray) -> np.ndarray:
    """Whether each score lies beyond Tukey's far fence of all of them (the third quartile plus three
    interquartile ranges): the data's own spread decides what is far. None is, among fewer than 20."""
    if len(scores) < 20:
        return np.zeros(len(scores), bool)
    q1, q3 = np.percentile(scores, [25, 75])
    return scores > q3 + 3.0 * (q3 - q1)


def outliers(blanks: np.ndarray, unexplained: np.ndarray, distances: np.ndarray) -> list[tuple[int, str]]:
    """The records unlike the rest, each with why, in that order: blank images; images whose look the
    data's principal components do not explain (noise, a corrupted-looking or off-domain picture);
    records far from all their neighbours by meaning. A record is listed once, for its first reason."""
    found: list[tuple[int, str]] = []
    seen: set[int] = set()
    for mask, order, why in (
        (blanks, np.zeros(len(blanks)), "blank"),
        (far(unexplained), -unexplained, "its look is unlike the data's"),
        (far(distances), -distances, "far from all its neighbours"),
    ):
        chosen = np.flatnonzero(mask)
        for index in chosen[np.argsort(order[chosen], kind="stable")].tolist():
            if index not in seen:
                seen.add(index)
                found.append((index, why))
    return found


SPLIT_ORDER = ("train", "val", "test")
ISSUES, PAIRS, OUTLIERS = "label_issues.parquet", "near_duplicates.parquet", "outliers.parquet"  # an audit's findings
LABEL_ERROR, NEAR_DUPLICATE = "suspected label error", "near-duplicate"  # the kinds of what "exclude" leaves out


def exclusions(issues: pa.Table, pairs: pa.Table) -> list[tuple[str, str]]:
    """What ``[audit] action = "exclude"`` leaves out, from an audit's findings (its ``ISSUES`` and
    ``PAIRS`` tables): each suspected label error, and of each pair across splits the held-out record (the
    later split's: the train copy still teaches, the test copy no longer inflates the test). (record id,
    why) pairs, one per record (its first reason, which starts with its kind and a colon), sorted by id."""
    chosen: dict[str, str] = {}
    for issue in issues.to_pylist():
        chosen.setdefault(issue["id"], f"{LABEL_ERROR}: given {issue['label']}, suggested {issue['suggested']}")
    crossing = pairs.filter(pc.field("cross_split"))
    for batch in crossing.to_batches(max_chunksize=65_536):
        for pair in batch.to_pylist():
            ends = sorted((("first", pair["first_split"]), ("second", pair["second_split"])), key=lambda end: SPLIT_ORDER.index(end[1]))
            kept, left = ends[0][0], ends[1][0]
            reason = f"{NEAR_DUPLICATE}: of {pair[kept + '_id']} ({pair[kept + '_split']}), in {pair[left + '_split']}"
            chosen.setdefault(pair[left + "_id"], reason)
    return sorted(chosen.items())
