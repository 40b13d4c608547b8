"""Loader and reset helpers shared by the engines' cocotb drivers (no tests here).

Inputs change after a falling edge of ``clk``; the loader port is ``load__region``,
``load__addr``, ``load__data``, ``load__lanes`` (per-PE words packed by
:func:`host.spmv_image.pack_lanes`), ``load__mask`` and ``load__valid``.
"""

from __future__ import annotations

import time

import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge, with_timeout

from host.spmv_image import pack_lanes

import cocotb


async def start_and_reset(dut, n_pe: int) -> None:
    """Start a 100 MHz clock, hold reset for two cycles, enable every PE's loader lane."""
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.load__valid.value = 0
    dut.load__mask.value = (1 << n_pe) - 1
    dut.rb__en.value = 0
    dut.start.value = 0
    dut.rst.value = 1
    await FallingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    await FallingEdge(dut.clk)


async def write(dut, region, addr, data, lanes=None) -> None:
    """One loader write (one cycle); ``lanes`` is the packed per-PE word, if any."""
    dut.load__region.value = int(region)
    dut.load__addr.value = int(addr)
    dut.load__data.value = int(data)
    if lanes is not None:
        dut.load__lanes.value = lanes
    dut.load__valid.value = 1
    await FallingEdge(dut.clk)


async def load_writes(dut, region, addr, data, lanes, lane_width, progress=None) -> None:
    """The writes of a model image, one per cycle, then ``load__valid`` low."""
    packed = pack_lanes(lanes, lane_width) if len(lanes) and lanes.ndim == 2 else None
    for i in range(len(region)):
        await write(dut, region[i], addr[i], data[i], packed[i] if packed else None)
        if progress is not None:
            progress(i)
    dut.load__valid.value = 0


def case_arrays(data, i: int) -> dict:
    """The arrays of case ``i`` of the test data, without their ``c{i}_`` prefix."""
    return {k[len(f"c{i}_"):]: v for k, v in data.items() if k.startswith(f"c{i}_")}


async def run_to_done(dut, expected_cycles: int) -> tuple[int, float]:
    """Pulse ``start`` for one cycle and wait for ``done``.

    Parameters
    ----------
    dut
        The engine under test (inputs set, ``start`` low, after a falling edge).
    expected_cycles : int
        The cycle model's count for the run; the wait times out after
        ``10 * expected_cycles + 10_000`` ns (100 MHz clock).

    Returns
    -------
    tuple of (int, float)
        The engine's ``cycles`` count one falling edge after ``done`` rose, and the wall
        seconds the simulator took from the start pulse to then.
    """
    dut.start.value = 1
    await FallingEdge(dut.clk)
    dut.start.value = 0
    t0 = time.perf_counter()
    await with_timeout(RisingEdge(dut.done), 10 * int(expected_cycles) + 10_000, "ns")
    await FallingEdge(dut.clk)
    t_run = time.perf_counter() - t0
    return int(dut.cycles.value), t_run


async def read_signed(dut, addr, data, addresses) -> np.ndarray:
    """Read a synchronous read port: for every address, set ``addr`` (a handle such as
    ``dut.out_addr``), wait one falling edge and take ``data`` as a signed integer.  Returns
    the words as int64."""
    words = []
    for a in addresses:
        addr.value = int(a)
        await FallingEdge(dut.clk)
        words.append(data.value.to_signed())
    return np.array(words, dtype=np.int64)
