"""The one error taxonomy of antiphon.

`InputError` is the caller's fault (bad shape, bad file, bad message) and never fatal to anyone else.
`CheckpointError` names what is wrong with a checkpoint or its config.
"""


class AntiphonError(Exception):
    """Base class of every error antiphon raises on purpose."""


class InputError(AntiphonError, ValueError):
    """Bad input from a caller: wrong shape, rank, range, sample rate or format."""


class CheckpointError(AntiphonError):
    """A checkpoint or its config cannot be used: missing file, unreadable, wrong keys or shapes."""
