"""Exceptions raised by spine for bad input.

Every error a user can cause derives from :class:`SpineError`; its message says what went wrong,
where (file, layer, field) and how to fix it.  The CLIs print the message and exit non-zero
instead of showing a traceback.
"""

__all__ = ["SpineError", "ModelError", "PackageError", "FitError"]


class SpineError(Exception):
    """Base class of all errors caused by bad input to spine."""


class ModelError(SpineError, ValueError):
    """A model (NumPy ``.npz``, PyTorch module or checkpoint) that spine cannot use."""


class PackageError(SpineError, ValueError):
    """A ``.spn`` package file that is truncated, corrupted, of another version or foreign."""


class FitError(SpineError, ValueError):
    """A model or configuration that does not fit the engine or board it is meant for."""
