"""cocotb driver of hdl.lstm.LstmEngine: many sequences per simulation.

``$SPINE_TEST_DATA`` (.npz, written by ``host.lstm_image.case_data``): ``n_cases`` and per case
``c{i}_``: loader writes ``w_region, w_addr, w_data, w_lanes`` (model image if any, then the
sequence), ``hidden`` (the last layer's output size), ``steps`` (layers x time steps),
``expected_h``, ``expected_out``, ``mac``, ``ew``, ``pmac``, ``cls_mac``, ``cycles``, ``name``.
Inputs change after a falling edge, outputs are sampled after a falling edge.  Results go to
``$SPINE_RESULTS``; mismatches fail the test unless ``SPINE_NO_CHECK=1``.
"""

from __future__ import annotations

import os

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge

from hdl.simulate import load_test_data
from cocotb_engine_io import case_arrays, load_writes, read_signed, run_to_done, start_and_reset


@cocotb.test()
async def lstm_cases(dut):
    data = load_test_data()
    lane_width = int(data["lane_width"])
    n_pe = int(data["n_pe"])
    check = os.environ.get("SPINE_NO_CHECK") != "1"
    # an engine built with step_stats=False has no statistics: outputs and total cycles only
    stats = bool(int(data["step_stats"])) if "step_stats" in data else True
    await start_and_reset(dut, n_pe)

    results, failures = {}, []
    for i in range(int(data["n_cases"])):
        c = case_arrays(data, i)
        region, addr, wdata, lanes = c["w_region"], c["w_addr"], c["w_data"], c["w_lanes"]
        await load_writes(dut, region, addr, wdata, lanes, lane_width)
        cycles, t_run = await run_to_done(dut, c["cycles"])
        cls_mac = int(dut.cls_cycles.value)
        mac, ew, pmac = [], [], []
        for t in range(int(c["steps"])):
            dut.stat_step.value = t
            await FallingEdge(dut.clk)
            mac.append(int(dut.stat_mac.value))
            ew.append(int(dut.stat_ew.value))
            pmac.append(int(dut.stat_pmac.value))
        h = await read_signed(dut, dut.h_addr, dut.h_data, range(int(c["hidden"])))
        out = await read_signed(dut, dut.out_addr, dut.out_data, range(len(c["expected_out"])))
        p = f"c{i}_"
        results[p + "h"] = h
        results[p + "out"] = out
        results[p + "mac"] = np.array(mac, dtype=np.int64)
        results[p + "ew"] = np.array(ew, dtype=np.int64)
        results[p + "pmac"] = np.array(pmac, dtype=np.int64)
        results[p + "cls_mac"] = np.int64(cls_mac)
        results[p + "cycles"] = np.int64(cycles)
        results[p + "run_seconds"] = np.float64(t_run)
        name = str(c["name"])
        problems = []
        for what, got, exp in (("h_T", h, c["expected_h"]), ("outputs", out, c["expected_out"])):
            if not np.array_equal(got, exp):
                bad = np.flatnonzero(got != exp)
                problems.append(f"{len(bad)} {what} differ, first at {bad[0]}: rtl "
                                f"{got[bad[0]]} golden {exp[bad[0]]}")
        if stats and mac != [int(v) for v in c["mac"]]:
            problems.append(f"MAC cycles rtl {mac} model {[int(v) for v in c['mac']]}")
        if stats and ew != [int(v) for v in c["ew"]]:
            problems.append(f"element-wise cycles rtl {ew} model {[int(v) for v in c['ew']]}")
        if stats and pmac != [int(v) for v in c["pmac"]]:
            problems.append(f"projection MAC cycles rtl {pmac} model "
                            f"{[int(v) for v in c['pmac']]}")
        if stats and cls_mac != int(c["cls_mac"]):
            problems.append(f"classifier MAC cycles rtl {cls_mac} model {int(c['cls_mac'])}")
        if not stats and any(mac + ew + pmac + [cls_mac]):
            problems.append(f"step_stats=False: the stat ports must read 0, not mac {mac} "
                            f"ew {ew} pmac {pmac} cls_mac {cls_mac}")
        if cycles != int(c["cycles"]):
            problems.append(f"run cycles rtl {cycles} model {int(c['cycles'])}")
        if "spram_check" in data and int(data["spram_check"]) \
                and int(dut.spram_conflict.value):
            # element-wise data in the SPRAMs: two accesses to one SPRAM in a cycle (sticky)
            problems.append("SPRAM conflict (two accesses to one SPRAM in a cycle)")
        if problems:
            failures.append(f"{name}: " + "; ".join(problems))
        dut._log.info("%s: %d steps, %d cycles, run %.3f s%s", name, int(c["steps"]), cycles,
                      t_run, " MISMATCH " + "; ".join(problems) if problems else "")
    if os.environ.get("SPINE_RESULTS"):
        np.savez(os.environ["SPINE_RESULTS"], **results)
    if check:
        assert not failures, "\n".join(failures[:20])
