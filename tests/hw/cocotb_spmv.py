"""cocotb driver of hdl.spmv.SpmvEngine: runs many cases per simulation.

The pytest side (tests/hw/test_spmv.py, hdl/bench/spmv.py) writes an .npz (``$SPINE_TEST_DATA``)
with ``n_cases`` and, per case ``i``, arrays prefixed ``c{i}_``:

* ``w_region, w_addr, w_data, w_lanes``: loader writes of the model image (may be empty when
  the previous case's image is reused),
* ``x``: input activations (written as INPUT region writes),
* ``n_layers``, ``expected`` (last layer's outputs), ``layer_cycles``, ``cycles``.

All inputs change after a falling edge and outputs are sampled after a falling edge.  Results
(outputs, cycle counts) are written to ``$SPINE_RESULTS`` (.npz) if set, so the caller can
report them; mismatches fail the test unless ``SPINE_NO_CHECK=1``.
"""

from __future__ import annotations

import os
import time

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge

from hdl.simulate import load_test_data
from cocotb_engine_io import (case_arrays, load_writes, read_signed, run_to_done, start_and_reset,
                              write)


@cocotb.test()
async def spmv_cases(dut):
    data = load_test_data()
    lane_width = int(data["lane_width"])
    n_pe = int(data["n_pe"])
    check = os.environ.get("SPINE_NO_CHECK") != "1"
    await start_and_reset(dut, n_pe)

    results = {}
    failures = []
    progress_path = os.environ.get("SPINE_PROGRESS")
    written = [0]

    def progress(_):
        written[0] += 1
        if progress_path and written[0] % 1024 == 0:
            with open(progress_path, "w") as f:
                f.write(f"{written[0]}\n")
    for i in range(int(data["n_cases"])):
        c = case_arrays(data, i)
        t0 = time.perf_counter()
        await load_writes(dut, c["w_region"], c["w_addr"], c["w_data"], c["w_lanes"],
                          lane_width, progress)
        x = c["x"]
        mask = (1 << int(data["data_width"])) - 1
        for col, value in enumerate(x):
            await write(dut, 5, col, int(value) & mask)
            progress(col)
        dut.load__valid.value = 0
        t_load = time.perf_counter() - t0
        dut.n_layers.value = int(c["n_layers"])
        cycles, t_run = await run_to_done(dut, c["cycles"])
        layer_cycles = []
        for n in range(int(c["n_layers"])):
            dut.stat_layer.value = n
            await FallingEdge(dut.clk)
            layer_cycles.append(int(dut.stat_cycles.value))
        expected = c["expected"]
        out = await read_signed(dut, dut.out_addr, dut.out_data, range(len(expected)))
        results[f"c{i}_out"] = out
        results[f"c{i}_cycles"] = np.int64(cycles)
        results[f"c{i}_layer_cycles"] = np.array(layer_cycles, dtype=np.int64)
        results[f"c{i}_load_seconds"] = np.float64(t_load)
        results[f"c{i}_run_seconds"] = np.float64(t_run)
        name = str(c["name"]) if "name" in c else f"case {i}"
        problems = []
        if not np.array_equal(out, expected):
            bad = np.flatnonzero(out != expected)
            problems.append(f"{len(bad)} outputs differ, first at row {bad[0]}: "
                            f"rtl {out[bad[0]]} golden {expected[bad[0]]}")
        if list(layer_cycles) != [int(v) for v in c["layer_cycles"]]:
            problems.append(f"layer cycles rtl {layer_cycles} model "
                            f"{[int(v) for v in c['layer_cycles']]}")
        if cycles != int(c["cycles"]):
            problems.append(f"run cycles rtl {cycles} expected {int(c['cycles'])}")
        if problems:
            failures.append(f"{name}: " + "; ".join(problems))
        dut._log.info("%s: %d layer(s), %d cycles, load %.2f s, run %.3f s%s", name,
                      int(c["n_layers"]), cycles, t_load, t_run,
                      " MISMATCH" if problems else "")
    if os.environ.get("SPINE_RESULTS"):
        np.savez(os.environ["SPINE_RESULTS"], **results)
    if check:
        assert not failures, "\n".join(failures)
