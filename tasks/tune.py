"""The tuner's Prefect task: one trial, the train stage with the trial's settings, judged per epoch by
the study's pruner (``imgflow.training.search``). Its training output is the train stage's, keyed like any other:
a trial repeated, or asked again after a kill, reuses or resumes it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from imgflow.config import TrainConfig
from imgflow.results import StageResult
from imgflow.runtime import progress
from imgflow.stages.train import TRAIN
from imgflow.training.search import Pruned, open_study, pruning_listener, report_history, score, trial_config
from tasks.progress import task_progress
from tasks.store import store_at


@task(name="trial", task_run_name="trial {number}")
def tune_trial(
    study_folder: str,
    study: str,
    seed: int,
    trial_id: int,
    number: int,
    params: Mapping[str, Any],
    base: TrainConfig,
    shards: StageResult,
    root: str,
) -> dict[str, Any]:
    """Train with ``params`` over ``base``; return ``{"state": "complete", "value", "train", "status"}``
    or ``{"state": "pruned", "detail"}``. The study is reopened from its journal (a task may run in
    another process)."""
    import optuna

    trial = optuna.trial.Trial(open_study(Path(study_folder), study, seed, base.epochs), trial_id)
    logger = get_run_logger()
    try:
        with task_progress("train"), progress.watching_epochs(pruning_listener(trial)):
            result = TRAIN.run(store_at(root), trial_config(base, params), {"shards": shards})
    except Pruned as why:
        logger.info("%s", why)
        return {"state": "pruned", "detail": str(why)}
    if result.status == "cached":
        report_history(trial, result)
    value = score(result)
    logger.info("trial %d: validation accuracy %.4f (train %s %s)", number, value, result.status, result.key)
    return {"state": "complete", "value": value, "train": result.key, "status": result.status}
