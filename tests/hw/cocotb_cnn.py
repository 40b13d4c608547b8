"""cocotb driver of hdl.cnn.CnnEngine: runs many cases per simulation.

The pytest side (hdl/cnn_sim.py) writes an .npz (``$SPINE_TEST_DATA``) with ``n_cases`` and,
per case ``i``, arrays prefixed ``c{i}_``: the loader writes of the model image ``w_region,
w_addr, w_data, w_lanes`` (empty when the previous case's image stays), the INPUT writes
``x_addr, x_data``, ``n_layers``, the output activation addresses ``out_addr`` and the
expectations ``expected`` (golden outputs), ``layer_cycles``, ``layer_mac`` and ``cycles``
(cycle model).  Results go to ``$SPINE_RESULTS``; mismatches fail the test unless
``SPINE_NO_CHECK=1``.
"""

from __future__ import annotations

import os

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge

from hdl.simulate import load_test_data
from cocotb_engine_io import (case_arrays, load_writes, read_signed, run_to_done, start_and_reset,
                              write)


@cocotb.test()
async def cnn_cases(dut):
    data = load_test_data()
    lane_width = int(data["lane_width"])
    mask = (1 << int(data["data_width"])) - 1
    check = os.environ.get("SPINE_NO_CHECK") != "1"
    await start_and_reset(dut, int(data["n_pe"]))
    results, failures = {}, []
    for i in range(int(data["n_cases"])):
        c = case_arrays(data, i)
        await load_writes(dut, c["w_region"], c["w_addr"], c["w_data"] & mask, c["w_lanes"],
                          lane_width)
        for addr, value in zip(c["x_addr"], c["x_data"]):
            await write(dut, 5, int(addr), int(value) & mask)
        dut.load__valid.value = 0
        n_layers = int(c["n_layers"])
        dut.n_layers.value = n_layers
        cycles, t_run = await run_to_done(dut, c["cycles"])
        layer_cycles, layer_mac = [], []
        for n in range(n_layers):
            dut.stat_layer.value = n
            await FallingEdge(dut.clk)
            layer_cycles.append(int(dut.stat_cycles.value))
            layer_mac.append(int(dut.stat_mac.value))
        out = await read_signed(dut, dut.out_addr, dut.out_data, c["out_addr"])
        results[f"c{i}_out"] = out
        results[f"c{i}_cycles"] = np.int64(cycles)
        results[f"c{i}_layer_cycles"] = np.array(layer_cycles, dtype=np.int64)
        results[f"c{i}_layer_mac"] = np.array(layer_mac, dtype=np.int64)
        results[f"c{i}_run_seconds"] = np.float64(t_run)
        expected = c["expected"]
        name = str(c["name"])
        problems = []
        if not np.array_equal(out, expected):
            bad = np.flatnonzero(out != expected)
            problems.append(f"{len(bad)} of {len(out)} outputs differ, first at {bad[0]}: "
                            f"rtl {out[bad[0]]} golden {expected[bad[0]]}")
        if layer_mac != [int(v) for v in c["layer_mac"]]:
            problems.append(f"layer MAC cycles rtl {layer_mac} model "
                            f"{[int(v) for v in c['layer_mac']]}")
        if layer_cycles != [int(v) for v in c["layer_cycles"]]:
            problems.append(f"layer cycles rtl {layer_cycles} model "
                            f"{[int(v) for v in c['layer_cycles']]}")
        if cycles != int(c["cycles"]):
            problems.append(f"run cycles rtl {cycles} model {int(c['cycles'])}")
        if problems:
            failures.append(f"{name}: " + "; ".join(problems))
        dut._log.info("%s: %d layer(s), %d cycles, run %.3f s%s", name, n_layers, cycles,
                      t_run, " MISMATCH" if problems else "")
    if os.environ.get("SPINE_RESULTS"):
        np.savez(os.environ["SPINE_RESULTS"], **results)
    if check:
        assert not failures, "\n".join(failures)
