"""What a run found in its data, as the run summary reports it (``imgflow.pipeline.summary``): each
drift check (``imgflow.stages.drift``) and each audit (``imgflow.stages.audit``), by partition date
("all": a whole-source run)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from imgflow.results import AuditInfo, DriftInfo, ShardInfo, StageResult


class Part(BaseModel):
    """A part of the run summary: frozen, and no field it does not declare."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class DriftEntry(Part):
    """One partition's (or the whole data's) drift check: compared with which champion, whether it
    drifted and why, and where its report is."""

    compared: bool
    drifted: bool
    reference: str | None
    reasons: list[str]
    report: str


class Drift(Part):
    """Every drift check of the run, by partition date ("all": a whole-source run); ``flagged`` names
    the ones that drifted."""

    flagged: list[str]
    checks: dict[str, DriftEntry]


class AuditEntry(AuditInfo):
    """One partition's (or the whole data's) audit: its info (counts, embeddings, top findings) and
    where its report is."""

    report: str


class Audit(Part):
    """What the run's audits found (``imgflow.stages.audit``), in all and by partition date ("all": a
    whole-source run): suspected label errors, near-duplicate pairs, those across splits, outliers."""

    label_issues: int
    near_duplicates: int
    cross_split: int
    outliers: int
    checks: dict[str, AuditEntry]
    # The records [audit] action = "exclude" left out of every split, by kind (the shard stage's count)
    excluded: dict[str, int] = {}


def drift_section(drifts: Mapping[str, StageResult]) -> Drift:
    """The summary's ``drift``: each drift result (by partition date) and the ones that drifted."""
    checks = {}
    for where, result in drifts.items():
        info = result.info
        assert isinstance(info, DriftInfo), result.stage
        report = str(result.file("report.html"))
        checks[where] = DriftEntry(
            compared=info.compared, drifted=info.drifted, reference=info.reference, reasons=info.reasons, report=report
        )
    return Drift(flagged=[where for where, entry in checks.items() if entry.drifted], checks=checks)


def audit_section(audits: Mapping[str, StageResult], shards: StageResult | None) -> Audit:
    """The summary's ``audit``: each audit result (by partition date), the counts over all of them, and
    what the ``shards`` left out of training and test."""
    checks = {}
    for where, result in audits.items():
        info = result.info
        assert isinstance(info, AuditInfo), result.stage
        checks[where] = AuditEntry(**info.model_dump(), report=str(result.file("report.html")))
    totals = {
        name: sum(getattr(entry, name) for entry in checks.values())
        for name in ("label_issues", "near_duplicates", "cross_split", "outliers")
    }
    excluded = shards.info.excluded if shards is not None and isinstance(shards.info, ShardInfo) else {}
    return Audit(**totals, checks=checks, excluded=excluded)


def audit_line(audit: Mapping[str, Any]) -> str:
    """The audit's counts in one line."""
    left = ", ".join(f"{count} {kind}s" for kind, count in sorted(audit.get("excluded", {}).items()))
    return (
        f"audit: {audit['label_issues']} suspected label errors, {audit['near_duplicates']} near-duplicate pairs "
        f"({audit['cross_split']} across splits), {audit['outliers']} outliers"
        + (f"; left out of training and test: {left}" if left else "")
    )
