"""Memory map of the engines: loader regions, descriptor fields and engine parameters.

The one definition of how a model lies in an engine's memories, shared by the host (image
builders :mod:`host.spmv_image` / :mod:`host.lstm_image`, driver) and the gateware
(:mod:`hdl.spmv`, :mod:`hdl.lstm` import it; host never imports ``hdl``).

:class:`SpmvParams` and :class:`LstmParams` are the engines' generator parameters plus every
width derived from them (bits), computed here once; :class:`hdl.spmv.SpmvEngine` and
:class:`hdl.lstm.LstmEngine` build one from their arguments (validating them) and expose it as
``engine.params``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .activations import TableSpec
from .cyclemodel import REQUANT_LATENCY, Timing
from .encoding import pointer_fields
from .fixedpoint import MAX_ACC_WIDTH, MAX_WIDTH, Format
from .params import check_int
from .protocol import COMMON_EXTENSION_DEFAULTS, LATE_EXTENSION_DEFAULTS

__all__ = ["Region", "Field", "DESCRIPTOR_FIELDS", "DESCRIPTOR_MEMBERS", "descriptor_readback",
           "LstmRegion", "table_layout",
           "LstmField", "GATES", "SpmvParams", "LstmParams", "params_of", "common_entries",
           "late_entries", "addr_bits",
           "bits_for", "check_pe_group", "FETCH_LATENCY", "FIRST_BROADCAST", "DRAIN_LATENCY",
           "POP_INTERVAL",
           "SETUP_CYCLES",
           "OUTPUT_OVERHEAD", "DEFAULT_ACT_FORMAT", "check_product_shift", "check_formats",
           "common_entries"]

#: Default activation format (Q5.10).
DEFAULT_ACT_FORMAT = Format(16, 10)
#: Cycles from a PE's pop to its first entry issue (the pointer read).
FETCH_LATENCY = 1
#: MAC-phase cycle of the first broadcast (the non-zero list read).
FIRST_BROADCAST = 1
#: Cycles from the last entry issue to its product being in the accumulator.
DRAIN_LATENCY = 3
#: Fewest cycles between two pops of a PE (hdl.pe: no pop while a column's pointers arrive).
POP_INTERVAL = 2
#: Non-MAC cycles per layer besides the rows: descriptor load + done detection.
SETUP_CYCLES = 2
#: Output phase cycles are ``rows + OUTPUT_OVERHEAD``: the accumulator / bias read, the pipelined
#: requantizer's REQUANT_LATENCY stages (host.cyclemodel), the finish cycle.
OUTPUT_OVERHEAD = 2 + REQUANT_LATENCY
#: LSTM gates (i, f, g, o).
GATES = 4


class Region(enum.IntEnum):
    """``load.region`` values of :class:`hdl.spmv.SpmvEngine`."""

    ENTRY = 0       #: addr = entry address; per-PE data in ``lanes`` (PEs selected by ``mask``)
    POINTER = 1     #: addr = pointer slot k; per-PE pointer word in ``lanes``
    CODEBOOK = 2    #: addr = slot << index_bits | weight index; data = weight (all PEs)
    BIAS = 3        #: addr = bias address; data = bias (accumulator format)
    DESCRIPTOR = 4  #: addr = layer << 3 | field; data = field value (see :class:`Field`)
    INPUT = 5       #: addr = column; data = activation; write columns in ascending order,
    #:                 address 0 first (it restarts the input's non-zero list)


class Field(enum.IntEnum):
    """Layer descriptor fields (``load.addr = layer << 3 | field``)."""

    ROWS = 0        #: output rows of the layer
    COLS = 1        #: input columns (informational: the engine does not need it, ignored)
    ENTRY_BASE = 2  #: first entry address of the layer in every PE's entry memory
    PTR_BASE = 3    #: first pointer slot of the layer (cols slots)
    BIAS_BASE = 4   #: address of the layer's row 0 bias
    CODEBOOK = 5    #: codebook slot
    SHIFT = 6       #: requantization shift: weight fraction bits - the engine's product shift
    #:                 (:func:`host.compressed.requant_shift`)
    RELU = 7        #: 1: ReLU after requantization


DESCRIPTOR_FIELDS = tuple(Field)

#: The descriptor-layout member each :class:`Field` writes (COLS is not stored).
DESCRIPTOR_MEMBERS = ((Field.ROWS, "rows"), (Field.ENTRY_BASE, "entry_base"),
                      (Field.PTR_BASE, "ptr_base"), (Field.BIAS_BASE, "bias_base"),
                      (Field.CODEBOOK, "cb_slot"), (Field.SHIFT, "shift"), (Field.RELU, "relu"))


def descriptor_readback(address: int, value: int, matrix_layers: int) -> int:
    """What a read of DESCRIPTOR word ``address`` returns after ``value`` was written to it.

    The engines keep each descriptor field in a register of the field's width (reads return
    it zero-extended) and do not store COLS: the COLS word of a matrix layer (``address >> 3 <
    matrix_layers``; the LSTM engine's "layer" 2 is its sequence descriptor, whose field 1,
    INPUT, is stored) reads 0.  Every other value an image builder writes fits its field, so it
    reads back unchanged.
    """
    if address & 7 == Field.COLS and address >> 3 < matrix_layers:
        return 0
    return int(value)


class LstmRegion(enum.IntEnum):
    """``load.region`` values of :class:`hdl.lstm.LstmEngine` (0..4 as :class:`Region`)."""

    ENTRY = 0       #: addr = entry address; per-PE packed entries in ``lanes``
    POINTER = 1     #: addr = pointer slot k; per-PE pointer word in ``lanes``
    CODEBOOK = 2    #: addr = slot << index_bits | weight index; data = weight
    BIAS = 3        #: addr = bias address; data = bias (accumulator format)
    DESCRIPTOR = 4  #: addr = k << 3 | field: k = 4l layer l's LSTM matrix, 1 the classifier
    #:                 (:class:`Field`), 4l + 2 layer l's :class:`LstmField` values, 4l + 3
    #:                 layer l's projection (:class:`Field`, ROWS 0: none)
    XLIST = 5       #: addr = x-list index; data = column << act.width | value (non-zeros
    #:                 of x_0, then x_1, ... in ascending column order; the engine appends
    #:                 every layer's outputs but the last's after them)
    XEND = 6        #: addr = step t; data = x-list index one past x_t's last non-zero
    #:                 (the engine writes entries l*T + t for layers l >= 1)
    TABLE = 7       #: addr = table word (:func:`table_layout`): the activation tables in
    #:                 ``act_format`` (written by the host from ``make_table``, readable)


class LstmField(enum.IntEnum):
    """Layer ``l``'s descriptor (``load.addr = (4l + 2) << 3 | field``)."""

    HIDDEN = 0      #: H (1 .. hidden_max); 0: no layer l (the layers end before it)
    INPUT = 1       #: I: state unit u is column I + u of the LSTM matrix
    STEPS = 2       #: time steps T (1 .. steps_max); layer 0's descriptor only
    CLASSIFY = 3    #: 1: run the classifier after the last step; layer 0's descriptor only
    GATE0 = 4       #: gate g's first row g*H as ``local << pe_bits | pe`` (fields 4..7)


def table_layout(spec) -> dict:
    """Word addresses of the LSTM engine's TABLE region (:attr:`LstmRegion.TABLE`) for a
    :class:`host.activations.TableSpec` with ``E = spec.entries`` (a power of two) entries per
    table: ``{"sigmoid": 0, "tanh": E, "cell": 2 * E, "words": 3 * E}``.  Words ``0 .. 2E-1``
    are the gate table (sigmoid then tanh, read by the gate stage: address
    ``(gate == g) << index_bits | table_index(z)``), words ``2E .. 3E-1`` the cell table
    (tanh again, read by the cell stage for tanh(c)): two memories, two copies of tanh.
    Bit ``index_bits + 1`` of an address selects the cell table."""
    e = spec.entries
    return {"sigmoid": 0, "tanh": e, "cell": 2 * e, "words": 3 * e}


def bits_for(value: int) -> int:
    """Bits of an unsigned number holding ``value`` (at least 1; as ``amaranth.utils``)."""
    return max(1, int(value).bit_length())


def ceil_log2(value: int) -> int:
    """Smallest ``n`` with ``2**n >= value`` (``value >= 1``)."""
    return (int(value) - 1).bit_length()


def addr_bits(depth: int) -> int:
    """Address width (bits) of a memory of ``depth`` words (at least 1)."""
    return max(1, ceil_log2(depth))


def check_product_shift(product_shift, act_format, weight_width: int) -> None:
    """``product_shift`` (engine parameter) must be an integer from 0 to
    ``act.width + weight_width - 1`` (a product's bits)."""
    check_int("product_shift", product_shift, 0, act_format.width + weight_width - 1)
def check_pe_group(pe_group, n_pe: int, entry_bits: int) -> None:
    """Check an engine's ``pe_group`` (PEs per lockstep group, :mod:`hdl.pe`): 1, or 2 with an
    even ``n_pe`` and entries of at most 8 bits (two share one 16-bit entry word)."""
    if pe_group not in (1, 2) or isinstance(pe_group, bool):
        raise ValueError(f"`pe_group` must be 1 or 2, not {pe_group!r}")
    if n_pe % pe_group:
        raise ValueError(f"`pe_group` 2 needs an even `n_pe`, not {n_pe}")
    if pe_group == 2 and entry_bits > 8:
        raise ValueError(f"`pe_group` 2 needs entries of at most 8 bits (index_bits + "
                         f"run_bits), not {entry_bits}")


def check_formats(act_format, weight_width: int, acc_bits: int, product_shift: int) -> None:
    """Check an engine's number formats: ``act_format`` a :class:`host.fixedpoint.Format` of at
    most ``MAX_WIDTH`` bits, ``weight_width`` 2 .. ``MAX_WIDTH`` bits, ``acc_bits`` from the
    activation width to ``MAX_ACC_WIDTH``, and ``product_shift`` (:func:`check_product_shift`).
    """
    if not isinstance(act_format, Format):
        raise TypeError(f"`act_format` must be a host.fixedpoint.Format, not {act_format!r}")
    if act_format.width > MAX_WIDTH:
        raise ValueError(f"`act_format` width must be at most {MAX_WIDTH} bits, not "
                         f"{act_format.width}")
    check_int("weight_width", weight_width, 2, MAX_WIDTH)
    check_int("acc_bits", acc_bits, act_format.width, MAX_ACC_WIDTH)
    check_product_shift(product_shift, act_format, weight_width)


def _timing(fifo_depth: int) -> Timing:
    return Timing(fifo_depth=fifo_depth, fetch_latency=FETCH_LATENCY,
                  first_broadcast=FIRST_BROADCAST, drain_latency=DRAIN_LATENCY,
                  pop_interval=POP_INTERVAL)


class _Widths:
    """Widths shared by both engines' PE arrays (all in bits)."""

    @property
    def entry_bits(self) -> int:
        """Packed entry: weight index + zero run."""
        return self.index_bits + self.run_bits

    @property
    def ptr_len_bits(self) -> int:
        """A pointer word's column length (0 .. rows_per_pe, host.encoding.pointer_fields)."""
        return pointer_fields(self.max_entries_per_pe, self.rows_per_pe)[1]

    @property
    def ptr_bits(self) -> int:
        """Pointer word ``start | length << entry_addr_bits`` (host.encoding.pointer_words)."""
        return self.entry_addr_bits + self.ptr_len_bits

    @property
    def entry_addr_bits(self) -> int:
        return addr_bits(self.max_entries_per_pe)

    @property
    def k_bits(self) -> int:
        """Pointer slot index."""
        return addr_bits(self.max_pointers)

    @property
    def bias_bits(self) -> int:
        return addr_bits(self.max_bias)

    @property
    def shift_bits(self) -> int:
        return bits_for(self.weight_width - 1)

    @property
    def lane_width(self) -> int:
        """Per-PE loader lane (ENTRY and POINTER words)."""
        return max(self.entry_bits, self.ptr_bits)

    @property
    def rows_per_pe(self) -> int:
        return -(-self.max_rows // self.n_pe)

    def timing(self) -> Timing:
        """The cycle model constants of the engine's MAC phases."""
        return _timing(self.fifo_depth)


@dataclass(frozen=True, kw_only=True)
class SpmvParams(_Widths):
    """Parameters of :class:`hdl.spmv.SpmvEngine` (see there) and the widths derived from them.

    ``max_pointers`` and ``max_bias`` default to ``max_layers * max_cols`` and
    ``max_layers * max_rows``.  Raises ``ValueError``/``TypeError`` naming a bad parameter.
    """

    n_pe: int
    index_bits: int = 4
    run_bits: int = 4
    act_format: Format = DEFAULT_ACT_FORMAT
    weight_width: int = 16
    acc_bits: int = 32
    max_rows: int
    max_cols: int
    max_entries_per_pe: int
    fifo_depth: int = 8
    max_layers: int = 4
    max_pointers: int | None = None
    max_bias: int | None = None
    product_shift: int = 0
    pe_group: int = 1

    def __post_init__(self):
        check_int("n_pe", self.n_pe, 1)
        check_pe_group(self.pe_group, self.n_pe, self.index_bits + self.run_bits)
        check_int("index_bits", self.index_bits, 1, 8)
        check_int("run_bits", self.run_bits, 1, 8)
        check_formats(self.act_format, self.weight_width, self.acc_bits, self.product_shift)
        check_int("max_rows", self.max_rows, 1)
        check_int("max_cols", self.max_cols, 1)
        check_int("max_entries_per_pe", self.max_entries_per_pe, 1)
        check_int("fifo_depth", self.fifo_depth, 1)
        check_int("max_layers", self.max_layers, 1)
        if self.max_pointers is None:
            object.__setattr__(self, "max_pointers", self.max_layers * self.max_cols)
        check_int("max_pointers", self.max_pointers, 2)
        if self.max_bias is None:
            object.__setattr__(self, "max_bias", self.max_layers * self.max_rows)
        check_int("max_bias", self.max_bias, 1)

    @property
    def list_depth(self) -> int:
        """Non-zero list depth (a layer's inputs or outputs)."""
        return max(self.max_rows, self.max_cols)

    @property
    def col_bits(self) -> int:
        return addr_bits(self.list_depth)

    @property
    def cb_bits(self) -> int:
        """Codebook slot."""
        return addr_bits(self.max_layers)

    @property
    def addr_width(self) -> int:
        """Loader address (every region's address fits)."""
        return max(self.entry_addr_bits, self.k_bits, self.cb_bits + self.index_bits,
                   self.bias_bits, addr_bits(self.max_layers) + 3, self.col_bits)

    @property
    def data_width(self) -> int:
        """Loader data word (every region's word fits)."""
        return max(self.acc_bits, self.act_format.width, self.weight_width,
                   bits_for(self.max_rows), self.entry_addr_bits, self.k_bits,
                   self.bias_bits, self.cb_bits, self.shift_bits, 1)

    @staticmethod
    def run_cycles(mac_cycles, rows) -> int:
        """Cycles of a whole run from the layers' MAC cycles and row counts:
        ``sum(mac + SETUP_CYCLES + rows + OUTPUT_OVERHEAD)`` (``rows = 0``: one finish cycle)."""
        total = 0
        for mac, r in zip(mac_cycles, rows):
            total += int(mac) + SETUP_CYCLES + (int(r) + OUTPUT_OVERHEAD if r else 1)
        return total


@dataclass(frozen=True, kw_only=True)
class LstmParams(_Widths):
    """Parameters of :class:`hdl.lstm.LstmEngine` (see there) and the widths derived from them.

    ``max_xlist`` defaults to ``steps_max * (input_max + (layers_max - 1) * state_max)``.
    Raises ``ValueError``/``TypeError``
    naming a bad parameter.
    """

    n_pe: int
    hidden_max: int
    input_max: int
    steps_max: int
    classes_max: int = 16
    index_bits: int = 4
    run_bits: int = 4
    act_format: Format = DEFAULT_ACT_FORMAT
    weight_width: int = 16
    acc_bits: int = 32
    table_spec: TableSpec = TableSpec()
    max_entries_per_pe: int
    fifo_depth: int = 8
    max_xlist: int | None = None
    ew_lanes: int = 1
    layers_max: int = 1
    proj_max: int = 0
    product_shift: int = 0
    pe_group: int = 1
    overlap: bool = True
    step_stats: bool = True

    def __post_init__(self):
        check_int("n_pe", self.n_pe, 1)
        check_pe_group(self.pe_group, self.n_pe, self.index_bits + self.run_bits)
        for name in ("overlap", "step_stats"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"`{name}` must be True or False, not {getattr(self, name)!r}")
        check_int("hidden_max", self.hidden_max, 1)
        check_int("input_max", self.input_max, 1)
        check_int("steps_max", self.steps_max, 1)
        check_int("classes_max", self.classes_max, 0)
        check_int("index_bits", self.index_bits, 1, 8)
        check_int("run_bits", self.run_bits, 1, 8)
        act = self.act_format
        if not isinstance(act, Format):
            raise TypeError(f"`act_format` must be a host.fixedpoint.Format, not {act!r}")
        if act.width <= MAX_WIDTH and act.max_int < (1 << act.frac):
            raise ValueError(f"`act_format` {act} cannot hold 1.0 (sigmoid/tanh outputs); "
                             f"give it at least one integer bit")
        check_formats(act, self.weight_width, self.acc_bits, self.product_shift)
        if not isinstance(self.table_spec, TableSpec):
            raise TypeError(f"`table_spec` must be a host.activations.TableSpec, not "
                            f"{self.table_spec!r}")
        check_int("max_entries_per_pe", self.max_entries_per_pe, 1)
        check_int("fifo_depth", self.fifo_depth, 1)
        check_int("layers_max", self.layers_max, 1, 64)
        check_int("proj_max", self.proj_max, 0)
        if self.max_xlist is None:
            object.__setattr__(self, "max_xlist", self.steps_max * (
                self.input_max + (self.layers_max - 1) * self.state_max))
        check_int("max_xlist", self.max_xlist, 1)
        if self.ew_lanes not in (1, 2, 4) or self.ew_lanes > self.n_pe:
            raise ValueError(f"`ew_lanes` must be 1, 2 or 4 and at most `n_pe` ({self.n_pe}), "
                             f"not {self.ew_lanes!r}")
        if not self.overlap and self.proj_max:
            raise ValueError(f"`overlap=False` (serial element-wise schedule) has no projection "
                             f"hardware: `proj_max` must be 0, not {self.proj_max} (build a "
                             f"projection model with overlap=True)")
        if not self.overlap and self.layers_max > 1 and self.ew_lanes > 2:
            raise ValueError(f"`overlap=False` with stacked layers (`layers_max` "
                             f"{self.layers_max}) writes every layer output twice (state list "
                             f"and x list, one list memory): `ew_lanes` must be 1 or 2, not "
                             f"{self.ew_lanes}")

    @property
    def serial(self) -> bool:
        """The serial element-wise schedule (``overlap=False``)."""
        return not self.overlap

    @property
    def list_depth(self) -> int:
        """Serial schedule: words of the one list memory (x list at 0, the state list at
        :meth:`list_bank_base`)."""
        return self.max_xlist + self.state_max

    def list_bank_base(self, bank: int) -> int:
        """Serial schedule: first word of state-list bank ``bank`` (0 or 1).  Both banks are
        one list there: the sequencer waits for the element-wise unit, and the unit writes
        h_t only after the MAC has read h_(t-1) (mac_done waits for the last list read), so
        the previous state list is dead when the next one is written."""
        if bank not in (0, 1):
            raise ValueError(f"`bank` must be 0 or 1, not {bank!r}")
        return self.max_xlist

    @property
    def table_words(self) -> int:
        """Words of the TABLE region (:func:`table_layout`): ``3 * table_spec.entries``."""
        return table_layout(self.table_spec)["words"]

    @property
    def state_max(self) -> int:
        """Recurrent state / layer output size S: max(H, P)."""
        return max(self.hidden_max, self.proj_max)

    @property
    def n_codebooks(self) -> int:
        """Codebook slots: per layer the LSTM matrix (and projection), + the classifier."""
        return self.layers_max * (2 if self.proj_max else 1) + 1

    @property
    def max_layers(self) -> int:
        """Matrices (= codebook slots)."""
        return self.n_codebooks

    @property
    def n_descriptors(self) -> int:
        """Descriptor slots ``k`` (load address ``k << 3 | field``): 4 per layer."""
        return 4 * self.layers_max

    @property
    def descriptor_words(self) -> int:
        """Words of the shell's DESCRIPTOR region: up to descriptor ``4 * layers_max - 1``
        with projection hardware, ``4 * layers_max - 2`` without (24 for one layer: the
        layout of a single-layer engine is unchanged).  The driver recovers ``layers_max``
        and whether there is projection hardware from this depth."""
        return 8 * (self.n_descriptors - (0 if self.proj_max else 1))

    @property
    def gsteps_max(self) -> int:
        """(layer, step) pairs: x-list ends and per-step statistics."""
        return self.layers_max * self.steps_max

    @property
    def max_rows(self) -> int:
        """Accumulator rows: the 4H gate rows, the projection's or the classifier's."""
        return max(GATES * self.hidden_max, self.proj_max, self.classes_max)

    @property
    def max_cols(self) -> int:
        return self.input_max + self.state_max

    @property
    def max_pointers(self) -> int:
        """Pointer slots (one pointer word per column): per layer the LSTM matrix's ``I + S``
        (and the projection's ``H``), then the classifier's ``S``."""
        per_layer = (self.input_max + self.state_max
                     + (self.hidden_max if self.proj_max else 0))
        return self.layers_max * per_layer + self.state_max

    @property
    def max_bias(self) -> int:
        return self.layers_max * (GATES * self.hidden_max + self.proj_max) + self.classes_max

    @property
    def lane_bits(self) -> int:
        """Element-wise lane index."""
        return (self.ew_lanes - 1).bit_length()

    @property
    def groups_max(self) -> int:
        """Element-wise unit groups (``ceil(hidden_max / ew_lanes)``)."""
        return -(-self.hidden_max // self.ew_lanes)

    @property
    def pe_bits(self) -> int:
        return max(1, (self.n_pe - 1).bit_length())

    @property
    def local_bits(self) -> int:
        """A PE's local row."""
        return addr_bits(self.rows_per_pe)

    @property
    def col_bits(self) -> int:
        return addr_bits(self.input_max + self.state_max)

    @property
    def cb_bits(self) -> int:
        return addr_bits(self.n_codebooks)

    @property
    def xlist_bits(self) -> int:
        """x-list index (0 .. max_xlist)."""
        return bits_for(self.max_xlist)

    @property
    def addr_width(self) -> int:
        return max(self.entry_addr_bits, self.k_bits, self.cb_bits + self.index_bits,
                   self.bias_bits, 3 + addr_bits(self.n_descriptors),
                   addr_bits(self.max_xlist), addr_bits(self.gsteps_max),
                   addr_bits(self.table_words))

    @property
    def data_width(self) -> int:
        return max(self.acc_bits, self.act_format.width + self.col_bits, self.weight_width,
                   bits_for(self.max_rows), self.entry_addr_bits, self.k_bits,
                   self.bias_bits, self.xlist_bits, self.local_bits + self.pe_bits,
                   bits_for(self.steps_max))

    def config(self) -> dict:
        """The generator parameters as plain values (JSON-able; ``product_shift``,
        ``pe_group``, ``overlap`` and ``step_stats`` only when not their defaults, so that older
        configurations keep their keys; ``step_stats: False`` says the stat ports read 0)."""
        return {"n_pe": self.n_pe, "hidden_max": self.hidden_max,
                "input_max": self.input_max, "steps_max": self.steps_max,
                "classes_max": self.classes_max, "index_bits": self.index_bits,
                "run_bits": self.run_bits, "act_format": self.act_format.to_dict(),
                "weight_width": self.weight_width, "acc_bits": self.acc_bits,
                "table_spec": self.table_spec.to_dict(),
                "max_entries_per_pe": self.max_entries_per_pe,
                "fifo_depth": self.fifo_depth, "max_xlist": self.max_xlist,
                "ew_lanes": self.ew_lanes, "layers_max": self.layers_max,
                "proj_max": self.proj_max, **common_entries(self),
                **({} if self.overlap else {"overlap": False}),
                **({} if self.step_stats else {"step_stats": False})}


def common_entries(params) -> dict:
    """The engine parameters every engine kind has (:data:`host.protocol.COMMON_EXTENSION_KEYS`:
    ``product_shift``, ``pe_group``) that differ from their defaults, read as attributes of
    ``params`` (an engine, a parameter class or a model; a missing attribute is its default).
    Configuration dictionaries (cache keys, the IDENTIFY configuration hash) of engines
    without a product shift and without PE pairs stay what they were before those existed."""
    return _off_default(params, COMMON_EXTENSION_DEFAULTS)


def late_entries(kind, params) -> dict:
    """The engine parameters of engine ``kind`` (:class:`host.protocol.EngineKind`) in
    :data:`host.protocol.LATE_EXTENSION_DEFAULTS` (broadcast FIFO depth; LSTM element-wise
    lanes and overlap) that differ from their defaults, read as :func:`common_entries` reads
    its own; as integers, the form IDENTIFY carries them in (``overlap`` 0 / 1)."""
    return _off_default(params, LATE_EXTENSION_DEFAULTS.get(int(kind), {}))


def _off_default(params, defaults: dict) -> dict:
    """``{key: int(value)}`` of the attributes of ``params`` named in ``defaults`` that differ
    from their default there (a missing attribute is its default)."""
    values = {key: int(getattr(params, key, default)) for key, default in defaults.items()}
    return {key: v for key, v in values.items() if v != defaults[key]}


def params_of(engine, kind):
    """``engine`` itself if it is a ``kind`` (:class:`SpmvParams` or :class:`LstmParams`),
    else its ``params`` attribute (an :class:`hdl.spmv.SpmvEngine` / :class:`hdl.lstm.LstmEngine`);
    ``TypeError`` otherwise."""
    if isinstance(engine, kind):
        return engine
    params = getattr(engine, "params", None)
    if isinstance(params, kind):
        return params
    raise TypeError(f"expected a {kind.__name__} (or an engine with one as `params`), not "
                    f"{type(engine).__name__}")
