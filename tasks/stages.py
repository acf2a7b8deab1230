"""One Prefect task per pipeline stage, all made by ``stage_task``.

A task's cache key is the stage's own content key (stage, code version, config, input fingerprints)
plus the artifact root, and only while that output is complete in the artifact store: the store is
the truth, Prefect's (JSON) result cache only saves the round trip. Tasks pass StageResult dicts:
paths and fingerprints, never data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.states import State

from imgflow.config import DownloadConfig
from imgflow.errors import FetchError, UserError
from imgflow.fingerprint import stable_hash
from imgflow.promote import promote as promote_candidate
from imgflow.stages.clean import CLEAN
from imgflow.stages.download import DOWNLOAD, source_fingerprint
from imgflow.stages.export import EXPORT
from imgflow.stages.merge import MERGE
from imgflow.stages.shard import SHARD
from imgflow.stages.train import TRAIN
from imgflow.stages.validate import VALIDATE
from imgflow.store import ArtifactStore, Stage, StageResult

StageInputs = Mapping[str, "dict[str, Any] | str"]


def _inputs(raw: StageInputs) -> dict[str, StageResult | str]:
    return {name: StageResult.from_dict(v) if isinstance(v, Mapping) else v for name, v in raw.items()}


def worth_retrying(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry failures that may pass (a network error, a bug hit by a flaky resource), never bad data:
    a checksum or a missing column fails the same way every time."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, UserError) or isinstance(error, FetchError)


def stage_task(stage: Stage, *, retries: int = 0) -> Task:
    """A Prefect task running ``stage`` against the artifact store at ``root``."""

    def cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
        if parameters.get("force"):
            return None
        store = ArtifactStore(parameters["root"])
        key = stage.key(parameters["config"], _inputs(parameters["inputs"]))
        if store.lookup(stage.name, key) is None:
            return None  # not in the store (never built, or pruned): run, whatever Prefect remembers
        return f"imgflow-{stage.name}-{key}-{stable_hash(str(store.root))[:12]}"

    def run_stage(config: Any, inputs: StageInputs, root: str, force: bool = False) -> dict[str, Any]:
        result = stage.run(ArtifactStore(root), config, _inputs(inputs), force=force)
        get_run_logger().info("%s %s -> %s", stage.name, result.status, result.path)
        return result.to_dict()

    run_stage.__name__ = run_stage.__qualname__ = f"{stage.name}_stage"
    return task(
        run_stage,
        name=stage.name,
        cache_key_fn=cache_key,
        persist_result=True,
        result_serializer="json",
        retries=retries,
        retry_delay_seconds=[2, 10, 30][:retries],
        retry_condition_fn=worth_retrying,
    )


@task(name="fingerprint-source", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=worth_retrying)
def fingerprint_source(config: DownloadConfig) -> str:
    """The source's content fingerprint (may read a remote catalog: retried)."""
    return source_fingerprint(config)


# Only the download touches the network; retrying any other stage would redo the same failure.
download = stage_task(DOWNLOAD, retries=2)
clean = stage_task(CLEAN)
merge = stage_task(MERGE)
shard = stage_task(SHARD)
train = stage_task(TRAIN)
validate = stage_task(VALIDATE)
export = stage_task(EXPORT)


@task(name="promote")
def promote(root: str, name: str, config: Mapping[str, Any], results: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """Register the exported candidate and move the champion pointer to it."""
    pointer = promote_candidate(root, name, config, {stage: StageResult.from_dict(r) for stage, r in results.items()})
    get_run_logger().info("champion of %s is now %s (accuracy %.4f)", name, pointer["version"], pointer["accuracy"])
    return pointer
