"""Sparse CNN engine: conv, max-pool, flatten and fully connected layers on the EIE PE array.

Every output pixel of a layer is a sparse matrix-vector product of the layer's pruned,
weight-shared filter bank (``C_out x C_in*kh*kw``, columns in hardware order, see
:mod:`host.cnn_image`) with the pixel's input patch.  Block diagram (``N = n_pe``, ``G =
fm_lanes``; ``=>`` one per PE)::

    loader: entries/pointers/codebooks => PEs, biases, descriptors, INPUT -> FM buffer 0
                 |
    +------------v-----------+  word (G lanes)  +----------------+  (k, value)  +------------+
    | FM buffer [src]        |----------------->| emitter:       |------------->| Broadcast  |
    | fm_words x G x act     |  one read/cycle  | non-zero lanes |  one/cycle   | FIFO (F)   |
    +------------------------+  in-bounds words | lowest first   |  stall when  +-----+------+
          ^     window generator (ky, kx, g)    +----------------+  any FIFO full     ||
          |     padding never read                                                  vv
    +-----+------------------+   read-modify-write (max-pool)     +----------------------------+
    | FM buffer [dst]        |<--- out = relu(sat(round_shift(    | ProcessingElement x N      |
    | (ping-pong with src)   |     acc + bias, shift)))  <--------| acc[r % N][r // N]         |
    +------------------------+     one channel per cycle          +----------------------------+

Sequencer per layer: ``LAYER`` (descriptor), ``INIT`` (pixel counters), then per computed conv
pixel ``PIXEL`` (patch bounds), ``PIXEL2`` (start addresses), ``MAC`` (scan + PEs, until every
product is in its accumulator), ``OUTPUT`` (one output channel per cycle: accumulator read and
clear, bias, requantize, ReLU, then written into the destination buffer, or max'ed with what
is there when the pixel is not the first of its pool window).  The buffers swap roles between
layers, so a whole CNN runs on one ``start``.  Timing is exactly :mod:`host.cnn_cycles` with
:meth:`CnnEngine.timing`.  See ``docs/cnn-engine.md``.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from host.encoding import pointer_fields
from host.cnn_cycles import CnnTiming
from host.cnn_image import FIELD_BITS, CnnConfig, Field, Region
from host.memory_map import DRAIN_LATENCY, FETCH_LATENCY

from .pe import ProcessingElement, addr_bits
from .readback import ReadbackSignature, connect_readback
from . import requant
from .requant import Requantizer
from .spmv import (LoadSignature, add_pe_array, connect_matrix_loader,
                   matrix_descriptor_members)

__all__ = ["CnnEngine", "REQUANT_LATENCY", "LAYER_SETUP", "PIXEL_SETUP", "OUTPUT_OVERHEAD"]

#: The output stage's requantizers are combinational (``Requantizer(pipelined=False)``).
OUTPUT_REQUANT_PIPELINED = False
#: Cycles from the requantizer's inputs to its output (the Requantizer's own ``latency``: 0
#: combinational, :data:`hdl.requant.REQUANT_LATENCY` pipelined).  The output stage delays
#: the destination read and write by this many cycles.
REQUANT_LATENCY = requant.REQUANT_LATENCY if OUTPUT_REQUANT_PIPELINED else 0
#: Cycles per layer before the first pixel: LAYER (descriptor) + INIT (counters).
LAYER_SETUP = CnnTiming.layer_setup
#: Cycles per pixel before the MAC phase: PIXEL (bounds) + PIXEL2 (addresses).
PIXEL_SETUP = CnnTiming.pixel_setup
#: Output phase cycles beyond one per channel: pipeline stage, requantizer, finish cycle.
OUTPUT_OVERHEAD = 2 + REQUANT_LATENCY


class CnnEngine(wiring.Component):
    """Sparse CNN engine built from a :class:`host.cnn_image.CnnConfig`.

    Parameters
    ----------
    config : CnnConfig
        Engine parameters (PEs, entry formats, memory depths, feature-map buffers, limits).

    Attributes
    ----------
    load : In(LoadSignature)
        Loader writes (:class:`host.cnn_image.Region`); only while not ``busy``.  INPUT writes
        go to feature-map buffer 0, one activation per write (``addr = word * G + lane``).
    start : In(1)
        Pulse: run layers ``0 .. n_layers - 1`` (the input map is in buffer 0).
    n_layers : In(range(1, max_layers + 1))
    busy, done : Out(1)
    out_addr : In(activation address bits)
        Activation address (``word * G + lane``) in the buffer holding the last layer's output.
    out_data : Out(signed(act width))
        The activation at ``out_addr`` of the previous cycle.
    cycles : Out(32)
        Cycles of the last run (start pulse excluded, done cycle included).
    stat_layer : In(layer bits)
    stat_cycles, stat_mac : Out(32)
        Whole cycles and MAC-phase cycles of layer ``stat_layer`` in the last run.
    rb : In(ReadbackSignature)
        Read-back of the loaded ENTRY, POINTER, CODEBOOK, BIAS and DESCRIPTOR words while idle
        (:mod:`hdl.readback`; a descriptor field reads back the bits the engine keeps).
    """

    def __init__(self, config: CnnConfig):
        if not isinstance(config, CnnConfig):
            raise TypeError(f"`config` must be a host.cnn_image.CnnConfig, not {config!r}")
        self.cfg = config
        c = config
        self.n_pe = c.n_pe
        self.act_format = c.act_format
        self.lanes = c.fm_lanes
        self.lane_bits = c.lane_bits
        self.rows_per_pe = -(-c.max_rows // c.n_pe)
        #: Output channels per output-phase cycle (``n_pe`` with ``out_parallel``, else 1).
        self.out_rows = c.n_pe if c.out_parallel else 1
        self.entry_bits = c.index_bits + c.run_bits
        self.entry_addr_bits, ptr_len_bits = pointer_fields(c.max_entries_per_pe,
                                                            self.rows_per_pe)
        self.ptr_bits = self.entry_addr_bits + ptr_len_bits     # host.encoding.pointer_words
        self.k_bits = addr_bits(c.max_pointers)
        self.cb_bits = addr_bits(c.max_layers)
        self.bias_bits = addr_bits(c.max_bias)
        self.fm_addr_bits = addr_bits(c.fm_words)
        self.act_addr_bits = self.fm_addr_bits + self.lane_bits
        self.wi_bits = bits_for(c.max_pointers // c.fm_lanes + 1)
        self.dim_bits = bits_for(c.max_dim)
        self.pad_bits = bits_for(c.max_pad)
        out_dim = c.max_dim + 2 * c.max_pad + 1
        self.od_bits = bits_for(out_dim)
        self.pos_bits = bits_for(out_dim * c.max_stride + c.max_dim) + 1     # signed
        self.step_bits = bits_for(c.max_stride * c.fm_words)
        self.sa_bits = bits_for((2 * c.max_pad + 2) * c.fm_words * (c.max_stride + 1)) + 1
        self.og_bits = bits_for(-(-c.max_rows // c.fm_lanes))
        self.lane_width = max(self.entry_bits, self.ptr_bits)
        self.descriptor_layout = data.StructLayout({
            **matrix_descriptor_members(
                max_rows=c.max_rows, entry_addr_bits=self.entry_addr_bits, k_bits=self.k_bits,
                bias_bits=self.bias_bits, cb_bits=self.cb_bits,
                shift_bits=bits_for(c.weight_width - 1)),
            "in_h": unsigned(self.dim_bits),
            "in_w": unsigned(self.dim_bits),
            "kh": unsigned(self.dim_bits),
            "kw": unsigned(self.dim_bits),
            "stride": unsigned(bits_for(c.max_stride)),
            "pad": unsigned(self.pad_bits),
            "in_groups": unsigned(bits_for(c.fm_words)),
            "last_mask": unsigned(c.fm_lanes),
            "row_stride": unsigned(bits_for(c.fm_words)),
            "kw_groups": unsigned(self.wi_bits),
            "col_step": unsigned(self.step_bits),
            "row_step": unsigned(self.step_bits),
            "base0": signed(self.sa_bits),
            "out_h": unsigned(self.od_bits),
            "out_w": unsigned(self.od_bits),
            "pool": unsigned(bits_for(c.max_pool)),
            "out_groups": unsigned(self.og_bits),
            "out_row_stride": unsigned(bits_for(c.fm_words)),
        })
        # Descriptor member written by each Field (the PEs' loader reads "cb_slot").
        self.field_members = {f: "cb_slot" if f == Field.CODEBOOK else f.name.lower()
                              for f in Field}
        assert set(self.field_members.values()) == set(self.descriptor_layout.members)
        field_widths = [Shape.cast(shape).width
                        for shape in self.descriptor_layout.members.values()]
        self.addr_width = max(self.entry_addr_bits, self.k_bits, self.cb_bits + c.index_bits,
                              self.bias_bits, addr_bits(c.max_layers) + FIELD_BITS,
                              self.act_addr_bits)
        self.data_width = max(c.acc_bits, c.act_format.width, c.weight_width, *field_widths)
        super().__init__({
            "load": In(LoadSignature(c.n_pe, self.addr_width, self.data_width,
                                     self.lane_width)),
            "start": In(1),
            "n_layers": In(range(1, c.max_layers + 1)),
            "busy": Out(1),
            "done": Out(1),
            "out_addr": In(self.act_addr_bits),
            "out_data": Out(signed(c.act_format.width)),
            "cycles": Out(32),
            "stat_layer": In(addr_bits(c.max_layers)),
            "stat_cycles": Out(32),
            "stat_mac": Out(32),
            "rb": In(ReadbackSignature(c.n_pe, self.addr_width)),
        })

    # --- host-side facts ------------------------------------------------------------------------

    def timing(self) -> CnnTiming:
        """The cycle model constants of this engine."""
        return CnnTiming(fifo_depth=self.cfg.fifo_depth, fetch_latency=FETCH_LATENCY,
                         drain_latency=DRAIN_LATENCY, layer_setup=LAYER_SETUP,
                         pixel_setup=PIXEL_SETUP, output_overhead=OUTPUT_OVERHEAD,
                         output_rows=self.out_rows)

    def config(self) -> dict:
        """Parameters (JSON-able), e.g. for cache keys."""
        return self.cfg.to_dict()

    def pe_params(self) -> dict:
        c = self.cfg
        return dict(index_bits=c.index_bits, run_bits=c.run_bits,
                    act_width=c.act_format.width, weight_width=c.weight_width,
                    acc_bits=c.acc_bits, rows=self.rows_per_pe,
                    entries=c.max_entries_per_pe, pointers=c.max_pointers,
                    codebooks=c.max_layers, memory=c.memory, product_shift=c.product_shift)

    def make_pe(self, role: str = "solo") -> wiring.Component:
        return ProcessingElement(**self.pe_params(), role=role)

    # --- hardware ------------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        c = self.cfg
        n_pe, lanes, lb = c.n_pe, c.fm_lanes, self.lane_bits
        act = c.act_format
        load = self.load

        # --- PEs, broadcast FIFO, descriptors, loader -------------------------------------------
        pes, fifo = add_pe_array(m, n_pe, self.make_pe, k_bits=self.k_bits, pe_group=c.pe_group,
                                 act_width=act.width, fifo_depth=c.fifo_depth)

        descs = Array(Signal(self.descriptor_layout, name=f"desc{i}")
                      for i in range(c.max_layers))
        desc = Signal(self.descriptor_layout)
        region = load.region
        bias_mem = connect_matrix_loader(
            m, pes, load, desc, entry_bits=self.entry_bits, ptr_bits=self.ptr_bits,
            weight_width=c.weight_width, acc_bits=c.acc_bits, max_bias=c.max_bias)
        with m.If(load.valid & (region == Region.DESCRIPTOR)):
            target = descs[load.addr[FIELD_BITS:]]
            with m.Switch(load.addr[:FIELD_BITS]):
                for f, name in self.field_members.items():
                    with m.Case(f):
                        member = getattr(target, name)
                        m.d.sync += member.eq(load.data[:len(member.as_value())])

        # --- feature-map buffers ----------------------------------------------------------------
        word_layout = data.ArrayLayout(signed(act.width), lanes)
        src = Signal()                       # buffer holding the running layer's input
        banks, rports, wports = [], [], []
        for b in range(2):
            mem = Memory(shape=word_layout, depth=c.fm_words, init=[])
            m.submodules[f"fm{b}"] = mem
            banks.append(mem)
            rports.append(mem.read_port())
            wports.append(mem.write_port(granularity=1))

        # --- sequencer state shared below -------------------------------------------------------
        mac = Signal()
        out_phase = Signal()

        # --- window generator -------------------------------------------------------------------
        iy0 = Signal(signed(self.pos_bits))     # top-left input position of the patch
        ix0 = Signal(signed(self.pos_bits))
        ky_lo = Signal(signed(self.pos_bits))
        ky_hi = Signal(signed(self.pos_bits))
        kx_lo = Signal(signed(self.pos_bits))
        kx_hi = Signal(signed(self.pos_bits))
        row_base = Signal(signed(self.sa_bits))  # word address of (iy0, -pad) * ng
        pix_base = Signal(signed(self.sa_bits))  # word address of (iy0, ix0) * ng
        gen_active = Signal()
        gen_addr = Signal(signed(self.sa_bits))
        gen_row_addr = Signal(signed(self.sa_bits))
        gen_wi = Signal(self.wi_bits)
        gen_row_wi = Signal(self.wi_bits)
        gen_g = Signal(bits_for(c.fm_words))
        gen_kx = Signal(signed(self.pos_bits))
        gen_ky = Signal(signed(self.pos_bits))
        last_g = Signal()
        m.d.comb += last_g.eq(gen_g == desc.in_groups - 1)

        # --- emitter: the non-zero lanes of the word on the source read port -------------------
        e_have = Signal()
        e_done = Signal(lanes)
        e_wi = Signal(self.wi_bits)
        e_last = Signal()
        word = data.View(word_layout, Mux(src, rports[1].data.as_value(),
                                          rports[0].data.as_value()))
        valid_lanes = Mux(e_last, desc.last_mask, Const((1 << lanes) - 1, lanes))
        nonzero = Signal(lanes)
        m.d.comb += nonzero.eq(Cat(*(word[i] != 0 for i in range(lanes))) & valid_lanes)
        pending = Signal(lanes)
        m.d.comb += pending.eq(nonzero & ~e_done)
        sel = Signal(range(max(lanes, 2)))
        for i in reversed(range(lanes)):           # lowest pending lane wins
            with m.If(pending[i]):
                m.d.comb += sel.eq(i)
        lowest = Signal(lanes)
        m.d.comb += lowest.eq(pending & (~pending + 1))
        single = Signal()
        m.d.comb += single.eq((pending & (pending - 1)) == 0)
        push = Signal()
        m.d.comb += push.eq(e_have & pending.any())
        finishing = Signal()
        m.d.comb += finishing.eq(~e_have | (single & (~pending.any() | fifo.w.ready)))
        advance = Signal()
        m.d.comb += advance.eq(mac & gen_active & finishing)
        column = Cat(sel[:lb], e_wi)
        m.d.comb += [fifo.w.valid.eq(push),
                     fifo.w.payload.k.eq(desc.ptr_base + column),
                     fifo.w.payload.value.eq(Array(word[i] for i in range(lanes))[sel])]
        with m.If(finishing):
            m.d.sync += [e_have.eq(advance), e_done.eq(0)]
            with m.If(advance):
                m.d.sync += [e_wi.eq(gen_wi), e_last.eq(last_g)]
        with m.Elif(push & fifo.w.ready):
            m.d.sync += e_done.eq(e_done | lowest)

        with m.If(advance):
            with m.If(~last_g):
                m.d.sync += [gen_g.eq(gen_g + 1), gen_addr.eq(gen_addr + 1),
                             gen_wi.eq(gen_wi + 1)]
            with m.Elif(gen_kx != kx_hi - 1):
                m.d.sync += [gen_g.eq(0), gen_kx.eq(gen_kx + 1), gen_addr.eq(gen_addr + 1),
                             gen_wi.eq(gen_wi + 1)]
            with m.Elif(gen_ky != ky_hi - 1):
                m.d.sync += [gen_g.eq(0), gen_kx.eq(kx_lo), gen_ky.eq(gen_ky + 1),
                             gen_row_addr.eq(gen_row_addr + desc.row_stride),
                             gen_addr.eq(gen_row_addr + desc.row_stride),
                             gen_row_wi.eq(gen_row_wi + desc.kw_groups),
                             gen_wi.eq(gen_row_wi + desc.kw_groups)]
            with m.Else():
                m.d.sync += gen_active.eq(0)

        pe_busy = Signal()
        m.d.comb += pe_busy.eq(Cat(*(pe.busy for pe in pes)).any())
        mac_done = Signal()
        m.d.comb += mac_done.eq(mac & ~gen_active & ~e_have & ~pe_busy)

        # --- output stage -----------------------------------------------------------------------
        # A group of `par` channels per cycle: one (serial, PE r % N) or one per PE (parallel,
        # every PE's accumulator at the same local row).  Stage 0 = issue (accumulator and bias
        # reads), stage 1 = requantizer inputs (accumulators cleared), destination read at stage
        # `lat`, write at stage `lat + 1`.
        lat, par = REQUANT_LATENCY, self.out_rows
        rqs = []
        for j in range(par):
            rq = Requantizer(c.acc_bits, act, c.weight_width - 1,
                             pipelined=OUTPUT_REQUANT_PIPELINED)
            assert rq.latency == REQUANT_LATENCY
            m.submodules[f"requant{j}"] = rq
            rqs.append(rq)
        bias_rs = [bias_mem.read_port() for _ in range(par)]
        base_bits = bits_for(c.max_rows + par)
        rbase = Signal(base_bits)                    # first channel of the issuing group
        r_pe = Signal(range(max(n_pe, 2)))           # serial: rbase % N
        r_local = Signal(addr_bits(self.rows_per_pe))  # rbase // N
        issue = Signal()
        m.d.comb += issue.eq(out_phase & (rbase < desc.rows))
        rmask = Signal(par)
        m.d.comb += rmask.eq(Cat(*(rbase + j < desc.rows for j in range(par))))
        for j, bias_r in enumerate(bias_rs):
            m.d.comb += [bias_r.addr.eq(desc.bias_base + rbase + j), bias_r.en.eq(issue)]
        b_pe = Signal.like(r_pe)
        b_local = Signal.like(r_local)
        d_valid = [issue] + [Signal(name=f"d_valid{i}") for i in range(1, lat + 2)]
        d_base = [rbase] + [Signal(base_bits, name=f"d_base{i}") for i in range(1, lat + 2)]
        d_mask = [rmask] + [Signal(par, name=f"d_mask{i}") for i in range(1, lat + 2)]
        for i in range(1, lat + 2):
            m.d.sync += [d_valid[i].eq(d_valid[i - 1]), d_base[i].eq(d_base[i - 1]),
                         d_mask[i].eq(d_mask[i - 1])]
        m.d.sync += [b_pe.eq(r_pe), b_local.eq(r_local)]
        for p, pe in enumerate(pes):
            clear = d_valid[1] if par > 1 else d_valid[1] & (b_pe == p)
            m.d.comb += [pe.drain.eq(out_phase), pe.acc_raddr.eq(r_local),
                         pe.acc_clear.eq(clear), pe.acc_clear_addr.eq(b_local)]
        for j, rq in enumerate(rqs):
            acc = pes[j].acc_rdata if par > 1 else Array(pe.acc_rdata for pe in pes)[b_pe]
            m.d.comb += [rq.acc.eq(acc), rq.bias.eq(bias_rs[j].data),
                         rq.shift.eq(desc.shift), rq.relu.eq(desc.relu)]
        with m.If(issue):
            m.d.sync += rbase.eq(rbase + par)
            if par > 1:
                m.d.sync += r_local.eq(r_local + 1)
            else:
                with m.If(r_pe == n_pe - 1):
                    m.d.sync += [r_pe.eq(0), r_local.eq(r_local + 1)]
                with m.Else():
                    m.d.sync += r_pe.eq(r_pe + 1)

        # Destination: pooled pixel word base out_pix; channel r -> word out_pix + r // G,
        # lane r % G.  The old word is read at stage lat and arrives with the requantized
        # values; a pixel that is not the first of its pool window writes the maximum.
        out_row = Signal(self.fm_addr_bits + 1)
        out_pix = Signal(self.fm_addr_bits + 1)
        oy = Signal(self.od_bits)
        ox = Signal(self.od_bits)
        pmask = Signal(c.max_pool + 1)
        m.d.comb += pmask.eq((Const(1, c.max_pool + 2) << desc.pool) - 1)
        pool_first = Signal()
        m.d.comb += pool_first.eq(((oy & pmask) == 0) & ((ox & pmask) == 0))
        rmw_addr = Signal(self.fm_addr_bits + 1)
        m.d.comb += rmw_addr.eq(out_pix + (d_base[lat] >> lb))
        w_base = d_base[lat + 1]
        w_lane = w_base[:lb] if lb else Const(0, 1)   # lane of the group's first channel
        o_we = d_valid[lat + 1]
        o_addr = Signal(self.fm_addr_bits + 1)
        m.d.comb += o_addr.eq(out_pix + (w_base >> lb))
        old_word = data.View(word_layout, Mux(src, rports[0].data.as_value(),
                                              rports[1].data.as_value()))
        values = []                                   # per lane
        o_lanes = Signal(lanes)                       # lanes written
        if par == 1:
            old = Array(old_word[i] for i in range(lanes))[w_lane]
            new = rqs[0].out
            value = Signal(signed(act.width))
            m.d.comb += value.eq(Mux(pool_first | (new > old), new, old))
            values = [value] * lanes
            m.d.comb += o_lanes.eq(Mux(o_we, 1 << w_lane, 0))
        else:
            for i in range(lanes):
                new, old = rqs[i % par].out, old_word[i]
                value = Signal(signed(act.width), name=f"out_value{i}")
                m.d.comb += value.eq(Mux(pool_first | (new > old), new, old))
                values.append(value)
            m.d.comb += o_lanes.eq(Cat(*(o_we & d_mask[lat + 1][i % par]
                                         & (w_lane == i - i % par) for i in range(lanes))))

        # --- buffer ports -----------------------------------------------------------------------
        in_write = load.valid & (region == Region.INPUT)
        for b in range(2):
            rp, wp = rports[b], wports[b]
            is_src = src == b
            with m.If(self.busy):
                m.d.comb += [rp.addr.eq(Mux(is_src, gen_addr, rmw_addr)),
                             rp.en.eq(Mux(is_src, advance, d_valid[lat]))]
            with m.Else():
                m.d.comb += [rp.addr.eq(self.out_addr >> lb), rp.en.eq(1)]
            for i in range(lanes):
                m.d.comb += wp.data[i].eq(Mux(in_write, load.data[:act.width], values[i]))
            if b == 0:
                with m.If(in_write):
                    m.d.comb += [wp.addr.eq(load.addr >> lb),
                                 wp.en.eq(1 << (load.addr[:lb] if lb else 0))]
                with m.Else():
                    m.d.comb += [wp.addr.eq(o_addr), wp.en.eq(Mux(is_src, 0, o_lanes))]
            else:
                m.d.comb += [wp.addr.eq(o_addr), wp.en.eq(Mux(is_src, 0, o_lanes))]
        out_lane = Signal(range(max(lanes, 2)))
        m.d.sync += out_lane.eq(self.out_addr[:lb] if lb else 0)
        result = data.View(word_layout, Mux(src, rports[1].data.as_value(),
                                            rports[0].data.as_value()))
        m.d.comb += self.out_data.eq(Array(result[i] for i in range(lanes))[out_lane])

        # --- sequencer --------------------------------------------------------------------------
        layer = Signal(range(c.max_layers + 1))
        n_layers = Signal.like(self.n_layers)
        run_cnt = Signal(32)
        layer_cnt = Signal(32)
        mac_sum = Signal(32)
        layer_cycles = Array(Signal(32, name=f"layer_cycles{i}") for i in range(c.max_layers))
        layer_mac = Array(Signal(32, name=f"layer_mac{i}") for i in range(c.max_layers))
        m.d.comb += [self.stat_cycles.eq(layer_cycles[self.stat_layer]),
                     self.stat_mac.eq(layer_mac[self.stat_layer])]
        with m.If(self.busy):
            m.d.sync += [run_cnt.eq(run_cnt + 1), layer_cnt.eq(layer_cnt + 1)]

        pipe_busy = Signal()
        m.d.comb += pipe_busy.eq(Cat(*d_valid[1:]).any())
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [layer.eq(0), src.eq(0), run_cnt.eq(0), self.done.eq(0),
                                 self.busy.eq(1), n_layers.eq(self.n_layers)]
                    m.next = "LAYER"
            with m.State("LAYER"):
                m.d.sync += [desc.eq(descs[layer]), layer_cnt.eq(1), mac_sum.eq(0)]
                m.next = "INIT"
            with m.State("INIT"):
                m.d.sync += [oy.eq(0), ox.eq(0), iy0.eq(-desc.pad), ix0.eq(-desc.pad),
                             row_base.eq(desc.base0), pix_base.eq(desc.base0),
                             out_row.eq(0), out_pix.eq(0)]
                m.next = "PIXEL"
            with m.State("PIXEL"):
                hy = desc.in_h - iy0
                hx = desc.in_w - ix0
                m.d.sync += [ky_lo.eq(Mux(iy0 < 0, -iy0, 0)), kx_lo.eq(Mux(ix0 < 0, -ix0, 0)),
                             ky_hi.eq(Mux(hy < desc.kh, hy, desc.kh)),
                             kx_hi.eq(Mux(hx < desc.kw, hx, desc.kw))]
                m.next = "PIXEL2"
            with m.State("PIXEL2"):
                ylo = ky_lo.as_unsigned()[:self.pad_bits]
                xlo = kx_lo.as_unsigned()[:self.pad_bits]
                start = pix_base + ylo * desc.row_stride + xlo * desc.in_groups
                wi0 = ylo * desc.kw_groups + xlo * desc.in_groups
                m.d.sync += [gen_addr.eq(start), gen_row_addr.eq(start),
                             gen_wi.eq(wi0), gen_row_wi.eq(wi0), gen_g.eq(0),
                             gen_kx.eq(kx_lo), gen_ky.eq(ky_lo),
                             gen_active.eq((ky_lo < ky_hi) & (kx_lo < kx_hi)),
                             mac_sum.eq(mac_sum + 1)]
                m.next = "MAC"
            with m.State("MAC"):
                m.d.comb += mac.eq(1)
                with m.If(mac_done):
                    m.d.sync += [rbase.eq(0), r_pe.eq(0), r_local.eq(0)]
                    m.next = "OUTPUT"
                with m.Else():
                    m.d.sync += mac_sum.eq(mac_sum + 1)
            with m.State("OUTPUT"):
                m.d.comb += out_phase.eq(1)
                with m.If(~issue & ~pipe_busy):
                    last_ox = ox == desc.out_w - 1
                    last_oy = oy == desc.out_h - 1
                    with m.If(~last_ox):
                        m.d.sync += [ox.eq(ox + 1), ix0.eq(ix0 + desc.stride),
                                     pix_base.eq(pix_base + desc.col_step)]
                        with m.If(((ox + 1) & pmask) == 0):
                            m.d.sync += out_pix.eq(out_pix + desc.out_groups)
                        m.next = "PIXEL"
                    with m.Elif(~last_oy):
                        m.d.sync += [ox.eq(0), oy.eq(oy + 1), ix0.eq(-desc.pad),
                                     iy0.eq(iy0 + desc.stride),
                                     row_base.eq(row_base + desc.row_step),
                                     pix_base.eq(row_base + desc.row_step)]
                        with m.If(((oy + 1) & pmask) == 0):
                            m.d.sync += [out_row.eq(out_row + desc.out_row_stride),
                                         out_pix.eq(out_row + desc.out_row_stride)]
                        with m.Else():
                            m.d.sync += out_pix.eq(out_row)
                        m.next = "PIXEL"
                    with m.Else():
                        m.d.sync += [src.eq(~src), layer.eq(layer + 1),
                                     layer_cycles[layer].eq(layer_cnt + 1),
                                     layer_mac[layer].eq(mac_sum)]
                        with m.If(layer + 1 == n_layers):
                            m.d.sync += [self.busy.eq(0), self.done.eq(1),
                                         self.cycles.eq(run_cnt + 1)]
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "LAYER"

        # --- read-back of the loaded words while idle (hdl.readback) ------------------------------
        connect_readback(m, self.rb, self.busy, pes, bias_rs[0], {
            (n << FIELD_BITS) | int(f): getattr(descs[n], name)
            for n in range(c.max_layers) for f, name in self.field_members.items()})
        return m
