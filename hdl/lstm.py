"""EIE/ESE-style sparse LSTM engine: a whole sequence (and an optional classifier) per start.

One time step ``t`` (``H`` = hidden, ``I`` = input size, ``N = n_pe``)::

    SETUP  1 cycle      step descriptor (the LSTM matrix [W_ih | W_hh], 4H x (I + H))
    MAC    spmv_cycles  broadcast the non-zeros of x_t (columns 0 .. I-1, from the x list
                        loaded up front) then the non-zeros of h_(t-1) (columns I + u, from
                        the h list the previous step's element-wise unit wrote); the PEs
                        accumulate the 4H gate rows (row r -> PE r % N, local row r // N)
    EW     4H + 6       element-wise unit, unit-major / gate-minor: one accumulator per cycle
                        (gate rows u, H+u, 2H+u, 3H+u of unit u), bias + requantize -> z,
                        sigmoid / tanh tables -> i, f, g, o;  c = sat(rs(f*c + i*g)),
                        h = sat(rs(o * tanh(c)));  c stays in the c memory, non-zero h go
                        to the other h-list bank (next step's broadcast), all h to the
                        dense h buffer (host read port h_addr / h_data)

After the last step, when ``CLASSIFY`` is set, the classifier ``Linear(H -> classes)`` runs
on the same PE array over h_T's non-zero list (MAC phase + one output row per cycle, as
:class:`hdl.spmv.SpmvEngine`); its outputs are read on ``out_addr`` / ``out_data``.

Arithmetic is bit-exact with :meth:`host.golden.GoldenModel.lstm_step`; the tables are built by
:func:`host.activations.make_table` and indexed as :func:`host.activations.table_index`.
The MAC phases take exactly :func:`host.cyclemodel.spmv_cycles` cycles (same PE, FIFO and
broadcaster timing as the SpMV engine); the whole run follows :mod:`host.lstm_cycles`.

See ``docs/lstm-engine.md``.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from host.activations import TableSpec, make_table
from host.memory_map import (DEFAULT_ACT_FORMAT, DESCRIPTOR_MEMBERS, DRAIN_LATENCY,
                             FIRST_BROADCAST, GATES, Field, LstmField, LstmParams, LstmRegion)

from .broadcast import BroadcastFifo
from .pe import ProcessingElement, addr_bits, column_layout
from .readback import ReadbackSignature, connect_readback
from .requant import Requantizer
from .spmv import LoadSignature, connect_matrix_loader, write_descriptor_field

__all__ = ["LstmEngine", "LstmRegion", "LstmField", "Field", "GATES"]

_DEFAULT_TABLES = TableSpec()

# LstmRegion, LstmField, GATES and the derived widths are defined in host.memory_map.


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
        Sigmoid / tanh tables (the model's ``table_spec``).
    max_entries_per_pe : int
        Entry memory depth per PE (LSTM matrix + classifier, padding included).
    max_xlist : int, optional
        x-list depth (non-zero inputs of a whole sequence); default ``steps_max * input_max``.
    """

    def __init__(self, n_pe, *, hidden_max, input_max, steps_max, classes_max=16,
                 index_bits=4, run_bits=4, act_format=DEFAULT_ACT_FORMAT, weight_width=16,
                 acc_bits=32, table_spec=_DEFAULT_TABLES, max_entries_per_pe, fifo_depth=8,
                 max_xlist=None, ew_lanes=1):
        params = LstmParams(
            n_pe=n_pe, hidden_max=hidden_max, input_max=input_max, steps_max=steps_max,
            classes_max=classes_max, index_bits=index_bits, run_bits=run_bits,
            act_format=act_format, weight_width=weight_width, acc_bits=acc_bits,
            table_spec=table_spec,
            max_entries_per_pe=max_entries_per_pe, fifo_depth=fifo_depth,
            max_xlist=max_xlist, ew_lanes=ew_lanes)
        #: The parameters and derived widths (:class:`host.memory_map.LstmParams`).
        self.params = params
        for name in ("n_pe", "hidden_max", "input_max", "steps_max", "classes_max",
                     "index_bits", "run_bits", "act_format", "weight_width", "acc_bits",
                     "table_spec", "max_entries_per_pe", "fifo_depth", "max_xlist", "ew_lanes",
                     "lane_bits", "groups_max", "max_layers", "max_rows", "max_cols",
                     "max_pointers", "max_bias", "rows_per_pe", "pe_bits", "local_bits",
                     "col_bits", "entry_bits", "ptr_bits", "entry_addr_bits", "k_bits",
                     "cb_bits", "bias_bits", "shift_bits", "xlist_bits", "lane_width",
                     "addr_width", "data_width"):
            setattr(self, name, getattr(params, name))
        self.descriptor_layout = data.StructLayout({
            "rows": unsigned(bits_for(self.max_rows)),
            "entry_base": unsigned(self.entry_addr_bits),
            "ptr_base": unsigned(self.k_bits),
            "bias_base": unsigned(self.bias_bits),
            "cb_slot": unsigned(self.cb_bits),
            "shift": unsigned(self.shift_bits),
            "relu": unsigned(1),
        })
        self.list_layout = data.StructLayout({"col": unsigned(self.col_bits),
                                              "value": signed(act_format.width)})
        super().__init__({
            "load": In(LoadSignature(n_pe, self.addr_width, self.data_width, self.lane_width)),
            "start": In(1),
            "busy": Out(1),
            "done": Out(1),
            "out_addr": In(addr_bits(max(classes_max, 1))),
            "out_data": Out(signed(act_format.width)),
            "h_addr": In(addr_bits(hidden_max)),
            "h_data": Out(signed(act_format.width)),
            "cycles": Out(32),
            "cls_cycles": Out(32),
            "stat_step": In(addr_bits(steps_max)),
            "stat_mac": Out(32),
            "stat_ew": Out(32),
            "rb": In(ReadbackSignature(n_pe, self.addr_width)),
        })

    # --- host-side facts ------------------------------------------------------------------------

    def timing(self):
        """Cycle model constants of the MAC phases (as :meth:`hdl.spmv.SpmvEngine.timing`)."""
        return self.params.timing()

    def config(self) -> dict:
        return self.params.config()

    # --- hardware ------------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        n_pe = self.n_pe
        act = self.act_format
        aw = act.width
        load = self.load
        region = load.region

        # --- PEs and broadcast FIFO --------------------------------------------------------------
        pes = []
        for p in range(n_pe):
            pe = ProcessingElement(index_bits=self.index_bits, run_bits=self.run_bits,
                                   act_width=aw, weight_width=self.weight_width,
                                   acc_bits=self.acc_bits, rows=self.rows_per_pe,
                                   entries=self.max_entries_per_pe,
                                   pointers=self.max_pointers, codebooks=self.max_layers)
            m.submodules[f"pe{p}"] = pe
            pes.append(pe)
        m.submodules.fifo = fifo = BroadcastFifo(n_pe, column_layout(self.k_bits, aw),
                                                 self.fifo_depth)
        for p, pe in enumerate(pes):
            wiring.connect(m, fifo.r[p], pe.col)

        # --- descriptors ------------------------------------------------------------------------
        descs = Array(Signal(self.descriptor_layout, name=f"desc{i}") for i in range(2))
        desc = Signal(self.descriptor_layout)
        hidden = Signal(bits_for(self.hidden_max))
        in_size = Signal(bits_for(self.input_max))
        steps = Signal(bits_for(self.steps_max))
        classify = Signal()
        gate_start = [Signal(self.local_bits + self.pe_bits, name=f"gate_start{g}")
                      for g in range(GATES)]

        bias_mem = connect_matrix_loader(
            m, pes, load, desc, entry_bits=self.entry_bits, ptr_bits=self.ptr_bits,
            weight_width=self.weight_width, acc_bits=self.acc_bits, max_bias=self.max_bias)
        with m.If(load.valid & (region == LstmRegion.DESCRIPTOR)):
            with m.If(load.addr[3:] == 2):
                with m.Switch(load.addr[:3]):
                    for field, sig in ((LstmField.HIDDEN, hidden), (LstmField.INPUT, in_size),
                                       (LstmField.STEPS, steps),
                                       (LstmField.CLASSIFY, classify)):
                        with m.Case(field):
                            m.d.sync += sig.eq(load.data[:len(sig)])
                    for g in range(GATES):
                        with m.Case(LstmField.GATE0 + g):
                            m.d.sync += gate_start[g].eq(load.data[:len(gate_start[g])])
            with m.Elif(load.addr[3:] < 2):
                write_descriptor_field(m, descs[load.addr[3]], load)

        # --- x list (all steps) and per-step ends ----------------------------------------------
        m.submodules.xlist = xlist = Memory(shape=self.list_layout, depth=self.max_xlist,
                                            init=[])
        xlist_w, xlist_r = xlist.write_port(), xlist.read_port()
        m.d.comb += [xlist_w.addr.eq(load.addr), xlist_w.data.value.eq(load.data[:aw]),
                     xlist_w.data.col.eq(load.data[aw:aw + self.col_bits]),
                     xlist_w.en.eq(load.valid & (region == LstmRegion.XLIST))]
        m.submodules.xend = xend = Memory(shape=unsigned(self.xlist_bits),
                                          depth=self.steps_max, init=[])
        xend_w, xend_r = xend.write_port(), xend.read_port()
        m.d.comb += [xend_w.addr.eq(load.addr), xend_w.data.eq(load.data[:self.xlist_bits]),
                     xend_w.en.eq(load.valid & (region == LstmRegion.XEND))]
        step = Signal(range(self.steps_max + 1))
        m.d.comb += [xend_r.addr.eq(step), xend_r.en.eq(1)]
        xstart = Signal(self.xlist_bits)

        # --- h lists (two banks), dense h buffer, c memory, output buffer ------------------------
        hl_r, hl_w = [], []
        for b in range(2):
            mem = Memory(shape=self.list_layout, depth=self.hidden_max, init=[])
            m.submodules[f"hlist{b}"] = mem
            hl_r.append(mem.read_port())
            hl_w.append(mem.write_port())
        hcount = [Signal(range(self.hidden_max + 1), name=f"hcount{b}") for b in range(2)]
        src = Signal()
        h_reads = []                                   # dense h banks (one per lane), below
        h_bank_sel = Signal(max(self.lane_bits, 1))
        m.d.sync += h_bank_sel.eq(self.h_addr)
        m.submodules.out_mem = out_mem = Memory(shape=signed(aw),
                                                depth=max(self.classes_max, 1), init=[])
        out_w, out_r = out_mem.write_port(), out_mem.read_port()
        m.d.comb += [out_r.addr.eq(self.out_addr), self.out_data.eq(out_r.data)]

        # --- broadcaster: x_t's non-zeros then h's non-zeros -------------------------------------
        mac = Signal()
        cls = Signal()                                 # classifier phase (no x part)
        nx = Signal(self.xlist_bits)
        m.d.comb += nx.eq(Mux(cls, 0, xend_r.data - xstart))
        nh = Mux(src, hcount[1], hcount[0])
        total = Signal(self.xlist_bits + 1)
        m.d.comb += total.eq(nx + nh)
        idx = Signal(self.xlist_bits + 1)
        head_valid = Signal()
        head_h = Signal()
        fetch = Signal()
        m.d.comb += fetch.eq(mac & (idx < total) & (~head_valid | fifo.w.ready))
        m.d.comb += [xlist_r.addr.eq(xstart + idx), xlist_r.en.eq(fetch)]
        for b in range(2):
            m.d.comb += [hl_r[b].addr.eq(idx - nx), hl_r[b].en.eq(fetch)]
        hhead = Mux(src, hl_r[1].data.as_value(), hl_r[0].data.as_value())
        head = data.View(self.list_layout, Mux(head_h, hhead, xlist_r.data.as_value()))
        m.d.comb += [fifo.w.valid.eq(head_valid),
                     fifo.w.payload.k.eq(desc.ptr_base + head.col),
                     fifo.w.payload.value.eq(head.value)]
        with m.If(fetch):
            m.d.sync += [idx.eq(idx + 1), head_valid.eq(1), head_h.eq(idx >= nx)]
        with m.Elif(fifo.w.ready):
            m.d.sync += head_valid.eq(0)
        pe_busy = Signal()
        m.d.comb += pe_busy.eq(Cat(*(pe.busy for pe in pes)).any())
        mac_cnt = Signal(32)
        mac_done = Signal()
        m.d.comb += mac_done.eq(mac & (idx == total) & ~head_valid & ~pe_busy
                                & (mac_cnt >= FIRST_BROADCAST + DRAIN_LATENCY))

        # --- accumulator read-out: classifier output stage (one row per cycle) -------------------
        ew = Signal()                                  # element-wise phase
        outp = Signal()                                # classifier output phase
        L = self.ew_lanes
        lb = self.lane_bits
        m.submodules.requant = rq = Requantizer(self.acc_bits, act, self.weight_width - 1)
        r = Signal(bits_for(self.max_rows))
        r_pe = Signal(self.pe_bits)
        r_local = Signal(self.local_bits)
        out_issue = Signal()
        m.d.comb += out_issue.eq(outp & (r < desc.rows))
        o_valid = Signal()
        o_pe = Signal(self.pe_bits)
        o_local = Signal(self.local_bits)
        o_row = Signal.like(r)
        m.d.sync += [o_valid.eq(out_issue), o_pe.eq(r_pe), o_local.eq(r_local), o_row.eq(r)]
        obias_r = bias_mem.read_port()
        m.d.comb += [obias_r.addr.eq(desc.bias_base + r), obias_r.en.eq(out_issue)]
        acc_data = Array(pe.acc_rdata for pe in pes)
        m.d.comb += [rq.acc.eq(acc_data[o_pe]), rq.bias.eq(obias_r.data),
                     rq.shift.eq(desc.shift), rq.relu.eq(desc.relu)]
        m.d.comb += [out_w.addr.eq(o_row), out_w.data.eq(rq.out), out_w.en.eq(o_valid)]
        with m.If(out_issue):
            m.d.sync += r.eq(r + 1)
            with m.If(r_pe == n_pe - 1):
                m.d.sync += [r_pe.eq(0), r_local.eq(r_local + 1)]
            with m.Else():
                m.d.sync += r_pe.eq(r_pe + 1)

        # --- element-wise unit: L lanes, lane ln does units u = j*L + ln --------------------------
        spec = self.table_spec
        sig_t = make_table("sigmoid", act, spec)
        tanh_t = make_table("tanh", act, spec)
        m.submodules.gate_rom = gate_rom = Memory(
            shape=signed(aw), depth=2 * spec.entries,
            init=[int(v) for v in np.concatenate([sig_t, tanh_t])])
        m.submodules.cell_rom = cell_rom = Memory(shape=signed(aw), depth=spec.entries,
                                                  init=[int(v) for v in tanh_t])
        one = 1 << act.frac

        def table_index(q):
            """``host.activations.table_index`` of a signed ``aw``-bit value (comb)."""
            mag = Signal(aw + 1, name="mag")             # |min_int| fits
            m.d.comb += mag.eq(Mux(q < 0, -q, q))
            shift = act.frac + spec.step_log2
            raw = mag >> shift if shift >= 0 else mag << -shift
            return Mux(raw > spec.entries - 1, spec.entries - 1, raw)[:spec.index_bits]

        def sat_round(value, width, name):
            """``saturate(round_shift(value, act.frac), act)`` (comb)."""
            rounded = (value + (1 << (act.frac - 1))) >> act.frac if act.frac else value
            rr = Signal(signed(width + 1), name=f"{name}_rounded")
            m.d.comb += rr.eq(rounded)
            out = Signal(signed(aw), name=name)
            with m.If(rr > act.max_int):
                m.d.comb += out.eq(act.max_int)
            with m.Elif(rr < act.min_int):
                m.d.comb += out.eq(act.min_int)
            with m.Else():
                m.d.comb += out.eq(rr)
            return out

        group_bits = addr_bits(self.groups_max)
        j = Signal(range(self.groups_max + 1))         # unit group being issued
        g = Signal(2)                                  # gate being issued (i, f, g, o)
        g_pe = [Signal(self.pe_bits, name=f"g_pe{k}") for k in range(GATES)]
        g_local = [Signal(self.local_bits, name=f"g_local{k}") for k in range(GATES)]
        g_row = [Signal(self.bias_bits, name=f"g_row{k}") for k in range(GATES)]
        first = Signal()                               # first step: c_(t-1) = 0
        ew_issue = Signal()
        ju = Signal(bits_for(self.groups_max * L))
        m.d.comb += [ju.eq(j << lb), ew_issue.eq(ew & (ju < hidden))]
        cur_pe = Array(g_pe)[g]
        cur_local = Array(g_local)[g]
        cur_row = Array(g_row)[g]

        # pipeline registers shared by the lanes
        b_gate, c_gate = Signal(2), Signal(2)
        b_j, c_j, d_j, e_j, f_j = (Signal(group_bits, name=f"{s}_j") for s in "bcdef")
        m.d.sync += [b_gate.eq(g), c_gate.eq(b_gate), b_j.eq(j), c_j.eq(b_j), d_j.eq(c_j),
                     e_j.eq(d_j), f_j.eq(e_j)]
        lane_issue, lane_pe, lane_local = [], [], []
        b_valid, b_pe, b_local = [], [], []
        h_vals, f_valids = [], []
        busy_terms = [ew_issue]
        for ln in range(L):
            # issue: row g*H + j*L + ln -> PE (pe_g + ln) mod N, local local_g + wrap
            valid = Signal(name=f"ln{ln}_issue")
            s = cur_pe + ln
            wrapped = s >= n_pe
            pe_l = Signal(self.pe_bits, name=f"ln{ln}_pe")
            local_l = Signal(self.local_bits, name=f"ln{ln}_local")
            m.d.comb += [valid.eq(ew_issue & (ju + ln < hidden)),
                         pe_l.eq(Mux(wrapped, s - n_pe, s)),
                         local_l.eq(cur_local + wrapped)]
            lane_issue.append(valid)
            lane_pe.append(pe_l)
            lane_local.append(local_l)
            bias_r = bias_mem.read_port()
            m.d.comb += [bias_r.addr.eq(desc.bias_base + cur_row + ln), bias_r.en.eq(valid)]
            bv = Signal(name=f"ln{ln}_b_valid")
            bp = Signal(self.pe_bits, name=f"ln{ln}_b_pe")
            bl = Signal(self.local_bits, name=f"ln{ln}_b_local")
            m.d.sync += [bv.eq(valid), bp.eq(pe_l), bl.eq(local_l)]
            b_valid.append(bv)
            b_pe.append(bp)
            b_local.append(bl)
            # stage b: requantize -> z, table read
            lrq = Requantizer(self.acc_bits, act, self.weight_width - 1)
            m.submodules[f"ew_requant{ln}"] = lrq
            m.d.comb += [lrq.acc.eq(acc_data[bp]), lrq.bias.eq(bias_r.data),
                         lrq.shift.eq(desc.shift), lrq.relu.eq(0)]
            z = lrq.out
            gate_r = gate_rom.read_port()
            m.d.comb += [gate_r.addr.eq(Cat(table_index(z), b_gate == 2)), gate_r.en.eq(1)]
            cv = Signal(name=f"ln{ln}_c_valid")
            c_neg = Signal(name=f"ln{ln}_c_neg")
            m.d.sync += [cv.eq(bv), c_neg.eq(z < 0)]
            # stage c: gate value; i, f, o registered; at gate g: f*c + i*g
            tv = gate_r.data
            y = Signal(signed(aw), name=f"ln{ln}_y")          # in [-1, 1]: fits
            with m.If(c_gate == 2):
                m.d.comb += y.eq(Mux(c_neg, -tv, tv))
            with m.Else():
                m.d.comb += y.eq(Mux(c_neg, one - tv, tv))
            # One multiplier per lane (aw x aw: gate values and tanh lie in [-1, 1], which the
            # act format holds): f*c_old at gate f's stage c, i*g at gate g's stage c,
            # o*tanh(c) at stage e -- cycles 3, 0 and 2 modulo 4 of the unit's group, never
            # at the same time.
            y_i = Signal(signed(aw), name=f"ln{ln}_y_i")
            y_o = Signal(signed(aw), name=f"ln{ln}_y_o")
            with m.If(cv):
                with m.Switch(c_gate):
                    with m.Case(0):
                        m.d.sync += y_i.eq(y)
                    with m.Case(3):
                        m.d.sync += y_o.eq(y)
            c_mem = Memory(shape=signed(aw), depth=self.groups_max, init=[])
            m.submodules[f"c_mem{ln}"] = c_mem
            c_w, c_r = c_mem.write_port(), c_mem.read_port()
            m.d.comb += [c_r.addr.eq(j), c_r.en.eq(valid & (g == 0))]
            c_old = Mux(first, 0, c_r.data)
            ev = Signal(name=f"ln{ln}_e_valid")
            e_neg = Signal(name=f"ln{ln}_e_neg")
            cell_r = cell_rom.read_port()
            tc = Signal(signed(aw), name=f"ln{ln}_tanh_c")
            m.d.comb += tc.eq(Mux(e_neg, -cell_r.data, cell_r.data))
            mul_a = Signal(signed(aw), name=f"ln{ln}_mul_a")
            mul_b = Signal(signed(aw), name=f"ln{ln}_mul_b")
            with m.If(ev):
                m.d.comb += [mul_a.eq(y_o), mul_b.eq(tc)]
            with m.Elif(c_gate == 2):
                m.d.comb += [mul_a.eq(y_i), mul_b.eq(y)]
            with m.Else():
                m.d.comb += [mul_a.eq(y), mul_b.eq(c_old)]
            prod = Signal(signed(2 * aw), name=f"ln{ln}_prod")
            m.d.comb += prod.eq(mul_a * mul_b)
            fc = Signal(signed(2 * aw), name=f"ln{ln}_fc")
            with m.If(cv & (c_gate == 1)):
                m.d.sync += fc.eq(prod)
            sum_w = 2 * aw + 1
            dv = Signal(name=f"ln{ln}_d_valid")
            d_sum = Signal(signed(sum_w), name=f"ln{ln}_d_sum")
            m.d.sync += [dv.eq(cv & (c_gate == 2)), d_sum.eq(fc + prod)]
            # stage d: c_new, c write, tanh(c) read
            c_new = sat_round(d_sum, sum_w, f"ln{ln}_c_new")
            m.d.comb += [c_w.addr.eq(d_j), c_w.data.eq(c_new), c_w.en.eq(dv),
                         cell_r.addr.eq(table_index(c_new)), cell_r.en.eq(1)]
            m.d.sync += [ev.eq(dv), e_neg.eq(c_new < 0)]
            # stage e: o * tanh(c) (the lane multiplier)
            fv = Signal(name=f"ln{ln}_f_valid")
            f_prod = Signal(signed(2 * aw), name=f"ln{ln}_f_prod")
            m.d.sync += [fv.eq(ev), f_prod.eq(prod)]
            # stage f: h -> dense h bank ln, list serializer
            h_new = sat_round(f_prod, 2 * aw, f"ln{ln}_h")
            h_bank = Memory(shape=signed(aw), depth=self.groups_max, init=[])
            m.submodules[f"h_mem{ln}"] = h_bank
            hw, hr = h_bank.write_port(), h_bank.read_port()
            m.d.comb += [hw.addr.eq(f_j), hw.data.eq(h_new), hw.en.eq(fv),
                         hr.addr.eq(self.h_addr >> lb)]
            h_reads.append(hr.data)
            h_vals.append(h_new)
            f_valids.append(fv)
            busy_terms += [bv, cv, dv, ev, fv]

        # PE accumulator ports: the output stage, or the lanes (distinct PEs per cycle)
        for p, pe in enumerate(pes):
            ew_addr = Signal(self.local_bits, name=f"pe{p}_ew_addr")
            ew_clear = Signal(name=f"pe{p}_ew_clear")
            ew_clear_addr = Signal(self.local_bits, name=f"pe{p}_ew_clear_addr")
            for ln in range(L):
                with m.If(lane_issue[ln] & (lane_pe[ln] == p)):
                    m.d.comb += ew_addr.eq(lane_local[ln])
                with m.If(b_valid[ln] & (b_pe[ln] == p)):
                    m.d.comb += [ew_clear.eq(1), ew_clear_addr.eq(b_local[ln])]
            m.d.comb += [pe.drain.eq(ew | outp),
                         pe.acc_raddr.eq(Mux(outp, r_local, ew_addr)),
                         pe.acc_clear.eq(Mux(outp, o_valid & (o_pe == p), ew_clear)),
                         pe.acc_clear_addr.eq(Mux(outp, o_local, ew_clear_addr))]

        # serializer: the group's non-zero h values enter the next step's list in unit order
        # (lane ln is written ln + 1 cycles after stage f; groups come every 4 cycles, L <= 4)
        pend_valid = Signal(L)
        pend_val = [Signal(signed(aw), name=f"pend{ln}") for ln in range(L)]
        pend_j = Signal(group_bits)
        pend_k = Signal(range(L + 1), init=L)          # next lane to write (L: idle)
        with m.If(f_valids[0]):
            m.d.sync += [pend_valid.eq(Cat(*(fv & (hv != 0)
                                             for fv, hv in zip(f_valids, h_vals)))),
                         pend_j.eq(f_j), pend_k.eq(0)]
            for ln in range(L):
                m.d.sync += pend_val[ln].eq(h_vals[ln])
        with m.Elif(pend_k < L):
            m.d.sync += pend_k.eq(pend_k + 1)
        wr_en = Signal()
        wr_val = Signal(signed(aw))
        wr_unit = Signal(self.col_bits)
        m.d.comb += [wr_en.eq((pend_k < L)
                              & Array(pend_valid[k] for k in range(L))[pend_k[:max(lb, 1)]]),
                     wr_val.eq(Array(pend_val)[pend_k[:max(lb, 1)]]),
                     wr_unit.eq((pend_j << lb) + pend_k)]
        busy_terms.append(pend_k < L)
        dst_count = Mux(src, hcount[0], hcount[1])
        for b in range(2):
            m.d.comb += [hl_w[b].addr.eq(dst_count), hl_w[b].data.col.eq(in_size + wr_unit),
                         hl_w[b].data.value.eq(wr_val),
                         hl_w[b].en.eq(wr_en & (src != b))]      # dst bank = ~src
        with m.If(wr_en):
            with m.If(src):
                m.d.sync += hcount[0].eq(hcount[0] + 1)
            with m.Else():
                m.d.sync += hcount[1].eq(hcount[1] + 1)
        ew_busy = Signal()
        m.d.comb += ew_busy.eq(Cat(*busy_terms).any())

        with m.If(ew_issue):
            m.d.sync += g.eq(g + 1)
            with m.If(g == 3):
                m.d.sync += j.eq(j + 1)
            for k in range(GATES):
                with m.If(g == k):
                    s = g_pe[k] + L
                    m.d.sync += g_row[k].eq(g_row[k] + L)
                    with m.If(s >= n_pe):
                        m.d.sync += [g_pe[k].eq(s - n_pe), g_local[k].eq(g_local[k] + 1)]
                    with m.Else():
                        m.d.sync += g_pe[k].eq(s)

        if L == 1:
            m.d.comb += self.h_data.eq(h_reads[0])
        else:
            m.d.comb += self.h_data.eq(Array(h_reads)[h_bank_sel[:self.lane_bits]])

        # --- statistics ---------------------------------------------------------------------------
        m.submodules.stat_mac_mem = smac = Memory(shape=unsigned(32), depth=self.steps_max,
                                                  init=[])
        m.submodules.stat_ew_mem = sew = Memory(shape=unsigned(32), depth=self.steps_max,
                                                init=[])
        smac_w, smac_r = smac.write_port(), smac.read_port()
        sew_w, sew_r = sew.write_port(), sew.read_port()
        m.d.comb += [smac_r.addr.eq(self.stat_step), sew_r.addr.eq(self.stat_step),
                     self.stat_mac.eq(smac_r.data), self.stat_ew.eq(sew_r.data),
                     smac_w.addr.eq(step), smac_w.data.eq(mac_cnt),
                     sew_w.addr.eq(step)]
        ew_cnt = Signal(32)
        m.d.comb += sew_w.data.eq(ew_cnt + 1)
        run_cnt = Signal(32)

        # --- sequencer ----------------------------------------------------------------------------
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [step.eq(0), src.eq(0), hcount[0].eq(0), xstart.eq(0),
                                 first.eq(1), run_cnt.eq(0), self.done.eq(0),
                                 self.busy.eq(1), cls.eq(0), self.cls_cycles.eq(0)]
                    m.next = "SETUP"
            with m.State("SETUP"):
                m.d.sync += [run_cnt.eq(run_cnt + 1), desc.eq(descs[cls]), idx.eq(0),
                             mac_cnt.eq(0)]
                m.next = "MAC"
            with m.State("MAC"):
                m.d.comb += mac.eq(1)
                m.d.sync += [run_cnt.eq(run_cnt + 1), mac_cnt.eq(mac_cnt + 1)]
                with m.If(mac_done):
                    with m.If(src):
                        m.d.sync += hcount[0].eq(0)
                    with m.Else():
                        m.d.sync += hcount[1].eq(0)
                    with m.If(cls):
                        m.d.sync += [self.cls_cycles.eq(mac_cnt), r.eq(0), r_pe.eq(0),
                                     r_local.eq(0)]
                        m.next = "OUTPUT"
                    with m.Else():
                        m.d.comb += smac_w.en.eq(1)
                        m.d.sync += [j.eq(0), g.eq(0), ew_cnt.eq(0)]
                        for k in range(GATES):
                            m.d.sync += [
                                g_pe[k].eq(gate_start[k][:self.pe_bits]),
                                g_local[k].eq(gate_start[k][self.pe_bits:]),
                                g_row[k].eq(hidden * k),
                            ]
                        m.next = "EW"
            with m.State("EW"):
                m.d.comb += ew.eq(1)
                m.d.sync += [run_cnt.eq(run_cnt + 1), ew_cnt.eq(ew_cnt + 1)]
                with m.If(~ew_busy):
                    m.d.comb += sew_w.en.eq(1)
                    m.d.sync += [src.eq(~src), step.eq(step + 1), first.eq(0),
                                 xstart.eq(xend_r.data)]
                    with m.If(step + 1 == steps):
                        with m.If(classify):
                            m.d.sync += cls.eq(1)
                            m.next = "SETUP"
                        with m.Else():
                            m.d.sync += [self.busy.eq(0), self.done.eq(1),
                                         self.cycles.eq(run_cnt + 1)]
                            m.next = "IDLE"
                    with m.Else():
                        m.next = "SETUP"
            with m.State("OUTPUT"):
                m.d.comb += outp.eq(1)
                m.d.sync += run_cnt.eq(run_cnt + 1)
                with m.If(~out_issue & ~o_valid):
                    m.d.sync += [self.busy.eq(0), self.done.eq(1),
                                 self.cycles.eq(run_cnt + 1)]
                    m.next = "IDLE"
        # --- read-back of the loaded words while idle (hdl.readback) ------------------------------
        words = {(n << 3) | int(field): getattr(descs[n], name)
                 for n in range(2) for field, name in DESCRIPTOR_MEMBERS}
        seq = {LstmField.HIDDEN: hidden, LstmField.INPUT: in_size, LstmField.STEPS: steps,
               LstmField.CLASSIFY: classify,
               **{LstmField.GATE0 + g: gate_start[g] for g in range(GATES)}}
        words.update({(2 << 3) | int(field): value for field, value in seq.items()})
        connect_readback(m, self.rb, self.busy, pes, obias_r, words)
        return m
