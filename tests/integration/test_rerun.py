"""Changing one setting reruns exactly the stages downstream of it; --refresh forces a stage onwards.

Each test starts from the same first run of the same spec, which ran every stage: made once for the
session (``first_run``), each test gets its own copy of that artifact root."""

import shutil
from pathlib import Path

import pytest

from tests.conftest import built_once

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

STAGES = ("download", "clean", "shard", "train", "validate", "export")  # not drift and the audit: they follow the champion too
BASE = {
    "limit": 400,
    "clean": {"image_size": [8, 8], "channels": 1, "test_fraction": 0.2, "val_fraction": 0.1},
    "shard": {"records_per_shard": 100},
    "train": {"epochs": 1, "width": 4, "translate": 0.0, "rotate": 0.0, "zoom": 0.0},
    "gate": {"min_accuracy": 0.0, "tolerance": 1.0},  # every candidate passes: export always runs
    "export": {"opset": 17},
    "audit": {"near_duplicate": 0.006},
}


def _toml(settings: dict) -> str:
    lines = ['source = "sample:digits"', f"limit = {settings['limit']}"]
    for section in ("clean", "shard", "train", "gate", "export", "audit"):
        lines.append(f"[{section}]")
        lines += [f"{key} = {value!r}".replace("'", '"') for key, value in settings[section].items()]
    return "\n".join(lines) + "\n"


def _run(
    tmp_path: Path, change: tuple[str, str, object] | None = None, refresh: str | None = None, stages: tuple[str, ...] = STAGES
) -> dict[str, str]:
    from flows.train import train

    settings = {key: dict(value) if isinstance(value, dict) else value for key, value in BASE.items()}
    if change is not None:
        section, key, value = change
        if section == "download":
            settings[key] = value
        else:
            settings[section][key] = value
    spec = tmp_path / "digits_small.toml"
    spec.write_text(_toml(settings))
    summary = train(dataset=str(spec), artifacts=str(tmp_path / "artifacts"), refresh=refresh)
    return {stage: summary["stages"][stage]["status"] for stage in stages}


def _expect(ran: tuple[str, ...]) -> dict[str, str]:
    return {stage: "ran" if stage in ran else "cached" for stage in STAGES}


@pytest.fixture
def first_run(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """``tmp_path`` holding a copy of the spec's first run (every stage ran: checked once, as it was
    built); copied, not linked, since a test may damage a stored file. Returns ``tmp_path``."""

    def build(folder: Path) -> dict[str, str]:
        statuses = _run(folder)
        assert statuses == _expect(STAGES), statuses
        return statuses

    built, _ = built_once(tmp_path_factory, "rerun-first-run", build)
    shutil.copytree(built / "artifacts", tmp_path / "artifacts")
    return tmp_path


def test_each_config_group_reruns_exactly_its_downstream(first_run: Path) -> None:
    tmp_path = first_run
    assert _run(tmp_path) == _expect(())
    cases = [
        (("download", "limit", 420), STAGES),
        (("clean", "test_fraction", 0.25), STAGES[1:]),
        (("shard", "records_per_shard", 50), STAGES[2:]),
        (("train", "epochs", 2), STAGES[3:]),
        (("gate", "tolerance", 0.9), ("validate",)),
        (("export", "opset", 16), ("export",)),
    ]
    for change, ran in cases:
        assert _run(tmp_path, change) == _expect(ran), change
    # [audit] changes the audit alone: nothing it feeds is built again.
    assert _run(tmp_path, ("audit", "near_duplicate", 0.01), stages=(*STAGES, "audit")) == {**_expect(()), "audit": "ran"}


def test_refresh_forces_a_stage_and_everything_after_it(first_run: Path) -> None:
    tmp_path = first_run
    assert _run(tmp_path, refresh="shard") == _expect(STAGES[2:])
    assert _run(tmp_path, refresh="export") == _expect(("export",))
    assert _run(tmp_path) == _expect(())


def test_refresh_of_an_unknown_stage_is_refused(tmp_path: Path) -> None:
    from prefect.exceptions import ParameterTypeError

    from imgflow.runtime.errors import ConfigError
    from imgflow.pipeline import PIPELINE

    # The flow's parameter validation refuses it before anything runs; the library says the same.
    with pytest.raises(ParameterTypeError, match="refresh: Input should be 'download', 'clean'"):
        _run(tmp_path, refresh="evaluate")
    with pytest.raises(ConfigError, match="cannot refresh unknown stage 'evaluate'"):
        PIPELINE.refreshed("evaluate")


def test_a_damaged_upstream_output_is_rebuilt_on_reuse_and_the_summary_says_repaired(first_run: Path) -> None:
    """Bit rot in the clean table, then a rerun that reads it (``--refresh shard``): the clean stage is
    built again from its download, reported as repaired with the file named, and the damaged table is
    kept aside for a person to look at."""
    from flows.train import train

    tmp_path = first_run
    (tmp_path / "digits_small.toml").write_text(_toml(BASE))
    table = next((tmp_path / "artifacts" / "clean").glob("*/records.parquet"))
    data = bytearray(table.read_bytes())
    data[len(data) // 2] ^= 0xFF
    table.write_bytes(bytes(data))
    summary = train(dataset=str(tmp_path / "digits_small.toml"), artifacts=str(tmp_path / "artifacts"), refresh="shard")
    clean = summary["stages"]["clean"]
    assert clean["status"] == "ran" and "records.parquet: sha256" in clean["repaired"], clean
    assert summary["stages"]["download"]["status"] == "cached" and summary["decision"] == "promoted"
    assert list((tmp_path / "artifacts" / "clean" / ".corrupt").glob(f"{table.parent.name}-*/records.parquet"))
