"""The batch-prediction task: runs ``imgflow.serving.batch.predict`` and reports its progress."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import task

from imgflow.serving.batch import PredictConfig, predict
from tasks.progress import task_progress


@task(name="predict", task_run_name="predict")
def predict_images(
    input_spec: str, version_dir: str, output: str, config: PredictConfig, options: Mapping[str, Any], root: str | None = None
) -> dict[str, Any]:
    """Label every input image with the model in ``version_dir`` (pulled from the object-store root
    ``root``, if any); write ``output``. Not cached: the inputs of a prediction batch are new by
    nature, and its product is the output file."""
    with task_progress("predict"):
        return predict(input_spec, Path(version_dir), Path(output), config, options, root)
