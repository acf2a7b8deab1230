"""imgflow.runtime.stopping: a requested stop reaches work that checks for it, once."""

import signal

import pytest

from imgflow.runtime import progress
from imgflow.runtime import stopping


@pytest.fixture(autouse=True)
def _clean() -> None:
    stopping.reset()
    yield
    stopping.reset()


def test_a_request_stops_work_that_reports_progress_and_says_what_a_rerun_resumes() -> None:
    progress.report(1, 10)  # nothing requested: nothing happens
    assert stopping.resume_hint() == "a rerun reuses every stage that finished"
    stopping.epoch_committed(3)
    assert stopping.request(signal.SIGTERM) and not stopping.request(signal.SIGINT)  # the first one counts
    assert stopping.requested() == signal.SIGTERM
    with pytest.raises(stopping.Stopped, match="stopped by SIGTERM"):
        progress.report(2, 10)
    assert "resumes training from the checkpoint of epoch 3" in stopping.resume_hint()
