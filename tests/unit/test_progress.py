"""Progress reports reach the listener of their own context, and nobody else."""

from __future__ import annotations

import threading

from imgflow.runtime import progress


def test_reports_reach_the_listener_only_inside_its_block() -> None:
    heard: list[tuple] = []
    progress.report(1, 2)  # nobody listening: nothing happens
    with progress.listening(lambda *args: heard.append(args)):
        progress.report(1, 10, "images")
        progress.report(10, 10, "images")
    progress.report(3, 3)
    assert heard == [(1, 10, "images"), (10, 10, "images")]


def test_another_thread_has_its_own_listener() -> None:
    heard: list[str] = []

    def work(name: str) -> None:
        with progress.listening(lambda done, total, unit: heard.append(name)):
            progress.report(1, 1)

    with progress.listening(lambda done, total, unit: heard.append("main")):
        thread = threading.Thread(target=work, args=("worker",))
        thread.start()
        thread.join()
        progress.report(1, 1)
    assert sorted(heard) == ["main", "worker"]
