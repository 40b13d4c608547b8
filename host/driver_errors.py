"""Exceptions of the host driver (:mod:`host.driver`).

All derive from :class:`host.errors.SpineError`, so the CLIs print their message and exit
non-zero.  Every message says what happened, where (port, command, region) and what to try.
"""

from __future__ import annotations

from .errors import SpineError

__all__ = ["DeviceError", "LinkError", "ModelMismatchError", "VerifyError"]


class LinkError(SpineError, OSError):
    """The serial link failed: the port cannot be opened, or a request got no valid answer
    after all retries (timeouts, corrupted frames)."""


class DeviceError(SpineError):
    """The device answered a request with an error status.

    Attributes
    ----------
    status : int
        The :class:`host.protocol.Status` code.
    command : int
        The :class:`host.protocol.Command` that was refused.
    """

    def __init__(self, message: str, status: int | None = None, command: int | None = None):
        super().__init__(message)
        self.status = status
        self.command = command


class ModelMismatchError(SpineError, ValueError):
    """A model does not fit the engine in the bitstream (PEs, field widths, formats, sizes or
    configuration hash differ)."""


class VerifyError(DeviceError):
    """The memory read back after a load differs from what was written."""
