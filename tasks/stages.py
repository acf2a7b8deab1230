"""One Prefect task per pipeline stage, all made from the declared pipeline by ``stage_task``.

A task's cache key is the stage's own content key (stage, code version, config, input fingerprints)
plus the artifact root, and only while that output is complete in the artifact store: the store is
the truth, Prefect's (JSON) result cache only saves the round trip. Tasks take and return typed
``StageResult``s: paths and fingerprints, never data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.states import State

from imgflow.config import DownloadConfig
from imgflow.data.sources import source_fingerprint
from imgflow.pipeline import Step
from imgflow.registry.promote import promote as promote_candidate
from imgflow.results import StageResult
from imgflow.runtime.errors import UserError
from imgflow.store.artifacts import ArtifactStore
from imgflow.store.fingerprint import stable_hash
from tasks.progress import task_progress
from tasks.store import store_at

StageInputs = Mapping[str, "StageResult | str"]


def worth_retrying(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry failures that may pass (a bug hit by a flaky resource), never a user error: bad data (a
    checksum, a missing column) fails the same way every time, and a source that could not be reached
    has had its retries, within its time budget, inside the fetch (``imgflow.runtime.network``)."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, UserError)


def stage_task(step: Step) -> Task:
    """A Prefect task running ``step``'s stage against the artifact store at ``root``."""
    stage = step.stage

    def stored(parameters: dict[str, Any]) -> str | None:
        """The output's key when it is complete in the store and not forced (it will be reused), else None."""
        if parameters.get("force"):
            return None
        key = stage.key(parameters["config"], parameters["inputs"])
        return key if store_at(parameters["root"]).lookup(stage.name, key, fetch=False) is not None else None

    def cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
        key = stored(parameters)
        if key is None:
            return None  # not in the store (never built, or pruned): run, whatever Prefect remembers
        return f"imgflow-{stage.name}-{key}-{stable_hash(store_at(parameters['root']).uri)[:12]}"

    def run_name(parameters: dict[str, Any]) -> str:
        """What the UI lists the task run as: the stage, and whether its output is reused."""
        return f"{stage.name} (reused)" if stored(parameters) else stage.name

    def run_stage(config: Any, inputs: StageInputs, root: str, force: bool = False) -> StageResult:
        with task_progress(stage.name):
            result = stage.run(store_at(root), config, inputs, force=force)
        get_run_logger().info("%s %s -> %s", stage.name, result.status, result.path)
        return result

    run_stage.__name__ = run_stage.__qualname__ = f"{stage.name}_stage"
    return task(
        name=stage.name,
        task_run_name=run_name,  # type: ignore[arg-type]  # Prefect's protocol for it has a classmethod no function has
        cache_key_fn=cache_key,
        persist_result=True,
        result_serializer="json",
        retries=step.retries,
        retry_delay_seconds=[2.0, 10.0, 30.0][: step.retries],
        retry_condition_fn=worth_retrying,
    )(run_stage)


@task(
    name="fingerprint-source", task_run_name="fingerprint-source", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=worth_retrying
)
def fingerprint_source(config: DownloadConfig) -> str:
    """The source's content fingerprint (may read a remote catalog: retried)."""
    return source_fingerprint(config.source, config.options)


_TASKS: dict[str, tuple[Step, Task]] = {}


def task_of(step: Step) -> Task:
    """The task of ``step``, made once per step: from whatever the pipeline declares when a run walks it."""
    made = _TASKS.get(step.name)
    if made is None or made[0] is not step:
        made = _TASKS[step.name] = (step, stage_task(step))
    return made[1]


@task(name="promote", task_run_name="promote")
def promote_task(root: str, name: str, config: Mapping[str, Any], results: Mapping[str, StageResult]) -> dict[str, Any]:
    """Register the exported candidate and move the champion pointer to it."""
    pointer = promote_candidate(store_at(root), name, config, results)
    get_run_logger().info("champion of %s is now %s (accuracy %.4f)", name, pointer["version"], pointer["accuracy"])
    return pointer


def promote(store: ArtifactStore, name: str, config: Mapping[str, Any], results: Mapping[str, StageResult]) -> dict[str, Any]:
    """The promotion of a run's conclusion (``imgflow.pipeline.conclude``) as a Prefect task."""
    return promote_task(store.uri, name, config, results)
