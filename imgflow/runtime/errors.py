"""Errors a user can act on, and where an unexpected one came from.

A ``UserError`` means the input (a dataset, a flag, a file) is wrong, not that imgflow has a bug: the
CLI prints its message as one paragraph and exits non-zero without a traceback. Any other exception
out of a stage carries which stage and which inputs it was building from (``note_stage``), so the
CLI's last line of defence can say so in one paragraph and keep the traceback in a log file.
"""

from __future__ import annotations

import errno
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


# errno -> (what happened, what to do), for the faults of a machine rather than of imgflow or its input
_FAULTS = {
    errno.ENOSPC: (
        "the disk is full",
        "free space there (imgflow cache prune removes what no run or model uses) or point --artifacts at a bigger disk",
    ),
    errno.EDQUOT: ("the disk quota is used up", "free space there, raise the quota, or point --artifacts elsewhere"),
    errno.EROFS: ("the file system is read-only", "remount it read-write or point --artifacts at a writable folder"),
    errno.EACCES: ("permission was denied", "give this user write access there or point --artifacts elsewhere"),
    errno.EPERM: ("the operation was not permitted", "give this user write access there or point --artifacts elsewhere"),
    errno.EIO: ("the device reported an I/O error", "check the disk (dmesg), then rerun"),
    errno.ENODEV: ("the device is gone", "remount it, then rerun"),
    errno.ESTALE: ("the network mount went away", "remount it, then rerun"),
    errno.ENOTCONN: ("the mount is no longer connected", "remount it, then rerun"),
}
# The same faults as messages, for libraries (pyarrow, HDF5, TensorFlow) that raise them without an errno.
_FAULT_WORDS = {
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "Read-only file system": errno.EROFS,
    "Permission denied": errno.EACCES,
    "Stale file handle": errno.ESTALE,
    "Transport endpoint is not connected": errno.ENOTCONN,
}


def machine_fault(error: BaseException, root: str | None = None) -> str | None:
    """The one paragraph for an error (or one it was raised from) that is the machine's fault, a full
    disk or a read-only folder, naming the path (the error's, else the artifact ``root``); None for
    anything else."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "errno", None) if isinstance(current, OSError) else None
        text = str(current)
        if code not in _FAULTS:
            code = next((value for words, value in _FAULT_WORDS.items() if words in text), None)
        if code is not None:
            happened, remedy = _FAULTS[code]
            path = getattr(current, "filename", None) if isinstance(current, OSError) else None
            where = f" at {path}" if path else f" under {root}" if root else ""
            return (
                f"the machine stopped the run{where}: {happened} ({errno.errorcode[code]}: {text.strip().splitlines()[0]}). "
                f"This is not a fault of the data or of imgflow: {remedy}, then rerun; outputs are moved into place only "
                "when complete, so nothing was half-written and the stages that finished are reused."
            )
        current = current.__cause__ or current.__context__
    return None


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
