"""EIE/ESE-style sparse LSTM engine: a whole sequence through stacked LSTM layers (each with
an optional projection) and an optional classifier per start.

Layer-major: layer ``l`` runs all ``T`` steps, then layer ``l + 1``, whose inputs are layer
``l``'s outputs (appended to the x list).  One step ``t`` of a layer (``H`` cells, ``I`` inputs,
``S`` state size = P with a projection else H, ``N = n_pe``)::

    SETUP  1            the layer's gate-matrix descriptor ([W_ih | W_hh], 4H x (I + S))
    MAC    spmv_cycles  broadcast the non-zeros of x_t (columns 0 .. I-1, x list) then of
                        s_(t-1) (columns I + u, state list); the state part waits for the
                        previous step's element-wise unit; the PEs accumulate the 4H gate
                        rows (row r -> PE r % N, local row r // N)
    DRAIN  4H/N + 1     accumulators -> per-PE gate buffers (and cleared); the element-wise
                        unit starts on the buffers and runs beside the next step's MAC:
                        unit-major / gate-minor, ``ew_lanes`` units at once, bias +
                        requantize -> z, sigmoid / tanh tables -> i, f, g, o;
                        c = sat(rs(f*c + i*g)), h = sat(rs(o * tanh(c))); non-zero h go to
                        the state list (and the x list for the next layer), all h to the
                        dense h buffer (host read port h_addr / h_data)
    (projection layers: the first half of step t+1's x part runs beside the unit, then
    SAVE copies the accumulator rows the projection uses (local rows < ceil(P/N)) to a save
    area of the gate buffers; wait for the unit, then the projection MAC over h_t's list,
    PDRAIN (its rows to the gate buffers), and step t+1's MAC: the rest of the x part, then
    r_t's columns once the output stage, running beside it from the buffers, has written
    r_t to the state list, the x list and the r memory; its DRAIN adds the saved rows back.
    After a layer's last step (T >= 2) the next layer's x_0 part plays step t+1's; the last
    layer's last step: wait for the unit, projection, output stage from the accumulators.)

After the last step, when ``CLASSIFY`` is set, the classifier ``Linear(S -> classes)`` runs
on the same PE array over the final state list (MAC phase + one output row per cycle, as
:class:`hdl.spmv.SpmvEngine`); its outputs are read on ``out_addr`` / ``out_data``.

``overlap=False`` (no projections) builds the serial schedule instead: SETUP, MAC, then the
element-wise unit reads (and clears) the gate pre-activations straight from the PE
accumulators while the sequencer waits (no DRAIN, no gate buffers); lane 0 shares the output
stage's bias port and requantizer, the lanes multiply on the last PEs' multipliers
(``ProcessingElement(ext_mul=True)``, registered operands and product), the x list and both
state-list banks are one memory.  ``step_stats=False`` builds no
statistic memories.

Arithmetic is bit-exact with :meth:`host.golden.GoldenModel.lstm_cell`; the tables are RAM
written by the host (region TABLE, :func:`host.memory_map.table_layout`; the contents are
:func:`host.activations.make_table`'s, written by :mod:`host.lstm_image`) and indexed as
:func:`host.activations.table_index`.
Every MAC phase takes exactly :func:`host.cyclemodel.spmv_cycles` cycles (same PE, FIFO and
broadcaster timing as the SpMV engine); the whole run follows
:func:`host.lstm_cycles.stack_cycles`.

See ``docs/lstm-engine.md``.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, C, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from host.activations import TableSpec
from host.lstm_cycles import SERIAL_REQUANT_LATENCY
from host.memory_map import (DEFAULT_ACT_FORMAT, DESCRIPTOR_MEMBERS, DRAIN_LATENCY,
                             FIRST_BROADCAST, GATES, Field, LstmField, LstmParams, LstmRegion,
                             table_layout)

from .ice40_spram import check_entry_memory
from .pe import ProcessingElement, addr_bits
from .readback import ReadbackSignature, connect_readback
from .requant import Requantizer, saturate
from .spram_share import EW_BASE, EW_HALF, SpramShare, ew_word
from .spmv import (LoadSignature, add_pe_array, connect_matrix_loader,
                   matrix_descriptor_members, write_descriptor_field)

__all__ = ["LstmEngine", "LstmRegion", "LstmField", "Field", "GATES"]

_DEFAULT_TABLES = TableSpec()

# LstmRegion, LstmField, GATES and the derived widths are defined in host.memory_map.


#: Element-wise data in the SPRAMs (``overlap=False``, ``memory="spram"``): SPRAM k's words
#: from ``EW_BASE`` (hdl.spram_share): 0 the biases, 1 the gate table (sigmoid, tanh), 2 the
#: cell state c at +0 and the classifier output buffer at +4096, 3 the cell table (tanh) at +0
#: and the dense h at +4096 (``EW_HALF``; :func:`hdl.spram_share.ew_word` makes the address).

#: Memory attributes of the x-list step ends (``xend``, ``gsteps_max`` words of ``xlist_bits``)
#: in the serial schedule: a block RAM even when it is small.  Yosys maps a memory of a few
#: words to flip-flops and read multiplexers, each flip-flop its own logic cell (its data come
#: from the loader or the append pointer, not from a LUT): digits-lstm's 8 x 7 bits cost
#: ~100 logic cells that way, one of the iCEBreaker's spare EBRs instead
#: (``hdl.build.memory_inventory`` counts it).  The read port is synchronous either way.
XEND_BLOCK_RAM = {"ram_style": "block"}


def _ew_spram_pes(params) -> list[int]:
    """The PEs whose SPRAMs hold the element-wise data: the first four solo / leader PEs."""
    return [k * params.pe_group for k in range(4)]


def _check_ew_spram(params) -> None:
    """ValueError unless ``params`` (overlap=False, memory="spram") fit the placement of the
    element-wise data in the SPRAMs (see :data:`EW_HALF`)."""
    problems = []
    sprams = params.n_pe // params.pe_group
    if sprams < 4:
        problems.append(f"four SPRAMs (`n_pe` / `pe_group` >= 4), not {sprams}")
    if params.ew_lanes != 1:
        problems.append(f"`ew_lanes` 1, not {params.ew_lanes}")
    if params.max_entries_per_pe > EW_BASE:
        problems.append(f"`max_entries_per_pe` at most {EW_BASE} (the element-wise data use "
                        f"the SPRAM words from {EW_BASE}), not {params.max_entries_per_pe}")
    if params.acc_bits > 16:
        problems.append(f"`acc_bits` at most 16 (a bias is one 16-bit SPRAM word), not "
                        f"{params.acc_bits}")
    if params.max_bias > EW_BASE:
        problems.append(f"at most {EW_BASE} biases, not {params.max_bias}")
    if max(params.groups_max, params.classes_max) > EW_HALF:
        problems.append(f"`hidden_max` and `classes_max` at most {EW_HALF}")
    if 2 * params.table_spec.entries > EW_BASE:
        problems.append(f"tables of at most {EW_BASE // 2} entries")
    if problems:
        raise ValueError("overlap=False with memory='spram' keeps the element-wise data in "
                         "the SPRAMs of the first four PE pairs (or solo PEs); that needs "
                         + "; ".join(problems))


def _port(addr_width, shape, name):
    """Stand-in for a memory port (``addr``, ``data``, ``en``) whose memory is a SPRAM region
    (connected in :meth:`LstmEngine._connect_ew_spram`)."""
    return SimpleNamespace(addr=Signal(addr_width, name=f"{name}_addr"),
                           data=Signal(shape, name=f"{name}_data"),
                           en=Signal(name=f"{name}_en"))


def _requantizer_pipe(m, acc_bits, act, max_shift, name):
    """The serial engine's requantizer: :class:`hdl.requant.Requantizer`'s arithmetic
    (``relu(saturate(round_shift(wrap(acc + bias), shift)))``, bit-exact) in
    :data:`host.lstm_cycles.SERIAL_REQUANT_LATENCY` = 3 register stages, so that neither the
    accumulator / bias read -> gate-table address path nor the output buffer write is one
    long combinational path (iCE40 timing)::

        1  sum = wrap(acc + bias)
        2  v = (2 * sum) >> shift                      (arithmetic)
        3  out = relu(saturate((v + 1) >> 1))          (== round_shift(sum, shift))

    ``shift`` and ``relu`` must be static while results are in flight (they are: the layer's
    values through a phase).  Returns the ports ``acc``, ``bias``, ``shift``, ``relu`` (inputs,
    comb-driven) and ``out`` (3 cycles after the inputs)."""
    ns = SimpleNamespace(acc=Signal(signed(acc_bits), name=f"{name}_acc"),
                         bias=Signal(signed(acc_bits), name=f"{name}_bias"),
                         shift=Signal(bits_for(max_shift), name=f"{name}_shift"),
                         relu=Signal(name=f"{name}_relu"),
                         out=Signal(signed(act.width), name=f"{name}_out"))
    total = Signal(signed(acc_bits), name=f"{name}_sum")
    m.d.sync += total.eq(ns.acc + ns.bias)                 # truncated: wraps
    v = Signal(signed(acc_bits + 1), name=f"{name}_v")
    m.d.sync += v.eq(Cat(C(0, 1), total).as_signed() >> ns.shift)
    w = Signal(signed(acc_bits + 1), name=f"{name}_w")
    m.d.comb += w.eq((v + 1) >> 1)
    sat = saturate(m, w, act, f"{name}_sat")
    m.d.sync += ns.out.eq(Mux(ns.relu & sat[-1], 0, sat))
    return ns


class LstmEngine(wiring.Component):
    """Sparse LSTM sequence engine (see the module docstring).

    Parameters
    ----------
    n_pe : int
        Processing elements (>= 1).  Any ``hidden`` works (not only multiples of ``n_pe``).
    hidden_max, input_max, steps_max : int
        Largest hidden size, input size and sequence length.
    classes_max : int
        Largest classifier output count (0: no classifier).
    index_bits, run_bits, act_format, weight_width, acc_bits, fifo_depth :
        As :class:`hdl.spmv.SpmvEngine`.
    table_spec : host.activations.TableSpec
        Shape of the sigmoid / tanh tables (the model's ``table_spec``): their sizes and the
        index computation.  The contents are written by the host (region
        :attr:`LstmRegion.TABLE`, layout :func:`host.memory_map.table_layout`).
    max_entries_per_pe : int
        Entry memory depth per PE (LSTM matrix + classifier, padding included).
    max_xlist : int, optional
        x-list depth: non-zero inputs of a whole sequence plus the non-zero outputs of every
        layer but the last; default ``steps_max * (input_max + (layers_max - 1) * S)`` with
        ``S = max(hidden_max, proj_max)``.
    ew_lanes : int
        Element-wise lanes (1, 2 or 4, at most ``n_pe``).
    layers_max : int
        Largest number of stacked LSTM layers (1 .. 64).  Every layer's input size is at most
        ``input_max`` (layer ``l + 1``'s input is layer ``l``'s output).
    proj_max : int
        Largest projection size P (0: no projection hardware).
    product_shift : int
        As :class:`hdl.spmv.SpmvEngine` (the model's ``product_shift``).
    pe_group : int
        PEs per lockstep group, 1 or 2 (as :class:`hdl.spmv.SpmvEngine`;
        :func:`host.lstm_image.build_image` pads the matrices per pair).
    memory : str
        ``"bram"`` (default): inferred entry memories; ``"spram"``: the entries of every PE
        pair (or solo PE) are in one iCE40 SB_SPRAM256KA (:class:`hdl.ice40_spram.Ice40Spram`,
        ``max_entries_per_pe`` at most 16384), as :class:`hdl.spmv.SpmvEngine`.
    overlap : bool
        True: ESE's overlap (the unit runs from gate buffers beside the next MAC).  False: the
        serial schedule (``docs/lstm-engine.md``, "Serial schedule"): the unit reads the PE
        accumulators directly after the MAC; no gate buffers, one list memory, the unit's
        multipliers are the last ``ew_lanes`` PEs'; needs ``proj_max`` 0.
    step_stats : bool
        False: no per-step statistic memories; ``stat_mac``, ``stat_ew``, ``stat_pmac`` and
        ``cls_cycles`` then read 0 (``config()`` says ``step_stats: False``).

    Notes
    -----
    The read-back port ``rb`` (:mod:`hdl.readback`) is for the idle engine only: the initiator
    must not raise ``rb.en`` while ``busy`` or in a ``start`` cycle.  Unlike the SpMV and CNN
    engines this engine does not ignore such a read itself: ``busy`` fans out to the whole
    sequencer, and kept out of the read-back requests it stays off the SPRAM address paths
    (iCE40 timing, docs/ice40-resources.md, section 10).  :class:`hdl.top.LstmAdapter`
    registers its read requests only while the engine is idle.
    """

    def __init__(self, n_pe, *, hidden_max, input_max, steps_max, classes_max=16,
                 index_bits=4, run_bits=4, act_format=DEFAULT_ACT_FORMAT, weight_width=16,
                 acc_bits=32, table_spec=_DEFAULT_TABLES, max_entries_per_pe, fifo_depth=8,
                 max_xlist=None, ew_lanes=1, layers_max=1, proj_max=0, product_shift=0,
                 pe_group=1, overlap=True, step_stats=True, memory="bram"):
        params = LstmParams(
            n_pe=n_pe, hidden_max=hidden_max, input_max=input_max, steps_max=steps_max,
            classes_max=classes_max, index_bits=index_bits, run_bits=run_bits,
            act_format=act_format, weight_width=weight_width, acc_bits=acc_bits,
            table_spec=table_spec,
            max_entries_per_pe=max_entries_per_pe, fifo_depth=fifo_depth,
            max_xlist=max_xlist, ew_lanes=ew_lanes, layers_max=layers_max, proj_max=proj_max,
            product_shift=product_shift, pe_group=pe_group, overlap=overlap,
            step_stats=step_stats)
        check_entry_memory(memory, max_entries_per_pe, "PE pair or solo PE")
        #: Where the entries are: "bram" or "spram".
        self.memory = memory
        #: The element-wise data are in the SPRAMs (``overlap=False`` with ``memory="spram"``).
        self.ew_spram = params.serial and memory == "spram"
        if self.ew_spram:
            _check_ew_spram(params)
        #: The parameters and derived widths (:class:`host.memory_map.LstmParams`).
        self.params = params
        for name in ("n_pe", "hidden_max", "input_max", "steps_max", "classes_max",
                     "index_bits", "run_bits", "act_format", "weight_width", "acc_bits",
                     "table_spec", "max_entries_per_pe", "fifo_depth", "max_xlist", "ew_lanes",
                     "lane_bits", "groups_max", "max_layers", "max_rows", "max_cols",
                     "max_pointers", "max_bias", "rows_per_pe", "pe_bits", "local_bits",
                     "col_bits", "entry_bits", "ptr_bits", "entry_addr_bits", "k_bits",
                     "cb_bits", "bias_bits", "shift_bits", "xlist_bits", "lane_width",
                     "addr_width", "data_width", "layers_max", "proj_max", "state_max",
                     "n_codebooks", "n_descriptors", "gsteps_max", "product_shift",
                     "pe_group", "overlap", "step_stats", "serial"):
            setattr(self, name, getattr(params, name))
        self.descriptor_layout = data.StructLayout(matrix_descriptor_members(
            max_rows=self.max_rows, entry_addr_bits=self.entry_addr_bits, k_bits=self.k_bits,
            bias_bits=self.bias_bits, cb_bits=self.cb_bits, shift_bits=self.shift_bits))
        self.list_layout = data.StructLayout({"col": unsigned(self.col_bits),
                                              "value": signed(act_format.width)})
        super().__init__({
            "load": In(LoadSignature(n_pe, self.addr_width, self.data_width, self.lane_width)),
            "start": In(1),
            "busy": Out(1),
            "done": Out(1),
            "out_addr": In(addr_bits(max(classes_max, 1))),
            "out_data": Out(signed(act_format.width)),
            "h_addr": In(addr_bits(self.state_max)),
            "h_data": Out(signed(act_format.width)),
            "cycles": Out(32),
            "cls_cycles": Out(32),
            "stat_step": In(addr_bits(self.gsteps_max)),
            "stat_mac": Out(32),
            "stat_ew": Out(32),
            "stat_pmac": Out(32),
            "rb": In(ReadbackSignature(n_pe, self.addr_width)),
            # element-wise data in the SPRAMs: sticky flag, two accesses to one SPRAM in a
            # cycle (hdl.spram_share; read by the simulation, 0 by construction)
            **({"spram_conflict": Out(1)} if self.ew_spram else {}),
        })

    # --- host-side facts ------------------------------------------------------------------------

    def timing(self):
        """Cycle model constants of the MAC phases (as :meth:`hdl.spmv.SpmvEngine.timing`)."""
        return self.params.timing()

    def config(self) -> dict:
        """The parameters (JSON-able; ``memory`` only when not "bram", so that the keys of
        BRAM engines stay as they were)."""
        return {**self.params.config(), **({"memory": self.memory}
                                           if self.memory != "bram" else {})}

    # --- hardware ------------------------------------------------------------------------------

    def _connect_ew_spram(self, m, sp, pes, aux_pes, load, ld_addr, ld_data, ld_mask,
                          ld_lanes, *, ew, outp, obias_r, gate_r, cell_r,
                          c_r, c_w, hw, hr, out_w, out_r, bv, dv, tab_rb):
        """The element-wise data in SPRAMs 0 .. 3 (``sp``, :class:`hdl.spram_share.SpramShare`
        of PEs ``aux_pes``): the stand-in ports become requests.  One lane, a unit group every
        4 cycles (``T``: its first issue): bias reads at T .. T+3 (SPRAM 0), gate-table reads
        at T+5 .. T+8 (SPRAM 1), c read at T+2 and write at T+12 (SPRAM 2), cell-table read
        at T+13 and h write at T+18 (SPRAM 3): never two accesses to one SPRAM in a cycle
        (the ``spram_conflict`` check).  The classifier output stage (bias reads, output buffer
        writes) runs alone; the loader writes (BIAS, TABLE, registered) and read-back
        (BIAS, TABLE) only while idle, as do the host's reads of h and the outputs (the
        default reads of SPRAMs 3 and 2)."""
        rb = self.rb
        aw = self.act_format.width
        ib = self.table_spec.index_bits
        E = self.index_bits + self.run_bits
        # the loader's write enables registered with ld (from the same load request): the
        # request multiplexers select from registers (iCE40 timing)
        def at_ld(name, value):
            sig = Signal(name=name)
            m.d.sync += sig.eq(value)
            return sig

        def loading(region):
            return load.valid & (load.region == region)

        table_half = load.addr[ib + 1]                 # 0 gate table (SPRAM 1), 1 cell table
        is_entry = at_ld("ld_is_entry", load.region == LstmRegion.ENTRY)
        ew_loads = [(loading(LstmRegion.BIAS), ew_word(ld_addr[:self.bias_bits])),
                    (loading(LstmRegion.TABLE) & ~table_half, ew_word(ld_addr[:ib + 1])),
                    None,
                    (loading(LstmRegion.TABLE) & table_half, ew_word(ld_addr[:ib]))]
        enable = ew | outp | ~self.busy
        # the PEs' read-back would take the SPRAM (priority) while BIAS / TABLE are read
        for p in aux_pes:
            with m.If((rb.region == LstmRegion.BIAS) | (rb.region == LstmRegion.TABLE)):
                m.d.comb += pes[p].rb_en.eq(0)
        # every SPRAM: the read-back of the entries, the loader's writes (entries, or this
        # SPRAM's element-wise data: one request, one address source ld_addr), the
        # element-wise unit's and the output stage's requests
        for k, (share, p, ew_load) in enumerate(zip(sp, aux_pes, ew_loads)):
            share.read(pes[p].rb_en, pes[p].rb_addr)
            lo = ld_mask[p]
            if self.pe_group == 2:
                hi = ld_mask[p + 1]
                ent = loading(LstmRegion.ENTRY) & (load.mask[p] | load.mask[p + 1])
                ent_data = Cat(ld_lanes[p], C(0, 8 - E), ld_lanes[p + 1])
                ent_mask = Mux(is_entry, Cat(lo, lo, hi, hi), 0b1111)
            else:
                ent = loading(LstmRegion.ENTRY) & load.mask[p]
                ent_data = ld_lanes[p]
                ent_mask = None
            ent_addr = ld_addr[:len(pes[p].entry_w.addr)]
            if ew_load is None:
                share.write(at_ld(f"ld_we{k}", ent), ent_addr, ent_data, ent_mask)
            else:
                share.write(at_ld(f"ld_we{k}", ent | ew_load[0]),
                            Mux(is_entry, ent_addr, ew_load[1]),
                            Mux(is_entry, ent_data, ld_data), ent_mask)
        bias, gate, c_out, cell_h = sp
        bias.read(obias_r.en & ~(rb.en & (rb.region != LstmRegion.BIAS)),
                  ew_word(obias_r.addr))
        m.d.comb += obias_r.data.eq(bias.rdata[:self.acc_bits])
        gate.read(bv | tab_rb, ew_word(gate_r.addr))
        m.d.comb += gate_r.data.eq(gate.rdata[:aw])
        c_out.read(c_r.en, ew_word(c_r.addr))
        c_out.write(c_w.en, ew_word(c_w.addr), c_w.data)
        c_out.write(out_w.en, ew_word(out_w.addr, upper=True), out_w.data)
        m.d.comb += [c_r.data.eq(c_out.rdata[:aw]), out_r.data.eq(c_out.rdata[:aw])]
        cell_h.read(dv | tab_rb, ew_word(cell_r.addr))
        cell_h.write(hw.en, ew_word(hw.addr, upper=True), hw.data)
        m.d.comb += [cell_r.data.eq(cell_h.rdata[:aw]), hr.data.eq(cell_h.rdata[:aw])]
        # (SPRAMs 0 and 1: nobody reads them without a request)
        defaults = [None, None, ew_word(out_r.addr, upper=True), ew_word(hr.addr, upper=True)]
        flags = [share.finish(enable, default) for share, default in zip(sp, defaults)]
        m.d.comb += self.spram_conflict.eq(Cat(*flags).any())


    def elaborate(self, platform):
        m = Module()
        n_pe = self.n_pe
        act = self.act_format
        aw = act.width
        load = self.load
        region = load.region

        # --- PEs and broadcast FIFO --------------------------------------------------------------
        serial = self.serial
        pe_numbers = iter(range(n_pe))                 # add_pe_array makes PE 0, 1, ...

        ew_spram = self.ew_spram
        aux_pes = _ew_spram_pes(self.params) if ew_spram else []

        def make_pe(role="solo"):
            # serial: the element-wise lane ln multiplies on PE n_pe - 1 - ln
            number = next(pe_numbers)
            ext = dict(ext_mul=True) if serial and number >= n_pe - self.ew_lanes else {}
            if number in aux_pes:
                ext["aux"] = True                      # element-wise data in its SPRAM
            return ProcessingElement(index_bits=self.index_bits, run_bits=self.run_bits,
                                     act_width=aw, weight_width=self.weight_width,
                                     acc_bits=self.acc_bits, rows=self.rows_per_pe,
                                     entries=self.max_entries_per_pe,
                                     pointers=self.max_pointers, codebooks=self.max_layers,
                                     product_shift=self.product_shift, role=role,
                                     memory=self.memory, **ext)
        pes, fifo = add_pe_array(m, n_pe, make_pe, k_bits=self.k_bits, act_width=aw,
                                 fifo_depth=self.fifo_depth, pe_group=self.pe_group)

        # --- descriptors ------------------------------------------------------------------------
        # descriptor k (load.addr = k << 3 | field): 4l = layer l's LSTM matrix, 1 = classifier,
        # 4l + 2 = layer l's LstmField values, 4l + 3 = layer l's projection (ROWS 0: none)
        LM = self.layers_max
        lstm_descs = [Signal(self.descriptor_layout, name=f"lstm_desc{k}") for k in range(LM)]
        proj_descs = [Signal(self.descriptor_layout, name=f"proj_desc{k}")
                      for k in range(LM if self.proj_max else 0)]
        cls_desc = Signal(self.descriptor_layout)
        desc = Signal(self.descriptor_layout)
        hidden_r = [Signal(bits_for(self.hidden_max), name=f"hidden{k}") for k in range(LM)]
        in_r = [Signal(bits_for(self.input_max), name=f"in_size{k}") for k in range(LM)]
        gate_start_r = [[Signal(self.local_bits + self.pe_bits, name=f"gate_start{k}_{g}")
                   for g in range(GATES)] for k in range(LM)]
        steps = Signal(bits_for(self.steps_max))
        classify = Signal()

        bias_mem = connect_matrix_loader(
            m, pes, load, desc, entry_bits=self.entry_bits, ptr_bits=self.ptr_bits,
            weight_width=self.weight_width, acc_bits=self.acc_bits, max_bias=self.max_bias,
            bias_memory=not ew_spram)
        if ew_spram:
            # element-wise data in the SPRAMs (hdl.spram_share): every memory of the unit, the
            # bias and the output buffer become request ports on SPRAM 0 .. 3; the loader's
            # BIAS and TABLE writes are registered first (as the PEs' entry writes)
            sp = [SpramShare(m, pes[p], f"spram{k}") for k, p in enumerate(aux_pes)]
            # (the write enables are registered beside them, _connect_ew_spram)
            ld = Signal(len(load.addr) + 16)
            m.d.sync += ld.eq(Cat(load.addr, load.data[:16]))
            ld_addr = ld[:len(load.addr)]
            ld_data = ld[len(load.addr):]
            # the entry writes of the SPRAM PEs go through their aux ports too (registered
            # here instead of in the PEs, hdl.pe): the PE mask and the entries
            ld_mask = Signal(n_pe)
            ld_lanes = [Signal(self.index_bits + self.run_bits, name=f"ld_lane{p}")
                        for p in range(n_pe)]
            m.d.sync += [ld_mask.eq(load.mask)]
            m.d.sync += [ld_lanes[p].eq(load.lanes[p][:len(ld_lanes[p])]) for p in range(n_pe)]

        with m.If(load.valid & (region == LstmRegion.DESCRIPTOR)):
            with m.Switch(load.addr[3:]):
                with m.Case(1):
                    write_descriptor_field(m, cls_desc, load)
                for k in range(LM):
                    with m.Case(4 * k):
                        write_descriptor_field(m, lstm_descs[k], load)
                    if self.proj_max:
                        with m.Case(4 * k + 3):
                            write_descriptor_field(m, proj_descs[k], load)
                    with m.Case(4 * k + 2):
                        with m.Switch(load.addr[:3]):
                            fields = [(LstmField.HIDDEN, hidden_r[k]), (LstmField.INPUT, in_r[k])]
                            if k == 0:
                                fields += [(LstmField.STEPS, steps),
                                           (LstmField.CLASSIFY, classify)]
                            fields += [(LstmField.GATE0 + g, gate_start_r[k][g])
                                       for g in range(GATES)]
                            for field, sig in fields:
                                with m.Case(field):
                                    m.d.sync += sig.eq(load.data[:len(sig)])

        # current layer's values
        layer = Signal(max(1, (LM - 1).bit_length()))
        cur_hidden = Signal.like(hidden_r[0])
        cur_in = Signal.like(in_r[0])
        cur_gate = [Signal.like(gate_start_r[0][g], name=f"cur_gate{g}") for g in range(GATES)]
        has_proj = Signal()                            # the current layer has a projection
        is_last = Signal()                             # the current layer is the last one
        for k in range(LM):
            with m.If(layer == k):
                m.d.comb += [cur_hidden.eq(hidden_r[k]), cur_in.eq(in_r[k]),
                             is_last.eq(1 if k == LM - 1 else hidden_r[k + 1] == 0)]
                m.d.comb += [cur_gate[g].eq(gate_start_r[k][g]) for g in range(GATES)]
                if self.proj_max:
                    m.d.comb += has_proj.eq(proj_descs[k].rows != 0)

        # --- x list (layer 0's inputs from the host, then every layer's outputs) -------------
        if serial:
            # x list at 0 .., state-list bank b at list_bank_base(b): one read port (the
            # broadcaster), one write port (loader, then the unit's writes, one per cycle)
            m.submodules.lists = lists = Memory(shape=self.list_layout,
                                                depth=self.params.list_depth, init=[])
            xlist_w, xlist_r = lists.write_port(), lists.read_port()
        else:
            m.submodules.xlist = xlist = Memory(shape=self.list_layout, depth=self.max_xlist,
                                                init=[])
            xlist_w, xlist_r = xlist.write_port(), xlist.read_port()
        # serial: in a block RAM even when small (:data:`XEND_BLOCK_RAM`)
        m.submodules.xend = xend = Memory(shape=unsigned(self.xlist_bits),
                                          depth=self.gsteps_max, init=[],
                                          attrs=XEND_BLOCK_RAM if serial else None)
        xend_w, xend_r = xend.write_port(), xend.read_port()
        gstep = Signal(range(self.gsteps_max + 1))     # layer * T + step
        step = Signal(range(self.steps_max + 1))       # step within the layer
        xph = Signal()                                 # x-only phase of step t + 1 (below)
        # one read port: while idle it reads x_(T-1)'s end (layer 0's list length), which the
        # first SETUP (right after start) takes as the append pointer
        m.d.comb += [xend_r.addr.eq(Mux(self.busy, gstep + xph, steps - 1)), xend_r.en.eq(1)]
        xstart = Signal(self.xlist_bits)
        wp = Signal(self.xlist_bits)                   # x-list append pointer
        app_en = Signal()                              # append a layer output this cycle
        app_col = Signal(self.col_bits)
        app_val = Signal(signed(aw))
        xend_en = Signal()                             # write a step's output end ...
        xend_addr = Signal.like(gstep)                 # ... at layer * T + t + T
        with m.If(load.valid & (region == LstmRegion.XLIST)):
            m.d.comb += [xlist_w.addr.eq(load.addr), xlist_w.data.value.eq(load.data[:aw]),
                         xlist_w.data.col.eq(load.data[aw:aw + self.col_bits]),
                         xlist_w.en.eq(1)]
        with m.Else():
            if serial:
                # the unit's writes (state list or x-list append), driven below
                lst_addr = Signal(addr_bits(self.params.list_depth))
                lst_en = Signal()
                lst_col = Signal(self.col_bits)
                lst_val = Signal(signed(aw))
                m.d.comb += [xlist_w.addr.eq(lst_addr), xlist_w.data.value.eq(lst_val),
                             xlist_w.data.col.eq(lst_col), xlist_w.en.eq(lst_en)]
            else:
                m.d.comb += [xlist_w.addr.eq(wp), xlist_w.data.value.eq(app_val),
                             xlist_w.data.col.eq(app_col), xlist_w.en.eq(app_en)]
        with m.If(app_en):
            m.d.sync += wp.eq(wp + 1)
        with m.If(load.valid & (region == LstmRegion.XEND)):
            m.d.comb += [xend_w.addr.eq(load.addr), xend_w.data.eq(load.data[:self.xlist_bits]),
                         xend_w.en.eq(1)]
        with m.Else():
            m.d.comb += [xend_w.addr.eq(xend_addr), xend_w.data.eq(wp),
                         xend_w.en.eq(xend_en)]

        # --- state lists (two banks), dense h / r buffers, c memory, output buffer -----------
        hl_r, hl_w = [], []
        for b in range(0 if serial else 2):
            mem = Memory(shape=self.list_layout, depth=self.state_max, init=[])
            m.submodules[f"hlist{b}"] = mem
            hl_r.append(mem.read_port())
            hl_w.append(mem.write_port())
        if serial:
            # one state list (host.memory_map.LstmParams.list_bank_base): both banks' counts
            # are one counter
            hcount = [Signal(range(self.state_max + 1), name="hcount")] * 2
        else:
            hcount = [Signal(range(self.state_max + 1), name=f"hcount{b}") for b in range(2)]
        src = Signal()                                 # bank holding the recurrent state list
        lw_en = Signal()                               # state-list write (EW or projection)
        lw_bank = Signal()
        lw_col = Signal(self.col_bits)
        lw_val = Signal(signed(aw))
        if serial:
            # the unit writes one entry per cycle: an x-list append or a state-list entry
            bases = [self.params.list_bank_base(b) for b in range(2)]
            with m.If(app_en):
                m.d.comb += [lst_addr.eq(wp), lst_col.eq(app_col), lst_val.eq(app_val),
                             lst_en.eq(1)]
            with m.Elif(lw_en):
                m.d.comb += [lst_addr.eq(Mux(lw_bank, bases[1] + hcount[1],
                                             bases[0] + hcount[0])),
                             lst_col.eq(lw_col), lst_val.eq(lw_val), lst_en.eq(1)]
        for b in range(2):
            if not serial:
                m.d.comb += [hl_w[b].addr.eq(hcount[b]), hl_w[b].data.col.eq(lw_col),
                             hl_w[b].data.value.eq(lw_val),
                             hl_w[b].en.eq(lw_en & (lw_bank == b))]
            with m.If(lw_en & (lw_bank == b)):
                m.d.sync += hcount[b].eq(hcount[b] + 1)
        h_reads = []                                   # dense h banks (one per lane), below
        h_bank_sel = Signal(max(self.lane_bits, 1))
        m.d.sync += h_bank_sel.eq(self.h_addr)
        if ew_spram:
            out_w = _port(addr_bits(max(self.classes_max, 1)), signed(aw), "out_w")
            out_r = _port(addr_bits(max(self.classes_max, 1)), signed(aw), "out_r")
        else:
            m.submodules.out_mem = out_mem = Memory(shape=signed(aw),
                                                    depth=max(self.classes_max, 1), init=[])
            out_w, out_r = out_mem.write_port(), out_mem.read_port()
        m.d.comb += [out_r.addr.eq(self.out_addr), self.out_data.eq(out_r.data)]
        if self.proj_max:
            m.submodules.r_mem = r_mem = Memory(shape=signed(aw), depth=self.proj_max, init=[])
            r_w, r_r = r_mem.write_port(), r_mem.read_port()
            m.d.comb += r_r.addr.eq(self.h_addr)

        # --- broadcaster: x_t's non-zeros then the state list's non-zeros -------------------
        mac = Signal()
        cls = Signal()                                 # classifier phase (no x part)
        pph = Signal()                                 # projection phase (h_t list only)
        # Projection layers: step t+1's x part runs (xph) beside step t's unit, its rows the
        # projection uses are saved in the gate buffers (sv), then the projection, then the
        # state-only phase of step t+1 (sph) whose DRAIN adds the saved rows back.
        sv = Signal()
        # ... and while the recurrent part runs, r_t is requantized from the gate buffers
        # (pout) and its list entries are broadcast once all are written.
        pout = Signal()
        ew_idle = Signal()                             # the element-wise unit is free
        first = Signal()                               # first step of a layer: state, c = 0
        rd = Signal()                                  # list bank the MAC broadcasts
        m.d.comb += rd.eq(Mux(pph, ~src, src))
        nx = Signal(self.xlist_bits)
        nx_all = Signal(self.xlist_bits)
        m.d.comb += nx_all.eq(xend_r.data - xstart)
        # x-only phase: the first ceil(n/2) of x_(t+1)'s non-zeros (the rest runs with r_t's)
        m.d.comb += nx.eq(Mux(cls | pph, 0, Mux(xph, nx_all - (nx_all >> 1), nx_all)))
        nh = Mux((first | xph) & ~pph, 0, Mux(rd, hcount[1], hcount[0]))
        total = Signal(self.xlist_bits + 1)
        m.d.comb += total.eq(nx + nh)
        idx = Signal(self.xlist_bits + 1)
        head_valid = Signal()
        head_h = Signal()
        fetch = Signal()
        # The state list is complete only when the element-wise unit (of the previous step,
        # running beside this MAC) is done: its part waits for it.
        # (serial: the sequencer waits for the unit before every MAC phase, nothing to wait for)
        if serial:
            # Two read pointers instead of the index and its sums (the same reads in the same
            # cycles): xp from xstart up to x_t's end (xend_r.data, read since SETUP), then hp
            # over the state list (hcount entries, none in a layer's first step); the
            # classifier reads the state list only.
            xp = Signal(self.xlist_bits)
            hp = Signal.like(hcount[0])
            x_left = Signal()
            h_left = Signal()
            m.d.comb += [x_left.eq(~cls & (xp != xend_r.data)),
                         h_left.eq(~first & (hp != hcount[0])),
                         fetch.eq(mac & (x_left | h_left) & (~head_valid | fifo.w.ready)),
                         xlist_r.addr.eq(Mux(x_left, xp, self.params.list_bank_base(0) + hp)),
                         xlist_r.en.eq(fetch)]
            with m.If(fetch & x_left):
                m.d.sync += xp.eq(xp + 1)
            with m.If(fetch & ~x_left):
                m.d.sync += hp.eq(hp + 1)
            list_done = ~x_left & ~h_left
            head = xlist_r.data
        else:
            m.d.comb += fetch.eq(mac & (idx < total) & (~head_valid | fifo.w.ready)
                                 & ((idx < nx) | (ew_idle & ~pout)))
            list_done = idx == total
            m.d.comb += [xlist_r.addr.eq(xstart + idx), xlist_r.en.eq(fetch)]
            for b in range(2):
                m.d.comb += [hl_r[b].addr.eq(idx - nx), hl_r[b].en.eq(fetch)]
            hhead = Mux(rd, hl_r[1].data.as_value(), hl_r[0].data.as_value())
            head = data.View(self.list_layout, Mux(head_h, hhead, xlist_r.data.as_value()))
        m.d.comb += [fifo.w.valid.eq(head_valid),
                     fifo.w.payload.k.eq(desc.ptr_base + head.col),
                     fifo.w.payload.value.eq(head.value)]
        with m.If(fetch):
            m.d.sync += head_valid.eq(1)
            if not serial:
                m.d.sync += [idx.eq(idx + 1), head_h.eq(idx >= nx)]
        with m.Elif(fifo.w.ready):
            m.d.sync += head_valid.eq(0)
        pe_busy = Signal()
        m.d.comb += pe_busy.eq(Cat(*(pe.busy for pe in pes)).any())
        # (without step statistics only mac_done's first-cycles condition reads it: 3 bits)
        mac_cnt = Signal(32 if self.step_stats else 3)
        mac_done = Signal()
        mac_end = Signal()                             # the MAC phase's work is done
        m.d.comb += mac_end.eq(mac & list_done & ~head_valid & ~pe_busy
                               & (mac_cnt >= FIRST_BROADCAST + DRAIN_LATENCY)
                               & (1 if serial else (ew_idle | first | xph) & ~pout))
        if serial:
            # registered (iCE40 timing: the list pointers' compares and the PEs' busy flags
            # -> the sequencer's registers), one cycle later, once
            # (host.lstm_cycles.SERIAL_MAC_REGISTERS)
            m.d.sync += mac_done.eq(mac_end & ~mac_done)
        else:
            m.d.comb += mac_done.eq(mac_end)

        # --- accumulator read-out: classifier output stage (one row per cycle) -------------------
        ew = Signal()                                  # the element-wise unit runs (register)
        outp = Signal()                                # the OUTPUT state (a register: set as
        #   the sequencer enters the state, cleared as it leaves; no state decode on the
        #   SPRAM port enables, iCE40 timing)
        drain = Signal()                               # accumulators -> gate buffers
        save = Signal()                                # projection rows -> save area
        pdrain = Signal()                              # projection rows -> gate buffers
        p_rows = Signal.like(desc.rows)                # the streaming output stage's ...
        p_bias = Signal.like(desc.bias_base)           # ... projection descriptor values
        p_shift = Signal.like(desc.shift)
        p_relu = Signal()
        p_gstep = Signal.like(gstep)
        p_in = Signal.like(in_r[0])                    # (the layer may change meanwhile)
        p_app = Signal()
        xnext = Signal()                               # the x-only phase is the next layer's
        s_rows = Signal(bits_for(max(self.proj_max, 1)))  # P of the saved rows
        o_proj = Signal()                              # the row read out is r_t's (buffers)
        # The element-wise unit runs beside the next step's x-part MAC: it keeps its own copy
        # of the layer values it needs (latched when it starts).
        ew_hidden = Signal.like(hidden_r[0])
        ew_in = Signal.like(in_r[0])
        ew_app = Signal()                              # append h_t to the x list
        ew_bank = Signal()                             # state-list bank it writes
        ew_first = Signal()                            # c_(t-1) = 0
        ew_gstep = Signal.like(gstep)
        ew_bias_base = Signal.like(desc.bias_base)
        ew_shift = Signal.like(desc.shift)
        if serial:
            # the sequencer waits for the unit: its values are the current ones (no latches;
            # src has flipped when the unit starts: the bank it writes, the next step's
            # state list, is the new src)
            m.d.comb += [ew_hidden.eq(cur_hidden), ew_in.eq(cur_in), ew_app.eq(~is_last),
                         ew_bank.eq(src), ew_first.eq(first), ew_gstep.eq(gstep),
                         ew_bias_base.eq(desc.bias_base), ew_shift.eq(desc.shift)]
        L = self.ew_lanes
        lb = self.lane_bits
        # With a power-of-two PE count row r is ``local << pe_bits | pe`` in binary (no PE /
        # local counters).
        pow2 = n_pe >= 2 and n_pe & (n_pe - 1) == 0
        # Serial, one lane: the output stage and the unit (never at the same time) share the
        # accumulator read address, the registered PE / local row of the read and the clear.
        share_rd = serial and L == 1
        RL = SERIAL_REQUANT_LATENCY if serial else 0   # requantizer register stages
        if serial:
            rq = _requantizer_pipe(m, self.acc_bits, act, self.weight_width - 1, "requant")
        else:
            m.submodules.requant = rq = Requantizer(self.acc_bits, act, self.weight_width - 1)
        r = Signal(bits_for(self.max_rows))
        if pow2:
            r_pe, r_local = r[:self.pe_bits], r[self.pe_bits:][:self.local_bits]
        else:
            r_pe = Signal(self.pe_bits)
            r_local = Signal(self.local_bits)
        out_issue = Signal()
        # serial: r < ROWS from a register (iCE40 timing: the compare's carry chain fed the
        # bias read request -> SPRAM 0 address path), set as the output phase starts and
        # updated with every issue; it is set only in the OUTPUT state, which does not end
        # before it clears, so it is the issue itself (no state decode on that path)
        out_more = Signal()
        m.d.comb += out_issue.eq(out_more if serial else
                                 (outp & (r < desc.rows)) | (pout & (r < p_rows)))
        o_valid = Signal()
        o_pe = Signal(self.pe_bits)
        o_local = Signal(self.local_bits)
        o_row = Signal.like(r)
        m.d.sync += [o_valid.eq(out_issue), o_row.eq(r)]
        if not serial:
            # (serial: the projection / overlap flags xph, pph, sv, pout, xnext, o_proj are
            # never set; left undriven they are constant 0 and their logic goes away)
            m.d.sync += o_proj.eq(pout)
        if not share_rd:                               # (else: in the lane, below)
            m.d.sync += [o_pe.eq(r_pe), o_local.eq(r_local)]
        obias_r = (_port(self.bias_bits, signed(self.acc_bits), "obias_r") if ew_spram
                   else bias_mem.read_port())
        if serial:
            # the issue's bias address from a register (iCE40 timing: the bias base + r adder
            # fed SPRAM 0's address), set with r and counted with it
            out_bias = Signal.like(obias_r.addr, name="out_bias")
            m.d.comb += obias_r.addr.eq(out_bias)
        else:
            m.d.comb += obias_r.addr.eq(Mux(pout, p_bias, desc.bias_base) + r)
        m.d.comb += obias_r.en.eq(out_issue)
        acc_data = Array(pe.acc_rdata for pe in pes)
        buf_ports = []                                 # gate buffers (one per PE)
        # rows 0 .. rows_per_pe-1: the drained gate pre-activations; then the save area of
        # the ceil(proj_max / N) local rows a projection uses (x part of the next step)
        save_rows = -(-self.proj_max // n_pe)
        for p in range(0 if serial else n_pe):
            buf = Memory(shape=signed(self.acc_bits), depth=self.rows_per_pe + save_rows,
                         init=[])
            m.submodules[f"gate_buf{p}"] = buf
            buf_ports.append((buf.write_port(), buf.read_port()))
        buf_data = Array(buf_r.data for _, buf_r in buf_ports) if buf_ports else None
        m.d.comb += [rq.acc.eq(Mux(o_proj, buf_data[o_pe], acc_data[o_pe])
                               if buf_data is not None else acc_data[o_pe]),
                     rq.bias.eq(obias_r.data),
                     rq.shift.eq(Mux(o_proj, p_shift, desc.shift)),
                     rq.relu.eq(Mux(o_proj, p_relu, desc.relu))]
        # (serial: the requantizer's result comes RL cycles after o_valid, rows in order)
        out_valid = o_valid                            # rq.out holds a result this cycle
        out_busy = o_valid                             # results still in flight
        out_row = o_row
        if RL:
            ov = [Signal(name=f"o_valid{i + 1}") for i in range(RL)]
            m.d.sync += [ov[0].eq(o_valid)] + [ov[i].eq(ov[i - 1]) for i in range(1, RL)]
            out_valid, out_busy = ov[-1], Cat(o_valid, *ov).any()
            out_row = Signal.like(o_row)               # rows written so far
            with m.If(out_valid):
                m.d.sync += out_row.eq(out_row + 1)
        m.d.comb += [out_w.addr.eq(out_row), out_w.data.eq(rq.out),
                     out_w.en.eq(out_valid & cls)]
        if self.proj_max:
            m.d.comb += [r_w.addr.eq(o_row), r_w.data.eq(rq.out),
                         r_w.en.eq(o_valid & (pph | o_proj))]
        pout_wr = Signal()                             # a non-zero r_t element -> lists
        m.d.comb += pout_wr.eq(o_valid & (pph | o_proj) & (rq.out != 0))
        with m.If(out_issue):
            m.d.sync += r.eq(r + 1)
            if serial:
                m.d.sync += [out_more.eq(r + 1 < desc.rows), out_bias.eq(out_bias + 1)]
        if not pow2:
            with m.If(out_issue):
                with m.If(r_pe == n_pe - 1):
                    m.d.sync += [r_pe.eq(0), r_local.eq(r_local + 1)]
                with m.Else():
                    m.d.sync += r_pe.eq(r_pe + 1)

        # --- element-wise unit: L lanes, lane ln does units u = j*L + ln --------------------------
        # The tables: RAM written by the loader (region TABLE, host.memory_map.table_layout:
        # words 0 .. 2E-1 the gate table, sigmoid then tanh; 2E .. 3E-1 the cell table, tanh).
        spec = self.table_spec
        cell_base = table_layout(spec)["cell"]         # 2E: one address bit
        tab_cell_bit = cell_base.bit_length() - 1      # set: the cell table
        if not ew_spram:
            m.submodules.gate_tab = gate_tab = Memory(shape=signed(aw),
                                                      depth=2 * spec.entries, init=[])
            m.submodules.cell_tab = cell_tab = Memory(shape=signed(aw), depth=spec.entries,
                                                      init=[])
            tab_load = load.valid & (region == LstmRegion.TABLE)
            gate_tw, cell_tw = gate_tab.write_port(), cell_tab.write_port()
            m.d.comb += [gate_tw.addr.eq(load.addr), gate_tw.data.eq(load.data[:aw]),
                         gate_tw.en.eq(tab_load & ~load.addr[tab_cell_bit]),
                         cell_tw.addr.eq(load.addr), cell_tw.data.eq(load.data[:aw]),
                         cell_tw.en.eq(tab_load & load.addr[tab_cell_bit])]
        tab_rb = self.rb.en & (self.rb.region == LstmRegion.TABLE)
        tab_rb_ports = []                              # lane 0's table reads (read-back)
        one = 1 << act.frac

        def table_index(q):
            """``host.activations.table_index`` of a signed ``aw``-bit value (comb)."""
            mag = Signal(aw + 1, name="mag")             # |min_int| fits
            m.d.comb += mag.eq(Mux(q < 0, -q, q))
            shift = act.frac + spec.step_log2
            raw = mag >> shift if shift >= 0 else mag << -shift
            return Mux(raw > spec.entries - 1, spec.entries - 1, raw)[:spec.index_bits]

        def sat_round(value, width, name):
            """``saturate(round_shift(value, act.frac), act)`` (comb) of a signed ``width``-bit
            value: ``(v + 2**(f-1)) >> f == ((v >> (f-1)) + 1) >> 1`` (an adder only over the
            bits kept); in range iff the bits from ``aw - 1`` up are all equal (no compare)."""
            if act.frac:
                rounded = ((value >> (act.frac - 1)) + 1) >> 1
                rr_width = width - act.frac + 1
            else:
                rounded, rr_width = value, width
            rr = Signal(signed(rr_width), name=f"{name}_rounded")
            m.d.comb += rr.eq(rounded)
            if rr_width > aw:
                return saturate(m, rr, act, name)
            out = Signal(signed(aw), name=name)
            m.d.comb += out.eq(rr)
            return out

        group_bits = addr_bits(self.groups_max)
        j = Signal(range(self.groups_max + 1))         # unit group being issued
        j_next = Signal(range(self.groups_max + 2))    # j + 1, kept beside j
        g = Signal(2)                                  # gate being issued (i, f, g, o)
        g_pe = [Signal(self.pe_bits, name=f"g_pe{k}") for k in range(GATES)]
        g_local = [Signal(self.local_bits, name=f"g_local{k}") for k in range(GATES)]
        g_row = [Signal(self.bias_bits, name=f"g_row{k}") for k in range(GATES)]
        ew_issue = Signal()
        ju = Signal(bits_for(self.groups_max * L))
        # groups left to issue (a down-counter: no compare of j against H on the issue path)
        groups_left = Signal(range(self.groups_max + 1))
        groups_of = (cur_hidden + (L - 1)) >> lb       # ceil(H / L), loaded when the unit starts
        # groups_left != 0, kept in a register beside it (iCE40 timing: the issue enables the
        # SPRAM requests)
        have_groups = Signal()
        m.d.comb += [ju.eq(j << lb), ew_issue.eq(ew & have_groups)]
        # gate issued in slot g: i, f, g, o (serial: f*c and i*g enter the multiplier in
        # consecutive cycles, from its operand registers, see the lane)
        gate = g
        # With a power-of-two PE count row g*H + u is ``local << pe_bits | pe`` in binary: the
        # gate's first row (its GATE field, g*H) + the unit, one adder instead of per-gate
        # PE / local / row counters (the bias row is the same row).
        pow2 = n_pe >= 2 and n_pe & (n_pe - 1) == 0
        if pow2:
            if serial:
                ew_gate = cur_gate                     # the sequencer waits for the unit
            else:
                ew_gate = [Signal.like(cur_gate[k], name=f"ew_gate{k}") for k in range(GATES)]
            gate_row = Signal(self.local_bits + self.pe_bits, reset_less=serial)
            if serial:
                # serial: the row and lane 0's bias address of the issue from registers,
                # loaded with the next issue's (iCE40 timing: the GATE fields -> gate
                # multiplexer -> row and bias adders -> SPRAM 0 address path ends at them)
                # (j + 1 and each gate's first bias row from registers: the row and bias
                # adders side by side, not in a chain; the descriptor and GATE fields are
                # static from the MAC phase on, so gate_bias has settled when the unit runs)
                bias_row = Signal(self.bias_bits, name="bias_row", reset_less=True)
                gate_bias = [Signal(self.bias_bits, name=f"gate_bias{k}", reset_less=True)
                             for k in range(GATES)]
                m.d.sync += [gate_bias[k].eq(ew_bias_base + ew_gate[k]) for k in range(GATES)]
                next_g = (g + 1)[:2]
                next_u = Signal.like(ju, name="next_u")
                m.d.comb += next_u.eq(Mux(g == 3, j_next, j) << lb)
                next_row = Signal.like(gate_row, name="next_row")
                m.d.comb += next_row.eq(Array(ew_gate)[next_g] + next_u)
                with m.If(ew_issue):
                    m.d.sync += [gate_row.eq(next_row),
                                 bias_row.eq(Array(gate_bias)[next_g] + next_u)]
            else:
                m.d.comb += gate_row.eq(Array(ew_gate)[gate] + ju)
        else:
            cur_pe = Array(g_pe)[gate]
            cur_local = Array(g_local)[gate]
            cur_row = Array(g_row)[gate]

        # pipeline registers shared by the lanes
        b_gate, c_gate = Signal(2), Signal(2)
        m.d.sync += b_gate.eq(gate)
        # z (the requantized gate pre-activation) comes RL cycles after stage b (serial: the
        # pipelined requantizer); z_gate is its gate
        z_gate = b_gate
        for i in range(RL):
            nxt = Signal(2, name=f"z_gate{i + 1}")
            m.d.sync += nxt.eq(z_gate)
            z_gate = nxt
        q_gate = z_gate                                # gate of the gate-table read
        if serial:
            # serial: the gate-table index is registered (stage q, below)
            q_gate = Signal(2, name="q_gate")
            m.d.sync += q_gate.eq(z_gate)
        m.d.sync += c_gate.eq(q_gate)
        # The unit of stage d (c written): without requantizer stages j - 1 (j moved on when
        # its group's last gate issued, 3 cycles before, 2 without the registered product,
        # and the next group's last gate issues after stage d); with them a count of the
        # units whose c is written.  Stage f (h written) takes it from there.
        d_j = Signal(group_bits)
        f_j = Signal(group_bits)
        if not RL:
            m.d.comb += d_j.eq(j - 1)
        lane_issue, lane_pe, lane_local = [], [], []
        b_valid, b_pe, b_local = [], [], []
        h_vals, f_valids = [], []
        busy_terms = [ew_issue]
        for ln in range(L):
            # issue: row g*H + j*L + ln -> PE (pe_g + ln) mod N, local local_g + wrap
            valid = Signal(name=f"ln{ln}_issue")
            pe_l = Signal(self.pe_bits, name=f"ln{ln}_pe")
            local_l = Signal(self.local_bits, name=f"ln{ln}_local")
            m.d.comb += valid.eq(ew_issue & (ju + ln < ew_hidden) if ln else ew_issue)
            if pow2:
                row_l = Signal.like(gate_row, name=f"ln{ln}_row")
                m.d.comb += [row_l.eq(gate_row + ln), pe_l.eq(row_l[:self.pe_bits]),
                             local_l.eq(row_l[self.pe_bits:])]
                row_off = row_l                        # bias row g*H + j*L + ln
            else:
                s = cur_pe + ln
                wrapped = s >= n_pe
                m.d.comb += [pe_l.eq(Mux(wrapped, s - n_pe, s)),
                             local_l.eq(cur_local + wrapped)]
                row_off = cur_row + ln
            lane_issue.append(valid)
            lane_pe.append(pe_l)
            lane_local.append(local_l)
            if serial and ln == 0:
                # the output stage's bias port (the unit and the classifier never overlap)
                bias_r = obias_r
                with m.If(ew):
                    m.d.comb += [bias_r.addr.eq(bias_row if pow2 else ew_bias_base + row_off),
                                 bias_r.en.eq(valid)]
            else:
                bias_r = bias_mem.read_port()
                m.d.comb += [bias_r.addr.eq(ew_bias_base + row_off),
                             bias_r.en.eq(valid)]
            bv = Signal(name=f"ln{ln}_b_valid")
            if share_rd:
                bp, bl = o_pe, o_local
                m.d.sync += [bv.eq(valid), bp.eq(Mux(outp, r_pe, pe_l)),
                             bl.eq(Mux(outp, r_local, local_l))]
            else:
                bp = Signal(self.pe_bits, name=f"ln{ln}_b_pe")
                bl = Signal(self.local_bits, name=f"ln{ln}_b_local")
                m.d.sync += [bv.eq(valid), bp.eq(pe_l), bl.eq(local_l)]
            b_valid.append(bv)
            b_pe.append(bp)
            b_local.append(bl)
            zv = bv                                    # z valid (RL cycles after stage b)
            for i in range(RL):
                nxt = Signal(name=f"ln{ln}_z_valid{i + 1}")
                m.d.sync += nxt.eq(zv)
                busy_terms.append(nxt)
                zv = nxt
            # stage b: requantize -> z, table read
            if serial and ln == 0:
                # lane 0 shares the output stage's requantizer (never at the same time)
                lrq = rq
                with m.If(ew):
                    m.d.comb += [lrq.shift.eq(ew_shift), lrq.relu.eq(0)]
                    if not share_rd:                   # (shared: acc_data[o_pe] anyway)
                        m.d.comb += lrq.acc.eq(acc_data[bp])
            elif serial:
                lrq = _requantizer_pipe(m, self.acc_bits, act, self.weight_width - 1,
                                        f"ew_requant{ln}")
                m.d.comb += [lrq.acc.eq(acc_data[bp]), lrq.bias.eq(bias_r.data),
                             lrq.shift.eq(ew_shift), lrq.relu.eq(0)]
            else:
                lrq = Requantizer(self.acc_bits, act, self.weight_width - 1)
                m.submodules[f"ew_requant{ln}"] = lrq
                m.d.comb += [lrq.acc.eq(acc_data[bp] if serial else buf_data[bp]),
                             lrq.bias.eq(bias_r.data), lrq.shift.eq(ew_shift),
                             lrq.relu.eq(0)]
            z = lrq.out
            gate_r = (_port(spec.index_bits + 1, signed(aw), "gate_r") if ew_spram
                      else gate_tab.read_port())
            if serial:
                # stage q: the gate-table index registered (iCE40 timing: z -> |z| -> clamp ->
                # the SPRAM request multiplexers -> SPRAM 1's address is too long for one
                # cycle)
                q_addr = Signal(spec.index_bits + 1, name=f"ln{ln}_gate_index")
                q_valid = Signal(name=f"ln{ln}_q_valid")
                q_neg = Signal(name=f"ln{ln}_q_neg")
                m.d.sync += [q_addr.eq(Cat(table_index(z), z_gate == 2)), q_valid.eq(zv),
                             q_neg.eq(z < 0)]
                busy_terms.append(q_valid)
            else:
                q_addr, q_valid, q_neg = Cat(table_index(z), z_gate == 2), zv, z < 0
            if ln == 0:
                z_valid0 = q_valid                     # (the gate-table read's enable)
            m.d.comb += [gate_r.addr.eq(q_addr), gate_r.en.eq(1)]
            cv = Signal(name=f"ln{ln}_c_valid")
            c_neg = Signal(name=f"ln{ln}_c_neg")
            m.d.sync += [cv.eq(q_valid), c_neg.eq(q_neg)]
            # stage c: gate value; i, f, o registered; at gate g: f*c + i*g
            tv = gate_r.data
            y = Signal(signed(aw), name=f"ln{ln}_y")          # in [-1, 1]: fits
            # tanh (gate g) of a negative z: -T; sigmoid: 1 - T (one subtractor for both)
            m.d.comb += y.eq(Mux(c_neg, Mux(c_gate == 2, 0, one) - tv, tv))
            # One multiplier per lane (aw x aw: gate values and tanh lie in [-1, 1], which the
            # act format holds): f*c_old at gate f's stage c, i*g at gate g's stage c,
            # o*tanh(c) at stage e -- cycles 3, 0 and 2 modulo 4 of the unit's group, never
            # at the same time (serial: operands registered a cycle before, see below).
            y_i = Signal(signed(aw), name=f"ln{ln}_y_i")
            y_o = Signal(signed(aw), name=f"ln{ln}_y_o")
            with m.If(cv):
                with m.Switch(c_gate):
                    with m.Case(0):
                        m.d.sync += y_i.eq(y)
                    with m.Case(3):
                        m.d.sync += y_o.eq(y)
            if ew_spram:
                c_w = _port(group_bits, signed(aw), "c_w")
                c_r = _port(group_bits, signed(aw), "c_r")
            else:
                c_mem = Memory(shape=signed(aw), depth=self.groups_max, init=[])
                m.submodules[f"c_mem{ln}"] = c_mem
                c_w, c_r = c_mem.write_port(), c_mem.read_port()
            # c_(t-1) of the group's unit j, read as its first gate issues (stage c of gate f
            # is 2 cycles later); serial: as its last gate issues (slot 3 modulo 4 of the
            # group: its c write is at 0), used at stage c of gate f 4 cycles later, as the
            # next group's read is issued (the read data change a cycle after)
            m.d.comb += [c_r.addr.eq(j), c_r.en.eq(valid & (g == (3 if RL else 0)))]
            c_data = c_r.data
            if ew_spram:
                # the SPRAM's read data change with the next read: keep c_(t-1) a cycle
                c_hold = Signal(signed(aw), name="c_hold")
                c_got = Signal()
                m.d.sync += c_got.eq(c_r.en)
                with m.If(c_got):
                    m.d.sync += c_hold.eq(c_r.data)
                c_data = c_hold
            c_old = Mux(ew_first, 0, c_data)
            ev = Signal(name=f"ln{ln}_e_valid")
            e_neg = Signal(name=f"ln{ln}_e_neg")
            cell_r = (_port(spec.index_bits, signed(aw), "cell_r") if ew_spram
                      else cell_tab.read_port())
            tc = Signal(signed(aw), name=f"ln{ln}_tanh_c")
            m.d.comb += tc.eq(Mux(e_neg, -cell_r.data, cell_r.data))
            # (serial: registers, see below)
            mul_a = Signal(signed(aw), name=f"ln{ln}_mul_a", reset_less=serial)
            mul_b = Signal(signed(aw), name=f"ln{ln}_mul_b", reset_less=serial)
            ev1 = Signal(name=f"ln{ln}_e1_valid")      # (serial) the cell table's data
            y_o2 = Signal(signed(aw), name=f"ln{ln}_y_o2", reset_less=True)  # (serial) o, kept
            if serial:
                # The multiplier's operands registered (iCE40 timing: the gate-table SPRAM ->
                # y -> operand multiplexers and the cell-table SPRAM -> tanh(c) paths end at
                # a register, not at the DSP input): loaded at stage c of gates f and g (slots
                # 3 and 0 modulo 4 of the group, counted from its first issue) and in the
                # cycle the cell table's tanh(c) arrives (ev1, slot 2: gate i's stage c, which
                # loads nothing), multiplied in the next cycle, the product (registered) a
                # cycle after that.  o waits in y_o2 (y_o is the next group's by then).
                operands, o_ready, o_gate = "sync", ev1, y_o2
            else:
                operands, o_ready, o_gate = "comb", ev, y_o
            # o * tanh(c) when tanh(c) is there, i * g at gate g, else f * c_old
            with m.If(o_ready):
                m.d[operands] += [mul_a.eq(o_gate), mul_b.eq(tc)]
            with m.Elif(c_gate == 2):
                m.d[operands] += [mul_a.eq(y_i), mul_b.eq(y)]
            with m.Else():
                m.d[operands] += [mul_a.eq(y), mul_b.eq(c_old)]
            fc = Signal(signed(2 * aw), name=f"ln{ln}_fc")
            sum_w = 2 * aw + 1
            dv = Signal(name=f"ln{ln}_d_valid")
            d_sum = Signal(signed(sum_w), name=f"ln{ln}_d_sum")
            if serial:
                # The multiplier is PE n_pe-1-ln's (idle now), its operands and its product
                # registered: f*c (gate f, loaded at its stage c, slot 3 modulo 4 of the
                # group) arrives two cycles later and is kept in fc, i*g (slot 0) two cycles
                # later goes into d_sum, o*tanh(c) (slot 2) two cycles later is h's stage f.
                # Operand loads at slots 3, 0, 2: no collision.
                mpe = pes[n_pe - 1 - ln]
                m.d.comb += [mpe.mul_sel.eq(ew), mpe.mul_a.eq(mul_a), mpe.mul_b.eq(mul_b)]
                prod = mpe.mul_out
                pf1 = Signal(name=f"ln{ln}_p_f1")
                pg1 = Signal(name=f"ln{ln}_p_g1")
                pf = Signal(name=f"ln{ln}_p_f")
                pg = Signal(name=f"ln{ln}_p_g")
                m.d.sync += [pf1.eq(cv & (c_gate == 1)), pg1.eq(cv & (c_gate == 2)),
                             pf.eq(pf1), pg.eq(pg1)]
                with m.If(pf):
                    m.d.sync += fc.eq(prod)
                m.d.sync += [dv.eq(pg), d_sum.eq(fc + prod)]
                busy_terms += [pf1, pg1, pf, pg]
            else:
                prod = Signal(signed(2 * aw), name=f"ln{ln}_prod")
                m.d.comb += prod.eq(mul_a * mul_b)
                with m.If(cv & (c_gate == 1)):
                    m.d.sync += fc.eq(prod)
                m.d.sync += [dv.eq(cv & (c_gate == 2)), d_sum.eq(fc + prod)]
            # stage d: c_new, c write, tanh(c) read
            c_new = sat_round(d_sum, sum_w, f"ln{ln}_c_new")
            c_st, dv_st = c_new, dv                    # c written / cell table read
            if RL:
                # serial: c_new registered first (d_sum -> round / saturate -> table index ->
                # SPRAM address / data is too long for one cycle); it is written a cycle later
                # (slot 0 modulo 4 of the group, counted from its first issue: c reads are at
                # 2), its cell-table index registered, read a cycle after (slot 1: h writes
                # are at 2 on that SPRAM), tanh(c) loaded into the multiplier's operand
                # register (slot 2: the other loads are at 3 and 0), stage e (o * tanh(c))
                # a cycle after
                c_st = Signal(signed(aw), name=f"ln{ln}_c_reg")
                dv_st = Signal(name=f"ln{ln}_d2_valid")
                m.d.sync += [c_st.eq(c_new), dv_st.eq(dv)]
                busy_terms.append(dv_st)
            if ln == 0:
                if RL:
                    with m.If(dv_st):
                        m.d.sync += d_j.eq(d_j + 1)
                else:
                    with m.If(dv_st):
                        m.d.sync += f_j.eq(d_j)
            if RL:
                # serial: the cell-table index registered (c -> |c| -> clamp -> the SPRAM
                # request multiplexers -> SPRAM 3's address is too long for one cycle, the
                # SPRAM being in another die corner than SPRAM 2's c); o kept for stage e
                cell_addr = Signal(spec.index_bits, name=f"ln{ln}_cell_index")
                c_sgn = Signal(name=f"ln{ln}_c_sign")
                cr_valid = Signal(name=f"ln{ln}_cr_valid")
                m.d.sync += [cell_addr.eq(table_index(c_st)), c_sgn.eq(c_st < 0),
                             cr_valid.eq(dv_st), e_neg.eq(c_sgn)]
                with m.If(cr_valid):
                    m.d.sync += y_o2.eq(y_o)
                busy_terms.append(cr_valid)
            else:
                cell_addr, cr_valid = table_index(c_st), dv_st
                m.d.sync += e_neg.eq(c_st < 0)
            if ln == 0:
                dv_cell = cr_valid
            m.d.comb += [c_w.addr.eq(d_j), c_w.data.eq(c_st), c_w.en.eq(dv_st),
                         cell_r.addr.eq(cell_addr), cell_r.en.eq(1)]
            if ln == 0:
                # read-back of the tables (idle): lane 0's read ports
                with m.If(tab_rb):
                    m.d.comb += [gate_r.addr.eq(self.rb.addr), cell_r.addr.eq(self.rb.addr)]
                tab_rb_ports = [gate_r, cell_r]
            if RL:
                m.d.sync += [ev1.eq(cr_valid), ev.eq(ev1)]
                busy_terms.append(ev1)
            else:
                m.d.sync += ev.eq(dv)
            # stage e: o * tanh(c) (the lane multiplier)
            fv = Signal(name=f"ln{ln}_f_valid")
            m.d.sync += fv.eq(ev)
            if serial:
                f_prod = prod                          # the PE's product register
            else:
                f_prod = Signal(signed(2 * aw), name=f"ln{ln}_f_prod")
                m.d.sync += f_prod.eq(prod)
            # stage f: h -> dense h bank ln, list serializer
            h_new = sat_round(f_prod, 2 * aw, f"ln{ln}_h")
            h_st, fv_st = h_new, fv                    # h written / to the serializer
            if RL:
                # serial: h registered (the product -> round / saturate -> SPRAM data path),
                # written two cycles after stage f (slot 2 modulo 4 of the group: the cell
                # table is read at 1); its unit: d_j counted stage d's units (the next
                # group's stage d2 is in this cycle)
                h_st = Signal(signed(aw), name=f"ln{ln}_h_reg")
                fv1 = Signal(name=f"ln{ln}_f1_valid")
                fv_st = Signal(name=f"ln{ln}_f2_valid")
                m.d.sync += [fv1.eq(fv), fv_st.eq(fv1)]
                with m.If(fv):
                    m.d.sync += h_st.eq(h_new)
                    if ln == 0:
                        m.d.sync += f_j.eq(d_j - 1)
                busy_terms += [fv1, fv_st]
            if ew_spram:
                hw = _port(group_bits, signed(aw), "h_w")
                hr = _port(group_bits, signed(aw), "h_r")
            else:
                h_bank = Memory(shape=signed(aw), depth=self.groups_max, init=[])
                m.submodules[f"h_mem{ln}"] = h_bank
                hw, hr = h_bank.write_port(), h_bank.read_port()
            m.d.comb += [hw.addr.eq(f_j), hw.data.eq(h_st), hw.en.eq(fv_st),
                         hr.addr.eq(self.h_addr >> lb)]
            h_reads.append(hr.data)
            h_vals.append(h_st)
            f_valids.append(fv_st)
            busy_terms += [bv, cv, dv, ev, fv]

        # PE accumulator ports: the output stage, or the drain into the gate buffers (one per
        # PE, read by the lanes: distinct PEs, hence distinct buffers, per cycle)
        dk = Signal(self.local_bits + 1)               # drain: local row being read
        dr = Signal(bits_for(self.max_rows + n_pe))    # drain: dk * n_pe (first row of dk)
        d_issue = Signal()
        cur_proj = Signal(bits_for(max(self.proj_max, 1)))
        if self.proj_max:
            m.d.comb += cur_proj.eq(Array(pd.rows for pd in proj_descs)[layer])
        d_issue_terms = drain & (dr < GATES * cur_hidden)
        if self.proj_max:
            d_issue_terms |= (save | pdrain) & (dr < cur_proj)
        m.d.comb += d_issue.eq(d_issue_terms)
        d_valid = Signal()
        d_save = Signal()                              # the row read goes to the save area
        d_add = Signal()                               # DRAIN: add the saved x part
        d_row = Signal(self.local_bits)
        m.d.sync += [d_valid.eq(d_issue), d_row.eq(dk), d_save.eq(save)]
        if self.proj_max:
            m.d.sync += d_add.eq(drain & sv & (dr < s_rows))
        with m.If(d_issue):
            m.d.sync += [dk.eq(dk + 1), dr.eq(dr + n_pe)]
        if share_rd:
            rd_local = Signal(self.local_bits)
            m.d.comb += rd_local.eq(Mux(outp, r_local, lane_local[0]))
        for p, pe in enumerate(pes):
            if share_rd:
                # every PE reads the row (only the one addressed is used), one clears it
                m.d.comb += [pe.drain.eq(ew | outp), pe.acc_raddr.eq(rd_local),
                             pe.acc_clear.eq((o_valid | b_valid[0]) & (o_pe == p)),
                             pe.acc_clear_addr.eq(o_local)]
                continue
            ew_addr = Signal(self.local_bits, name=f"pe{p}_ew_addr")
            for ln in range(L):
                with m.If(lane_issue[ln] & (lane_pe[ln] == p)):
                    m.d.comb += ew_addr.eq(lane_local[ln])
            if serial:
                # the lanes read the accumulators (the PEs are idle) and clear each row the
                # cycle after (stage b)
                clr = Signal(name=f"pe{p}_ew_clear")
                clr_addr = Signal(self.local_bits, name=f"pe{p}_ew_clear_addr")
                for ln in range(L):
                    with m.If(b_valid[ln] & (b_pe[ln] == p)):
                        m.d.comb += [clr.eq(1), clr_addr.eq(b_local[ln])]
                m.d.comb += [pe.drain.eq(ew | outp),
                             pe.acc_raddr.eq(Mux(outp, r_local, ew_addr)),
                             pe.acc_clear.eq(Mux(outp, o_valid & (o_pe == p), clr)),
                             pe.acc_clear_addr.eq(Mux(outp, o_local, clr_addr))]
                continue
            buf_w, buf_r = buf_ports[p]
            # DRAIN reads the save area (the unit is idle then: the MAC waited for it)
            if self.proj_max:
                m.d.comb += [buf_w.addr.eq(Mux(d_save, self.rows_per_pe + d_row, d_row)),
                             buf_w.data.eq(pe.acc_rdata + Mux(d_add, buf_r.data, 0)),
                             buf_r.addr.eq(Mux(drain, self.rows_per_pe + dk,
                                               Mux(pout, r_local, ew_addr)))]
            else:
                m.d.comb += [buf_w.addr.eq(d_row), buf_w.data.eq(pe.acc_rdata),
                             buf_r.addr.eq(ew_addr)]
            m.d.comb += buf_w.en.eq(d_valid)
            m.d.comb += [pe.drain.eq(drain | save | pdrain | outp),
                         pe.acc_raddr.eq(Mux(outp, r_local, dk)),
                         pe.acc_clear.eq(Mux(outp, o_valid & (o_pe == p), d_valid)),
                         pe.acc_clear_addr.eq(Mux(outp, o_local, d_row))]

        # serializer: the group's non-zero h values enter the next step's list in unit order
        # (lane ln is written ln + 1 cycles after stage f; groups come every 4 cycles, L <= 4)
        # Serial schedule with stacked layers: one list write port, so a lower layer's h goes
        # out in two slots (state list, then x list): 2L slots per group (L <= 2).
        dbl = serial and self.layers_max > 1
        pend_valid = Signal(L)
        pend_val = [Signal(signed(aw), name=f"pend{ln}") for ln in range(L)]
        pend_j = Signal(group_bits)
        slots = 2 * L if dbl else L
        pend_k = Signal(range(slots + 1), init=slots)  # next slot to write (>= n_slots: idle)
        if dbl:
            n_slots = Signal(range(slots + 1))
            pend_lane = Signal(max(lb, 1))             # lane of slot pend_k
            to_x = Signal()                            # slot pend_k is the x-list copy
            m.d.comb += [n_slots.eq(Mux(ew_app, 2 * L, L)),
                         pend_lane.eq(Mux(ew_app, pend_k >> 1, pend_k)),
                         to_x.eq(ew_app & pend_k[0])]
        else:
            n_slots, pend_lane = L, pend_k[:max(lb, 1)]
        with m.If(f_valids[0]):
            m.d.sync += [pend_valid.eq(Cat(*(fv & (hv != 0)
                                             for fv, hv in zip(f_valids, h_vals)))),
                         pend_j.eq(f_j), pend_k.eq(0)]
            for ln in range(L):
                m.d.sync += pend_val[ln].eq(h_vals[ln])
        with m.Elif(pend_k < n_slots):
            m.d.sync += pend_k.eq(pend_k + 1)
        wr_en = Signal()
        wr_val = Signal(signed(aw))
        wr_unit = Signal(self.col_bits)
        m.d.comb += [wr_en.eq((pend_k < n_slots)
                              & Array(pend_valid[k] for k in range(L))[pend_lane]),
                     wr_val.eq(Array(pend_val)[pend_lane]),
                     wr_unit.eq((pend_j << lb) + (pend_lane if dbl else pend_k))]
        busy_terms.append(pend_k < n_slots)
        # state-list and x-list writes: the serializer (EW) or the projection's output stage
        with m.If(wr_en):
            if dbl:
                with m.If(to_x):
                    m.d.comb += [app_en.eq(1), app_col.eq(wr_unit), app_val.eq(wr_val)]
                with m.Else():
                    m.d.comb += [lw_en.eq(1), lw_bank.eq(ew_bank), lw_col.eq(ew_in + wr_unit),
                                 lw_val.eq(wr_val)]
            else:
                m.d.comb += [lw_en.eq(1), lw_bank.eq(ew_bank), lw_col.eq(ew_in + wr_unit),
                             lw_val.eq(wr_val), app_en.eq(ew_app),
                             app_col.eq(wr_unit), app_val.eq(wr_val)]
        with m.Elif(pout_wr):
            m.d.comb += [lw_en.eq(1), lw_bank.eq(src),
                         lw_col.eq(Mux(o_proj, p_in, cur_in) + o_row),
                         lw_val.eq(rq.out), app_en.eq(Mux(o_proj, p_app, ~is_last)),
                         app_col.eq(o_row),
                         app_val.eq(rq.out)]
        ew_busy = Signal()
        m.d.comb += ew_busy.eq(Cat(*busy_terms).any())
        ew_done = Signal()
        m.d.comb += ew_idle.eq(~ew | ~ew_busy)
        if serial:
            # registered (iCE40 timing: the unit's busy terms -> the sequencer's next step),
            # one cycle after the unit's last busy cycle (serial_ew_cycles counts it)
            m.d.sync += ew_done.eq(ew & ~ew_busy & ~ew_done)
        else:
            m.d.comb += ew_done.eq(ew & ~ew_busy)

        with m.If(ew_issue):
            m.d.sync += g.eq(g + 1)
            with m.If(g == 3):
                m.d.sync += [j.eq(j + 1), j_next.eq(j + 2), groups_left.eq(groups_left - 1),
                             have_groups.eq(groups_left != 1)]
            for k in range(0 if pow2 else GATES):
                with m.If(gate == k):
                    s = g_pe[k] + L
                    m.d.sync += g_row[k].eq(g_row[k] + L)
                    with m.If(s >= n_pe):
                        m.d.sync += [g_pe[k].eq(s - n_pe), g_local[k].eq(g_local[k] + 1)]
                    with m.Else():
                        m.d.sync += g_pe[k].eq(s)

        h_dense = Signal(signed(aw))
        if L == 1:
            m.d.comb += h_dense.eq(h_reads[0])
        else:
            m.d.comb += h_dense.eq(Array(h_reads)[h_bank_sel[:self.lane_bits]])
        # the last layer's output: r_T with a projection, else h_T
        m.d.comb += self.h_data.eq(Mux(has_proj, r_r.data, h_dense) if self.proj_max
                                   else h_dense)

        # --- statistics (per layer and step: index layer * T + t) ----------------------------
        # (step_stats False: none; serial: no projection, stat_pmac reads 0.  A statistic not
        # built gets a write port stand-in that drives nothing, and its port reads 0.)
        stat_w = {}
        for name, port in (("mac", self.stat_mac), ("ew", self.stat_ew),
                           ("pmac", self.stat_pmac)):
            if not self.step_stats or (serial and name == "pmac"):
                stat_w[name] = SimpleNamespace(addr=Signal(len(gstep), name=f"no_{name}_a"),
                                               data=Signal(32, name=f"no_{name}_d"),
                                               en=Signal(name=f"no_{name}_en"))
                continue
            mem = Memory(shape=unsigned(32), depth=self.gsteps_max, init=[])
            m.submodules[f"stat_{name}_mem"] = mem
            w, r_port = mem.write_port(), mem.read_port()
            m.d.comb += [r_port.addr.eq(self.stat_step), port.eq(r_port.data)]
            stat_w[name] = w
        stat_bits = 32 if self.step_stats else 1       # counters only the statistics read
        ew_cnt = Signal(stat_bits)
        xmac = Signal(stat_bits)                       # MAC cycles of the x-only phase
        m.d.comb += [stat_w["mac"].addr.eq(gstep),
                     stat_w["mac"].data.eq(mac_cnt + Mux(sv, xmac, 0)),
                     stat_w["pmac"].addr.eq(gstep),
                     stat_w["pmac"].data.eq(Mux(pph, mac_cnt, 0)),
                     stat_w["ew"].addr.eq(ew_gstep), stat_w["ew"].data.eq(ew_cnt + 1)]
        # cycles: counts every busy cycle of a run (0 at start; the finishing cycle included)
        with m.If(self.busy):
            m.d.sync += self.cycles.eq(self.cycles + 1)

        # the element-wise unit: counts its cycles, ends by itself (stats, x-list end)
        with m.If(ew):
            m.d.sync += ew_cnt.eq(ew_cnt + 1)
        with m.If(ew_done):
            m.d.sync += ew.eq(0)
            if dbl:
                # idle for either slot count until the next unit (ew_app follows the layer)
                m.d.sync += pend_k.eq(slots)
            m.d.comb += stat_w["ew"].en.eq(1)
            with m.If(ew_app):
                m.d.comb += [xend_en.eq(1), xend_addr.eq(ew_gstep + steps)]
        # the streaming output stage (r_t from the buffers) ends by itself (the unit is idle)
        if not serial:
            with m.If(pout & ~out_issue & ~o_valid):
                m.d.sync += pout.eq(0)
                m.d.comb += [xend_en.eq(p_app), xend_addr.eq(p_gstep + steps)]

        def finish():
            m.d.sync += [self.busy.eq(0), self.done.eq(1)]
            m.next = "IDLE"

        def advance(last_next, keep_xstart=False):
            """The step's MAC work is done: next step, next layer, or ``last_next``
            (``keep_xstart``: the next x part is partly done, xstart points into it)."""
            m.d.sync += [gstep.eq(gstep + 1), first.eq(0)]
            if not keep_xstart:
                m.d.sync += xstart.eq(xend_r.data)
            with m.If(step + 1 == steps):
                with m.If(~is_last):
                    m.d.sync += [layer.eq(layer + 1), step.eq(0), first.eq(1)]
                    if serial:
                        m.next = "SETUP"               # the unit is done
                    else:
                        with m.If(steps == 1):
                            # the next layer's x_0 is this step's output: still in the unit
                            m.next = "LWAIT"
                        with m.Else():
                            m.next = "SETUP"
                with m.Else():
                    last_next()
            with m.Else():
                m.d.sync += step.eq(step + 1)
                m.next = "SETUP"

        def wait_for_unit():
            m.next = "FWAIT"

        def to_classifier_or_finish():
            with m.If(classify):
                m.d.sync += cls.eq(1)
                m.next = "SETUP"
            with m.Else():
                finish()

        # --- sequencer ----------------------------------------------------------------------------
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [step.eq(0), gstep.eq(0), layer.eq(0), src.eq(0),
                                 xstart.eq(0), first.eq(1), self.cycles.eq(0), self.done.eq(0),
                                 self.busy.eq(1), cls.eq(0), self.cls_cycles.eq(0)]
                    if not serial:
                        m.d.sync += [xph.eq(0), sv.eq(0), pout.eq(0), xnext.eq(0), pph.eq(0)]
                    m.next = "SETUP"
            with m.State("SETUP"):
                m.d.sync += mac_cnt.eq(0)
                if serial:
                    m.d.sync += [xp.eq(xstart), hp.eq(0)]
                else:
                    m.d.sync += idx.eq(0)
                with m.If(cls):
                    m.d.sync += desc.eq(cls_desc)
                with m.Elif(pph):
                    if self.proj_max:
                        m.d.sync += desc.eq(Array(proj_descs)[layer])
                with m.Else():
                    m.d.sync += desc.eq(Array(lstm_descs)[layer + xnext])
                with m.If((gstep == 0) & ~pph & ~xph):
                    m.d.sync += wp.eq(xend_r.data)     # read while idle (above)
                m.next = "MAC"
            with m.State("MAC"):
                m.d.comb += mac.eq(1)
                if self.step_stats:
                    m.d.sync += mac_cnt.eq(mac_cnt + 1)
                else:
                    with m.If(~mac_cnt.all()):         # saturating (mac_done's >= 4)
                        m.d.sync += mac_cnt.eq(mac_cnt + 1)
                with m.If(mac_done):
                    with m.If(cls):
                        m.d.sync += r.eq(0)
                        if serial:
                            m.d.sync += [out_more.eq(desc.rows != 0),
                                         out_bias.eq(desc.bias_base)]
                        if RL:
                            m.d.sync += out_row.eq(0)
                        if not pow2:
                            m.d.sync += [r_pe.eq(0), r_local.eq(0)]
                        if self.step_stats:
                            m.d.sync += self.cls_cycles.eq(mac_cnt)
                        m.d.sync += outp.eq(1)
                        m.next = "OUTPUT"
                    if not serial:                 # (projection schedule only)
                        with m.Elif(pph):
                            # r_t goes to the src bank (the LSTM MAC has read r_(t-1) from it)
                            m.d.comb += stat_w["pmac"].en.eq(1)
                            m.d.sync += [r.eq(0), dk.eq(0), dr.eq(0)]
                            if not pow2:
                                m.d.sync += [r_pe.eq(0), r_local.eq(0)]
                            with m.If(src):
                                m.d.sync += hcount[1].eq(0)
                            with m.Else():
                                m.d.sync += hcount[0].eq(0)
                            with m.If(sv):
                                m.next = "PDRAIN"
                            with m.Else():
                                m.d.sync += outp.eq(1)
                                m.next = "OUTPUT"
                        with m.Elif(xph):
                            # step t+1's x part done: save the projection's rows
                            m.d.sync += [xmac.eq(mac_cnt), dk.eq(0), dr.eq(0),
                                         xstart.eq(xstart + nx)]
                            m.next = "SAVE"
                    with m.Else():
                        if serial:
                            # the gate pre-activations are in the accumulators: the unit
                            # reads (and clears) them there while the sequencer waits
                            m.d.comb += stat_w["mac"].en.eq(1)
                            m.d.sync += [ew.eq(1), ew_cnt.eq(0), j.eq(0), j_next.eq(1), g.eq(0),
                                         src.eq(~src), d_j.eq(0), groups_left.eq(groups_of),
                                         have_groups.eq(groups_of != 0)]
                            if pow2:                   # the first issue's row: gate i, unit 0
                                m.d.sync += [gate_row.eq(cur_gate[0]),
                                             bias_row.eq(desc.bias_base + cur_gate[0])]
                            for k in range(0 if pow2 else GATES):
                                m.d.sync += [g_pe[k].eq(cur_gate[k][:self.pe_bits]),
                                             g_local[k].eq(cur_gate[k][self.pe_bits:]),
                                             g_row[k].eq(cur_hidden * k)]
                            with m.If(src):            # h_t goes to the other bank
                                m.d.sync += hcount[0].eq(0)
                            with m.Else():
                                m.d.sync += hcount[1].eq(0)
                            m.next = "EWAIT"
                        else:
                            m.d.comb += stat_w["mac"].en.eq(1)
                            m.d.sync += [dk.eq(0), dr.eq(0)]
                            with m.If(ew_idle):
                                m.next = "DRAIN"
                            with m.Else():
                                m.next = "HWAIT"
            if serial:
                with m.State("EWAIT"):
                    # serial schedule: the element-wise unit runs on the accumulators
                    with m.If(ew_done):
                        advance(to_classifier_or_finish)
            if not serial:                     # (unreachable in the serial schedule)
                with m.State("HWAIT"):
                    # first step of a layer: the previous layer's last unit still runs
                    with m.If(ew_idle):
                        m.next = "DRAIN"
            if not serial:                     # (unreachable in the serial schedule)
                with m.State("DRAIN"):
                    m.d.comb += drain.eq(1)
                    with m.If(~d_issue):
                        # gate pre-activations buffered, accumulators clear: start the unit
                        m.d.comb += stat_w["pmac"].en.eq(~has_proj)
                        m.d.sync += [ew.eq(1), ew_cnt.eq(0), j.eq(0), j_next.eq(1), g.eq(0),
                                     ew_hidden.eq(cur_hidden), ew_in.eq(cur_in),
                                     groups_left.eq(groups_of),
                                     have_groups.eq(groups_of != 0),
                                     ew_app.eq(~has_proj & ~is_last), ew_bank.eq(~src),
                                     ew_first.eq(first), ew_gstep.eq(gstep),
                                     ew_bias_base.eq(desc.bias_base), ew_shift.eq(desc.shift)]
                        for k in range(GATES):
                            if pow2:
                                m.d.sync += ew_gate[k].eq(cur_gate[k])
                                continue
                            m.d.sync += [
                                g_pe[k].eq(cur_gate[k][:self.pe_bits]),
                                g_local[k].eq(cur_gate[k][self.pe_bits:]),
                                g_row[k].eq(cur_hidden * k),
                            ]
                        with m.If(src):                    # h_t goes to the other bank
                            m.d.sync += hcount[0].eq(0)
                        with m.Else():
                            m.d.sync += hcount[1].eq(0)
                        m.d.sync += sv.eq(0)
                        with m.If(has_proj):
                            with m.If((step + 1 < steps) | (~is_last & (steps > 1))):
                                # x_(t+1)'s part beside the unit (it does not need h_t); after
                                # the last step, the next layer's x_0 (r_0 of this layer)
                                m.d.sync += [xph.eq(1), xstart.eq(xend_r.data),
                                             xnext.eq(step + 1 == steps)]
                                m.next = "SETUP"
                            with m.Else():
                                m.next = "PWAIT"
                        with m.Else():
                            m.d.sync += src.eq(~src)
                            advance(wait_for_unit)
            if not serial:                     # (unreachable in the serial schedule)
                with m.State("SAVE"):
                    # accumulator rows 0 .. P-1 (local rows < ceil(P/N)) hold x_(t+1)'s part:
                    # to the buffers' save area, cleared for the projection
                    m.d.comb += save.eq(1)
                    with m.If(~d_issue):
                        m.d.sync += [xph.eq(0), xnext.eq(0), sv.eq(1), s_rows.eq(cur_proj)]
                        with m.If(ew_idle):
                            m.d.sync += pph.eq(1)
                            m.next = "SETUP"
                        with m.Else():
                            m.next = "PWAIT"
                with m.State("PDRAIN"):
                    # r_t's accumulator rows -> gate buffers (free: the unit is done); the output
                    # stage requantizes them from there beside step t+1's remaining MAC
                    m.d.comb += pdrain.eq(1)
                    with m.If(~d_issue):
                        m.d.sync += [pph.eq(0), pout.eq(1), p_rows.eq(desc.rows),
                                     p_bias.eq(desc.bias_base), p_shift.eq(desc.shift),
                                     p_relu.eq(desc.relu), p_gstep.eq(gstep), p_in.eq(cur_in),
                                     p_app.eq(~is_last)]
                        advance(to_classifier_or_finish, keep_xstart=True)
                with m.State("PWAIT"):
                    # the projection needs the whole h_t list
                    with m.If(ew_idle):
                        m.d.sync += pph.eq(1)
                        m.next = "SETUP"
                with m.State("LWAIT"):
                    with m.If(ew_idle):
                        m.next = "SETUP"
                with m.State("FWAIT"):
                    # after the last step: h_T complete
                    with m.If(ew_idle):
                        to_classifier_or_finish()
            with m.State("OUTPUT"):
                with m.If(~out_issue & ~out_busy):
                    m.d.sync += outp.eq(0)             # (every way out leaves the state)
                    with m.If(cls):
                        finish()
                    with m.Else():
                        m.d.comb += [xend_en.eq(~is_last), xend_addr.eq(gstep + steps)]
                        if not serial:
                            m.d.sync += pph.eq(0)
                        advance(to_classifier_or_finish)
        # --- read-back of the loaded words while idle (hdl.readback) ------------------------------
        words = {}
        matrix_descs = [(1, cls_desc)] + [(4 * k, lstm_descs[k]) for k in range(LM)]
        matrix_descs += [(4 * k + 3, proj_descs[k]) for k in range(len(proj_descs))]
        for k, target in matrix_descs:
            words.update({(k << 3) | int(field): getattr(target, name)
                          for field, name in DESCRIPTOR_MEMBERS})
        for k in range(LM):
            seq = {LstmField.HIDDEN: hidden_r[k], LstmField.INPUT: in_r[k],
                   **{LstmField.GATE0 + g: gate_start_r[k][g] for g in range(GATES)}}
            if k == 0:
                seq.update({LstmField.STEPS: steps, LstmField.CLASSIFY: classify})
            words.update({((4 * k + 2) << 3) | int(field): value
                          for field, value in seq.items()})
        connect_readback(m, self.rb, None, pes, obias_r, words)      # rb.en only while idle
        if ew_spram:
            self._connect_ew_spram(m, sp, pes, aux_pes, load, ld_addr, ld_data, ld_mask,
                                   ld_lanes, ew=ew, outp=outp,
                                   obias_r=obias_r, gate_r=gate_r, cell_r=cell_r, c_r=c_r,
                                   c_w=c_w, hw=hw, hr=hr, out_w=out_w, out_r=out_r, bv=z_valid0,
                                   dv=dv_cell, tab_rb=tab_rb)
        # TABLE: lane 0's table read ports (the words are act_format, sign-extended)
        tab_sel = Signal()
        tab_cell = Signal()
        with m.If(self.rb.en):
            m.d.sync += [tab_sel.eq(self.rb.region == LstmRegion.TABLE),
                         tab_cell.eq(self.rb.addr[tab_cell_bit])]
        gate_rd, cell_rd = tab_rb_ports
        with m.If(tab_sel):
            m.d.comb += self.rb.data.eq(Mux(tab_cell, cell_rd.data, gate_rd.data))
        return m
