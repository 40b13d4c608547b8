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
    """The memory read back after a load differs from what was written.

    Attributes
    ----------
    region, index : int or None
        The :class:`host.protocol.RegionId` and index (PE) of the block that differs.
    address : int or None
        Word address of the first differing word.
    got, expected : int or None
        That word as read (unsigned wire word) and as expected (None if the words read back
        right but their CRC did not).
    """

    def __init__(self, message: str, status: int | None = None, command: int | None = None,
                 *, region: int | None = None, index: int | None = None,
                 address: int | None = None, got: int | None = None,
                 expected: int | None = None):
        super().__init__(message, status, command)
        self.region = region
        self.index = index
        self.address = address
        self.got = got
        self.expected = expected
