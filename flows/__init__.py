"""Prefect flows: wiring only. The logic lives in ``imgflow``, the task wrappers in ``tasks``."""
