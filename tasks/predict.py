"""The batch-prediction task: runs ``imgflow.predict.predict`` and logs its progress."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from imgflow.predict import PredictConfig, predict


@task(name="predict")
def predict_images(input_spec: str, version_dir: str, output: str, config: PredictConfig) -> dict[str, Any]:
    """Label every input image with the model in ``version_dir``; write ``output``. Not cached: the
    inputs of a prediction batch are new by nature, and its product is the output file."""
    logger = get_run_logger()
    last = [0.0]

    def progress(done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] >= 2 or done == total:
            last[0] = now
            logger.info("predicted %d%s images", done, f"/{total}" if total else "")

    return predict(input_spec, Path(version_dir), Path(output), config, progress=progress)
