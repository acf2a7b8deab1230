import gc
import sys

import pytest

from imgflow import memory


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
