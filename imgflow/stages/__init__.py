"""The pipeline's stages: download -> clean -> shard -> train -> validate -> export.

Each module defines one ``Stage`` (name, code version, build function) and documents the layout of its
output folder. Stage modules import TensorFlow only inside their build functions, so a run whose
stages are all cached never pays for importing it.
"""

from imgflow.errors import ConfigError

ORDER = ("download", "clean", "shard", "train", "validate", "export")


def refreshed(stage: str | None) -> frozenset[str]:
    """The stages ``--refresh STAGE`` forces to run again: that one and every stage after it."""
    if stage is None:
        return frozenset()
    if stage not in ORDER:
        raise ConfigError(f"cannot refresh unknown stage {stage!r}; stages: {', '.join(ORDER)}")
    return frozenset(ORDER[ORDER.index(stage) :])
