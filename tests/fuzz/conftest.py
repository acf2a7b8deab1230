"""The fuzzing harness's budget and its count of inputs tried.

Every target is a Hypothesis test decorated with ``fuzz_target(examples)``. In ``make test`` (CI) each
runs ``examples`` inputs, derandomized: the same inputs every run, so CI never turns red on its own;
the whole suite stays well under a minute. ``make fuzz`` sets ``IMGFLOW_FUZZ_SECONDS``: each target
then draws fresh random inputs, round after round, until that many seconds have passed. Either way the
terminal summary says how many inputs each target tried. A crash found becomes a regular test.
"""

from __future__ import annotations

import functools
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

SECONDS = float(os.environ.get("IMGFLOW_FUZZ_SECONDS", "0"))
_TRIED: Counter[str] = Counter()


def fuzz_target(examples: int) -> Callable[[Any], Any]:
    """``examples`` derandomized inputs (CI), or random rounds for ``IMGFLOW_FUZZ_SECONDS`` (make fuzz)."""

    def wrap(test: Any) -> Any:
        inner = test.hypothesis.inner_test

        @functools.wraps(inner)
        def counted(*args: Any, **kwargs: Any) -> Any:
            _TRIED[test.__name__] += 1
            return inner(*args, **kwargs)

        test.hypothesis.inner_test = counted
        configured = settings(
            max_examples=examples,
            deadline=None,
            derandomize=not SECONDS,
            database=None,  # a crash is reported with its input, and becomes a regular test
            suppress_health_check=list(HealthCheck),
        )(test)

        @functools.wraps(test)
        def run(*args: Any, **kwargs: Any) -> None:
            stop = time.monotonic() + SECONDS
            configured(*args, **kwargs)
            while time.monotonic() < stop:
                configured(*args, **kwargs)

        return run

    return wrap


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[Any]:
    report = yield
    if call.when == "call" and getattr(item, "originalname", item.name) in _TRIED:
        report.user_properties.append(("fuzz_inputs", _TRIED.pop(getattr(item, "originalname", item.name))))
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    rows = [
        (report.nodeid, dict(report.user_properties)["fuzz_inputs"])
        for outcome in ("passed", "failed")
        for report in terminalreporter.stats.get(outcome, [])
        if "fuzz_inputs" in dict(getattr(report, "user_properties", []))
    ]
    if rows:
        terminalreporter.write_sep("-", f"fuzz inputs tried ({'random, ' + str(SECONDS) + ' s a target' if SECONDS else 'derandomized'})")
        for nodeid, count in sorted(rows):
            terminalreporter.write_line(f"{count:>9,}  {nodeid}")
