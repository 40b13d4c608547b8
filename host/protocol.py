"""The UART wire protocol between the host driver and a spine board: one definition.

The HDL command decoder imports the constants from here; the driver uses the functions.
docs/protocol.md describes the same thing for someone writing a client from scratch.

Request (host -> device)::

    0xA5 | cmd u8 | seq u8 | len u16 LE | payload (len bytes) | crc u16 LE

Response (device -> host)::

    0x5A | status u8 | seq u8 | len u16 LE | payload (len bytes) | crc u16 LE

``crc`` is CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF, no reflection, no
final XOR) over every byte after the sync byte and before the CRC.  ``seq`` is chosen by the
host and echoed, so pipelined requests and their answers can be matched.  ``len`` is at most
:data:`MAX_PAYLOAD`.  Every request gets exactly one response; a request whose header or CRC
is bad gets an error status and changes nothing.
"""

from __future__ import annotations

import binascii
import enum
import struct
from dataclasses import dataclass

__all__ = [
    "REQUEST_SYNC", "RESPONSE_SYNC", "MAX_PAYLOAD", "HEADER_BYTES", "FRAME_OVERHEAD",
    "Command", "Status", "crc16", "pack_request", "pack_response", "Frame",
    "ResponseParser", "ProtocolError", "FRAME_TIMEOUT_BYTES",
]

REQUEST_SYNC = 0xA5
RESPONSE_SYNC = 0x5A
MAX_PAYLOAD = 1024
"""Largest payload in bytes, both directions."""
HEADER_BYTES = 5
"""sync, cmd/status, seq, len (2)."""
FRAME_OVERHEAD = HEADER_BYTES + 2
FRAME_TIMEOUT_BYTES = 64
"""A frame stalled for this many byte times (at the link's baud rate) is dropped by the device
with status TIMEOUT, so a truncated frame never hangs the decoder."""


class Command(enum.IntEnum):
    """Request commands (u8)."""

    IDENTIFY = 0x01   #: payload empty; answer: the engine description (docs/protocol.md)
    WRITE = 0x02      #: region u8, index u8, address u32 LE, data: write words
    READ = 0x03       #: region u8, index u8, address u32 LE, count u16 LE: read words
    CHECKSUM = 0x04   #: region u8, index u8, address u32 LE, count u16 LE: CRC-16 of words
    INFER = 0x05      #: input activations (act words, LE): run all layers, answer outputs
    STATUS = 0x06     #: payload empty; answer: state and counters
    RESET = 0x07      #: payload empty; clears counters and the engine (not the memories)


class Status(enum.IntEnum):
    """Response status codes (u8)."""

    OK = 0x00
    BAD_CRC = 0x01          #: CRC mismatch; nothing done
    BAD_LENGTH = 0x02       #: len > MAX_PAYLOAD, or wrong for the command
    UNKNOWN_COMMAND = 0x03
    BAD_ADDRESS = 0x04      #: region/index/address/count outside the memory
    BUSY = 0x05             #: the engine is running
    TIMEOUT = 0x06          #: the frame stopped arriving mid-way; dropped
    NOT_LOADED = 0x07       #: INFER before a model was loaded


class ProtocolError(Exception):
    """A response that cannot be parsed (bad sync, length or CRC)."""


def crc16(data: bytes, value: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (``binascii.crc_hqx`` is exactly this CRC)."""
    return binascii.crc_hqx(bytes(data), value)


def _pack(sync: int, code: int, seq: int, payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds MAX_PAYLOAD = {MAX_PAYLOAD}")
    if not 0 <= seq <= 0xFF:
        raise ValueError(f"`seq` must be 0..255, not {seq}")
    body = struct.pack("<BBH", code, seq, len(payload)) + bytes(payload)
    return bytes([sync]) + body + struct.pack("<H", crc16(body))


def pack_request(command: int, seq: int, payload: bytes = b"") -> bytes:
    return _pack(REQUEST_SYNC, int(command), seq, payload)


def pack_response(status: int, seq: int, payload: bytes = b"") -> bytes:
    return _pack(RESPONSE_SYNC, int(status), seq, payload)


@dataclass(frozen=True)
class Frame:
    code: int
    seq: int
    payload: bytes


class ResponseParser:
    """Incremental parser of a device's response stream.

    Feed received bytes; complete frames come out of :meth:`frames`.  Bytes before a sync byte
    are counted in ``skipped`` and dropped; a frame with a bad CRC is counted in ``bad_crc``
    and skipped (resynchronising at the next sync byte after its first byte).
    """

    def __init__(self, sync: int = RESPONSE_SYNC):
        self.sync = sync
        self.buffer = bytearray()
        self.skipped = 0
        self.bad_crc = 0

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def frames(self):
        while True:
            start = self.buffer.find(bytes([self.sync]))
            if start < 0:
                self.skipped += len(self.buffer)
                self.buffer.clear()
                return
            if start:
                self.skipped += start
                del self.buffer[:start]
            if len(self.buffer) < HEADER_BYTES:
                return
            code, seq, length = struct.unpack_from("<BBH", self.buffer, 1)
            if length > MAX_PAYLOAD:
                self.skipped += 1
                del self.buffer[:1]
                continue
            total = HEADER_BYTES + length + 2
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[1:HEADER_BYTES + length])
            (crc,) = struct.unpack_from("<H", self.buffer, HEADER_BYTES + length)
            if crc != crc16(body):
                self.bad_crc += 1
                del self.buffer[:1]
                continue
            del self.buffer[:total]
            yield Frame(code, seq, body[4:])
