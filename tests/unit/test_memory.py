import gc
import sys

import pytest

from imgflow.runtime import memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident memory from /proc")
def test_release_collects_only_after_a_build_that_grew_the_process() -> None:
    generations: list[int] = []

    def note(phase: str, info: dict) -> None:
        if phase == "start":
            generations.append(info["generation"])

    gc.callbacks.append(note)
    try:
        memory.release(grown_since=memory.resident())  # grew by nothing: nothing worth a full collection
        assert 2 not in generations
        memory.release(grown_since=memory.resident() - memory.WORTH)
        assert 2 in generations
    finally:
        gc.callbacks.remove(note)


def test_settling_pauses_the_collector_until_settle_freezes_what_exists() -> None:
    assert gc.isenabled()
    before = gc.get_freeze_count()
    try:
        with memory.settling():
            assert not gc.isenabled()  # the imports run without full collections
            made = [[] for _ in range(1000)]  # long-lived objects, as an import makes
            memory.settle()
            assert gc.isenabled()
            assert gc.get_freeze_count() >= before + len(made)  # out of every later collection's walk
        assert gc.isenabled()
        with memory.settling():  # a command that never settles (a cached run): collecting again after it
            pass
        assert gc.isenabled()
        gc.disable()
        with memory.settling():  # a collector off before stays off
            memory.settle()
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()  # the test process's objects back in reach, as they were
