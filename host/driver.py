"""Host driver of a spine board: identify, load a model, run inferences, over one UART.

::

    from host.driver import Accelerator

    with Accelerator("/dev/ttyUSB1") as acc:          # or "socket://127.0.0.1:7777" (hdl.sim)
        print(acc.identify())
        acc.load("lstm.spn")                           # checks, writes, verifies every region
        y = acc.infer(x)                               # one float input -> output integers
        y, h = acc.infer(x, state=True)                # LSTM engine: and h_T (LstmState)
        for y in acc.stream(xs):                       # results in input order
            ...

The wire protocol is :mod:`host.protocol` (docs/protocol.md); the link layer (sequence
numbers, retries, pipelining) is :class:`host.transport.FrameLink`.  Errors are
:class:`host.driver_errors.LinkError` (no valid answer), :class:`~host.driver_errors.DeviceError`
(an error status), :class:`~host.driver_errors.ModelMismatchError` (the model does not fit the
bitstream's engine) and :class:`~host.driver_errors.VerifyError` (read-back differs).
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Self

import numpy as np

from .compressed import QLSTM, CompressedModel, QConv2d, QFlatten, QLinear, QReLU
from .driver_errors import DeviceError, LinkError, ModelMismatchError, VerifyError
from .errors import SpineError
from .fixedpoint import Format
from .lstm_image import build_image as build_lstm_image
from .memory_map import (Field, LstmField, LstmParams, SpmvParams, descriptor_readback,
                         table_layout)
from .protocol import (
    FRAME_TIMEOUT_BYTES,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    CNN_EXTENSION_KEYS,
    Command,
    Control,
    DeviceStatus,
    EngineKind,
    Identity,
    ProtocolError,
    RegionId,
    Status,
    crc16,
    engine_config_digest,
    parse_identity,
    parse_status,
)
from .spmv_image import build_image as build_spmv_image
from .transport import FrameLink, open_link

__all__ = [
    "DEFAULT_BAUD",
    "DEFAULT_TIMEOUT",
    "Accelerator",
    "DeviceStatus",
    "EngineInfo",
    "LoadBlock",
    "LstmState",
    "cnn_config",
    "cnn_input_order",
    "model_mismatches",
    "pack_words",
    "unpack_words",
]

DEFAULT_BAUD = 1_000_000
"""The iCEBreaker bitstream's default baud rate (docs/protocol.md)."""
DEFAULT_TIMEOUT = 2.0
#: Shortest quiet time when opening a link (a simulated board's byte times are slow).
RESYNC_MIN_SECONDS = 0.02
#: WRITE/READ/CHECKSUM address header: region u8, index u8, address u32 LE.
_ADDR = struct.Struct("<BBI")
#: INFER answer header: engine clock cycles of the run, u32 LE.
_INFER_HEADER = struct.Struct("<I")


# ------------------------------------------------------------------------------------------------
# Words


def pack_words(values, word_bytes: int) -> bytes:
    """``values`` as little-endian two's-complement words of ``word_bytes`` bytes each."""
    v = np.asarray(values, dtype=np.int64).ravel()
    mask = (1 << (8 * word_bytes)) - 1 if word_bytes < 8 else -1
    u = (v & mask).astype(np.uint64)
    out = np.zeros((len(u), word_bytes), dtype=np.uint8)
    for b in range(word_bytes):
        out[:, b] = (u >> np.uint64(8 * b)) & np.uint64(0xFF)
    return out.tobytes()


def unpack_words(data: bytes, word_bytes: int, signed: bool = True, bits: int | None = None
                 ) -> np.ndarray:
    """Little-endian words of ``word_bytes`` bytes -> int64 (sign-extended from ``bits``)."""
    if len(data) % word_bytes:
        raise ValueError(f"{len(data)} bytes is not a whole number of {word_bytes}-byte words")
    raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, word_bytes).astype(np.int64)
    value = np.zeros(len(raw), dtype=np.int64)
    for b in range(word_bytes):
        value |= raw[:, b] << (8 * b)
    bits = bits or 8 * word_bytes
    value &= (1 << bits) - 1
    if signed:
        value = np.where(value >= (1 << (bits - 1)), value - (1 << bits), value)
    return value


@dataclass(frozen=True)
class LstmState:
    """The LSTM engine's final state of a run, read from the STATE region: the last LSTM
    layer's final output h_T (r_T with a projection), ``S`` = that layer's output size.

    Attributes
    ----------
    ints : numpy.ndarray
        int64 act-format integers (``act_width`` bits, ``act_frac`` fraction bits), ``(S,)``
        for one input, ``(B, S)`` for a batch: bit-exact with the golden model
        (:meth:`host.golden.GoldenModel.layer_forward` through the LSTM layers).
    values : numpy.ndarray
        float64, ``ints * 2**-act_frac`` (same shape).
    """

    ints: np.ndarray
    values: np.ndarray


# ------------------------------------------------------------------------------------------------
# Engine description (IDENTIFY) and status (STATUS)


@dataclass(frozen=True)
class EngineInfo(Identity):
    """The engine in the bitstream: the decoded IDENTIFY answer (:class:`host.protocol.Identity`)
    plus derived facts.  Layout: docs/protocol.md."""

    @classmethod
    def from_payload(cls, payload: bytes) -> EngineInfo:
        """Decode an IDENTIFY payload; raises ``ValueError`` if it is not one."""
        try:
            ident = parse_identity(payload)
        except ProtocolError as error:
            raise ValueError(str(error)) from None
        return cls(**{f.name: getattr(ident, f.name) for f in fields(Identity)})

    @property
    def act_format(self) -> Format:
        return Format(self.act_width, self.act_frac)

    @property
    def kind(self) -> str:
        """Engine kind name (``"SPMV"``, ``"LSTM"``, ``"CNN"``, ``"MEMORIES"``, or the number)."""
        try:
            return EngineKind(self.engine).name
        except ValueError:
            return str(self.engine)

    @property
    def hash_ok(self) -> bool:
        """The bitstream's configuration hash matches its own IDENTIFY fields."""
        return engine_config_digest(self.engine_params()) == self.config_hash

    def word_bytes(self, region: int) -> int:
        """Bytes per word of ``region`` on the wire (from the region table)."""
        try:
            return self.region(region).word_bytes
        except KeyError:
            have = ", ".join(_region_name(r.region) for r in self.regions)
            raise ModelMismatchError(f"the bitstream has no region {_region_name(region)} "
                                     f"(its regions: {have})") from None

    @property
    def act_bytes(self) -> int:
        """Bytes per activation word of INFER requests and answers."""
        for region in (RegionId.INPUT, RegionId.OUTPUT):
            try:
                return self.region(region).word_bytes
            except KeyError:
                pass
        return (self.act_width + 7) // 8

    def describe(self) -> str:
        """Several lines for people."""
        lines = [
            (f"engine {self.kind} (protocol {self.version}), {self.n_pe} PEs, clock "
             f"{self.clock_hz / 1e6:g} MHz, {self.baud} baud, config "
             f"0x{self.config_hash.hex()}"
             f"{'' if self.hash_ok else ' (does NOT match the fields below)'}"),
            (f"entries {self.index_bits}-bit index + {self.run_bits}-bit run, activations "
             f"{self.act_format}, weights {self.weight_width} bit, accumulators "
             f"{self.acc_bits} bit"
             + (f", product shift {self.product_shift}" if self.product_shift else "")),
            (f"up to {self.max_layers} layers of {self.max_rows} x {self.max_cols}, "
             f"{self.max_entries_per_pe} entries per PE, {self.max_pointers} pointers, "
             f"{self.max_bias} biases, payload {self.max_payload} bytes"),
        ]
        if self.extension:
            lines.append("engine parameters: " + ", ".join(
                f"{k} {v}" for k, v in self.extension_params().items()))
        for r in self.regions:
            access = ("r" if r.readable else "") + ("w" if r.writable else "")
            lines.append(f"  region {_region_name(r.region):10s} {r.count} x {r.depth} words of "
                         f"{r.word_bytes} B ({access})")
        return "\n".join(lines)


def _region_name(region: int) -> str:
    try:
        return RegionId(region).name
    except ValueError:
        return str(region)


# ------------------------------------------------------------------------------------------------
# Model checks and the memory image of a model


@dataclass
class LoadBlock:
    """Consecutive words of one region index: what one or more WRITE requests carry.

    Attributes
    ----------
    name : str
        For messages (``"entries of PE 3"``).
    region, index, address : int
        Where the first word goes.
    words : ndarray of int64
        The values (two's complement on the wire).
    word_bytes : int
        Bytes per word on the wire.
    check : bool
        Compared by :meth:`Accelerator.verify` (False for words a later block overwrites).
    expected : ndarray of int64, optional
        What a READ of the words returns when the device holds them (default ``words``; the
        DESCRIPTOR words differ where the engine does not store a field,
        :func:`host.memory_map.descriptor_readback`).
    """

    name: str
    region: int
    index: int
    address: int
    words: np.ndarray
    word_bytes: int
    check: bool = True
    expected: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return len(self.words) * self.word_bytes

    @property
    def readback(self) -> np.ndarray:
        """The words a READ of this block returns on a device that holds it."""
        return self.words if self.expected is None else self.expected

    @property
    def where(self) -> str:
        """``region ENTRY, PE 3`` / ``region BIAS``, for messages."""
        name = _region_name(self.region)
        if self.region in (RegionId.ENTRY, RegionId.POINTER):
            return f"region {name}, PE {self.index}"
        return f"region {name}" + (f", index {self.index}" if self.index else "")

    def chunks(self, max_bytes: int, max_words: int = 0xFFFF):
        """``(address header, word bytes)`` pieces of at most ``max_bytes`` data bytes."""
        per = max(1, min(max_bytes // self.word_bytes, max_words))
        for start in range(0, len(self.words), per):
            part = self.words[start:start + per]
            yield (_ADDR.pack(self.region, self.index, self.address + start),
                   pack_words(part, self.word_bytes))


def _engine_layers(model: CompressedModel):
    """The model as the SPMV engine's list of ``(QLinear, relu)`` (ReLU layers folded into the
    linear layer before them, a leading flatten dropped); ``ValueError`` if it is not an MLP."""
    layers = []
    for i, layer in enumerate(model.layers):
        if isinstance(layer, QLinear):
            layers.append(QLinear(layer.matrix, bool(layer.relu)))
        elif isinstance(layer, QReLU) and layers:
            layers[-1] = QLinear(layers[-1].matrix, True)
        elif isinstance(layer, QFlatten) and not layers:
            continue
        else:
            raise ValueError(f"model {model.name!r}: layer {i} is {layer.kind}; the SPMV "
                             f"engine runs only linear layers (with ReLU), i.e. an MLP such "
                             f"as digits-mlp")
    if not layers:
        raise ValueError(f"model {model.name!r} has no linear layer")
    return layers


def _lstm_layers(model: CompressedModel):
    """``([QLSTM, ...], QLinear classifier)`` of an LSTM package: a ``(T, I)`` input, stacked
    QLSTM layers (each but the last returning its whole sequence, the last its final output),
    then one QLinear; ``ValueError`` naming what is different otherwise."""
    layers = list(model.layers)
    if not layers or not isinstance(layers[0], QLSTM):
        raise ValueError(f"model {model.name!r} does not start with an LSTM layer")
    stack = []
    while layers and isinstance(layers[0], QLSTM):
        stack.append(layers.pop(0))
    for n, lstm in enumerate(stack[:-1]):
        if not lstm.return_sequences:
            raise ValueError(f"model {model.name!r}: LSTM layer {n} feeds another LSTM layer "
                             f"but does not return its sequence")
    if stack[-1].return_sequences:
        raise ValueError(f"model {model.name!r}: the LSTM engine keeps only the last layer's "
                         f"final output (return_sequences is not supported)")
    if len(layers) != 1 or not isinstance(layers[0], QLinear):
        kinds = ", ".join(type(layer).__name__ for layer in model.layers)
        raise ValueError(f"model {model.name!r} is {kinds}; the LSTM engine runs stacked QLSTM "
                         f"layers followed by one QLinear classifier")
    if len(model.input_shape) != 2 or int(model.input_shape[1]) != stack[0].input_size:
        raise ValueError(f"model {model.name!r} takes inputs of shape "
                         f"{tuple(model.input_shape)}, not (steps, {stack[0].input_size})")
    return stack, layers[0]


def _lstm_limits(info: EngineInfo) -> dict:
    """An LSTM engine's sizes from IDENTIFY (see :class:`host.protocol.EngineKind`):
    ``max_rows = 4 * hidden_max``, ``max_cols = input_max + hidden_max``, the DESCRIPTOR
    region's depth (:attr:`host.memory_map.LstmParams.descriptor_words`) gives ``layers_max``
    and whether there is projection hardware, ``max_bias = layers_max * (4 * hidden_max +
    proj_max) + classes_max`` then ``proj_max``."""
    hidden = info.max_rows // 4
    inputs = max(1, info.max_cols - hidden)
    try:
        steps = info.region(RegionId.INPUT).depth // inputs
        classes = info.region(RegionId.OUTPUT).depth
        words = info.region(RegionId.DESCRIPTOR).depth
    except KeyError:
        steps = classes = 0
        words = 24
    layers = max(1, -(-words // 32))
    proj = 0
    if words % 32 == 0:
        proj = max(0, (info.max_bias - classes) // layers - 4 * hidden)
    return {"hidden_max": hidden, "input_max": inputs, "steps_max": steps,
            "classes_max": classes, "layers_max": layers, "proj_max": proj}


def _differ(problems: list, what: str, model_value, engine_value) -> None:
    """Append ``"<what>: model <model_value>, engine <engine_value>"`` to ``problems`` if the
    two values differ."""
    if model_value != engine_value:
        problems.append(f"{what}: model {model_value}, engine {engine_value}")


def _header_mismatches(model: CompressedModel, info: EngineInfo, problems: list) -> None:
    """Append to ``problems`` how the model's PE count, activation format and accumulator bits
    differ from the engine's (the first checks of :func:`model_mismatches` on every engine)."""
    _differ(problems, "PE count", model.n_pe, info.n_pe)
    _differ(problems, "activation format", str(model.act_format), str(info.act_format))
    _differ(problems, "accumulator bits", model.acc_bits, info.acc_bits)
    if model.product_shift != info.product_shift:
        problems.append(f"product shift: model {model.product_shift}, engine "
                        f"{info.product_shift} — the engine floors every product by its "
                        f"(built-in) shift: rebuild the bitstream for the model (`python -m "
                        f"hdl.build --model PACKAGE`, or `python -m hdl.sim --model`), or "
                        f"compress with --product-shift {info.product_shift}")


def _encoding_mismatches(where: str, m, info: EngineInfo, problems: list) -> None:
    """Append to ``problems`` how one matrix's encoding does not fit the engine.

    Parameters
    ----------
    where : str
        The matrix's name in the messages (``"layer 0"``, ``"classifier"``, ...).
    m : host.compressed.SparseMatrix
        The matrix (``m.encoded``, ``m.weight_format``).
    info : EngineInfo
        The engine: its index bits and run bits must equal the encoding's, its weight width
        must hold the matrix's weights.
    problems : list of str
        Appended to.
    """
    enc = m.encoded
    _differ(problems, f"{where} index bits", enc.index_bits, info.index_bits)
    _differ(problems, f"{where} run bits", enc.run_bits, info.run_bits)
    if m.weight_format.width > info.weight_width:
        problems.append(f"{where} weight width: model {m.weight_format.width} bits, engine "
                        f"{info.weight_width}")


def _lstm_mismatches(model: CompressedModel, info: EngineInfo, problems: list) -> list[str]:
    try:
        stack, cls = _lstm_layers(model)
    except ValueError as error:
        return problems + [str(error)]

    limits = _lstm_limits(info)
    _header_mismatches(model, info, problems)
    steps = int(model.input_shape[0])
    if len(stack) > limits["layers_max"]:
        problems.append(f"LSTM layers: model {len(stack)}, engine at most "
                        f"{limits['layers_max']}")
    checks = [("time steps", steps, limits["steps_max"]),
              ("classes", cls.matrix.rows, limits["classes_max"])]
    for n, lstm in enumerate(stack):
        where = "" if len(stack) == 1 else f"LSTM layer {n} "
        checks += [(f"{where}hidden units", lstm.hidden, limits["hidden_max"]),
                   (f"{where}input size", lstm.input_size, limits["input_max"])]
        if lstm.proj_size:
            checks.append((f"{where}projection size", lstm.proj_size, limits["proj_max"]))
    for what, value, limit in checks:
        if not 1 <= value <= limit:
            problems.append(f"{what}: model {value}, engine at most {limit}"
                            + (" (no projection hardware)" if "projection" in what
                               and not limit else ""))
    entries = 0
    matrices = [(f"LSTM layer {n} matrix" if len(stack) > 1 else "LSTM matrix", lstm.matrix)
                for n, lstm in enumerate(stack)]
    matrices += [(f"LSTM layer {n} projection", lstm.projection)
                 for n, lstm in enumerate(stack) if lstm.projection is not None]
    for where, m in matrices + [("classifier", cls.matrix)]:
        enc = m.encoded
        _encoding_mismatches(where, m, info, problems)
        if m.weight_format.frac >= info.weight_width:
            problems.append(f"{where} weight fraction bits {m.weight_format.frac} do not fit "
                            f"the engine's {info.weight_width}-bit weights")
        entries += int(enc.entries_per_pe().max()) if enc.n_pe == info.n_pe else 0
    if entries > info.max_entries_per_pe:
        problems.append(f"entries per PE: model {entries}, engine {info.max_entries_per_pe}")
    table = _lstm_table_problem(model, info)
    if table:
        problems.append(table)
    return problems


def _lstm_table_problem(model: CompressedModel, info: EngineInfo) -> str | None:
    """Why ``info``'s LSTM engine cannot take ``model``'s activation tables (region TABLE,
    :func:`host.memory_map.table_layout`), or None."""
    words = table_layout(model.table_spec)["words"]
    try:
        depth = info.region(RegionId.TABLE).depth
    except KeyError:
        return ("activation tables: the bitstream has no TABLE region (it was built when the "
                "LSTM engine's sigmoid / tanh tables were fixed at build time); rebuild the "
                "bitstream with this version (`python -m hdl.build ... --model MODEL`), whose "
                "tables are loaded with the model")
    if depth != words:
        return (f"activation tables: model {words} words (table_spec index_bits "
                f"{model.table_spec.index_bits}: 3 tables of {model.table_spec.entries}), "
                f"engine's TABLE region {depth}; build the bitstream for the model's "
                f"table_spec")
    return None


def model_mismatches(model: CompressedModel, info: EngineInfo) -> list[str]:
    """Every way ``model`` does not fit ``info``'s engine, as readable lines (empty: fits)."""
    problems = []
    if not info.hash_ok:
        problems.append(f"the bitstream's configuration hash 0x{info.config_hash.hex()} does "
                        f"not match its IDENTIFY fields (0x"
                        f"{engine_config_digest(info.engine_params()).hex()}): a damaged "
                        f"answer or a bitstream from another spine version")
    if info.engine not in (EngineKind.SPMV, EngineKind.LSTM, EngineKind.CNN):
        problems.append(f"the bitstream's engine is {info.kind}, not SPMV, LSTM or CNN: it "
                        f"cannot run models")
        return problems
    if info.version != PROTOCOL_VERSION:
        problems.append(f"protocol version: bitstream {info.version}, driver "
                        f"{PROTOCOL_VERSION}")
    if info.engine == EngineKind.LSTM:
        return _lstm_mismatches(model, info, problems)
    if info.engine == EngineKind.CNN:
        return _cnn_mismatches(model, info, problems)
    try:
        layers = _engine_layers(model)
    except ValueError as error:
        hint = ""
        if any(isinstance(layer, QLSTM) for layer in model.layers):
            hint = (" (an LSTM package runs on a bitstream with the LSTM engine: build the "
                    "board for it, `python -m hdl.sim --model` / `python -m hdl.build --model`)")
        elif _has_conv(model):
            hint = (" (a CNN package runs on a bitstream with the CNN engine: build the "
                    "board for it, `python -m hdl.sim --model` / `python -m hdl.build --model`)")
        return problems + [str(error) + hint]

    _header_mismatches(model, info, problems)
    if len(layers) > info.max_layers:
        problems.append(f"layers: model {len(layers)}, engine at most {info.max_layers}")
    entries = pointers = bias = 0
    for n, layer in enumerate(layers):
        m = layer.matrix
        enc = m.encoded
        where = f"layer {n}"
        _encoding_mismatches(where, m, info, problems)
        if m.weight_format.frac >= info.weight_width:
            problems.append(f"{where} weight fraction bits {m.weight_format.frac} do not fit "
                            f"the engine's {info.weight_width}-bit weights")
        if enc.rows > info.max_rows or enc.cols > info.max_cols:
            problems.append(f"{where} size: model {enc.rows} x {enc.cols}, engine at most "
                            f"{info.max_rows} x {info.max_cols}")
        entries += int(enc.entries_per_pe().max()) if enc.n_pe == info.n_pe else 0
        pointers += enc.cols
        bias += enc.rows
    if entries > info.max_entries_per_pe:
        problems.append(f"entries per PE: model {entries}, engine {info.max_entries_per_pe}")
    if pointers > info.max_pointers:
        problems.append(f"pointer slots: model {pointers}, engine {info.max_pointers}")
    if bias > info.max_bias:
        problems.append(f"biases: model {bias}, engine {info.max_bias}")
    return problems


# --- CNN engine ---------------------------------------------------------------------------------


def _has_conv(model: CompressedModel) -> bool:
    return any(isinstance(layer, QConv2d) for layer in model.layers)


def cnn_config(info: EngineInfo):
    """The :class:`host.cnn_image.CnnConfig` of a CNN engine from its IDENTIFY answer (the
    SpMV-style header fields and the extension words :data:`host.protocol.CNN_EXTENSION_KEYS`).

    Raises
    ------
    ModelMismatchError
        If ``info`` is not a CNN engine or its extension words are missing.
    """
    from .cnn_image import CnnConfig
    ext = info.extension_params()
    missing = [k for k in CNN_EXTENSION_KEYS if k not in ext]
    if info.engine != EngineKind.CNN or missing:
        raise ModelMismatchError(f"the bitstream's engine is {info.kind}"
                                 + (f" without the CNN parameters {', '.join(missing)}"
                                    if info.engine == EngineKind.CNN else ", not CNN"))
    try:
        return CnnConfig(
            n_pe=info.n_pe, max_rows=info.max_rows, max_entries_per_pe=info.max_entries_per_pe,
            max_pointers=info.max_pointers, max_bias=info.max_bias, fm_words=ext["fm_words"],
            index_bits=info.index_bits, run_bits=info.run_bits, act_format=info.act_format,
            weight_width=info.weight_width, acc_bits=info.acc_bits, max_layers=info.max_layers,
            fm_lanes=ext["fm_lanes"], max_dim=ext["max_dim"], max_pad=ext["max_pad"],
            max_stride=ext["max_stride"], max_pool=ext["max_pool"],
            fifo_depth=ext["fifo_depth"], memory="spram" if ext["memory"] else "bram",
            out_parallel=bool(ext["out_parallel"]), product_shift=info.product_shift,
            pe_group=info.pe_group)
    except (TypeError, ValueError) as error:
        raise ModelMismatchError(f"the bitstream's CNN parameters are invalid: {error}") \
            from None


def cnn_input_order(q, input_shape) -> np.ndarray:
    """One quantized input of shape ``input_shape`` in the order INFER sends it to a CNN
    engine: a ``(C, H, W)`` map as (H, W, C), channels innermost; an ``(N,)`` vector as is."""
    q = np.asarray(q, dtype=np.int64).reshape(tuple(input_shape))
    if q.ndim == 3:
        q = q.transpose(1, 2, 0)
    return q.ravel()


def _cnn_mismatches(model: CompressedModel, info: EngineInfo, problems: list) -> list[str]:
    """:func:`model_mismatches` on a CNN engine: the model's encoding against the IDENTIFY
    parameters, then the layout (:func:`host.cnn_image.build_image`'s limits)."""
    from .cnn_image import build_image
    if not _has_conv(model):
        kind = "an LSTM" if any(isinstance(layer, QLSTM) for layer in model.layers) else "an MLP"
        engine = "LSTM" if kind == "an LSTM" else "SPMV"
        return problems + [
            (f"model {model.name!r} has no conv layer ({kind}); the bitstream's engine is CNN, "
             f"which runs conv packages such as digits-cnn: run {kind} on a bitstream with the "
             f"{engine} engine (`python -m hdl.sim --model` / `python -m hdl.build --model` "
             f"build the board for the model)")]

    _header_mismatches(model, info, problems)
    for n, (name, m) in enumerate(model.matrices()):
        _encoding_mismatches(f"matrix {n} ({name})", m, info, problems)
    if problems:
        return problems
    try:
        build_image(cnn_config(info), model)
    except ModelMismatchError as error:
        problems.append(str(error))
    except ValueError as error:
        problems.append(f"{error}")
    return problems


def _cnn_model_image(model: CompressedModel, info: EngineInfo) -> list[LoadBlock]:
    """:func:`model_image` of a CNN package on a CNN engine: regions 0-3 as every engine, one
    DESCRIPTOR block per hardware layer (address ``layer << FIELD_BITS``, the
    :class:`host.cnn_image.Field` words, which read back as written), then CONTROL with
    N_INPUTS = C*H*W and N_OUTPUTS = the output buffer words up to the last output."""
    from .cnn_image import FIELD_BITS, build_image, output_addresses
    config = cnn_config(info)
    image = build_image(config, model)
    wb = info.word_bytes
    blocks = _matrix_blocks(image, info)
    for n, desc in enumerate(image.descriptors):
        blocks.append(LoadBlock(f"descriptor of layer {n} ({image.layers[n].name})",
                                RegionId.DESCRIPTOR, 0, n << FIELD_BITS,
                                np.asarray(desc, np.int64), wb(RegionId.DESCRIPTOR)))
    n_outputs = int(output_addresses(image, config.fm_lanes).max()) + 1
    return _append_control(blocks, info, image.n_layers, int(np.prod(model.input_shape)),
                           n_outputs)


def _cnn_output_select(model: CompressedModel, info: EngineInfo) -> np.ndarray:
    """Indices of the model's outputs ((C, H, W) order) among the words INFER answers."""
    from .cnn_image import build_image, output_addresses
    config = cnn_config(info)
    return output_addresses(build_image(config, model), config.fm_lanes)


def _spmv_params(info: EngineInfo) -> SpmvParams:
    """The engine parameters :func:`host.spmv_image.build_image` lays the model out for (the
    IDENTIFY fields)."""
    return SpmvParams(n_pe=info.n_pe, index_bits=info.index_bits, run_bits=info.run_bits,
                      act_format=info.act_format, weight_width=info.weight_width,
                      acc_bits=info.acc_bits, max_rows=info.max_rows, max_cols=info.max_cols,
                      max_entries_per_pe=info.max_entries_per_pe, max_layers=info.max_layers,
                      max_pointers=info.max_pointers, max_bias=info.max_bias,
                      product_shift=info.product_shift, pe_group=info.pe_group,
                      **info.late_params())


def _lstm_params(info: EngineInfo, model: CompressedModel) -> LstmParams:
    """The engine parameters :func:`host.lstm_image.build_image` lays the model out for
    (IDENTIFY's sizes, the model's tables)."""
    limits = _lstm_limits(info)
    return LstmParams(n_pe=info.n_pe, hidden_max=max(1, limits["hidden_max"]),
                      input_max=limits["input_max"], steps_max=max(1, limits["steps_max"]),
                      classes_max=limits["classes_max"], index_bits=info.index_bits,
                      run_bits=info.run_bits, act_format=info.act_format,
                      weight_width=info.weight_width, acc_bits=info.acc_bits,
                      table_spec=model.table_spec, max_entries_per_pe=info.max_entries_per_pe,
                      layers_max=limits["layers_max"], proj_max=limits["proj_max"],
                      product_shift=info.product_shift, pe_group=info.pe_group,
                      **_lstm_schedule(info.late_params()))


def _lstm_schedule(late: dict) -> dict:
    """IDENTIFY's LSTM late words as :class:`host.memory_map.LstmParams` arguments
    (``overlap`` a bool)."""
    return {**late, "overlap": bool(late["overlap"])} if "overlap" in late else late


def _matrix_blocks(image, info: EngineInfo) -> list[LoadBlock]:
    """The first WRITE blocks of every engine image: CONTROL cleared (no model), then the
    per-PE entries and pointers, the codebooks and the biases (``image`` from
    ``host.spmv_image.build_image`` or ``host.lstm_image.build_image``)."""
    wb = info.word_bytes
    blocks = [LoadBlock("control (unload)", RegionId.CONTROL, 0, Control.N_LAYERS,
                        np.zeros(1, np.int64), wb(RegionId.CONTROL), check=False)]
    for p in range(info.n_pe):
        blocks.append(LoadBlock(f"entries of PE {p}", RegionId.ENTRY, p, 0,
                                image.entries[:, p], wb(RegionId.ENTRY)))
    for p in range(info.n_pe):
        blocks.append(LoadBlock(f"pointers of PE {p}", RegionId.POINTER, p, 0,
                                image.pointers[:, p], wb(RegionId.POINTER)))
    for slot, book in enumerate(image.codebooks):
        blocks.append(LoadBlock(f"codebook {slot}", RegionId.CODEBOOK, 0,
                                slot << info.index_bits, book, wb(RegionId.CODEBOOK)))
    blocks.append(LoadBlock("biases", RegionId.BIAS, 0, 0, image.bias, wb(RegionId.BIAS)))
    return blocks


def _lstm_descriptor_readback(words) -> np.ndarray:
    """What the LSTM engine's DESCRIPTOR words read back as: matrix descriptors (``k`` = 1, 4l,
    4l + 3) do not store COLS, the unused slots ``4l + 1`` (l >= 1) and layers l >= 1's STEPS
    and CLASSIFY fields are not stored (read 0); every other word reads back as written."""
    out = np.array(words, dtype=np.int64)
    for address in range(len(out)):
        k, field = address >> 3, address & 7
        matrix = k == 1 or k % 4 in (0, 3)
        if (matrix and field == Field.COLS) or (k % 4 == 1 and k != 1) \
                or (k % 4 == 2 and k > 2 and field in (LstmField.STEPS, LstmField.CLASSIFY)):
            out[address] = 0
    return out


def _lstm_model_image(model: CompressedModel, info: EngineInfo) -> list[LoadBlock]:
    """:func:`model_image` of an LSTM package on an LSTM engine (regions 0-4 and the
    activation tables, region TABLE; the descriptor block holds every layer's matrix,
    projection and LstmField descriptors, the classifier's, and STEPS = T)."""
    stack, cls = _lstm_layers(model)
    params = _lstm_params(info, model)
    image = build_lstm_image(params, stack, cls)
    steps = int(model.input_shape[0])
    wb = info.word_bytes
    blocks = _matrix_blocks(image, info)
    desc = np.zeros(params.descriptor_words, np.int64)
    for addr, value in image.descriptors:
        desc[addr] = value
    desc[(2 << 3) | LstmField.STEPS] = steps
    table = _lstm_table_problem(model, info)
    if table:
        raise ValueError(table)
    blocks.append(LoadBlock("activation tables (sigmoid, tanh; cell tanh)", RegionId.TABLE, 0,
                            0, image.tables, wb(RegionId.TABLE)))
    blocks.append(LoadBlock("descriptors (LSTM layers, classifier, sequence)",
                            RegionId.DESCRIPTOR, 0, 0, desc, wb(RegionId.DESCRIPTOR),
                            expected=_lstm_descriptor_readback(desc)))
    return _append_control(blocks, info, 2, steps * stack[0].input_size, cls.matrix.rows)


def model_image(model: CompressedModel, info: EngineInfo) -> list[LoadBlock]:
    """The WRITE blocks that load ``model`` into ``info``'s engine, in write order: CONTROL
    cleared (no model), the per-PE entries and pointers, codebooks, biases, descriptors, and
    last the CONTROL words that make the model runnable.  ``ValueError`` if it does not fit."""
    if info.engine == EngineKind.LSTM:
        return _lstm_model_image(model, info)
    if info.engine == EngineKind.CNN:
        return _cnn_model_image(model, info)
    layers = _engine_layers(model)
    image = build_spmv_image(_spmv_params(info), layers)
    n_inputs = int(np.prod(model.input_shape))
    n_outputs = layers[-1].matrix.rows
    wb = info.word_bytes
    blocks = _matrix_blocks(image, info)
    for n, desc in enumerate(image.descriptors):
        blocks.append(LoadBlock(f"descriptor of layer {n}", RegionId.DESCRIPTOR, 0, n << 3,
                                desc, wb(RegionId.DESCRIPTOR),
                                expected=_descriptor_readback(desc, n << 3, info.max_layers)))
    return _append_control(blocks, info, len(layers), n_inputs, n_outputs)


def expected_cycles(model: CompressedModel, info: EngineInfo, q) -> np.ndarray | None:
    """What INFER's cycle count must be for each input of ``q`` on ``info``'s engine: the
    cycle model (:func:`host.spmv_image.expected_run`, :func:`host.lstm_image.expected_run`)
    of the image the driver loads, with the broadcast FIFO depth and the LSTM schedule from
    IDENTIFY (:data:`host.protocol.LATE_EXTENSION_DEFAULTS`).

    Parameters
    ----------
    model : CompressedModel
        The model loaded on the engine.
    info : EngineInfo
        The engine's IDENTIFY answer.
    q : array_like of int
        Quantized inputs, one per row (:meth:`Accelerator.quantize`).

    Returns
    -------
    numpy.ndarray or None
        int64 ``(batch,)`` engine cycles per inference; ``None`` for an engine kind the host
        has no cycle model for from IDENTIFY alone (CNN: its timing constants are the
        generator's).
    """
    q = np.asarray(q, dtype=np.int64)
    if info.engine == EngineKind.SPMV:
        from .spmv_image import expected_run
        params = _spmv_params(info)
        image = build_spmv_image(params, _engine_layers(model))
        return np.array([expected_run(params, image, s).cycles for s in q], np.int64)
    if info.engine == EngineKind.LSTM:
        from .lstm_image import expected_run
        stack, cls = _lstm_layers(model)
        params = _lstm_params(info, model)
        image = build_lstm_image(params, stack, cls)
        return np.array([expected_run(params, image, s).cycles.total for s in q], np.int64)
    return None


def _append_control(blocks: list[LoadBlock], info: EngineInfo, n_layers: int, n_inputs: int,
                    n_outputs: int) -> list[LoadBlock]:
    """Append an image's last block, the CONTROL words that make the model runnable.

    Parameters
    ----------
    blocks : list of LoadBlock
        The image so far (from :func:`_matrix_blocks` on); appended to.
    info : EngineInfo
        The engine (CONTROL's word size).
    n_layers, n_inputs, n_outputs : int
        CONTROL.N_LAYERS, N_INPUTS and N_OUTPUTS; CONTROL.USER gets :func:`_image_id` of
        ``blocks``.

    Returns
    -------
    list of LoadBlock
        ``blocks``.
    """
    control = np.array([n_layers, n_inputs, n_outputs, _image_id(blocks)], np.int64)
    blocks.append(LoadBlock("control", RegionId.CONTROL, 0, Control.N_LAYERS, control,
                            info.word_bytes(RegionId.CONTROL)))
    return blocks


def _descriptor_readback(words, address: int, matrix_layers: int) -> np.ndarray:
    """What DESCRIPTOR words ``address ..`` read back as (:func:`descriptor_readback`)."""
    return np.array([descriptor_readback(address + i, int(v), matrix_layers)
                     for i, v in enumerate(words)], dtype=np.int64)


def _image_id(blocks) -> int:
    """CRC-32 of the image: stored in CONTROL.USER so :meth:`Accelerator.attach` can tell
    which model a board holds."""
    import zlib
    crc = 0
    for block in blocks:
        for header, data in block.chunks(MAX_PAYLOAD):
            crc = zlib.crc32(header + data, crc)
    return crc & 0x7FFFFFFF


# ------------------------------------------------------------------------------------------------
# The accelerator


class Accelerator:
    """A spine board (or its simulation) behind a serial link.

    Parameters
    ----------
    url : str
        ``/dev/ttyUSB1``, ``COM3``, ``socket://HOST:PORT`` (simulated board), ``loop://``.
    baud : int
        Baud rate of a serial port (the bitstream's; ignored for sockets).
    timeout : float
        Seconds without an answer after which a request counts as lost and is re-sent.
    retries : int
        Extra attempts per request before :class:`LinkError`.
    transport : object, optional
        A ready pyserial-like object to use instead of opening ``url`` (tests).

    Raises
    ------
    LinkError
        If the port cannot be opened.
    """

    def __init__(self, url: str | None = None, *, baud: int = DEFAULT_BAUD,
                 timeout: float = DEFAULT_TIMEOUT, retries: int = 3, transport=None):
        if transport is None:
            transport = open_link(url, baud=baud, timeout=timeout)
        self.url = url or getattr(transport, "name", "transport")
        self.port = transport
        self.link = FrameLink(transport, name=str(self.url), timeout=timeout, retries=retries)
        self._resync(baud)
        self._info: EngineInfo | None = None
        self.model: CompressedModel | None = None
        self._golden = None
        self._out_select = None
        self.last_cycles: int | None = None   #: engine cycles of the last inference
        self._ran = False                     # an INFER answered since the model was attached
        self.last_load: dict | None = None    #: figures of the last load()

    # --- context manager -----------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the link (idempotent)."""
        port, self.port = self.port, None
        if port is not None:
            with contextlib.suppress(OSError):  # pyserial's SerialException is an OSError
                port.close()

    def _resync(self, baud: int) -> None:
        """Stay silent for 64 byte times (so a half frame left in the device by a previous
        session times out), then drop whatever arrived (docs/protocol.md, "Frames")."""
        import time
        time.sleep(max(FRAME_TIMEOUT_BYTES * 10 / baud, RESYNC_MIN_SECONDS))
        with contextlib.suppress(AttributeError, OSError):
            self.port.reset_input_buffer()

    def _request(self, command: Command, payload: bytes = b"") -> bytes:
        if self.port is None:
            raise LinkError(f"the link to {self.url} is closed; open a new Accelerator")
        return self.link.request(command, payload)

    # --- plain commands ------------------------------------------------------------------------

    def identify(self) -> EngineInfo:
        """The engine in the bitstream (IDENTIFY); cached after the first call."""
        if self._info is None:
            payload = self._request(Command.IDENTIFY)
            try:
                self._info = EngineInfo.from_payload(payload)
            except ValueError as error:
                raise DeviceError(f"{self.url}: the IDENTIFY answer cannot be understood "
                                  f"({error}); is this a spine bitstream of the same version as "
                                  f"this driver?", None, Command.IDENTIFY) from None
        return self._info

    def status(self) -> DeviceStatus:
        """State and counters of the device (STATUS)."""
        payload = self._request(Command.STATUS)
        try:
            return parse_status(payload)
        except ProtocolError as error:
            raise DeviceError(f"{self.url}: bad STATUS answer ({error})", None,
                              Command.STATUS) from None

    def reset(self) -> None:
        """Clear the device's counters and engine state (RESET; memories are kept)."""
        self._request(Command.RESET)

    def write(self, region: int, index: int, address: int, data: bytes) -> None:
        """One WRITE of raw word bytes."""
        self._request(Command.WRITE, _ADDR.pack(region, index, address) + bytes(data))

    def read(self, region: int, index: int, address: int, count: int) -> bytes:
        """``count`` words from a region (READ), as raw bytes."""
        return self._request(Command.READ, _ADDR.pack(region, index, address)
                             + struct.pack("<H", count))

    def checksum(self, region: int, index: int, address: int, count: int) -> int:
        """CRC-16 of ``count`` words of a region as computed by the device (CHECKSUM)."""
        answer = self._request(Command.CHECKSUM, _ADDR.pack(region, index, address)
                               + struct.pack("<H", count))
        if len(answer) != 2:
            raise DeviceError(f"{self.url}: CHECKSUM answered {len(answer)} bytes, not 2",
                              None, Command.CHECKSUM)
        return struct.unpack("<H", answer)[0]

    # --- models --------------------------------------------------------------------------------

    def check_model(self, model: CompressedModel) -> None:
        """Refuse a model whose encoding does not match the bitstream's engine.

        Raises
        ------
        ModelMismatchError
            Naming every difference (model value vs engine value) and how to fix it.
        """
        info = self.identify()
        problems = model_mismatches(model, info)
        if problems:
            raise ModelMismatchError(
                f"model {model.name!r} does not fit the engine on {self.url}:\n  - "
                + "\n  - ".join(problems)
                + f"\nFix: compress the model for this engine (`python -m host.compress MODEL "
                  f"--pes {info.n_pe} --act-width {info.act_format.width} --act-frac "
                  f"{info.act_format.frac} --bits {info.index_bits} --run-bits {info.run_bits} "
                  f"--acc-bits {info.acc_bits} --product-shift {info.product_shift}`) or build "
                  f"a bitstream for the model")

    def _blocks(self, model) -> list[LoadBlock]:
        try:
            return model_image(model, self.identify())
        except ValueError as error:
            raise ModelMismatchError(f"model {model.name!r} does not fit the engine on "
                                     f"{self.url}: {error}") from None

    def load(self, model, *, verify: bool = True, progress: bool = True,
             window: int = 1) -> CompressedModel:
        """Write every memory region of ``model``, verifying each block as soon as it is written.

        Each block (one region and PE: e.g. the entries of PE 3) is written, then compared with
        the device's memory (CHECKSUM of the words actually stored, :meth:`verify_block`).  A
        block that differs is written once more and compared again; if it still differs,
        :class:`VerifyError` names the block, its region and PE and the first differing word.

        Parameters
        ----------
        model : CompressedModel or path of a ``.spn`` package
        verify : bool
            Read back every block the bitstream can read (all of them on current bitstreams).
        progress : bool
            Show a tqdm progress bar (bytes written, re-writes included).
        window : int
            WRITE requests in flight at once (1, the safe default; see :meth:`stream`).

        Returns
        -------
        CompressedModel
            The loaded model (now used by :meth:`infer` and :meth:`stream`).

        Raises
        ------
        ModelMismatchError, VerifyError, DeviceError, LinkError
        """
        model = _as_model(model)
        self.check_model(model)
        info = self.identify()
        blocks = self._blocks(model)
        total = sum(block.nbytes for block in blocks)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"load {model.name}",
                       leave=False)
        report = {"verified": 0, "words": 0, "skipped": [], "rewritten": []}
        requests = 0
        try:
            for block in blocks:
                requests += self._write_block(block, window, bar)
                if not verify or not block.check:
                    continue
                if not _readable(info, block.region):
                    report["skipped"].append(block.name)
                    continue
                difference = self.verify_block(block)
                if difference is not None:
                    report["rewritten"].append(block.name)
                    if bar is not None:
                        bar.total += block.nbytes
                        bar.refresh()
                    requests += self._write_block(block, window, bar)
                    difference = self.verify_block(block)
                    if difference is not None:
                        raise self._verify_error(block, difference, rewritten=True)
                report["verified"] += 1
                report["words"] += len(block.words)
        finally:
            if bar is not None:
                bar.close()
        self.last_load = {"bytes": total, "blocks": len(blocks), "requests": requests}
        if verify:
            self.last_load["verify"] = report
        self._attach(model)
        return model

    def _write_block(self, block: LoadBlock, window: int, bar) -> int:
        """WRITE the words of ``block``; returns the number of requests."""
        chunks = list(block.chunks(MAX_PAYLOAD - _ADDR.size))
        requests = ((Command.WRITE, header + data, len(data)) for header, data in chunks)
        for size, _ in self.link.pipeline(requests, window):
            if bar is not None:
                bar.update(size)
        return len(chunks)

    def verify_block(self, block: LoadBlock) -> dict | None:
        """Compare ``block`` with the device memory: None if every word reads back as expected,
        else ``{"address", "got", "expected", "differing"}`` of the first differing word.

        One CHECKSUM per 65535 words (the device's CRC-16 of the words it stores); only when a
        CRC differs are the words READ to find the first difference.
        """
        expected = block.readback
        wb = block.word_bytes
        step = 0xFFFF
        for start in range(0, len(expected), step):
            part = expected[start:start + step]
            address = block.address + start
            if self.checksum(block.region, block.index, address, len(part)) \
                    == crc16(pack_words(part, wb)):
                continue
            return self._first_difference(block, start, len(part))
        return None

    def _first_difference(self, block: LoadBlock, start: int, count: int) -> dict:
        expected = block.readback
        wb = block.word_bytes
        per = MAX_PAYLOAD // wb
        mask = (1 << (8 * wb)) - 1
        first, differing = None, 0
        for offset in range(start, start + count, per):
            n = min(per, start + count - offset)
            raw = self.read(block.region, block.index, block.address + offset, n)
            got = unpack_words(raw, wb, signed=False)
            want = expected[offset:offset + n] & mask
            bad = np.flatnonzero(got != want)
            differing += len(bad)
            if len(bad) and first is None:
                k = int(bad[0])
                first = {"address": block.address + offset + k, "got": int(got[k]),
                         "expected": int(want[k])}
        if first is None:   # the CRC differed but every word reads back right
            first = {"address": block.address + start, "got": None, "expected": None}
        first["differing"] = differing
        return first

    def _verify_error(self, block: LoadBlock, difference: dict, *, rewritten: bool):
        wb = block.word_bytes
        address = difference["address"]
        if difference["got"] is None:
            what = (f"words {block.address}..{block.address + len(block.words) - 1} have a "
                    f"different CRC-16 although each reads back right (a flaky link or memory)")
        else:
            what = (f"word {address} reads back 0x{difference['got']:0{2 * wb}X}, expected "
                    f"0x{difference['expected']:0{2 * wb}X} ({difference['differing']} of "
                    f"{len(block.words)} words differ)")
        again = " after writing it a second time" if rewritten else ""
        return VerifyError(
            f"{self.url}: {block.name} ({block.where}) does not hold what was written"
            f"{again}: {what}. The memory did not take the model: reset the board (or rebuild "
            f"and reload the bitstream) and load again", Status.OK, Command.CHECKSUM,
            region=block.region, index=block.index, address=address,
            got=difference["got"], expected=difference["expected"])

    def verify(self, model, blocks: list[LoadBlock] | None = None) -> dict:
        """Compare the device memory with ``model``'s image, block by block (CHECKSUM of the
        words the device stores; READ to locate a difference).  Nothing is re-written.

        Regions the bitstream marks write-only (bitstreams before read-back) are skipped.

        Returns
        -------
        dict
            ``{"verified": blocks checked, "words": words checked, "skipped": [names]}``.

        Raises
        ------
        VerifyError
            Naming the first block that differs, its region and PE, and the first differing
            word (its address, the value read and the value expected).
        """
        model = _as_model(model)
        info = self.identify()
        blocks = blocks if blocks is not None else self._blocks(model)
        report = {"verified": 0, "words": 0, "skipped": []}
        for block in blocks:
            if not block.check:
                continue
            if not _readable(info, block.region):
                report["skipped"].append(block.name)
                continue
            difference = self.verify_block(block)
            if difference is not None:
                raise self._verify_error(block, difference, rewritten=False)
            report["verified"] += 1
            report["words"] += len(block.words)
        return report

    def attach(self, model, *, verify: bool = True) -> CompressedModel:
        """Use ``model`` for :meth:`infer` without writing it (it is already on the board,
        e.g. preloaded by ``python -m hdl.sim --model``); checks it and, with ``verify``,
        compares the device memory with it."""
        model = _as_model(model)
        self.check_model(model)
        if verify:
            self.verify(model)
        self._attach(model)
        return model

    def _attach(self, model: CompressedModel) -> None:
        from .golden import GoldenModel
        self.model = model
        self._golden = GoldenModel(model)
        self._out_count = _output_count(model)
        self._out_select = None
        self._ran = False
        info = self.identify()
        if info.engine == EngineKind.CNN:
            self._out_select = _cnn_output_select(model, info)
            self._out_count = int(self._out_select.max()) + 1

    # --- inference -----------------------------------------------------------------------------

    def _need_model(self) -> CompressedModel:
        if self.model is None:
            raise SpineError(f"no model on {self.url}: call load(model) (or attach(model) if "
                             f"the board already holds it) before infer()/stream()")
        return self.model

    def quantize(self, x) -> np.ndarray:
        """Float inputs ``(batch, *input_shape)`` -> activation integers (golden model's)."""
        model = self._need_model()
        x = np.asarray(x, dtype=np.float64)
        if x.shape == tuple(model.input_shape):
            x = x[None]
        if x.shape[1:] != tuple(model.input_shape):
            raise SpineError(f"inputs of shape {x.shape}: model {model.name!r} takes one input "
                             f"of shape {tuple(model.input_shape)} or a batch "
                             f"(B, {', '.join(map(str, model.input_shape))})")
        if not np.all(np.isfinite(x)):
            raise SpineError("the inputs hold NaN or infinite values")
        return self._golden.quantize_input(x)

    def _infer_payload(self, q) -> bytes:
        info = self.identify()
        if info.engine == EngineKind.CNN:
            q = cnn_input_order(q, self.model.input_shape)
        return pack_words(q, info.act_bytes)

    def _decode_output(self, payload: bytes) -> tuple[np.ndarray, int]:
        """INFER answer -> (outputs, engine cycles): cycles u32 LE, then the output words."""
        info = self.identify()
        expected = _INFER_HEADER.size + self._out_count * info.act_bytes
        if len(payload) != expected:
            raise DeviceError(f"{self.url}: INFER answered {len(payload)} bytes, expected "
                              f"{expected} (cycles and {self._out_count} outputs of "
                              f"{info.act_bytes} bytes): is the loaded model the one the "
                              f"driver thinks?", Status.OK, Command.INFER)
        (cycles,) = _INFER_HEADER.unpack_from(payload)
        outputs = unpack_words(payload[_INFER_HEADER.size:], info.act_bytes, True,
                               info.act_format.width)
        if self._out_select is not None:
            outputs = outputs[self._out_select]
        return outputs, cycles

    def infer(self, x, *, state: bool = False):
        """Output integers of one float input (shape ``input_shape``), or of a batch
        ``(B, *input_shape)`` (then ``(B, outputs)``).

        With ``state=True`` (LSTM engine only) returns ``(outputs, LstmState)``: after each
        input's INFER the final state h_T (r_T with a projection) is read from the STATE
        region (:meth:`read_state`), one input at a time.
        """
        model = self._need_model()
        single = np.asarray(x).shape == tuple(model.input_shape)
        q = self.quantize(x)
        if state:
            self._state_region()             # refuse before running anything
            pairs = [self.infer_int(one, state=True) for one in q]
            out = np.stack([o for o, _ in pairs])
            ints = np.stack([h.ints for _, h in pairs])
            hs = LstmState(ints, self._dequantize(ints))
            if single:
                return out[0], LstmState(ints[0], hs.values[0])
            return out, hs
        out = np.stack(list(self.stream_int(q, window=1)))
        return out[0] if single else out

    def infer_int(self, q, *, state: bool = False):
        """Output integers of one quantized input (activation integers, ``input_shape``);
        with ``state=True`` ``(outputs, LstmState)`` as :meth:`infer`."""
        if state:
            self._state_region()
        out = next(iter(self.stream_int(np.asarray(q)[None], window=1)))
        return (out, self.read_state()) if state else out

    def _state_region(self):
        """The STATE region description; :class:`SpineError` if the bitstream has none."""
        model = self._need_model()
        info = self.identify()
        try:
            region = info.region(RegionId.STATE)
        except KeyError:
            raise SpineError(
                f"the bitstream on {self.url} cannot give the LSTM state h_T: it has no STATE "
                f"region (engine {info.kind}); only LSTM engine bitstreams built with STATE "
                f"read-back have it: rebuild the bitstream with this version "
                f"(python -m hdl.build --model ...)") from None
        size = _lstm_layers(model)[0][-1].output_size
        if not region.readable or region.depth < size:
            raise SpineError(f"the STATE region on {self.url} ({region.depth} words"
                             f"{'' if region.readable else ', not readable'}) cannot hold "
                             f"model {model.name!r}'s final state of {size} values")
        return region, size

    def _dequantize(self, ints) -> np.ndarray:
        return self.identify().act_format.to_float(ints)

    def read_state(self) -> LstmState:
        """The last run's final LSTM state (LSTM engine only): the last LSTM layer's final
        output h_T (r_T with a projection), ``S`` words read from the STATE region after the
        last INFER (:meth:`infer`, :meth:`stream` ...), as integers and as floats.

        Raises
        ------
        SpineError
            If no model is attached, the bitstream has no STATE region (an SpMV or CNN engine,
            or an LSTM bitstream built before STATE existed), or no inference has run since
            the model was loaded.
        """
        region, size = self._state_region()
        if not self._ran:
            raise SpineError(f"no inference has run on {self.url} since the model was "
                             f"loaded: call infer() first (STATE holds the last run's h_T)")
        per = MAX_PAYLOAD // region.word_bytes
        data = b"".join(self.read(RegionId.STATE, 0, k, min(per, size - k))
                        for k in range(0, size, per))
        ints = unpack_words(data, region.word_bytes, True, self.identify().act_width)
        return LstmState(ints, self._dequantize(ints))

    def stream(self, inputs, window: int = 1):
        """Yield the output integers of every float input, in order, with up to ``window``
        INFER requests in flight.

        ``inputs``: an array ``(B, *input_shape)`` or any iterable of inputs.

        ``window > 1`` keeps the line busy while the host waits for answers, but only works
        if the bitstream's receive FIFO holds what arrives while the device answers (the
        current shell queues 16 bytes: too few for pipelined INFERs).  If pipelined requests
        arrive damaged, the link falls back to one in flight for good and re-sends them
        (``self.link.window_limit``, ``self.link.stats.window_drops``); results stay exact.
        """
        model = self._need_model()
        if isinstance(inputs, np.ndarray) and inputs.ndim == len(model.input_shape) + 1:
            q = self.quantize(inputs)
            return self.stream_int(q, window=window)
        return self.stream_int((self.quantize(x)[0] for x in inputs), window=window)

    def stream_int(self, q_inputs, window: int = 1, *, cycles: bool = False):
        """:meth:`stream` for quantized inputs (an iterable of ``input_shape`` int arrays).

        With ``cycles=True`` yields ``(outputs, engine clock cycles)`` pairs.
        """
        model = self._need_model()
        shape = tuple(model.input_shape)

        def requests():
            for i, q in enumerate(q_inputs):
                q = np.asarray(q)
                if q.shape != shape:
                    raise SpineError(f"input {i} has shape {q.shape}; model {model.name!r} "
                                     f"takes {shape}")
                yield Command.INFER, self._infer_payload(q), i

        for _, frame in self.link.pipeline(requests(), window):
            outputs, count = self._decode_output(frame.payload)
            self.last_cycles = count
            self._ran = True
            yield (outputs, count) if cycles else outputs


def _readable(info: EngineInfo, region: int) -> bool:
    try:
        return info.region(region).readable
    except KeyError:
        return False


def _as_model(model) -> CompressedModel:
    if isinstance(model, CompressedModel):
        return model
    if isinstance(model, (str, Path)):
        from .package import load_package
        return load_package(model)
    raise TypeError(f"expected a CompressedModel or the path of a .spn package, not "
                    f"{type(model).__name__}")


def _output_count(model: CompressedModel) -> int:
    from .golden import GoldenModel
    probe = np.zeros((1, *model.input_shape), dtype=np.int64)
    return int(np.prod(GoldenModel(model).forward_int(probe).shape[1:]))
