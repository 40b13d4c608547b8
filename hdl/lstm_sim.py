"""Verilator/cocotb runner of :class:`hdl.lstm.LstmEngine` (many cases per simulation).

The memory image, loader writes and expectations are :mod:`host.lstm_image`; this module adds
the simulation Verilog (cached), the Verilator build and :func:`run_lstm_cases`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from host.lstm_image import ExpectedLstmRun, case_data

from .lstm import LstmEngine

__all__ = ["engine_verilog", "build_engine", "run_lstm_cases", "LstmCaseResult",
           "COCOTB_MODULE", "TOPLEVEL"]

COCOTB_MODULE = Path(__file__).resolve().parents[1] / "tests" / "hw" / "cocotb_lstm.py"
TOPLEVEL = "lstm_engine"

_SOURCES = ("lstm.py", "spmv.py", "pe.py", "broadcast.py", "requant.py", "lstm_sim.py",
            "ice40_spram.py", "readback.py", "spram_share.py")


def engine_verilog(engine: LstmEngine) -> str:
    """Simulation Verilog (identical PE modules merged), cached by parameters + sources."""
    from host import activations, memory_map

    from .simulate import generate_verilog
    from .spmv_sim import cached_verilog, dedupe_modules, strip_memory_init
    here = Path(__file__).resolve().parent
    sources = [here / name for name in _SOURCES] + [inspect.getfile(activations),
                                                    inspect.getfile(memory_map)]
    # Only the accumulators (must start at zero) keep their initial contents; every other
    # memory (the activation tables too: region TABLE) is written before it is read.
    return cached_verilog(
        "lstm", engine, sources,
        lambda: dedupe_modules(strip_memory_init(generate_verilog(engine, TOPLEVEL),
                                                 keep=("acc_mem",))))


def build_engine(engine: LstmEngine) -> tuple[Path, float, float]:
    """Verilator build (cached); returns ``(build_dir, seconds now, seconds when built)``."""
    from .spmv_sim import build_timed
    built = build_timed(engine_verilog, engine, TOPLEVEL)
    return (built.build_dir, built.verilog_seconds + built.build_seconds_now,
            built.build_seconds)


@dataclass
class LstmCaseResult:
    name: str
    h: np.ndarray
    outputs: np.ndarray
    mac: np.ndarray
    ew: np.ndarray
    cls_mac: int
    cycles: int
    expected: ExpectedLstmRun
    run_seconds: float
    pmac: np.ndarray | None = None
    step_stats: bool = True

    @property
    def matches_golden(self) -> bool:
        return bool(np.array_equal(self.h, self.expected.h)
                    and np.array_equal(self.outputs, self.expected.outputs))

    @property
    def matches_model(self) -> bool:
        rep = self.expected.cycles
        if not self.step_stats:
            return self.cycles == rep.total
        return (list(self.mac) == list(rep.mac) and list(self.ew) == list(rep.ew)
                and list(self.pmac) == list(rep.pmac)
                and self.cls_mac == rep.cls_mac and self.cycles == rep.total)


def run_lstm_cases(engine: LstmEngine, build: Path, cases, *, test_dir=None,
                   check: bool = True) -> tuple[list[LstmCaseResult], float]:
    """Run ``cases`` in one simulation; returns ``(results, simulator seconds)``."""
    from .spmv_sim import simulate_cases
    cases = list(cases)
    data, runs = case_data(engine, cases)
    # element-wise data in the SPRAMs: the test also checks the engine's spram_conflict flag
    data["spram_check"] = np.int64(bool(getattr(engine, "ew_spram", False)))
    # without step statistics the stat ports (and cls_cycles) read 0: the driver compares the
    # outputs and the total cycles only
    data["step_stats"] = np.int64(engine.params.step_stats)
    got, seconds = simulate_cases("lstm", build, TOPLEVEL, COCOTB_MODULE, data,
                                  test_dir=test_dir, check=check)
    out = []
    for i, ((name, _, _), run) in enumerate(zip(cases, runs)):
        p = f"c{i}_"
        out.append(LstmCaseResult(str(name), got[p + "h"], got[p + "out"], got[p + "mac"],
                                  got[p + "ew"], int(got[p + "cls_mac"]),
                                  int(got[p + "cycles"]), run,
                                  float(got[p + "run_seconds"]), got[p + "pmac"],
                                  engine.params.step_stats))
    return out, seconds
