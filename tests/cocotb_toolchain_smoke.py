"""cocotb tests of the toolchain smoke design (the accumulator of tests/test_toolchain.py).

Run through ``hdl.simulate.run_cocotb``, never collected by pytest directly (no ``test_`` prefix).
The design: on every rising ``clk`` edge with ``valid`` high, ``sum <= sum + data`` (mod 2**16);
``rst`` (synchronous) clears ``sum``.
"""

import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge

from hdl.simulate import load_test_data

MASK = 0xFFFF


async def _reset(dut) -> None:
    Clock(dut.clk, 10, unit="ns").start()
    dut.data.value = 0
    dut.valid.value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    assert int(dut.sum.value) == 0, f"sum after reset is {int(dut.sum.value)}"


async def _drive_and_check(dut, data, valid, expected) -> None:
    """Inputs change on falling edges; the sum they cause is checked on the next falling edge."""
    for cycle, (d, v, want) in enumerate(zip(data, valid, expected, strict=True)):
        dut.data.value = int(d)
        dut.valid.value = int(v)
        await FallingEdge(dut.clk)
        got = int(dut.sum.value)
        assert got == int(want), (f"cycle {cycle}: data={int(d)} valid={int(v)}: "
                                  f"sum is {got}, expected {int(want)}")


@cocotb.test()
async def accumulates_random_values(dut):
    """Random stimuli made here, checked against a Python model."""
    await _reset(dut)
    cycles = int(os.environ.get("SPINE_SMOKE_CYCLES", "500"))
    data = [random.randrange(256) for _ in range(cycles)]
    valid = [random.random() < 0.7 for _ in range(cycles)]
    expected, total = [], 0
    for d, v in zip(data, valid, strict=True):
        total = (total + d) & MASK if v else total
        expected.append(total)
    await _drive_and_check(dut, data, valid, expected)
    assert expected[-1] != 0 or not any(valid)


@cocotb.test()
async def matches_vectors_from_pytest(dut):
    """Stimuli and expected sums written by pytest (``run_cocotb(data=...)``)."""
    vectors = load_test_data()
    data, valid, expected = vectors["data"], vectors["valid"], vectors["expected"]
    assert data.dtype == np.uint8 and len(data) == len(valid) == len(expected)
    await _reset(dut)
    await _drive_and_check(dut, data, valid, expected)
