"""Typed stage results: what a stage hands downstream, and the info each stage records about its output.

A ``StageResult`` is small (paths, a content fingerprint, counts), never the data itself. Its ``info``
is a typed model per stage (``CleanInfo``, ``ShardInfo``, ...), chosen by the result's ``stage``
name, so the same JSON read back from a manifest, a Prefect result or a task parameter comes back with
the same types. These are pydantic models: Prefect serialises them as JSON between tasks as they are,
and the field names are the manifest's ``info`` keys (what ``--json`` and ``cache ls`` show).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, model_validator


class Info(BaseModel):
    """The info of a stage output. The base class takes any fields (a test's ad-hoc stage, the
    champion pseudo-result); each pipeline stage has its own strict subclass below."""

    model_config = ConfigDict(extra="allow", frozen=True)

    # A build may name its output's content fingerprint itself, when its files carry incidental bytes
    # (a .keras zip records when it was saved): same content, same fingerprint. Not part of the info.
    content_fingerprint: str | None = Field(default=None, exclude=True, repr=False)


class _Strict(Info):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DownloadInfo(_Strict):
    records: int
    source: str


class SizeStats(_Strict):
    min: int
    median: float
    max: int


class SourceImages(_Strict):
    """What the source's image headers said, before any conversion."""

    modes: dict[str, int]
    size_counts: dict[str, int]  # "HxW" -> images: partitions can sum these
    height: SizeStats | None = None
    width: SizeStats | None = None


class TextStats(_Strict):
    """The kept records' text, when the source carries text: how many have none, how long it is (in
    characters and in tokens, ``imgflow.data.text.tokens``) and each class's most frequent tokens."""

    empty: int  # kept records without text (allowed: the model answers from the image)
    characters: SizeStats | None  # of the non-empty texts
    tokens: SizeStats | None
    top_tokens: dict[str, list[tuple[str, int]]]  # class -> [(token, records' occurrences)], most frequent first


class CleanInfo(_Strict):
    """A clean table's report (``report.json``); the merge stage's output has the same shape."""

    source: str
    records_in: int
    kept: int
    quarantined: int
    quarantine_reasons: dict[str, int]
    image_shape: list[int]
    class_names: list[str]
    splits: dict[str, int]
    per_class: dict[str, dict[str, int]]  # class -> split -> records
    source_images: SourceImages
    split_rule: dict[str, Any]
    data_fingerprint: str
    text: TextStats | None = None  # None: the records carry no text
    relabeled: int = 0  # records whose label [clean] labels corrected


class SplitShards(_Strict):
    files: list[str]
    records: int
    class_counts: list[int]


class ShardInfo(_Strict):
    image_shape: list[int]
    class_names: list[str]
    data_fingerprint: str
    splits: dict[str, SplitShards]
    text: bool = False  # examples carry a "text" feature
    excluded: dict[str, int] = {}  # records the audit left out, by kind ("suspected label error", "near-duplicate")


class Hardware(_Strict):
    strategy: str
    precision: str
    jit_compile: bool
    replicas: int
    workers: int
    augment_on_device: bool
    # The CPU time the process had (imgflow.runtime.cpus: cores, under a quota a fraction) and the threads its
    # pools got; None in outputs made before they were recorded.
    cpus: float | None = None
    cpu_threads: int | None = None


class TrainInfo(_Strict):
    epochs: int
    resumed_from_epoch: int
    train_records: int
    parameters: int
    final: dict[str, float]
    hardware: Hardware
    vocabulary: int | None = None  # with text: tokens in the vocabulary learned from the train split
    best_epoch: int | None = None  # with early stopping: the epoch whose weights were kept
    # With a time budget: the recipe's plan (what it chose, a line of why each), the seconds training was
    # given, and whether it ran out of them (stopped at ``steps`` of the planned steps).
    plan: list[str] | None = None
    deadline: float | None = None
    out_of_time: bool = False
    steps: int | None = None
    stopped: str | None = None  # why training ended: its planned steps done, out of time, or validation stopped improving
    # A race (imgflow.training.race): every candidate's rungs and validation figure, and the winner with why
    race: list[dict[str, Any]] | None = None
    winner: dict[str, Any] | None = None


class PairedCounts(_Strict):
    """The candidate against the champion on the same test records (``imgflow.registry.gate.paired``)."""

    p_worse: float  # McNemar's one-sided p-value that the candidate is worse
    p_better: float
    candidate_only: int  # records only the candidate gets right
    champion_only: int


class ValidateInfo(_Strict):
    accuracy: float
    test_records: int
    champion_accuracy: float | None
    champion: str  # what the champion was: "none", or which version was evaluated and how
    promote: bool
    reasons: list[str]
    # A model with text: test accuracy with "both" modalities, "image_only" (text blanked), "text_only"
    modalities: dict[str, float] | None = None
    paired: PairedCounts | None = None  # with a comparable champion
    # With [gate] slice_by: each slice's records, accuracy and the champion's accuracy (None: no champion)
    slices: dict[str, dict[str, Any]] | None = None


class DriftInfo(_Strict):
    """New data against the champion's (``imgflow.stages.drift``): whether anything was compared, whether
    it drifted and which checks did (``reasons``), how many records, and against which champion version."""

    compared: bool
    drifted: bool
    reasons: list[str]
    records: int
    reference: str | None
    note: str


class AuditInfo(_Strict):
    """What the audit found in a clean table (``imgflow.stages.audit``): how many suspected label errors,
    near-duplicate pairs (``cross_split``: those with one record in train and the other held out, or in
    val and test: leakage) and outliers, among how many records, from which embeddings; the top examples."""

    records: int
    embeddings: str
    label_issues: int
    near_duplicates: int
    cross_split: int
    outliers: int
    examples: dict[str, list[dict[str, Any]]]
    note: str


class Parity(_Strict):
    max_abs_diff: float
    tolerance: float
    batch: int
    same_top1: bool


class Int8(_Strict):
    exported: bool
    accuracy: float
    float_accuracy: float
    max_drop: float
    calibration_images: int
    bytes: int | None
    float_bytes: int
    # Weights in 7 bits, safe on CPUs without VNNI (imgflow.stages.export._quantize), and the CPU
    # instructions the accuracy check ran on; absent from models exported before they were recorded.
    reduce_range: bool = False
    checked_on: str | None = None


class ExportInfo(_Strict):
    opset: int
    parity: Parity
    int8: Int8 | None


# The info type of each stage's output, by stage name: how a stored or serialized result of that stage
# is read back. Fixed here, beside the types, so that reading a result imports nothing else; each
# ``imgflow.store.stage.Stage`` reads its own from this table (a test holds every pipeline stage in it).
INFO_TYPES: Mapping[str, type[Info]] = MappingProxyType(
    {
        "download": DownloadInfo,
        "clean": CleanInfo,
        "merge": CleanInfo,  # a merged table is a clean table
        "audit": AuditInfo,
        "drift": DriftInfo,
        "shard": ShardInfo,
        "train": TrainInfo,
        "validate": ValidateInfo,
        "export": ExportInfo,
    }
)


class StageResult(BaseModel):
    """Where a stage's output is and what it contains, never the data."""

    model_config = ConfigDict(frozen=True)

    stage: str
    key: str
    path: str
    fingerprint: str
    status: str  # "ran" or "cached"
    info: SerializeAsAny[Info] = Field(default_factory=Info)
    uri: str | None = None  # the output on an object-store root (``path`` is its local mirror)
    repaired: str | None = None  # a damaged output of this key was found, moved aside and rebuilt: what was wrong

    @model_validator(mode="before")
    @classmethod
    def _typed_info(cls, data: Any) -> Any:
        """Read ``info`` as its stage's type, whether it comes as a dict (JSON) or a model."""
        if isinstance(data, dict) and "info" in data:
            info_type = INFO_TYPES.get(data.get("stage", ""), Info)
            info = data["info"]
            if not isinstance(info, info_type):
                raw = info.model_dump() if isinstance(info, BaseModel) else info
                data = {**data, "info": info_type.model_validate(raw)}
        return data

    def file(self, name: str) -> Path:
        return Path(self.path) / name

    def with_status(self, status: str) -> StageResult:
        return self.model_copy(update={"status": status})


def clean_table(results: Mapping[str, StageResult]) -> StageResult | None:
    """The clean table a run trained on: the merged one when it merged date partitions."""
    return results.get("merge") or results.get("clean")


def shard_files(shards: StageResult, split: str) -> list[str]:
    """Absolute paths of one split's shard files (a ``shard`` result)."""
    assert isinstance(shards.info, ShardInfo), shards.stage
    return [str(Path(shards.path) / name) for name in shards.info.splits[split].files]
