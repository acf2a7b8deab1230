"""Promotion: the candidate against the champion, registering a validated, exported model, and moving
the champion pointer (by the gate, or by hand)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgflow.data.partitions import PART
from imgflow.data.profile import PROFILE_FILE
from imgflow.registry import versions as registry
from imgflow.registry.model_report import report_html
from imgflow.results import CleanInfo, ExportInfo, ShardInfo, StageResult, ValidateInfo, clean_table
from imgflow.runtime.errors import ConfigError
from imgflow.serving.views import REFERENCE_FILE
from imgflow.store.artifacts import MANIFEST, ArtifactStore
from imgflow.store.fingerprint import code_fingerprint, to_jsonable


def model_card(name: str, config: Mapping[str, Any], results: Mapping[str, StageResult]) -> tuple[dict[str, Any], str]:
    """The card of a candidate: config, fingerprints, metrics, gate decision and lineage."""
    table = clean_table(results)
    assert table is not None
    clean = table.info
    validation, shards, export = (results[s].info for s in ("validate", "shard", "export"))
    assert isinstance(validation, ValidateInfo) and isinstance(clean, CleanInfo)
    assert isinstance(shards, ShardInfo) and isinstance(export, ExportInfo)
    lineage = {stage: {"key": result.key, "fingerprint": result.fingerprint, "path": result.path} for stage, result in results.items()}
    data = {
        "model_fingerprint": results["train"].fingerprint,
        "data_fingerprint": clean.data_fingerprint,
        "source": clean.source,
        "image_shape": shards.image_shape,
        "class_names": shards.class_names,
        "metrics": {
            "accuracy": validation.accuracy,
            "test_records": validation.test_records,
            "champion_accuracy": validation.champion_accuracy,
            "modalities": validation.modalities,
        },
        "decision": {"promote": validation.promote, "reasons": validation.reasons},
        "training": results["train"].info.model_dump(mode="json"),
        "parity": export.parity.model_dump(mode="json"),
        "export": {"opset": export.opset, "int8": export.int8.model_dump(mode="json") if export.int8 else None},
        "code_fingerprint": code_fingerprint(),
        "config": to_jsonable(config),
        "lineage": lineage,
        "learned_from": learned_from(table),
    }
    lines = [
        f"# Model card: {name} {{version}}",
        "",
        f"- source: `{data['source']}`",
        (
            f"- input: raw pixels (N, {', '.join(map(str, data['image_shape']))}) in 0..255: SavedModel "
            "`serving_default` (float32) or `serving_uint8` (uint8); ONNX input `pixels` (float32)"
        ),
        *(
            ["- and text: SavedModel input `text` (raw strings); ONNX input `tokens` (int32 ids of vocabulary.txt)"]
            if validation.modalities
            else []
        ),
        f"- classes: {', '.join(data['class_names'])}",
        f"- test accuracy: **{validation.accuracy:.4f}** on {validation.test_records} held-out records",
        *(
            [
                (
                    f"- test accuracy with the image only: {validation.modalities['image_only']:.4f}; with the text only: "
                    f"{validation.modalities['text_only']:.4f}"
                )
            ]
            if validation.modalities
            else []
        ),
        f"- gate: {'; '.join(validation.reasons)}",
        f"- SavedModel vs ONNX max abs difference: {data['parity']['max_abs_diff']:.2e}",
        f"- model fingerprint: `{data['model_fingerprint']}`",
        f"- data fingerprint: `{data['data_fingerprint']}`",
        "",
        "## Lineage",
        "",
        "| stage | key | output fingerprint |",
        "|---|---|---|",
        *[f"| {stage} | `{item['key']}` | `{item['fingerprint'][:16]}` |" for stage, item in lineage.items()],
        "",
        "## Config",
        "",
        "```json",
        json.dumps(data["config"], indent=2, sort_keys=True),
        "```",
        "",
    ]
    return data, "\n".join(lines)


def learned_from(table: StageResult) -> list[str]:
    """The fingerprints of the clean tables a model learned from: the one it trained on and, when that
    one merged date partitions, each partition's (the merge's inputs). A drift check of one of them
    against this model has nothing new to compare (``imgflow.stages.drift``)."""
    inputs = json.loads(Path(table.path, MANIFEST).read_text())["inputs"]
    parts = [fingerprint for name, fingerprint in inputs.items() if name.startswith(PART)] if table.stage == "merge" else []
    return sorted({table.fingerprint, *parts})


@dataclass(frozen=True)
class ChampionCheck:
    """How a candidate stands against the current champion: at most one of the two is set.

    ``recorded``: the candidate already is the champion, and the validation that promoted it still
    stands (same gate config, same test split): reuse it, evaluate nothing. ``rival``: the champion
    is another model; evaluate it on the same test split as the candidate. Neither: there is no
    champion yet, or the candidate is the champion but must be validated again (against no rival).
    """

    recorded: StageResult | None = None
    rival: StageResult | None = None


def versus_champion(store: ArtifactStore, name: str, gate: Any, model: StageResult, shards: StageResult) -> ChampionCheck:
    """The one place that decides champion against candidate (for the flows and ``imgflow plan``)."""
    champion = registry.champion(store.folder, name)
    if champion is None:
        return ChampionCheck()
    if champion["model_fingerprint"] != model.fingerprint:
        return ChampionCheck(rival=registry.champion_result(store.folder, name))
    recorded = registry.card(store.folder, name, champion["version"])["lineage"].get("validate")
    result = store.lookup("validate", recorded["key"]) if recorded else None
    if result is None:
        return ChampionCheck()
    manifest = json.loads(Path(result.path, MANIFEST).read_text())
    if manifest["config"] != to_jsonable(gate) or manifest["inputs"].get("shards") != shards.fingerprint:
        return ChampionCheck()
    return ChampionCheck(recorded=result)


def promote(store: ArtifactStore, name: str, config: Mapping[str, Any], results: Mapping[str, StageResult]) -> dict[str, Any]:
    """Register the candidate (once) and make it the champion; return the champion pointer."""
    card, card_md = model_card(name, config, results)
    table = clean_table(results)
    assert table is not None
    files = {
        "savedmodel": results["export"].file("savedmodel"),
        "model.onnx": results["export"].file("model.onnx"),
        "parity.json": results["export"].file("parity.json"),
        "metrics.json": results["validate"].file("metrics.json"),
        "confusion_matrix.png": results["validate"].file("confusion_matrix.png"),
        "validation.md": results["validate"].file("report.md"),
        "training_curves.png": results["train"].file("training_curves.png"),
        "history.json": results["train"].file("history.json"),
        "data_quality.md": table.file("report.md"),
        # What drift checks compare new data with: the data it learned from, and its view of held-out records.
        "data_profile.json": table.file(PROFILE_FILE),
        REFERENCE_FILE: results["export"].file(REFERENCE_FILE),
        "misclassified.parquet": results["validate"].file("misclassified.parquet"),
        "exemplars.parquet": results["validate"].file("exemplars.parquet"),
    }
    for optional in ("model.int8.onnx", "vocabulary.txt"):  # the int8 variant when it kept the accuracy; a text model's vocabulary
        if results["export"].file(optional).is_file():
            files[optional] = results["export"].file(optional)
    documents = {
        "model_card.md": card_md,
        "report.html": report_html({**card, "name": name}, Path(results["validate"].path), Path(results["train"].path)),
    }
    # One promotion at a time per model: two runs promoting the same candidate register it once.
    with store.models(name) as local:
        version = registry.register(local, name, files, card, documents)
        current = registry.champion(local, name)
        if current is not None and current["version"] == version:
            return current
        return registry.set_champion(local, name, version, reason="; ".join(card["decision"]["reasons"]))


def promote_version(store: ArtifactStore, name: str, version: str, reason: str) -> dict[str, Any]:
    """Make a registered ``version`` the champion by hand (recorded with who and why)."""
    with store.models(name) as local:
        return registry.set_champion(local, name, version, reason=f"manual promotion: {reason}")


def rollback(store: ArtifactStore, name: str, reason: str) -> dict[str, Any]:
    """Point the champion back at the version it replaced (recorded with who and why)."""
    with store.models(name) as local:
        current = registry.champion(local, name)
        if current is None or not current.get("previous"):
            raise ConfigError(f"model {name} has no earlier champion to roll back to")
        return registry.set_champion(local, name, current["previous"], reason=f"rollback from {current['version']}: {reason}")
