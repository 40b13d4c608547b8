"""EIE-style sparse matrix-vector engine: a whole MLP (its layers back to back) per start.

Block diagram (``N = n_pe``; ``=>`` one per PE)::

    loader (region, addr, data, lanes[N], mask[N], valid)
      |  entries, pointers, codebooks => PEs     bias -> bias memory     descriptors -> registers
      |  input activations -> non-zero list of bank 0 (zeros are never stored)
      v
    +---------------------+    (k = ptr_base + column, value)     +---------------------------+
    | non-zero list [src] | -> broadcaster -> BroadcastFifo(F) => | ProcessingElement x N     |
    | (column, value)     |    push stalls while any FIFO full    | pointers -> entries ->    |
    +---------------------+                                       | codebook -> x -> acc mem  |
              ^                                                   +-------------+-------------+
              | non-zeros appended in row order                                 | acc[r % N][r // N]
    +---------------------+   out = relu(sat(round_shift(acc + bias, shift)))   v
    | non-zero list [dst] | <---------------- output stage (one row per cycle) <-+
    +---------------------+        \\-> dense output buffer (host read port out_addr/out_data)

Each layer runs a *MAC phase* (the sparse product, timed exactly by
:func:`host.cyclemodel.spmv_cycles` with :meth:`SpmvEngine.timing`) and an *output phase*
(``rows`` cycles: requantize every row, clear its accumulator, append non-zero outputs to the
other bank's list, write the dense output buffer).  The list banks swap between layers.

See ``docs/spmv-engine.md`` for the loading interface and address maps.
"""

from __future__ import annotations


from amaranth.hdl import Array, Cat, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from host.memory_map import (DEFAULT_ACT_FORMAT, DESCRIPTOR_FIELDS, DESCRIPTOR_MEMBERS,
                             DRAIN_LATENCY, FETCH_LATENCY, FIRST_BROADCAST, OUTPUT_OVERHEAD,
                             SETUP_CYCLES, Field, Region, SpmvParams, common_entries)

from .broadcast import BroadcastFifo
from .ice40_spram import check_entry_memory
from .pe import ProcessingElement, addr_bits, column_layout, pe_roles
from .readback import ReadbackSignature, connect_readback
from .requant import Requantizer

__all__ = ["SpmvEngine", "Region", "Field", "DESCRIPTOR_FIELDS", "DESCRIPTOR_MEMBERS",
           "LoadSignature", "FETCH_LATENCY", "FIRST_BROADCAST", "DRAIN_LATENCY",
           "SETUP_CYCLES", "OUTPUT_OVERHEAD", "DEFAULT_ACT_FORMAT"]

# The loader regions, descriptor fields, pipeline constants and derived widths are defined
# once in host.memory_map (host never imports hdl); they are re-exported here.


def matrix_descriptor_members(*, max_rows, entry_addr_bits, k_bits, bias_bits, cb_bits,
                              shift_bits) -> dict:
    """Members of a matrix descriptor, the part every engine's descriptors share (the fields
    of :data:`DESCRIPTOR_MEMBERS`, in this order).

    Parameters
    ----------
    max_rows : int
        Largest row count (``rows`` is ``bits_for(max_rows)`` wide).
    entry_addr_bits, k_bits, bias_bits, cb_bits, shift_bits : int
        Widths of ``entry_base``, ``ptr_base``, ``bias_base``, ``cb_slot`` and ``shift``.

    Returns
    -------
    dict
        ``name -> shape`` for a :class:`amaranth.lib.data.StructLayout` (``relu`` is 1 bit).
    """
    return {
        "rows": unsigned(bits_for(max_rows)),
        "entry_base": unsigned(entry_addr_bits),
        "ptr_base": unsigned(k_bits),
        "bias_base": unsigned(bias_bits),
        "cb_slot": unsigned(cb_bits),
        "shift": unsigned(shift_bits),
        "relu": unsigned(1),
    }


def add_pe_array(m, n_pe, make_pe, *, k_bits, act_width, fifo_depth, pe_group=1):
    """Add the engines' PE array to ``m``: ``n_pe`` PEs (submodules ``pe0`` ...) fed by one
    :class:`BroadcastFifo` (submodule ``fifo``) with one reader per PE group: each solo PE's
    or leader's ``col`` on its read port, each follower's ``pair`` on its leader's
    (:func:`hdl.pe.pe_roles`).

    Parameters
    ----------
    m : Module
    n_pe : int
    make_pe : callable
        ``make_pe(role)`` returns one PE of that role (a :class:`ProcessingElement` or a
        stand-in with its signature).
    k_bits, act_width : int
        Widths of the broadcast column (:func:`hdl.pe.column_layout`).
    fifo_depth : int
        FIFO depth per PE.
    pe_group : int
        PEs per lockstep group (1 or 2).

    Returns
    -------
    pes : list of wiring.Component
    fifo : BroadcastFifo
        Its write port ``fifo.w`` is the caller's broadcaster.
    """
    roles = pe_roles(n_pe, pe_group)
    pes = []
    for p, role in enumerate(roles):
        pe = make_pe(role)
        m.submodules[f"pe{p}"] = pe
        pes.append(pe)
    readers = [pe for pe, role in zip(pes, roles) if role != "follower"]
    m.submodules.fifo = fifo = BroadcastFifo(len(readers), column_layout(k_bits, act_width),
                                             fifo_depth)
    for r, pe in enumerate(readers):
        wiring.connect(m, fifo.r[r], pe.col)
    for p, role in enumerate(roles):
        if role == "follower":
            wiring.connect(m, pes[p - 1].pair, pes[p].pair)
    return pes, fifo


def connect_matrix_loader(m, pes, load, desc, *, entry_bits, ptr_bits, weight_width, acc_bits,
                          max_bias, bias_memory=True):
    """Loader writes shared by the engines (regions 0..3 of :class:`Region`).

    ENTRY and POINTER words go from the per-PE ``load.lanes`` into the PEs that ``load.mask``
    selects, CODEBOOK words into every PE, BIAS words into a new bias memory (``acc_bits`` wide,
    ``max_bias`` deep); every PE reads its entry base and codebook slot from ``desc``.
    Returns the bias memory (the caller adds its read ports); with ``bias_memory=False``
    none (None: the caller keeps the biases elsewhere and takes the BIAS writes itself).
    """
    region = load.region
    for p, pe in enumerate(pes):
        lane = load.lanes[p]
        m.d.comb += [
            pe.entry_w.addr.eq(load.addr), pe.entry_w.data.eq(lane[:entry_bits]),
            pe.entry_w.en.eq(load.valid & (region == Region.ENTRY) & load.mask[p]),
            pe.ptr_w.addr.eq(load.addr), pe.ptr_w.data.eq(lane[:ptr_bits]),
            pe.ptr_w.en.eq(load.valid & (region == Region.POINTER) & load.mask[p]),
            pe.cb_w.addr.eq(load.addr), pe.cb_w.data.eq(load.data[:weight_width]),
            pe.cb_w.en.eq(load.valid & (region == Region.CODEBOOK)),
            pe.entry_base.eq(desc.entry_base), pe.cb_slot.eq(desc.cb_slot),
        ]
    if not bias_memory:
        return None
    m.submodules.bias_mem = bias_mem = Memory(shape=signed(acc_bits), depth=max_bias, init=[])
    bias_w = bias_mem.write_port()
    m.d.comb += [bias_w.addr.eq(load.addr), bias_w.data.eq(load.data[:acc_bits]),
                 bias_w.en.eq(load.valid & (region == Region.BIAS))]
    return bias_mem


def write_descriptor_field(m, target, load):
    """Within a DESCRIPTOR write: the member of ``target`` named by field ``load.addr[:3]``
    takes ``load.data`` (truncated to its width).

    Parameters
    ----------
    m : Module
    target : View
        A descriptor (layout with :func:`matrix_descriptor_members`): a signal, or one picked
        from an ``Array`` of them by an address.
    load : LoadSignature
        The engine's loader port.
    """
    with m.Switch(load.addr[:3]):
        for field, name in DESCRIPTOR_MEMBERS:
            with m.Case(field):
                member = Value.cast(getattr(target, name))
                m.d.sync += member.eq(load.data[:len(member)])


class LoadSignature(wiring.Signature):
    """Loader write port (driven by the host / UART shell).

    Members
    -------
    region : 3 bits, a :class:`Region`
    addr : ``addr_width`` bits
    data : ``data_width`` bits (two's complement for signed quantities; low bits used)
    lanes : ``n_pe`` x ``lane_width`` bits, per-PE data of ENTRY and POINTER writes
    mask : ``n_pe`` bits, PEs written by ENTRY and POINTER writes
    valid : 1 bit, write this cycle
    """

    def __init__(self, n_pe: int, addr_width: int, data_width: int, lane_width: int):
        super().__init__({
            "region": Out(3),
            "addr": Out(addr_width),
            "data": Out(data_width),
            "lanes": Out(data.ArrayLayout(unsigned(lane_width), n_pe)),
            "mask": Out(n_pe),
            "valid": Out(1),
        })


class SpmvEngine(wiring.Component):
    """Sparse MLP engine: ``n_pe`` EIE processing elements and a layer sequencer.

    Parameters
    ----------
    n_pe : int
        Processing elements (>= 1); row ``i`` belongs to PE ``i % n_pe``.
    index_bits, run_bits : int
        Entry field widths (bits, 1..8), as :func:`host.encoding.encode`.
    act_format : Format
        Activation format (width 2..32 bits).
    weight_width : int
        Codebook entry width (bits, 2..32; 16 fits the iCE40 SB_MAC16).
    acc_bits : int
        Accumulator width (bits, act width .. 48), wrapping.
    max_rows, max_cols : int
        Largest layer (rows = outputs, cols = inputs) the buffers hold.
    max_entries_per_pe : int
        Entry memory depth per PE (entries of all layers, padding included).
    fifo_depth : int
        Broadcast FIFO depth per PE (EIE: 8).
    max_layers : int
        Descriptor table size (layers per run) and codebook slots.
    memory : str
        ``"bram"`` (inferred memories) or ``"spram"``: every PE's entry memory is one iCE40
        SB_SPRAM256KA (:class:`hdl.ice40_spram.Ice40Spram`; at most 16384 entries per PE, and
        the UP5K has four, so ``n_pe <= 4`` on that FPGA, 8 with ``pe_group=2``; simulation
        uses the behavioural model).
    max_pointers : int, optional
        Pointer slots per PE (all layers' ``cols``); default ``max_layers * max_cols``.
    max_bias : int, optional
        Bias memory words; default ``max_layers * max_rows``.
    product_shift : int
        Bits every product is floored by before it is added (the model's ``product_shift``;
        elaboration-time wiring in the PEs).
    pe_group : int
        1, or 2: PEs ``2g`` and ``2g + 1`` run in lockstep (:mod:`hdl.pe` roles leader and
        follower): one FIFO reader, one pointer memory and one entry memory word (both PEs'
        entries) per pair.  The image must be padded per pair
        (:func:`host.encoding.pad_groups`; :func:`host.spmv_image.build_image` does it).

    Attributes
    ----------
    load : In(LoadSignature)
        Loader writes (see :class:`Region`); only while not ``busy``.
    start : In(1)
        Pulse: run layers ``0 .. n_layers - 1``.
    n_layers : In(range(1, max_layers + 1))
    busy : Out(1)
    done : Out(1)
        High from the end of a run until the next start.
    out_addr : In(row bits)
        Dense output buffer read address (the last layer's outputs).
    out_data : Out(signed(act width))
        ``out[out_addr]`` of the previous cycle (one cycle read latency).
    out_count : Out(row bits + 1)
        Non-zero outputs of the last layer.
    cycles : Out(32)
        Cycles of the last run (start pulse excluded, done cycle included).
    stat_layer : In(layer bits)
    stat_cycles : Out(32)
        MAC-phase cycles of layer ``stat_layer`` in the last run (= ``spmv_cycles``).
    rb : In(ReadbackSignature)
        Read-back of the loadable words while idle (:mod:`hdl.readback`).
    """

    def __init__(self, n_pe, *, index_bits=4, run_bits=4, act_format=DEFAULT_ACT_FORMAT,
                 weight_width=16, acc_bits=32, max_rows, max_cols, max_entries_per_pe,
                 fifo_depth=8, max_layers=4, memory="bram", max_pointers=None,
                 max_bias=None, product_shift=0, pe_group=1):
        params = SpmvParams(n_pe=n_pe, index_bits=index_bits, run_bits=run_bits,
                            act_format=act_format, weight_width=weight_width,
                            acc_bits=acc_bits, max_rows=max_rows, max_cols=max_cols,
                            max_entries_per_pe=max_entries_per_pe, fifo_depth=fifo_depth,
                            max_layers=max_layers, max_pointers=max_pointers,
                            max_bias=max_bias, product_shift=product_shift,
                            pe_group=pe_group)
        check_entry_memory(memory, max_entries_per_pe, "PE")
        #: The parameters and derived widths (:class:`host.memory_map.SpmvParams`).
        self.params = params
        self.memory = memory
        for name in ("n_pe", "index_bits", "run_bits", "act_format", "weight_width",
                     "acc_bits", "max_rows", "max_cols", "max_entries_per_pe", "fifo_depth",
                     "max_layers", "max_pointers", "max_bias", "rows_per_pe", "list_depth",
                     "col_bits", "entry_bits", "ptr_bits", "entry_addr_bits", "k_bits",
                     "cb_bits", "bias_bits", "shift_bits", "lane_width", "addr_width",
                     "data_width", "product_shift", "pe_group"):
            setattr(self, name, getattr(params, name))
        max_pointers, max_bias = params.max_pointers, params.max_bias
        self.descriptor_layout = data.StructLayout(matrix_descriptor_members(
            max_rows=max_rows, entry_addr_bits=self.entry_addr_bits, k_bits=self.k_bits,
            bias_bits=self.bias_bits, cb_bits=self.cb_bits, shift_bits=self.shift_bits))
        self.list_layout = data.StructLayout({"col": unsigned(self.col_bits),
                                              "value": signed(act_format.width)})
        row_bits = addr_bits(max_rows)
        super().__init__({
            "load": In(LoadSignature(n_pe, self.addr_width, self.data_width, self.lane_width)),
            "start": In(1),
            "n_layers": In(range(1, max_layers + 1)),
            "busy": Out(1),
            "done": Out(1),
            "out_addr": In(row_bits),
            "out_data": Out(signed(act_format.width)),
            "out_count": Out(bits_for(self.list_depth)),
            "cycles": Out(32),
            "stat_layer": In(addr_bits(max_layers)),
            "stat_cycles": Out(32),
            "rb": In(ReadbackSignature(n_pe, self.addr_width)),
        })

    # --- host-side facts ------------------------------------------------------------------------

    def timing(self):
        """The cycle model constants of this engine's MAC phase (a
        :class:`host.cyclemodel.Timing`)."""
        return self.params.timing()

    run_cycles = staticmethod(SpmvParams.run_cycles)

    def config(self) -> dict:
        """Parameters (JSON-able), e.g. for cache keys and reports (``product_shift`` only
        when not 0)."""
        return {"n_pe": self.n_pe, "index_bits": self.index_bits, "run_bits": self.run_bits,
                "act_format": self.act_format.to_dict(), "weight_width": self.weight_width,
                "acc_bits": self.acc_bits, "max_rows": self.max_rows,
                "max_cols": self.max_cols, "max_entries_per_pe": self.max_entries_per_pe,
                "fifo_depth": self.fifo_depth, "max_layers": self.max_layers,
                "memory": self.memory, "max_pointers": self.max_pointers,
                "max_bias": self.max_bias, **common_entries(self)}

    # --- hardware ------------------------------------------------------------------------------

    def pe_params(self) -> dict:
        """Keyword arguments of every :class:`ProcessingElement` of this engine."""
        return dict(index_bits=self.index_bits, run_bits=self.run_bits,
                    act_width=self.act_format.width, weight_width=self.weight_width,
                    acc_bits=self.acc_bits, rows=self.rows_per_pe,
                    entries=self.max_entries_per_pe, pointers=self.max_pointers,
                    codebooks=self.max_layers, memory=self.memory,
                    product_shift=self.product_shift)

    def make_pe(self, role: str = "solo") -> wiring.Component:
        """One PE of ``role`` (a hook: simulation builds replace it by an instance of a
        separately generated PE module, see :func:`hdl.spmv_sim.engine_verilog`)."""
        return ProcessingElement(**self.pe_params(), role=role)

    def elaborate(self, platform):
        m = Module()
        n_pe = self.n_pe
        act = self.act_format
        load = self.load

        # --- PEs and broadcast FIFO --------------------------------------------------------------
        pes, fifo = add_pe_array(m, n_pe, self.make_pe, k_bits=self.k_bits,
                                 act_width=act.width, fifo_depth=self.fifo_depth,
                                 pe_group=self.pe_group)

        # --- descriptors ------------------------------------------------------------------------
        descs = Array(Signal(self.descriptor_layout, name=f"desc{i}")
                      for i in range(self.max_layers))
        desc = Signal(self.descriptor_layout)          # the running layer's descriptor

        # --- loader -----------------------------------------------------------------------------
        region = load.region
        bias_mem = connect_matrix_loader(
            m, pes, load, desc, entry_bits=self.entry_bits, ptr_bits=self.ptr_bits,
            weight_width=self.weight_width, acc_bits=self.acc_bits, max_bias=self.max_bias)
        with m.If(load.valid & (region == Region.DESCRIPTOR)):
            write_descriptor_field(m, descs[load.addr[3:]], load)

        # --- non-zero lists (two banks) and the dense output buffer -----------------------------
        # Both banks share one memory (bank = the top address bit): a layer reads its source
        # bank and writes the other, so one read and one write port suffice (half the EBR).
        slot_bits = addr_bits(self.list_depth)
        m.submodules.lists = lists = Memory(shape=self.list_layout, depth=2 << slot_bits,
                                            init=[])
        list_r, list_w = lists.read_port(), lists.write_port()
        counts = [Signal(range(self.list_depth + 1), name=f"count{b}") for b in range(2)]
        src = Signal()                                 # bank read by this layer's broadcast
        m.submodules.out_mem = out_mem = Memory(shape=signed(act.width), depth=self.max_rows,
                                                init=[])
        out_w, out_r = out_mem.write_port(), out_mem.read_port()
        m.d.comb += [out_r.addr.eq(self.out_addr), self.out_data.eq(out_r.data)]

        # Input activations go to bank 0; zeros are skipped, address 0 restarts the list.
        in_value = load.data[:act.width].as_signed()
        in_write = load.valid & (region == Region.INPUT)
        in_first = load.addr == 0
        in_slot = Mux(in_first, 0, counts[0])
        out_wr_en = Signal()                           # output write to the dst bank, ~src
        out_wr_slot = Signal(range(self.list_depth + 1))
        out_wr_row = Signal(self.col_bits)
        out_wr_value = Signal(signed(act.width))
        with m.If(in_write):
            m.d.comb += [list_w.addr.eq(Cat(in_slot[:slot_bits], 0)),
                         list_w.data.col.eq(load.addr), list_w.data.value.eq(in_value),
                         list_w.en.eq(in_value != 0)]
            m.d.sync += counts[0].eq(in_slot + (in_value != 0))
        with m.Else():
            m.d.comb += [list_w.addr.eq(Cat(out_wr_slot[:slot_bits], ~src)),
                         list_w.data.col.eq(out_wr_row), list_w.data.value.eq(out_wr_value),
                         list_w.en.eq(out_wr_en)]

        # --- broadcaster ------------------------------------------------------------------------
        idx = Signal(range(self.list_depth + 1))
        head_valid = Signal()
        src_count = Signal.like(counts[0])            # counts[src], latched in SETUP
        head = list_r.data
        mac = Signal()                                 # MAC phase
        fetch = Signal()
        m.d.comb += fetch.eq(mac & (idx < src_count) & (~head_valid | fifo.w.ready))
        m.d.comb += [list_r.addr.eq(Cat(idx[:slot_bits], src)), list_r.en.eq(fetch)]
        m.d.comb += [fifo.w.valid.eq(head_valid),
                     fifo.w.payload.k.eq(desc.ptr_base + head.col),
                     fifo.w.payload.value.eq(head.value)]
        with m.If(fetch):
            m.d.sync += [idx.eq(idx + 1), head_valid.eq(1)]
        with m.Elif(fifo.w.ready):
            m.d.sync += head_valid.eq(0)

        pe_busy = Signal()
        m.d.comb += pe_busy.eq(Cat(*(pe.busy for pe in pes)).any())
        mac_cnt = Signal(32)
        # A layer's MAC phase lasts at least min_cycles (an empty broadcast still drains);
        # `warm` = min(mac_cnt, min_cycles), a 3-bit count instead of a 32-bit compare.
        min_cycles = FIRST_BROADCAST + DRAIN_LATENCY
        warm = Signal(range(min_cycles + 1))
        mac_done = Signal()
        m.d.comb += mac_done.eq(mac & (idx == src_count) & ~head_valid & ~pe_busy
                                & (warm == min_cycles))

        # --- output stage -----------------------------------------------------------------------
        # issue (row r: accumulator and bias read) -> b (read data) -> requantizer
        # (REQUANT_LATENCY registers) -> q (list / output-buffer write, count).
        m.submodules.requant = rq = Requantizer(self.acc_bits, act, self.weight_width - 1,
                                                pipelined=True)
        bias_r = bias_mem.read_port()
        row_bits = addr_bits(self.max_rows)
        r = Signal(bits_for(self.max_rows))            # next row to read
        r_pe = Signal(range(max(n_pe, 2)))       # r % n_pe (1 bit for n_pe = 1)
        r_local = Signal(addr_bits(self.rows_per_pe))  # r // n_pe
        b_valid = Signal()                             # stage b holds row b_row
        b_row = Signal(row_bits)
        b_pe = Signal(range(max(n_pe, 2)))
        b_local = Signal(addr_bits(self.rows_per_pe))
        drain = Signal()                               # output phase
        issue = Signal()
        more_rows = Signal()                           # r < desc.rows, kept as a register
        m.d.comb += issue.eq(drain & more_rows)
        m.d.comb += [bias_r.addr.eq(desc.bias_base + r), bias_r.en.eq(issue)]
        for p, pe in enumerate(pes):
            m.d.comb += [pe.drain.eq(drain), pe.acc_raddr.eq(r_local),
                         pe.acc_clear.eq(b_valid & (b_pe == p)),
                         pe.acc_clear_addr.eq(b_local)]
        acc_sel = Array(pe.acc_rdata for pe in pes)[b_pe]
        m.d.comb += [rq.acc.eq(acc_sel), rq.bias.eq(bias_r.data), rq.shift.eq(desc.shift),
                     rq.relu.eq(desc.relu)]
        m.d.sync += [b_valid.eq(issue), b_row.eq(r), b_pe.eq(r_pe), b_local.eq(r_local)]
        # rows in the requantizer: valid bits and row numbers, REQUANT_LATENCY deep
        q_valid = [Signal(name=f"q_valid{i}") for i in range(rq.latency)]
        q_row = [Signal(row_bits, name=f"q_row{i}") for i in range(rq.latency)]
        m.d.sync += [q_valid[0].eq(b_valid), q_row[0].eq(b_row)]
        m.d.sync += [q_valid[i].eq(q_valid[i - 1]) for i in range(1, rq.latency)]
        m.d.sync += [q_row[i].eq(q_row[i - 1]) for i in range(1, rq.latency)]
        o_valid, o_row = q_valid[-1], q_row[-1]
        in_flight = Signal()
        m.d.comb += in_flight.eq(Cat(b_valid, *q_valid).any())
        with m.If(issue):
            m.d.sync += [r.eq(r + 1), more_rows.eq(r + 1 < desc.rows)]
            with m.If(r_pe == n_pe - 1):
                m.d.sync += [r_pe.eq(0), r_local.eq(r_local + 1)]
            with m.Else():
                m.d.sync += r_pe.eq(r_pe + 1)
        dst_count = Mux(src, counts[0], counts[1])
        nonzero = rq.out != 0
        m.d.comb += [out_wr_slot.eq(dst_count), out_wr_row.eq(o_row),
                     out_wr_value.eq(rq.out),
                     out_wr_en.eq(o_valid & nonzero),
                     out_w.addr.eq(o_row), out_w.data.eq(rq.out), out_w.en.eq(o_valid)]
        with m.If(o_valid & nonzero):
            with m.If(src):
                m.d.sync += counts[0].eq(counts[0] + 1)
            with m.Else():
                m.d.sync += counts[1].eq(counts[1] + 1)

        # --- sequencer --------------------------------------------------------------------------
        layer = Signal(range(self.max_layers + 1))
        n_layers = Signal.like(self.n_layers)
        run_cnt = Signal(32)
        layer_cycles = Array(Signal(32, name=f"layer_cycles{i}")
                             for i in range(self.max_layers))
        m.d.comb += self.stat_cycles.eq(layer_cycles[self.stat_layer])
        m.d.comb += self.out_count.eq(Mux(src, counts[1], counts[0]))

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [layer.eq(0), src.eq(0), run_cnt.eq(0), self.done.eq(0),
                                 self.busy.eq(1), n_layers.eq(self.n_layers)]
                    m.next = "SETUP"
            with m.State("SETUP"):
                # Everything the output phase starts from is set here, not on mac_done (which
                # then drives only the state register; iCE40 timing).  The destination bank is
                # not read during the MAC phase.  mac_cnt starts at -1 so that it holds the
                # MAC-phase length (as counted up to mac_done) once in OUTPUT.
                m.d.sync += [run_cnt.eq(run_cnt + 1), desc.eq(descs[layer]), idx.eq(0),
                             mac_cnt.eq(-1), warm.eq(0),
                             src_count.eq(Mux(src, counts[1], counts[0])),
                             r.eq(0), r_pe.eq(0), r_local.eq(0),
                             more_rows.eq(descs[layer].rows != 0)]
                with m.If(src):
                    m.d.sync += counts[0].eq(0)
                with m.Else():
                    m.d.sync += counts[1].eq(0)
                m.next = "MAC"
            with m.State("MAC"):
                m.d.comb += mac.eq(1)
                m.d.sync += [run_cnt.eq(run_cnt + 1), mac_cnt.eq(mac_cnt + 1)]
                with m.If(warm != min_cycles):
                    m.d.sync += warm.eq(warm + 1)
                with m.If(mac_done):
                    m.next = "OUTPUT"
            with m.State("OUTPUT"):
                m.d.comb += drain.eq(1)
                m.d.sync += [run_cnt.eq(run_cnt + 1), layer_cycles[layer].eq(mac_cnt)]
                with m.If(~issue & ~in_flight):
                    m.d.sync += [src.eq(~src), layer.eq(layer + 1)]
                    with m.If(layer + 1 == n_layers):
                        m.d.sync += [self.busy.eq(0), self.done.eq(1),
                                     self.cycles.eq(run_cnt + 1)]
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "SETUP"

        # --- read-back of the loaded words while idle (hdl.readback) ------------------------------
        connect_readback(m, self.rb, self.busy, pes, bias_r, {
            (n << 3) | int(field): getattr(descs[n], name)
            for n in range(self.max_layers) for field, name in DESCRIPTOR_MEMBERS})
        return m
