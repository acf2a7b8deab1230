"""Typed stage results: each stage's info comes back as its own type from JSON, wherever it was read."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from imgflow.results import INFO_TYPES, CleanInfo, DownloadInfo, Info, ShardInfo, StageResult, shard_files

SHARD_INFO = {
    "image_shape": [8, 8, 1],
    "class_names": ["a", "b"],
    "data_fingerprint": "d",
    "splits": {"train": {"files": ["train-00000-of-00001.tfrecord"], "records": 3, "class_counts": [2, 1]}},
}


def test_info_is_read_as_its_stages_type_from_json_and_back() -> None:
    result = StageResult(stage="shard", key="k", path="/out", fingerprint="f", status="ran", info=SHARD_INFO)
    assert isinstance(result.info, ShardInfo) and result.info.splits["train"].records == 3
    again = StageResult.model_validate_json(result.model_dump_json())
    assert again == result and isinstance(again.info, ShardInfo)
    assert shard_files(again, "train") == ["/out/train-00000-of-00001.tfrecord"]
    assert result.with_status("cached").status == "cached" and result.status == "ran"


def test_a_stage_info_refuses_unknown_or_missing_fields() -> None:
    with pytest.raises(ValidationError, match="records"):
        StageResult(stage="download", key="k", path="/p", fingerprint="f", status="ran", info={"source": "x"})
    with pytest.raises(ValidationError, match="surprise"):
        DownloadInfo(records=1, source="x", surprise=True)


def test_the_content_fingerprint_names_the_output_but_is_not_part_of_the_info() -> None:
    info = DownloadInfo(records=1, source="x", content_fingerprint="abc")
    assert info.content_fingerprint == "abc" and "content_fingerprint" not in info.model_dump()


def test_other_stages_keep_any_info_and_every_pipeline_stage_has_a_type() -> None:
    ad_hoc = StageResult(stage="champion", key="v1", path="/p", fingerprint="f", status="cached", info={"accuracy": 0.9})
    assert type(ad_hoc.info) is Info and ad_hoc.info.accuracy == 0.9
    from imgflow.pipeline import PIPELINE

    # Every stage's info type is in the fixed table; its Stage reads it from there.
    assert all(INFO_TYPES[step.name] is step.stage.info is not Info for step in PIPELINE.steps)
    assert INFO_TYPES["merge"] is CleanInfo


def test_reading_a_result_back_imports_only_the_results_module() -> None:
    """No registry filled by importing the stages: a result read from JSON is typed at once."""
    info = {"image_shape": [8, 8, 1], "class_names": ["a"], "data_fingerprint": "d", "splits": {}}
    stored = json.dumps({"stage": "shard", "key": "k", "path": "/p", "fingerprint": "f", "status": "ran", "info": info})
    code = (
        "import sys\n"
        "from imgflow.results import ShardInfo, StageResult\n"
        "assert type(StageResult.model_validate_json(sys.argv[1]).info) is ShardInfo\n"
        "print(sorted(m for m in sys.modules if m.startswith('imgflow')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, stored], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "['imgflow', 'imgflow.results']"
