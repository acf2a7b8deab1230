"""Errors a user can act on.

A ``UserError`` means the input (a dataset, a flag, a file) is wrong, not that imgflow has a bug: the
CLI prints its message as one paragraph and exits non-zero without a traceback.
"""


class UserError(Exception):
    """Bad input from the user: the message names the path, column or name at fault."""


class SourceError(UserError):
    """A dataset source that does not exist, cannot be read, or holds no usable images."""


class ConfigError(UserError):
    """A configuration value or dataset spec that is invalid."""


class ExportMismatchError(RuntimeError):
    """The SavedModel and ONNX exports disagree beyond tolerance: the model must not be promoted."""
