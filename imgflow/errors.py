"""Errors a user can act on, and where an unexpected one came from.

A ``UserError`` means the input (a dataset, a flag, a file) is wrong, not that imgflow has a bug: the
CLI prints its message as one paragraph and exits non-zero without a traceback. Any other exception
out of a stage carries which stage and which inputs it was building from (``note_stage``), so the
CLI's last line of defence can say so in one paragraph and keep the traceback in a log file.
"""

from __future__ import annotations

from collections.abc import Mapping


class UserError(Exception):
    """Bad input from the user: the message names the path, column or name at fault."""


class SourceError(UserError):
    """A dataset source that does not exist, cannot be read, or holds no usable images."""


class ConfigError(UserError):
    """A configuration value or dataset spec that is invalid."""


class DamagedError(UserError):
    """Stored content that no longer matches the hashes recorded when it was made: refused, never used."""


class MachineError(UserError):
    """The machine or its environment is at fault, not the input and not imgflow: a server that a slow
    or CPU-limited machine could not start in time, a full disk, a read-only folder. The message says
    what happened and what to do."""


class ExportMismatchError(RuntimeError):
    """The SavedModel and ONNX exports disagree beyond tolerance: the model must not be promoted."""


def note_stage(error: BaseException, stage: str, inputs: Mapping[str, str]) -> None:
    """Record on ``error`` the stage it came out of and that stage's inputs (name -> path or
    fingerprint); the innermost stage wins. The note also shows in the traceback."""
    if getattr(error, "imgflow_stage", None) is None:
        error.imgflow_stage = stage  # type: ignore[attr-defined]
        error.imgflow_inputs = dict(inputs)  # type: ignore[attr-defined]
        error.add_note(f"(raised in imgflow stage {stage}; inputs: {described_inputs(inputs)})")


def described_inputs(inputs: Mapping[str, str]) -> str:
    return ", ".join(f"{name} = {value}" for name, value in inputs.items()) or "none"
