"""The flows' wiring that needs no server: the task runner chosen by the environment."""

from __future__ import annotations

import pytest

from imgflow.runtime.errors import ConfigError


def test_task_runner_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.pipeline import task_runner

    monkeypatch.delenv("IMGFLOW_TASK_RUNNER", raising=False)
    assert isinstance(task_runner(), ThreadPoolTaskRunner)
    monkeypatch.setenv("IMGFLOW_TASK_RUNNER", "dask:tcp://127.0.0.1:8786")
    runner = task_runner()
    assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://127.0.0.1:8786"
    monkeypatch.setenv("IMGFLOW_TASK_RUNNER", "spark")
    with pytest.raises(ConfigError, match="expected threads"):
        task_runner()
