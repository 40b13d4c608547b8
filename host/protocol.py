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
    "PROTOCOL_VERSION", "CRC16_POLY", "CRC16_INIT", "crc16_bitwise", "RegionId", "Control",
    "IDENTIFY_MAGIC", "EngineKind", "RegionDescription", "Identity", "pack_identity",
    "parse_identity", "DeviceStatus", "STATUS_LAYOUT", "STATUS_BYTES", "StatusFlag",
    "pack_status", "parse_status", "engine_config_digest", "CONFIG_DIGEST_BYTES",
    "CNN_EXTENSION_KEYS", "EXTENSION_KEYS", "COMMON_EXTENSION_KEYS", "COMMON_EXTENSION_DEFAULTS",
    "extension_keys",
    "engine_extension",
]

REQUEST_SYNC = 0xA5
RESPONSE_SYNC = 0x5A
MAX_PAYLOAD = 1024
"""Largest payload in bytes, both directions."""
HEADER_BYTES = 5
"""sync, cmd/status, seq, len (2)."""
FRAME_OVERHEAD = HEADER_BYTES + 2
PROTOCOL_VERSION = 1
"""Version byte in the IDENTIFY answer; bumped on any incompatible change of this file."""
CRC16_POLY = 0x1021
"""CRC-16/CCITT-FALSE polynomial (x^16 + x^12 + x^5 + 1), MSB first; also used by the gateware."""
CRC16_INIT = 0xFFFF
"""CRC-16/CCITT-FALSE initial value."""
FRAME_TIMEOUT_BYTES = 64
"""A frame stalled for this many byte times (at the link's baud rate) is dropped by the device
with status TIMEOUT, so a truncated frame never hangs the decoder."""


class Command(enum.IntEnum):
    """Request commands (u8)."""

    IDENTIFY = 0x01   #: payload empty; answer: the engine description (docs/protocol.md)
    WRITE = 0x02      #: region u8, index u8, address u32 LE, data: write words
    READ = 0x03       #: region u8, index u8, address u32 LE, count u16 LE: read words
    CHECKSUM = 0x04   #: region u8, index u8, address u32 LE, count u16 LE: CRC-16 of the words
    #:                   stored (engine memories included: docs/protocol.md, "Read-back")
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


def crc16_bitwise(data: bytes, value: int = CRC16_INIT) -> int:
    """The same CRC as :func:`crc16`, computed bit by bit the way the gateware does it
    (``hdl.command.crc16_next``): for each byte, ``crc ^= byte << 8`` then 8 times
    ``crc = (crc << 1) ^ (CRC16_POLY if crc & 0x8000 else 0)`` (16 bits)."""
    for byte in bytes(data):
        value ^= byte << 8
        for _ in range(8):
            value = ((value << 1) ^ (CRC16_POLY if value & 0x8000 else 0)) & 0xFFFF
    return value


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


# ------------------------------------------------------------------------------------------------
# Memory regions, IDENTIFY and STATUS payloads (docs/protocol.md has the same tables)


class RegionId(enum.IntEnum):
    """Region numbers of WRITE/READ/CHECKSUM (the ``region`` byte).

    0-5 are the loader regions of the engines (same numbers as :class:`host.memory_map.Region`);
    0-4 read back the words the engine stores.  The IDENTIFY answer lists which regions a
    particular bitstream has, with word size, depth, index count and access rights; a region
    not listed is answered with BAD_ADDRESS (so STATE, added later, is simply absent from the
    answers of older bitstreams and of engines without it).
    """

    ENTRY = 0       #: per PE (index = PE): packed (run, weight index) entries
    POINTER = 1     #: per PE (index = PE): column pointers
    CODEBOOK = 2    #: address = slot << index_bits | weight index: shared weight
    BIAS = 3        #: biases (accumulator format)
    DESCRIPTOR = 4  #: address = layer << 3 | field: layer descriptors
    INPUT = 5       #: input activations (written by INFER; write-only)
    OUTPUT = 6      #: output activations of the last run (read-only)
    CONTROL = 7     #: shell registers, see :class:`Control`
    STATE = 8       #: LSTM engine only (read-only): the last LSTM layer's final output of the
    #:                 last run, h_T (r_T with a projection), act words at addresses 0 .. S-1
    TABLE = 9       #: LSTM engine only (read/write): the activation tables, act words: the
    #:                 gate table (sigmoid at 0 .. E-1, tanh at E .. 2E-1) then the cell table
    #:                 (tanh at 2E .. 3E-1), E = 2**table_spec.index_bits
    #:                 (:func:`host.memory_map.table_layout`); written by the host when it
    #:                 loads a model (:func:`host.lstm_image.table_words`)


class Control(enum.IntEnum):
    """Word addresses of the CONTROL region (u32 words, read/write)."""

    N_LAYERS = 0    #: layers run by INFER; 0 = no model loaded (INFER answers NOT_LOADED)
    N_INPUTS = 1    #: input activations INFER expects (its payload is N_INPUTS act words)
    N_OUTPUTS = 2   #: output activations INFER answers with
    USER = 3        #: free for the host (e.g. a model id); not used by the device


class EngineKind(enum.IntEnum):
    """``engine`` byte of IDENTIFY."""

    MEMORIES = 0    #: plain memory regions, no engine (test shell): INFER copies INPUT to OUTPUT
    SPMV = 1        #: hdl.spmv.SpmvEngine
    LSTM = 2        #: hdl.lstm.LstmEngine (one QLSTM + a QLinear classifier on h_T); IDENTIFY's
    #:                 max_rows = 4 * hidden_max, max_cols = input_max + hidden_max, max_layers 2;
    #:                 INFER's payload is the dense T x I input sequence (docs/protocol.md)
    CNN = 3         #: hdl.cnn.CnnEngine (conv, max-pool, flatten, linear layers); IDENTIFY
    #:                 carries the extension words :data:`CNN_EXTENSION_KEYS`; INFER's payload
    #:                 is the (H, W, C) input map, channels innermost (docs/protocol.md)


IDENTIFY_MAGIC = b"SPN1"
CONFIG_DIGEST_BYTES = 8
_IDENTIFY_HEAD = struct.Struct("<4sBBBBII8sBBBBBBBBHHIHHH")
_REGION_ENTRY = struct.Struct("<BBBBI")
_EXTENSION_WORD = struct.Struct("<I")

#: Engine-specific IDENTIFY parameters, u32 LE each, after the region table (their count is the
#: header byte that was reserved in earlier answers, so an answer without them has 0 there).
#: The CNN engine's: the :class:`host.cnn_image.CnnConfig` fields the SpMV-style header does not
#: carry (``out_parallel`` 0/1, ``memory`` 0 = "bram", 1 = "spram").
CNN_EXTENSION_KEYS = ("fm_lanes", "fm_words", "max_dim", "max_pad", "max_stride", "max_pool",
                      "fifo_depth", "out_parallel", "memory")
EXTENSION_KEYS = {int(EngineKind.CNN): CNN_EXTENSION_KEYS}
"""Extension parameter names by engine kind (:class:`EngineKind` value)."""
#: Extension words of every engine, after the engine's own: ``product_shift`` (bits every
#: product is floored by, the model's ``product_shift``), then ``pe_group`` (PEs per lockstep
#: group, 1 or 2: the host pads every group's columns to equal lengths,
#: host.encoding.pad_groups).  Trailing words equal to their default
#: (:data:`COMMON_EXTENSION_DEFAULTS`) are not sent and a missing word means its default, so
#: an engine without a product shift and without PE pairs answers as before (and its
#: configuration hash is unchanged).
COMMON_EXTENSION_KEYS = ("product_shift", "pe_group")
#: The value a missing common extension word stands for.
COMMON_EXTENSION_DEFAULTS = {"product_shift": 0, "pe_group": 1}
#: Words after the common ones, per engine kind, with the value a missing word stands for: the
#: parameters the cycle model needs beyond the header (:meth:`host.memory_map.SpmvParams.timing`,
#: :func:`host.lstm_cycles.stack_cycles`).  ``fifo_depth``: broadcast FIFO entries (SpMV and
#: LSTM); ``ew_lanes``: LSTM element-wise lanes (1, 2, 4); ``overlap``: 1 = the LSTM unit runs
#: beside the next MAC phase (ESE), 0 = serial schedule.  Like the common words, trailing words
#: at their default are not sent and are not in the configuration hash, so an engine at the
#: defaults answers as before these words existed.
LATE_EXTENSION_DEFAULTS = {int(EngineKind.SPMV): {"fifo_depth": 8},
                           int(EngineKind.LSTM): {"fifo_depth": 8, "ew_lanes": 1, "overlap": 1}}


def optional_extension_defaults(engine: int) -> dict:
    """The extension words of an ``engine`` kind that may be left out, in order, with their
    defaults: :data:`COMMON_EXTENSION_DEFAULTS`, then the kind's
    :data:`LATE_EXTENSION_DEFAULTS`."""
    return {**COMMON_EXTENSION_DEFAULTS, **LATE_EXTENSION_DEFAULTS.get(int(engine), {})}


def extension_keys(engine: int) -> tuple:
    """Names of the extension words of an ``engine`` kind, in order."""
    return EXTENSION_KEYS.get(int(engine), ()) + tuple(optional_extension_defaults(engine))


def engine_extension(params: dict) -> tuple:
    """The IDENTIFY extension words of engine ``params`` (empty for engines without any):
    the engine's own, then :data:`COMMON_EXTENSION_KEYS` and the kind's
    :data:`LATE_EXTENSION_DEFAULTS` words up to the last one that differs from its default (a
    missing key is its default)."""
    engine = int(params.get("engine", 0))
    words = [int(params[k]) for k in EXTENSION_KEYS.get(engine, ())]
    defaults = optional_extension_defaults(engine)
    keys = tuple(defaults)
    tail = [int(params.get(k, defaults[k])) for k in keys]
    while tail and tail[-1] == defaults[keys[len(tail) - 1]]:
        tail.pop()
    return tuple(words + tail)


def engine_config_digest(params: dict) -> bytes:
    """8-byte digest of an engine configuration (the IDENTIFY ``config_hash``).

    ``params`` is the engine parameter dictionary (``n_pe``, ``index_bits``, ``run_bits``,
    ``act_width``, ``act_frac``, ``weight_width``, ``acc_bits``, ``max_rows``, ``max_cols``,
    ``max_entries_per_pe``, ``max_layers``, ...): the first 8 bytes of the SHA-256 of its
    canonical JSON (sorted keys, no spaces).  The HDL bakes it into the bitstream at generation
    time; the host recomputes it from the IDENTIFY fields to check it talks to what it thinks.
    """
    import hashlib
    import json

    text = json.dumps({str(k): params[k] for k in params}, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode()).digest()[:CONFIG_DIGEST_BYTES]


@dataclass(frozen=True)
class RegionDescription:
    """One entry of the IDENTIFY region table.

    ``word_bytes``: bytes per word on the wire (1, 2 or 4; little endian, two's complement for
    signed values, sign-extended on READ); ``count``: number of indexes (PEs for per-PE regions,
    else 1); ``depth``: words per index; ``readable``/``writable``: access by READ/CHECKSUM and
    WRITE.
    """

    region: int
    word_bytes: int
    count: int
    depth: int
    readable: bool = True
    writable: bool = True

    def pack(self) -> bytes:
        flags = (1 if self.readable else 0) | (2 if self.writable else 0)
        return _REGION_ENTRY.pack(self.region, self.word_bytes, self.count, flags, self.depth)


@dataclass(frozen=True)
class Identity:
    """The decoded IDENTIFY answer (layout: docs/protocol.md, "IDENTIFY")."""

    version: int
    engine: int
    clock_hz: int
    baud: int
    config_hash: bytes
    n_pe: int
    index_bits: int
    run_bits: int
    act_width: int
    act_frac: int
    weight_width: int
    acc_bits: int
    max_layers: int
    max_rows: int
    max_cols: int
    max_entries_per_pe: int
    max_pointers: int
    max_bias: int
    max_payload: int
    regions: tuple = ()
    #: Engine-specific parameters (u32 each; names: :data:`EXTENSION_KEYS` of ``engine``).
    extension: tuple = ()

    def engine_params(self) -> dict:
        """The parameter dictionary whose :func:`engine_config_digest` is ``config_hash``."""
        params = {k: getattr(self, k) for k in _ENGINE_PARAM_KEYS}
        params.update(self.extension_params())
        # An optional word sent only because a later one is not at its default (product_shift
        # 0 before pe_group 2) is not in the engine's dictionary (memory_map.common_entries,
        # memory_map.late_entries).
        for key, default in optional_extension_defaults(self.engine).items():
            if params.get(key) == default:
                del params[key]
        return params

    def extension_params(self) -> dict:
        """The extension words by name (``{}`` for an engine without any; unnamed words are
        called ``ext0``, ``ext1`` ...)."""
        keys = extension_keys(self.engine)
        return {keys[n] if n < len(keys) else f"ext{n}": int(v)
                for n, v in enumerate(self.extension)}

    @property
    def product_shift(self) -> int:
        """The engine's product shift (extension word; 0 in an answer without it)."""
        return self.extension_params().get("product_shift", 0)

    @property
    def pe_group(self) -> int:
        """PEs per lockstep group (extension word; 1 in an answer without it)."""
        return int(self.extension_params().get("pe_group", 1))

    def late_params(self) -> dict:
        """The engine kind's :data:`LATE_EXTENSION_DEFAULTS` words by name, each its default
        when the answer leaves it out (``{}`` for a kind without such words)."""
        ext = self.extension_params()
        return {k: int(ext.get(k, default))
                for k, default in LATE_EXTENSION_DEFAULTS.get(int(self.engine), {}).items()}

    def region(self, region: int) -> RegionDescription:
        for r in self.regions:
            if r.region == int(region):
                return r
        raise KeyError(f"region {int(region)} is not in this device's region table")


_ENGINE_PARAM_KEYS = ("engine", "n_pe", "index_bits", "run_bits", "act_width", "act_frac",
                      "weight_width", "acc_bits", "max_layers", "max_rows", "max_cols",
                      "max_entries_per_pe", "max_pointers", "max_bias")


def pack_identity(identity: Identity) -> bytes:
    """IDENTIFY payload bytes of ``identity`` (used by the HDL generator to fill its ROM)."""
    i = identity
    head = _IDENTIFY_HEAD.pack(
        IDENTIFY_MAGIC, i.version, i.engine, len(i.regions), len(i.extension), i.clock_hz,
        i.baud,
        i.config_hash, i.n_pe, i.index_bits, i.run_bits, i.act_width, i.act_frac & 0xFF,
        i.weight_width, i.acc_bits, i.max_layers, i.max_rows, i.max_cols,
        i.max_entries_per_pe, i.max_pointers, i.max_bias, i.max_payload)
    return (head + b"".join(r.pack() for r in i.regions)
            + b"".join(_EXTENSION_WORD.pack(int(v)) for v in i.extension))


def parse_identity(payload: bytes) -> Identity:
    """Decode an IDENTIFY payload; raises :class:`ProtocolError` if it is not one."""
    payload = bytes(payload)
    if len(payload) < _IDENTIFY_HEAD.size or payload[:4] != IDENTIFY_MAGIC:
        raise ProtocolError(f"not an IDENTIFY answer (magic {payload[:4]!r}, "
                            f"{len(payload)} bytes)")
    (_, version, engine, n_regions, n_ext, clock_hz, baud, digest, n_pe, index_bits, run_bits,
     act_width, act_frac, weight_width, acc_bits, max_layers, max_rows, max_cols, max_entries,
     max_pointers, max_bias, max_payload) = _IDENTIFY_HEAD.unpack_from(payload)
    ext_at = _IDENTIFY_HEAD.size + n_regions * _REGION_ENTRY.size
    if len(payload) != ext_at + n_ext * _EXTENSION_WORD.size:
        raise ProtocolError(f"IDENTIFY answer of {len(payload)} bytes for {n_regions} regions "
                            f"and {n_ext} extension words")
    regions = []
    for n in range(n_regions):
        region, word_bytes, count, flags, depth = _REGION_ENTRY.unpack_from(
            payload, _IDENTIFY_HEAD.size + n * _REGION_ENTRY.size)
        regions.append(RegionDescription(region, word_bytes, count, depth, bool(flags & 1),
                                         bool(flags & 2)))
    return Identity(version, engine, clock_hz, baud, digest, n_pe, index_bits, run_bits,
                    act_width, act_frac - 256 if act_frac > 127 else act_frac, weight_width,
                    acc_bits, max_layers, max_rows, max_cols, max_entries, max_pointers,
                    max_bias, max_payload, tuple(regions),
                    tuple(_EXTENSION_WORD.unpack_from(payload, ext_at + 4 * n)[0]
                          for n in range(n_ext)))


class StatusFlag(enum.IntFlag):
    """``flags`` byte of the STATUS answer."""

    LOADED = 1        #: CONTROL.N_LAYERS != 0
    ENGINE_BUSY = 2   #: the engine is running (never seen by a STATUS: INFER is synchronous)
    ENGINE_DONE = 4   #: the engine finished a run since the last RESET


#: (name, struct code) of the STATUS answer, in order, little endian.
STATUS_LAYOUT = (
    ("flags", "B"),           # StatusFlag
    ("last_error", "B"),      # status code of the last error response (0 = none since RESET)
    ("reserved", "H"),
    ("good_frames", "I"),     # frames with a good CRC (this STATUS request included)
    ("bad_crc", "I"),         # frames answered BAD_CRC
    ("timeouts", "I"),        # frames answered TIMEOUT
    ("rejected", "I"),        # answered BAD_LENGTH / UNKNOWN_COMMAND / BAD_ADDRESS / NOT_LOADED
    ("infers", "I"),          # INFER runs completed
    ("last_cycles", "I"),     # engine clock cycles of the last INFER run
)
_STATUS = struct.Struct("<" + "".join(code for _, code in STATUS_LAYOUT))
STATUS_BYTES = _STATUS.size


@dataclass(frozen=True)
class DeviceStatus:
    flags: int
    last_error: int
    reserved: int
    good_frames: int
    bad_crc: int
    timeouts: int
    rejected: int
    infers: int
    last_cycles: int


def pack_status(status: DeviceStatus) -> bytes:
    return _STATUS.pack(*(getattr(status, name) for name, _ in STATUS_LAYOUT))


def parse_status(payload: bytes) -> DeviceStatus:
    """Decode a STATUS payload; raises :class:`ProtocolError` if the length is wrong."""
    if len(payload) != STATUS_BYTES:
        raise ProtocolError(f"STATUS answer must be {STATUS_BYTES} bytes, not {len(payload)}")
    return DeviceStatus(*_STATUS.unpack(bytes(payload)))
