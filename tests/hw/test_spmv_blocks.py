"""Fast amaranth.sim unit tests of the SpmvEngine blocks (no Verilator)."""

from __future__ import annotations

import sys
from collections import deque
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from amaranth.hdl import unsigned
from amaranth.sim import Simulator

from hdl.broadcast import BroadcastFifo
from hdl.ice40_spram import Ice40Spram
from hdl.pe import ProcessingElement
from hdl.requant import Requantizer
from hdl.spmv import SpmvEngine
from host.spmv_image import build_image, expected_run, image_writes, input_writes, \
    pack_lanes, random_layer
from host.encoding import encode, pointer_words
from host.fixedpoint import Format, requantize, wrap

# Constructors that raise leave Amaranth's "created but never used" warning behind.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


def simulate(dut, bench, clock=True):
    sim = Simulator(dut)
    if clock:
        sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


# --- requantizer ------------------------------------------------------------------------------


def _requant_cases(acc_bits, seed, act=None):
    rng = np.random.default_rng(seed)
    max_shift = 15
    lo, hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1))
    acc = np.concatenate([rng.integers(lo, hi, 300), [lo, hi - 1, 0, -1, 1, lo, hi - 1]])
    bias = np.concatenate([rng.integers(lo, hi, 300), [hi - 1, 1, 0, 0, 0, 0, 0]])
    # Small accumulators too, so that rounding (not only saturation) is exercised.
    acc[:100] = rng.integers(-(1 << 20), 1 << 20, 100) >> (32 - acc_bits)
    bias[:100] = 0
    shift = rng.integers(0, max_shift + 1, len(acc))
    shift[-2:] = (0, max_shift)
    if act is not None:
        # The saturation edges: results max_int, max_int + 1, min_int, min_int - 1 (shift 0),
        # and the same scaled by 2**s with the rounding half just below / at the edge.
        edges = [act.max_int, act.max_int + 1, act.min_int, act.min_int - 1]
        for s in (0, 1, 3):
            for e in edges:
                for d in ((0,) if s == 0 else (-(1 << (s - 1)) - 1, -(1 << (s - 1)), 0)):
                    acc = np.append(acc, (e << s) + d)
                    bias = np.append(bias, 0)
                    shift = np.append(shift, s)
    relu = rng.random(len(acc)) < 0.5
    return max_shift, list(zip(acc, bias, shift, relu))


def _requant_expected(a, b, s, r, acc_bits, act):
    expected = int(requantize(wrap(int(a) + int(b), acc_bits), int(s), act))
    return max(expected, 0) if r else expected


@pytest.mark.parametrize("acc_bits,act", [(32, Format(16, 10)), (24, Format(12, 8)),
                                          (16, Format(8, 4))])
def test_requantizer_matches_fixedpoint(acc_bits, act):
    max_shift, cases = _requant_cases(acc_bits, acc_bits, act)
    dut = Requantizer(acc_bits, act, max_shift)
    assert dut.latency == 0

    async def bench(ctx):
        for a, b, s, r in cases:
            ctx.set(dut.acc, int(a))
            ctx.set(dut.bias, int(b))
            ctx.set(dut.shift, int(s))
            ctx.set(dut.relu, int(r))
            assert ctx.get(dut.out) == _requant_expected(a, b, s, r, acc_bits, act), (a, b, s, r)
    simulate(dut, bench, clock=False)


@pytest.mark.parametrize("acc_bits,act", [(32, Format(16, 10)), (16, Format(8, 4))])
def test_pipelined_requantizer_matches_fixedpoint(acc_bits, act):
    """A new operand set every cycle; each result appears exactly REQUANT_LATENCY cycles
    later (the engines' OUTPUT_OVERHEAD counts on it)."""
    from hdl.requant import REQUANT_LATENCY
    from host.memory_map import OUTPUT_OVERHEAD
    assert OUTPUT_OVERHEAD == 2 + REQUANT_LATENCY
    max_shift, cases = _requant_cases(acc_bits, acc_bits + 1, act)
    dut = Requantizer(acc_bits, act, max_shift, pipelined=True)
    assert dut.latency == REQUANT_LATENCY
    expected = [_requant_expected(a, b, s, r, acc_bits, act) for a, b, s, r in cases]

    async def bench(ctx):
        for t in range(len(cases) + REQUANT_LATENCY):
            if t < len(cases):
                a, b, s, r = cases[t]
                ctx.set(dut.acc, int(a))
                ctx.set(dut.bias, int(b))
                ctx.set(dut.shift, int(s))
                ctx.set(dut.relu, int(r))
            await ctx.tick()
            # after tick t, out holds the result of the operands of cycle t - LATENCY + 1
            k = t - REQUANT_LATENCY + 1
            if 0 <= k < len(cases):
                assert ctx.get(dut.out) == expected[k], (k, cases[k])
    simulate(dut, bench)


def test_requantizer_validates():
    with pytest.raises(ValueError, match="`max_shift` must be an integer from 0 to 31, not 32"):
        Requantizer(32, Format(16, 10), 32)
    with pytest.raises(ValueError, match="`acc_bits` must be an integer from 16 to 48"):
        Requantizer(8, Format(16, 10), 3)
    with pytest.raises(TypeError, match="`pipelined` must be True or False, not 1"):
        Requantizer(32, Format(16, 10), 3, pipelined=1)


# --- broadcast FIFO ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_pe,depth", [(1, 1), (3, 2), (4, 8), (2, 5)])
def test_broadcast_fifo_behaves_like_independent_fifos(n_pe, depth):
    rng = np.random.default_rng(n_pe * 10 + depth)
    dut = BroadcastFifo(n_pe, unsigned(8), depth)
    fifos = [deque() for _ in range(n_pe)]
    stalls = []

    async def bench(ctx):
        value = 0
        for cycle in range(400):
            push = bool(rng.random() < 0.7)
            pops = rng.random(n_pe) < 0.4
            ctx.set(dut.w.valid, push)
            ctx.set(dut.w.payload, value)
            for p in range(n_pe):
                ctx.set(dut.r[p].ready, bool(pops[p]))
            ready = all(len(f) < depth for f in fifos)
            assert ctx.get(dut.w.ready) == ready, cycle
            assert ctx.get(dut.empty) == all(not f for f in fifos)
            for p, f in enumerate(fifos):
                assert ctx.get(dut.r[p].valid) == bool(f), (cycle, p)
                if f:
                    assert ctx.get(dut.r[p].payload) == f[0]
            await ctx.tick()
            for p, f in enumerate(fifos):
                if pops[p] and f:
                    f.popleft()
            if push and ready:
                for f in fifos:
                    f.append(value)
                value = (value + 1) & 0xFF
            stalls.append(push and not ready)
    simulate(dut, bench)
    assert any(stalls)          # the stall path was exercised


def test_broadcast_fifo_validates():
    with pytest.raises(ValueError, match="`depth` must be a positive integer, not 0"):
        BroadcastFifo(2, unsigned(4), 0)
    with pytest.raises(ValueError, match="`n_pe` must be a positive integer, not 0"):
        BroadcastFifo(0, unsigned(4), 2)


# --- SPRAM -----------------------------------------------------------------------------------


def test_ice40_spram_model_is_single_port_with_registered_read():
    dut = Ice40Spram()
    rng = np.random.default_rng(1)
    shadow = {}

    async def bench(ctx):
        held = 0
        for _ in range(600):
            addr = int(rng.integers(0, 64))
            op = rng.integers(0, 3)           # 0 write, 1 read, 2 idle
            value = int(rng.integers(0, 1 << 16))
            ctx.set(dut.addr, addr)
            ctx.set(dut.wdata, value)
            ctx.set(dut.we, int(op == 0))
            ctx.set(dut.re, int(op == 1))
            await ctx.tick()
            if op == 0:
                shadow[addr] = value
            elif op == 1:
                held = shadow.get(addr, 0)
                assert ctx.get(dut.rdata) == held
            if op == 2:
                assert ctx.get(dut.rdata) == held          # holds without a read
    simulate(dut, bench)


def test_ice40_spram_instantiates_the_primitive_for_ice40():
    from amaranth.back import rtlil

    class Ice40:
        family = "ice40"
    text = rtlil.convert(Ice40Spram(), platform=Ice40())
    assert "SB_SPRAM256KA" in text
    assert "SB_SPRAM256KA" not in rtlil.convert(Ice40Spram())
    # the board platform itself (amaranth spells the family "iCE40")
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    assert "SB_SPRAM256KA" in rtlil.convert(Ice40Spram(), platform=ICEBreakerPlatform())


# --- processing element -----------------------------------------------------------------------


def test_pe_accumulates_back_to_back_hits_with_forwarding():
    """One PE, two local rows, dense columns: consecutive entries hit the same accumulator
    (column j's last row is column j+1's first when a row is empty), and a one-row matrix makes
    every entry a back-to-back hit."""
    rng = np.random.default_rng(5)
    rows, cols = 2, 40
    indices = rng.integers(1, 16, (rows, cols))
    indices[1, ::3] = 0                      # row 0 twice in a row across column boundaries
    enc = encode(indices, 1)
    codebook = rng.integers(-(1 << 15), 1 << 15, 16)
    codebook[0] = 0
    values = rng.integers(-(1 << 15), 1 << 15, cols)
    dut = ProcessingElement(index_bits=4, run_bits=4, act_width=16, weight_width=16,
                            acc_bits=32, rows=rows, entries=256, pointers=cols + 1,
                            codebooks=1)
    expected = wrap(codebook[indices] @ values, 32)

    async def bench(ctx):
        for e, entry in enumerate(enc.entries[0]):
            ctx.set(dut.entry_w.addr, e)
            ctx.set(dut.entry_w.data.as_value(), int(entry))
            ctx.set(dut.entry_w.en, 1)
            await ctx.tick()
        ctx.set(dut.entry_w.en, 0)
        for k, word in enumerate(pointer_words(enc.col_ptr[0], dut.entry_addr_bits)):
            ctx.set(dut.ptr_w.addr, k)
            ctx.set(dut.ptr_w.data, int(word))
            ctx.set(dut.ptr_w.en, 1)
            await ctx.tick()
        ctx.set(dut.ptr_w.en, 0)
        for i, w in enumerate(codebook):
            ctx.set(dut.cb_w.addr, i)
            ctx.set(dut.cb_w.data, int(w))
            ctx.set(dut.cb_w.en, 1)
            await ctx.tick()
        ctx.set(dut.cb_w.en, 0)
        j = 0
        for _ in range(2000):
            if j < cols:
                ctx.set(dut.col.valid, 1)
                ctx.set(dut.col.payload.k, j)
                ctx.set(dut.col.payload.value, int(values[j]))
                if ctx.get(dut.col.ready):
                    j += 1
            else:
                ctx.set(dut.col.valid, 0)
                if not ctx.get(dut.busy):
                    break
            await ctx.tick()
        ctx.set(dut.drain, 1)
        for r in range(rows):
            ctx.set(dut.acc_raddr, r)
            await ctx.tick()
            assert ctx.get(dut.acc_rdata) == expected[r], r
    simulate(dut, bench)


@pytest.mark.parametrize("role", ["solo", "leader"])
def test_pe_aux_port_reads_and_writes_the_idle_spram(role):
    """PE(aux=True, memory="spram"): with aux_en the port writes words (a leader's nibbles
    as ``aux_mask`` enables them) and reads with a one-cycle latency (read data held while
    writing), anywhere in the SPRAM.  The entries are written and read back through the port
    as well: ``rb_entry`` shows the entry of the word read, and the PE's own ``entry_w``
    writes are ignored."""
    rng = np.random.default_rng(9)
    leader = role == "leader"
    dut = ProcessingElement(index_bits=4, run_bits=4, act_width=16, weight_width=16,
                            acc_bits=32, rows=4, entries=256, pointers=8, codebooks=1,
                            memory="spram", role=role, aux=True)
    assert ("aux_mask" in dut.signature.members) == leader
    entries = rng.integers(0, 256, 40)
    words = {int(a): int(v) for a, v in zip(rng.choice(np.arange(8192, 16384), 60,
                                                       replace=False),
                                            rng.integers(0, 1 << 16, 60))}

    async def bench(ctx):
        ctx.set(dut.entry_w.addr, 200)        # ignored: entries come through the port
        ctx.set(dut.entry_w.data.as_value(), 0xAB)
        ctx.set(dut.entry_w.en, 1)
        await ctx.tick()
        ctx.set(dut.entry_w.en, 0)
        ctx.set(dut.aux_en, 1)
        ctx.set(dut.aux_we, 1)
        if leader:
            ctx.set(dut.aux_mask, 0b0011)     # the leader's byte only
        for e, entry in enumerate(entries):
            ctx.set(dut.aux_addr, e)
            ctx.set(dut.aux_wdata, 0x5500 | int(entry))
            await ctx.tick()
        if leader:
            ctx.set(dut.aux_mask, 0b1111)
        for a, v in words.items():
            ctx.set(dut.aux_addr, a)
            ctx.set(dut.aux_wdata, v)
            await ctx.tick()
        ctx.set(dut.aux_we, 0)
        last = None
        for a in rng.permutation(list(words)):
            ctx.set(dut.aux_addr, int(a))
            await ctx.tick()
            assert ctx.get(dut.aux_rdata) == words[int(a)]
            last = words[int(a)]
        ctx.set(dut.aux_we, 1)                 # a write: the read data are held
        ctx.set(dut.aux_addr, 100)
        ctx.set(dut.aux_wdata, 0x1234)
        await ctx.tick()
        assert ctx.get(dut.aux_rdata) == last
        ctx.set(dut.aux_we, 0)
        await ctx.tick()
        assert ctx.get(dut.aux_rdata) == 0x1234
        for e, entry in enumerate(entries):    # read back through the port
            ctx.set(dut.aux_addr, e)
            await ctx.tick()
            assert ctx.get(dut.rb_entry) == entry, e
            # a leader's write left the follower's byte as it was (0)
            assert ctx.get(dut.aux_rdata) == (int(entry) if leader else 0x5500 | int(entry))
        ctx.set(dut.aux_addr, 200)             # the entry_w write did not happen
        await ctx.tick()
        assert ctx.get(dut.aux_rdata) == 0
    simulate(dut, bench)


def test_pe_aux_port_validation():
    kw = dict(index_bits=4, run_bits=4, act_width=16, weight_width=16, acc_bits=32, rows=4,
              entries=256, pointers=8, codebooks=1)
    assert "aux_en" not in ProcessingElement(**kw, memory="spram").signature.members
    with pytest.raises(ValueError, match="`aux=True` needs the SPRAM of a solo or leader PE "
                                         "\\(memory='spram'\\), not memory='bram'"):
        ProcessingElement(**kw, aux=True)
    with pytest.raises(ValueError, match="role='follower'"):
        ProcessingElement(**kw, memory="spram", role="follower", aux=True)
    with pytest.raises(TypeError, match="`aux` must be True or False, not 1"):
        ProcessingElement(**kw, memory="spram", aux=1)


def test_spram_share_merges_requests_and_flags_conflicts():
    """hdl.spram_share: requests reach the PE's SPRAM (write, then read one cycle later), the
    default address is read without a request, and two requests in one cycle (or a request
    while the port is off) set the sticky conflict flag."""
    from amaranth.hdl import Module, Signal
    from hdl.spram_share import SpramShare

    m = Module()
    m.submodules.pe = pe = ProcessingElement(
        index_bits=4, run_bits=4, act_width=16, weight_width=16, acc_bits=32, rows=4,
        entries=256, pointers=8, codebooks=1, memory="spram", aux=True)
    rd, wr, en = Signal(), Signal(), Signal(init=1)
    addr, data, default = Signal(14), Signal(16), Signal(14)
    share = SpramShare(m, pe, "t")
    share.read(rd, addr)
    share.write(wr, addr, data)
    conflict = share.finish(en, default)

    async def bench(ctx):
        for a, v in ((9000, 0x1111), (9001, 0x2222)):
            ctx.set(addr, a)
            ctx.set(data, v)
            ctx.set(wr, 1)
            await ctx.tick()
        ctx.set(wr, 0)
        ctx.set(rd, 1)
        ctx.set(addr, 9000)
        await ctx.tick()
        assert ctx.get(share.rdata) == 0x1111
        ctx.set(rd, 0)
        ctx.set(default, 9001)
        await ctx.tick()
        assert ctx.get(share.rdata) == 0x2222 and not ctx.get(conflict)
        ctx.set(en, 0)                        # a request while the port is off
        ctx.set(rd, 1)
        await ctx.tick()
        assert ctx.get(conflict)
    simulate(m, bench)

    m = Module()
    m.submodules.pe = pe = ProcessingElement(
        index_bits=4, run_bits=4, act_width=16, weight_width=16, acc_bits=32, rows=4,
        entries=256, pointers=8, codebooks=1, memory="spram", aux=True)
    a, b = Signal(), Signal()
    share = SpramShare(m, pe, "t")
    share.read(a, 8192)
    share.write(b, 8193, 5)
    conflict = share.finish(1, 0)

    async def both(ctx):
        ctx.set(a, 1)
        await ctx.tick()
        assert not ctx.get(conflict)
        ctx.set(b, 1)                         # two requests in one cycle
        await ctx.tick()
        ctx.set(a, 0)
        ctx.set(b, 0)
        await ctx.tick()
        assert ctx.get(conflict)              # sticky
    simulate(m, both)



def test_ew_word_is_the_offset_address():
    """hdl.spram_share.ew_word wires EW_BASE + addr (EW_BASE + EW_HALF + addr with ``upper``)
    for every address below 8192 (4096), as plain integer addition gives it."""
    from amaranth.hdl import Module, Signal
    from hdl.spram_share import EW_BASE, EW_HALF, ew_word

    m = Module()
    low, high, narrow = Signal(13), Signal(13), Signal(5)
    out_low, out_high, out_narrow = Signal(14), Signal(14), Signal(14)
    m.d.comb += [out_low.eq(ew_word(low)), out_high.eq(ew_word(high, upper=True)),
                 out_narrow.eq(ew_word(narrow))]
    rng = np.random.default_rng(5)

    async def bench(ctx):
        for a in [0, 1, 4095, 4096, 8191, *rng.integers(0, 8192, 40)]:
            ctx.set(low, int(a))
            ctx.set(high, int(a) % 4096)
            ctx.set(narrow, int(a) % 32)
            assert ctx.get(out_low) == EW_BASE + int(a)
            assert ctx.get(out_high) == EW_BASE + EW_HALF + int(a) % 4096
            assert ctx.get(out_narrow) == EW_BASE + int(a) % 32
    simulate(m, bench, clock=False)


# --- whole engine (small, in amaranth.sim) ----------------------------------------------------


@pytest.mark.parametrize("memory", ["bram", "spram"])
def test_engine_small_mlp_in_amaranth_sim(memory):
    rng = np.random.default_rng(3)
    n_pe = 3
    engine = SpmvEngine(n_pe, max_rows=24, max_cols=24, max_entries_per_pe=512, fifo_depth=2,
                        memory=memory)
    layers = [(random_layer(rng, 23, 17, 0.3, n_pe), True),
              (random_layer(rng, 11, 23, 0.5, n_pe), False)]
    image = build_image(engine, layers)
    writes = image_writes(engine, image)
    x = rng.integers(-2000, 2000, 17) * (rng.random(17) < 0.6)
    inputs = input_writes(engine, x)
    expected = expected_run(engine, image, x)
    lanes = pack_lanes(writes["lanes"], engine.lane_width)
    got = {}

    async def bench(ctx):
        ctx.set(engine.load.mask, (1 << n_pe) - 1)
        for i in range(len(writes["region"])):
            ctx.set(engine.load.region, int(writes["region"][i]))
            ctx.set(engine.load.addr, int(writes["addr"][i]))
            ctx.set(engine.load.data, int(writes["data"][i]))
            ctx.set(engine.load.lanes.as_value(), lanes[i])
            ctx.set(engine.load.valid, 1)
            await ctx.tick()
        for i in range(len(inputs["region"])):
            ctx.set(engine.load.region, int(inputs["region"][i]))
            ctx.set(engine.load.addr, int(inputs["addr"][i]))
            ctx.set(engine.load.data, int(inputs["data"][i]))
            await ctx.tick()
        ctx.set(engine.load.valid, 0)
        ctx.set(engine.n_layers, 2)
        ctx.set(engine.start, 1)
        await ctx.tick()
        ctx.set(engine.start, 0)
        for _ in range(10_000):
            if ctx.get(engine.done):
                break
            await ctx.tick()
        out = []
        for r in range(len(expected.outputs)):
            ctx.set(engine.out_addr, r)
            await ctx.tick()
            out.append(ctx.get(engine.out_data))
        got["out"] = out
        got["cycles"] = ctx.get(engine.cycles)
        got["layers"] = []
        for n in range(2):
            ctx.set(engine.stat_layer, n)
            got["layers"].append(ctx.get(engine.stat_cycles))
        got["count"] = ctx.get(engine.out_count)
    simulate(engine, bench)
    assert got["out"] == list(expected.outputs)
    assert got["layers"] == list(expected.layer_cycles)
    assert got["cycles"] == expected.cycles
    assert got["count"] == np.count_nonzero(expected.outputs)


@pytest.mark.parametrize("kwargs,message", [
    (dict(n_pe=0), "`n_pe` must be a positive integer, not 0"),
    (dict(n_pe=2, fifo_depth=0), "`fifo_depth` must be a positive integer, not 0"),
    (dict(n_pe=2, index_bits=9), "`index_bits` must be an integer from 1 to 8, not 9"),
    (dict(n_pe=2, max_rows=0), "`max_rows` must be a positive integer, not 0"),
    (dict(n_pe=2, acc_bits=8), "`acc_bits` must be an integer from 16 to 48, not 8"),
    (dict(n_pe=2, weight_width=40), "`weight_width` must be an integer from 2 to 32, not 40"),
    (dict(n_pe=2, memory="dram"), "`memory` must be 'bram' or 'spram', not 'dram'"),
    (dict(n_pe=2, max_layers=0), "`max_layers` must be a positive integer, not 0"),
    (dict(n_pe=2, memory="spram", max_entries_per_pe=20000),
     "`max_entries_per_pe` must be at most 16384 with memory='spram'"),
])
def test_engine_validates_parameters(kwargs, message):
    params = dict(max_rows=8, max_cols=8, max_entries_per_pe=16)
    params.update(kwargs)
    n_pe = params.pop("n_pe")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SpmvEngine(n_pe, **params)


def test_engine_timing_and_image_checks():
    engine = SpmvEngine(4, max_rows=8, max_cols=8, max_entries_per_pe=12, fifo_depth=5)
    t = engine.timing()
    assert (t.fifo_depth, t.fetch_latency, t.first_broadcast, t.drain_latency) == (5, 1, 1, 3)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="encoded for 2 PEs, the engine has 4"):
        build_image(engine, [(random_layer(rng, 8, 8, 0.5, 2), False)])
    with pytest.raises(ValueError, match="the engine holds at most 8x8"):
        build_image(engine, [(random_layer(rng, 9, 8, 0.5, 4), False)])
    with pytest.raises(ValueError, match="need 16 entries per PE, the engine holds 12"):
        build_image(engine, [(random_layer(rng, 8, 8, 1.0, 4), False)])
