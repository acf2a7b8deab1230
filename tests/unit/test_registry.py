import json
from pathlib import Path

import pytest

from imgflow import registry


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
    v1 = registry.register(root, "m", _files(tmp_path, "a"), _card("fa", 0.9), "# {version}")
    v2 = registry.register(root, "m", _files(tmp_path, "b"), _card("fb", 0.95), "# {version}")
    again = registry.register(root, "m", _files(tmp_path, "a"), _card("fa", 0.9), "# {version}")
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
    registry.register(root, "m", _files(tmp_path, "a"), _card("fa", 0.9), "")
    registry.register(root, "m", _files(tmp_path, "b"), _card("fb", 0.95), "")
    registry.set_champion(root, "m", "v1", "first")
    pointer = registry.set_champion(root, "m", "v2", "better")
    assert pointer["previous"] == "v1" and pointer["accuracy"] == 0.95
    assert registry.champion(root, "m")["version"] == "v2"
    result = registry.champion_result(root, "m")
    assert result.fingerprint == "fb" and result.path.endswith("v2")
    history = [json.loads(line) for line in (registry.model_dir(root, "m") / "history.jsonl").read_text().splitlines()]
    assert [(h["version"], h["reason"]) for h in history] == [("v1", "first"), ("v2", "better")]


def test_unknown_version_cannot_become_champion(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model m has no version v7"):
        registry.set_champion(tmp_path, "m", "v7", "")
