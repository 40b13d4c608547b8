"""hdl.top.LstmAdapter's timing registers (docs/ice40-resources.md, section 10), in
amaranth.sim: a bus write reaches the engine's loader one cycle later, from registers; the
start reaches the engine two cycles after ``ctl.start`` (busy meanwhile, so the decoder waits);
a read request is passed to the engine's read-back port only while the engine is idle (the
engine relies on it: hdl.lstm.LstmEngine, "Notes").  The whole path, bit-exact against the
golden model, is tests/hw/test_shell.py's LSTM cases and tests/hw/test_end_to_end.py."""

from __future__ import annotations

import pytest
from amaranth.sim import Simulator

from hdl.command import RegionId
from hdl.lstm import LstmEngine
from hdl.top import LstmAdapter
from host.fixedpoint import Format
from host.memory_map import LstmField

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


def _adapter():
    engine = LstmEngine(2, hidden_max=4, input_max=3, steps_max=2, classes_max=2,
                        act_format=Format(16, 11), max_entries_per_pe=32)
    return LstmAdapter(engine), engine


def _run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_lstm_adapter_registers_the_loader_request():
    dut, e = _adapter()
    addr = (2 << 3) | int(LstmField.STEPS)

    async def bench(ctx):
        ctx.set(dut.bus.region, RegionId.DESCRIPTOR)
        ctx.set(dut.bus.addr, addr)
        ctx.set(dut.bus.wdata, 2)
        ctx.set(dut.bus.we, 1)
        assert not ctx.get(e.load.valid)           # not in the bus write's own cycle
        await ctx.tick()
        ctx.set(dut.bus.we, 0)
        assert ctx.get(e.load.valid)               # the next cycle, from registers
        assert ctx.get(e.load.addr) == addr and ctx.get(e.load.data) == 2
        await ctx.tick()
        assert not ctx.get(e.load.valid)
    _run(dut, bench)


def test_lstm_adapter_delays_the_start_and_reads_only_while_idle():
    dut, e = _adapter()

    async def bench(ctx):
        ctx.set(dut.bus.region, RegionId.ENTRY)
        ctx.set(dut.bus.re, 1)                     # idle: the read reaches the engine
        await ctx.tick()
        ctx.set(dut.bus.re, 0)
        assert ctx.get(e.rb.en)
        ctx.set(dut.ctl.start, 1)
        ctx.set(dut.bus.re, 1)                     # a read in the start cycle: dropped
        await ctx.tick()
        ctx.set(dut.ctl.start, 0)
        ctx.set(dut.bus.re, 0)
        assert not ctx.get(e.rb.en)
        seen = []
        for _ in range(2):
            seen.append((ctx.get(e.start), ctx.get(dut.ctl.busy)))
            await ctx.tick()
        assert seen == [(0, 1), (1, 1)]            # start two cycles later, busy meanwhile
        assert ctx.get(e.busy) and ctx.get(dut.ctl.busy)
        for _ in range(3):                         # reads while the engine runs: dropped
            ctx.set(dut.bus.re, 1)
            await ctx.tick()
            ctx.set(dut.bus.re, 0)
            assert not ctx.get(e.rb.en)
    _run(dut, bench)
