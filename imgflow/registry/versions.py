"""The model registry: numbered versions of each model and an atomically moved champion pointer.

Layout under ``<artifacts>/models/<name>/``::

    champion.json        {"version", "model_fingerprint", "accuracy", "promoted_at", ...}; replaced
                         atomically, so a reader sees the old champion or the new one, never neither
    history.jsonl        one line per pointer move: version, previous version, when, who, why
    v<N>/                one registered model version
        savedmodel/      the TensorFlow SavedModel (serving_default takes raw pixels)
        model.onnx       the ONNX model
        card.json        config, data and model fingerprints, metrics, gate decision, lineage
        model_card.md    the same for a person
        report.html      the model report: one self-contained page (imgflow.registry.model_report)
        model.int8.onnx  the int8-quantized ONNX model, when it kept the accuracy
        vocabulary.txt   a model with text: the vocabulary its ONNX models' token ids index
        exemplars.parquet  the surest right test answers per class, with Grad-CAM heatmaps
        ...              the run's plots, metrics and hardest mistakes

A version folder is assembled in a temporary folder and renamed into place complete; a model already
registered (same model fingerprint) is never registered twice.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imgflow.results import Info, StageResult
from imgflow.runtime.errors import ConfigError, DamagedError
from imgflow.store.files import file_table, write_json_atomic
from imgflow.store.integrity import damage, record_verified

CARD = "card.json"
_VERSION = re.compile(r"^v(\d+)$")


def model_dir(root: str | Path, name: str) -> Path:
    return Path(root) / "models" / name


def versions(root: str | Path, name: str) -> list[str]:
    folder = model_dir(root, name)
    if not folder.is_dir():
        return []
    found = [p.name for p in folder.iterdir() if p.is_dir() and _VERSION.match(p.name)]
    return sorted(found, key=lambda v: int(v[1:]))


def card(root: str | Path, name: str, version: str) -> dict[str, Any]:
    return json.loads((model_dir(root, name) / version / "card.json").read_text())


def champion(root: str | Path, name: str) -> dict[str, Any] | None:
    """The champion pointer of model ``name``, or None before the first promotion."""
    pointer = model_dir(root, name) / "champion.json"
    if not pointer.is_file():
        return None
    data = json.loads(pointer.read_text())
    return {**data, "path": str(model_dir(root, name) / data["version"])}


def model_names(root: str | Path) -> list[str]:
    folder = Path(root) / "models"
    return sorted(p.name for p in folder.glob("*") if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else []


def resolve_name(root: str | Path, name: str | None) -> str:
    """``name``, checked; without one, the only registered model (a clear error when there are several)."""
    names = model_names(root)
    if name is not None:
        if name not in names:
            raise ConfigError(f"no model named {name!r} under {Path(root) / 'models'}; models: {', '.join(names) or 'none'}")
        return name
    if len(names) != 1:
        raise ConfigError(
            f"{'several models' if names else 'no model'} under {Path(root) / 'models'}"
            + (f" ({', '.join(names)}): say which with --name" if names else ": train one first (imgflow run)")
        )
    return names[0]


def history(root: str | Path, name: str) -> list[dict[str, Any]]:
    """Every champion pointer move of model ``name``, oldest first."""
    path = model_dir(root, name) / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def champion_result(root: str | Path, name: str) -> StageResult | None:
    """The champion as an input to the validate and drift stages: its folder, its model fingerprint and
    the clean tables it learned from."""
    pointer = champion(root, name)
    if pointer is None:
        return None
    verified(root, name, pointer["version"])
    return StageResult(
        stage="champion",
        key=pointer["version"],
        path=pointer["path"],
        fingerprint=pointer["model_fingerprint"],
        status="cached",
        info=Info.model_validate(
            {"accuracy": pointer.get("accuracy"), "learned_from": card(root, name, pointer["version"]).get("learned_from", [])}
        ),
    )


def find_version(root: str | Path, name: str, model_fingerprint: str) -> str | None:
    for version in versions(root, name):
        if card(root, name, version).get("model_fingerprint") == model_fingerprint:
            return version
    return None


def register(root: str | Path, name: str, files: Mapping[str, Path], card_data: Mapping[str, Any], documents: Mapping[str, str]) -> str:
    """Copy ``files`` (name in the version folder -> source path) into a new version and write
    ``documents`` (name -> text, with ``{version}`` replaced by the new version); return its name.

    ``card_data["model_fingerprint"]`` identifies the model: registering it again returns the existing
    version.
    """
    existing = find_version(root, name, card_data["model_fingerprint"])
    if existing is not None:
        return existing
    folder = model_dir(root, name)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for target, source in files.items():
            if Path(source).is_dir():
                shutil.copytree(source, tmp / target)
            else:
                shutil.copy2(source, tmp / target)
        while True:
            taken = versions(root, name)
            version = f"v{int(taken[-1][1:]) + 1 if taken else 1}"
            for document, text in documents.items():
                (tmp / document).write_text(text.replace("{version}", version))
            # Every file's hash, in the card: what predict, promote, rollback and the gate check before loading.
            table = file_table(tmp, skip=CARD)
            write_json_atomic(tmp / CARD, {**card_data, "name": name, "version": version, "files": table})
            try:
                os.rename(tmp, folder / version)
                record_verified(folder / version, list(table))  # hashed as they were copied in
                return version
            except OSError:
                if not (folder / version).exists():
                    raise
                # Another run took this number first: take the next one.
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def verified(root: str | Path, name: str, version: str, *, rehash: bool = False) -> Path:
    """The folder of model ``name``'s ``version``, once every file in it matches the hash its card
    recorded at registration (``imgflow.store.integrity``; unchanged files verified before are not hashed
    again unless ``rehash``). A file that differs is refused with ``DamagedError``, naming it and the
    version: a model that is not the one registered is never loaded."""
    folder = model_dir(root, name) / version
    if not (folder / CARD).is_file():
        raise ConfigError(f"model {name} has no version {version!r}; versions: {', '.join(versions(root, name)) or 'none'}")
    files = card(root, name, version).get("files")
    if files is None:
        return folder  # registered before cards held hashes: nothing to check against
    problems = damage(folder, files, rehash=rehash)
    if problems:
        raise DamagedError(
            f"model {name} {version} in {folder} is not the model that was registered: {'; '.join(problems)}. It is refused; "
            f"restore the folder from a backup, or promote another version (imgflow models promote VERSION --reason ...)"
        )
    return folder


def set_champion(root: str | Path, name: str, version: str, reason: str) -> dict[str, Any]:
    """Point the champion at ``version`` (atomically, once its files are verified) and record the move
    in history.jsonl."""
    folder = model_dir(root, name)
    verified(root, name, version)
    data = card(root, name, version)
    previous = champion(root, name)
    pointer = {
        "name": name,
        "version": version,
        "model_fingerprint": data["model_fingerprint"],
        "accuracy": data["metrics"]["accuracy"],
        "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "previous": previous["version"] if previous else None,
        "by": getpass.getuser(),
        "reason": reason,
    }
    write_json_atomic(folder / "champion.json", pointer)
    with open(folder / "history.jsonl", "a") as history:
        history.write(json.dumps(pointer, sort_keys=True) + "\n")
    return {**pointer, "path": str(folder / version)}
