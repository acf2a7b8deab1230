"""Fixtures of the integration tests (the shared ones are in tests/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import seed_prefect_home


@pytest.fixture(autouse=True)
def _migrated_prefect_home(request: pytest.FixtureRequest) -> None:
    """The slow tests start ``imgflow`` processes, whose temporary Prefect server uses the test
    process's ``PREFECT_HOME``: its database comes migrated (``prefect_database``). The fast ones
    start no server, and do not wait for the migration."""
    if request.node.get_closest_marker("slow"):
        seed_prefect_home(request.getfixturevalue("prefect_database"), Path(os.environ["PREFECT_HOME"]))
