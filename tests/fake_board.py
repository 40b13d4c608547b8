"""TEST FIXTURE (not shipped): an in-process fake spine board speaking host/protocol.py.

:class:`FakeBoard` is a pyserial-like transport (``write``/``read``/``timeout``/``close``) for
:class:`host.driver.Accelerator` that answers requests in Python: memory regions as in its
IDENTIFY region table (DESCRIPTOR reads as the engines' registers do,
:func:`host.memory_map.descriptor_readback`), CHECKSUM over the stored words, INFER computed by
the golden model of
the model the test gives it.  Fault injection (corrupted requests, lost or corrupted answers,
garbage, silence, duplicate answers) tests the driver's retries.  It checks nothing about the
real gateware: the end-to-end test (tests/hw/test_end_to_end.py) runs the real RTL.
"""

from __future__ import annotations

import struct
import time

import numpy as np

from host.golden import GoldenModel
from host.memory_map import descriptor_readback
from host.protocol import (
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    REQUEST_SYNC,
    Command,
    Control,
    DeviceStatus,
    EngineKind,
    Identity,
    RegionDescription,
    RegionId,
    ResponseParser,
    Status,
    crc16,
    engine_config_digest,
    engine_extension,
    pack_identity,
    pack_response,
    pack_status,
)

_ADDR = struct.Struct("<BBI")

WORD_BYTES = {RegionId.ENTRY: 1, RegionId.POINTER: 2, RegionId.CODEBOOK: 2, RegionId.BIAS: 4,
              RegionId.DESCRIPTOR: 4, RegionId.INPUT: 2, RegionId.OUTPUT: 2,
              RegionId.CONTROL: 4}


def make_identity(n_pe=2, *, index_bits=4, run_bits=4, act_width=16, act_frac=10,
                  weight_width=16, acc_bits=32, max_layers=4, max_rows=64, max_cols=64,
                  max_entries_per_pe=1024, engine=EngineKind.SPMV,
                  product_shift=0) -> Identity:
    max_pointers = max_layers * (max_cols + 1)
    max_bias = max_layers * max_rows
    params = {"engine": int(engine), "n_pe": n_pe, "index_bits": index_bits,
              "run_bits": run_bits, "act_width": act_width, "act_frac": act_frac,
              "weight_width": weight_width, "acc_bits": acc_bits, "max_layers": max_layers,
              "max_rows": max_rows, "max_cols": max_cols,
              "max_entries_per_pe": max_entries_per_pe, "max_pointers": max_pointers,
              "max_bias": max_bias}
    if product_shift:
        params["product_shift"] = product_shift
    regions = (
        RegionDescription(RegionId.ENTRY, 1, n_pe, max_entries_per_pe),
        RegionDescription(RegionId.POINTER, 2, n_pe, max_pointers),
        RegionDescription(RegionId.CODEBOOK, 2, 1, max_layers << index_bits),
        RegionDescription(RegionId.BIAS, 4, 1, max_bias),
        RegionDescription(RegionId.DESCRIPTOR, 4, 1, max_layers * 8),
        RegionDescription(RegionId.INPUT, 2, 1, max_cols, readable=False),
        RegionDescription(RegionId.OUTPUT, 2, 1, max_rows, writable=False),
        RegionDescription(RegionId.CONTROL, 4, 1, 4),
    )
    return Identity(PROTOCOL_VERSION, int(engine), 12_000_000, 115200,
                    engine_config_digest(params), max_payload=MAX_PAYLOAD, regions=regions,
                    extension=engine_extension(params),
                    **{k: v for k, v in params.items() if k not in ("engine", "product_shift")})


def backend_info(backend):
    """The IDENTIFY answer of a board built with ``backend``, as the driver decodes it.

    Parameters
    ----------
    backend
        An engine backend of :func:`hdl.build.make_backend` (its ``params`` and ``regions``).

    Returns
    -------
    host.driver.EngineInfo
        Its fields from the backend's parameters and region table, at 12 MHz and 1 Mbaud with
        1024-byte payloads.
    """
    from host.driver import EngineInfo

    p = backend.params
    regions = tuple(r.describe() for r in backend.regions)
    return EngineInfo(PROTOCOL_VERSION, p["engine"], 12_000_000, 1_000_000,
                      engine_config_digest(p), p["n_pe"], p["index_bits"], p["run_bits"],
                      p["act_width"], p["act_frac"], p["weight_width"], p["acc_bits"],
                      p["max_layers"], p["max_rows"], p["max_cols"], p["max_entries_per_pe"],
                      p["max_pointers"], p["max_bias"], 1024, regions, engine_extension(p))


class FakeBoard:
    """A fake board behind a fake serial port (TEST FIXTURE).

    Parameters
    ----------
    identity : Identity
        What IDENTIFY answers.
    model : CompressedModel, optional
        What INFER computes (golden model) once CONTROL.N_LAYERS is non-zero.

    Fault injection (request numbers count every request frame the board decodes, from 0):
    ``corrupt_requests`` (answered BAD_CRC, as a damaged frame), ``drop_answers`` (never
    sent), ``corrupt_answers`` (one byte flipped), ``duplicate_answers`` (sent twice),
    ``garbage`` (bytes sent before the next answer), ``silent`` (answer nothing),
    ``fail_random`` (probability of one of the faults, with ``rng``), ``small_fifo`` (a
    request arriving while an earlier answer is still unread is damaged: a device whose
    receive FIFO cannot hold pipelined requests).  Memory faults: ``bad_bits`` maps
    ``(region, index, address)`` to a bit mask flipped in every word written there (a broken
    memory cell), ``bad_bits_once`` the same for the next write only (a glitch).
    """

    def __init__(self, identity: Identity, model=None, *, rng=None):
        self.identity = identity
        self.model = model
        self.golden = GoldenModel(model) if model is not None else None
        self.timeout = 0.05
        self.name = "fake://board"
        self.memory: dict[tuple[int, int], dict[int, int]] = {}
        self.parser = ResponseParser(REQUEST_SYNC)
        self.out = bytearray()
        self.max_unread_answers = 0
        self._ends: list[int] = []     # stream offsets where queued answers end
        self._written = 0              # bytes ever queued in `out`
        self._read = 0                 # bytes ever read from `out`
        self.requests = 0
        self.infers = 0
        self.commands: list[int] = []
        self.corrupt_requests: set[int] = set()
        self.drop_answers: set[int] = set()
        self.corrupt_answers: set[int] = set()
        self.duplicate_answers: set[int] = set()
        self.garbage = b""
        self.silent = False
        self.fail_random = 0.0
        self.small_fifo = False        # damage requests that arrive while an answer is unread
        self.bad_bits: dict[tuple[int, int, int], int] = {}
        self.bad_bits_once: dict[tuple[int, int, int], int] = {}
        self.rng = rng or np.random.default_rng(0)
        self.closed = False

    # --- pyserial-like transport ---------------------------------------------------------------

    def write(self, data: bytes) -> int:
        if self.closed:
            raise OSError("port closed")
        self.parser.feed(data)
        for frame in list(self.parser.frames()):
            self._answer(frame)
        return len(data)

    def read(self, n: int) -> bytes:
        if not self.out:
            time.sleep(min(self.timeout, 0.002))
            return b""
        data = bytes(self.out[:n])
        del self.out[:n]
        self._read += len(data)
        self._ends = [end for end in self._ends if end > self._read]
        return data

    def reset_input_buffer(self) -> None:
        self._read += len(self.out)
        self.out.clear()
        self._ends.clear()

    def close(self) -> None:
        self.closed = True

    # --- the device ----------------------------------------------------------------------------

    def _send(self, number: int, status: int, seq: int, payload: bytes = b"") -> None:
        if self.silent or number in self.drop_answers:
            return
        frame = bytearray(pack_response(status, seq, payload))
        if number in self.corrupt_answers:
            frame[-3] ^= 0x10
        copies = 2 if number in self.duplicate_answers else 1
        if self.garbage:
            self.out += self.garbage
            self._written += len(self.garbage)
            self.garbage = b""
        for _ in range(copies):
            self.out += frame
            self._written += len(frame)
        self._ends.append(self._written)
        self.max_unread_answers = max(self.max_unread_answers, len(self._ends))

    def _random_fault(self, number: int) -> None:
        if self.fail_random and self.rng.random() < self.fail_random:
            kind = self.rng.integers(4)
            [self.corrupt_requests, self.drop_answers, self.corrupt_answers,
             self.duplicate_answers][kind].add(number)

    def _answer(self, frame) -> None:
        number = self.requests
        self.requests += 1
        self._random_fault(number)
        if self.small_fifo and self._ends:
            self.corrupt_requests.add(number)   # arrived while the device was answering
        if number in self.corrupt_requests:
            self._send(number, Status.BAD_CRC, frame.seq)
            return
        self.commands.append(frame.code)
        status, payload = self._execute(frame.code, frame.payload)
        self._send(number, status, frame.seq, payload)

    def _region(self, region: int, index: int, address: int, count: int):
        for r in self.identity.regions:
            if r.region == region and index < r.count and address + count <= r.depth:
                return r
        return None

    def _execute(self, command: int, payload: bytes):
        if command == Command.IDENTIFY:
            return Status.OK, pack_identity(self.identity)
        if command == Command.STATUS:
            flags = 1 if self._control(Control.N_LAYERS) else 0
            return Status.OK, pack_status(DeviceStatus(flags, 0, 0, self.requests, 0, 0, 0,
                                                       self.infers, 0))
        if command == Command.RESET:
            return Status.OK, b""
        if command == Command.WRITE:
            if len(payload) < _ADDR.size:
                return Status.BAD_LENGTH, b""
            region, index, address = _ADDR.unpack_from(payload)
            data = payload[_ADDR.size:]
            wb = WORD_BYTES.get(region, 1)
            if len(data) % wb:
                return Status.BAD_LENGTH, b""
            r = self._region(region, index, address, len(data) // wb)
            if r is None or not r.writable:
                return Status.BAD_ADDRESS, b""
            mem = self.memory.setdefault((region, index), {})
            for k in range(len(data) // wb):
                where = (region, index, address + k)
                flip = self.bad_bits.get(where, 0) ^ self.bad_bits_once.pop(where, 0)
                mem[address + k] = int.from_bytes(data[k * wb:(k + 1) * wb], "little") ^ flip
            return Status.OK, b""
        if command in (Command.READ, Command.CHECKSUM):
            if len(payload) != _ADDR.size + 2:
                return Status.BAD_LENGTH, b""
            region, index, address = _ADDR.unpack_from(payload)
            (count,) = struct.unpack_from("<H", payload, _ADDR.size)
            r = self._region(region, index, address, count)
            if r is None or not r.readable:
                return Status.BAD_ADDRESS, b""
            wb = r.word_bytes
            data = b"".join(self._stored(region, index, address + k).to_bytes(wb, "little")
                            for k in range(count))
            if command == Command.READ:
                if len(data) > MAX_PAYLOAD:
                    return Status.BAD_LENGTH, b""
                return Status.OK, data
            return Status.OK, struct.pack("<H", crc16(data))
        if command == Command.INFER:
            if not self._control(Control.N_LAYERS) or self.golden is None:
                return Status.NOT_LOADED, b""
            n_in = self._control(Control.N_INPUTS)
            if len(payload) != 2 * n_in:
                return Status.BAD_LENGTH, b""
            q = np.frombuffer(payload, dtype="<i2").astype(np.int64)
            out = self.golden.forward_int(q.reshape(1, *self.model.input_shape))[0]
            self.infers += 1
            return Status.OK, struct.pack("<I", 100 + self.infers) + out.astype("<i2").tobytes()
        return Status.UNKNOWN_COMMAND, b""

    def _stored(self, region: int, index: int, address: int) -> int:
        """The word a READ returns (as the engine bitstreams: unstored descriptor fields 0)."""
        value = self.memory.get((region, index), {}).get(address, 0)
        if region == RegionId.DESCRIPTOR and self.identity.engine in (EngineKind.SPMV,
                                                                       EngineKind.LSTM):
            layers = 2 if self.identity.engine == EngineKind.LSTM else self.identity.max_layers
            value = descriptor_readback(address, value, layers)
        return value

    def _control(self, address: int) -> int:
        return self.memory.get((RegionId.CONTROL, 0), {}).get(int(address), 0)
