import json
from pathlib import Path

import pytest

from imgflow.registry import versions as registry
from imgflow.registry.promote import promote_version, rollback
from imgflow.runtime.errors import ConfigError
from imgflow.store.artifacts import ArtifactStore


def _files(tmp_path: Path, text: str) -> dict[str, Path]:
    model = tmp_path / f"export-{text}"
    (model / "savedmodel").mkdir(parents=True, exist_ok=True)
    (model / "savedmodel" / "saved_model.pb").write_text(text)
    (model / "model.onnx").write_text(text)
    return {"savedmodel": model / "savedmodel", "model.onnx": model / "model.onnx"}


def _card(fingerprint: str, accuracy: float) -> dict:
    return {"model_fingerprint": fingerprint, "metrics": {"accuracy": accuracy}}


def test_register_numbers_versions_and_never_duplicates(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    v1 = registry.register(root, "m", _files(tmp_path, "a"), _card("fa", 0.9), {"model_card.md": "# {version}"})
    v2 = registry.register(root, "m", _files(tmp_path, "b"), _card("fb", 0.95), {"model_card.md": "# {version}"})
    again = registry.register(root, "m", _files(tmp_path, "a"), _card("fa", 0.9), {"model_card.md": "# {version}"})
    assert (v1, v2, again) == ("v1", "v2", "v1")
    assert registry.versions(root, "m") == ["v1", "v2"]
    folder = registry.model_dir(root, "m") / "v2"
    assert (folder / "savedmodel" / "saved_model.pb").read_text() == "b"
    assert (folder / "model_card.md").read_text() == "# v2"
    assert registry.card(root, "m", "v2")["version"] == "v2"
    assert not list(registry.model_dir(root, "m").glob(".tmp-*"))


def test_champion_pointer_moves_and_history_records_it(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    assert registry.champion(root, "m") is None and registry.champion_result(root, "m") is None
    registry.register(root, "m", _files(tmp_path, "a"), _card("fa", 0.9), {})
    registry.register(root, "m", _files(tmp_path, "b"), _card("fb", 0.95), {})
    registry.set_champion(root, "m", "v1", "first")
    pointer = registry.set_champion(root, "m", "v2", "better")
    assert pointer["previous"] == "v1" and pointer["accuracy"] == 0.95
    assert registry.champion(root, "m")["version"] == "v2"
    result = registry.champion_result(root, "m")
    assert result.fingerprint == "fb" and result.path.endswith("v2")
    history = [json.loads(line) for line in (registry.model_dir(root, "m") / "history.jsonl").read_text().splitlines()]
    assert [(h["version"], h["reason"]) for h in history] == [("v1", "first"), ("v2", "better")]


def test_unknown_version_cannot_become_champion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model m has no version 'v7'"):
        registry.set_champion(tmp_path, "m", "v7", "")


def test_manual_promotion_and_rollback_move_the_pointer_and_say_who_and_why(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    for text, accuracy in (("a", 0.9), ("b", 0.95), ("c", 0.97)):
        registry.register(root, "m", _files(tmp_path, text), _card(f"f{text}", accuracy), {})
    with pytest.raises(ConfigError, match="no earlier champion to roll back to"):
        rollback(ArtifactStore(root), "m", "nothing yet")
    registry.set_champion(root, "m", "v2", "gate")
    registry.set_champion(root, "m", "v3", "gate")
    pointer = rollback(ArtifactStore(root), "m", "v3 mislabels sevens in production")
    assert (pointer["version"], pointer["previous"]) == ("v2", "v3")
    assert registry.champion(root, "m")["version"] == "v2"
    promote_version(ArtifactStore(root), "m", "v1", "compare with the oldest")
    moves = registry.history(root, "m")
    assert [(m["version"], m["previous"]) for m in moves] == [("v2", None), ("v3", "v2"), ("v2", "v3"), ("v1", "v2")]
    assert moves[2]["reason"] == "rollback from v3: v3 mislabels sevens in production"
    assert moves[3]["reason"] == "manual promotion: compare with the oldest"
    assert all(m["by"] for m in moves)
    with pytest.raises(ConfigError, match="has no version 'v9'"):
        promote_version(ArtifactStore(root), "m", "v9", "typo")
    assert registry.champion(root, "m")["version"] == "v1"


def test_model_names_resolve_to_the_only_one_or_must_be_given(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    with pytest.raises(ConfigError, match="no model under .*: train one first"):
        registry.resolve_name(root, None)
    registry.register(root, "m", _files(tmp_path, "a"), _card("fa", 0.9), {})
    assert registry.resolve_name(root, None) == "m"
    registry.register(root, "n", _files(tmp_path, "b"), _card("fb", 0.9), {})
    with pytest.raises(ConfigError, match=r"several models .* \(m, n\): say which with --name"):
        registry.resolve_name(root, None)
    with pytest.raises(ConfigError, match="no model named 'x'"):
        registry.resolve_name(root, "x")
