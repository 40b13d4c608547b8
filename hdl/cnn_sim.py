"""Run :class:`hdl.cnn.CnnEngine` under Verilator/cocotb: shared by the tests and the bench.

:func:`engine_verilog` generates (and caches) the simulation Verilog, :func:`build_engine`
builds or reuses the Verilator model, :func:`run_cnn_cases` runs a list of cases in ONE
simulation with the cocotb driver ``tests/hw/cocotb_cnn.py`` and returns the RTL's outputs and
cycle counts next to the golden-model and cycle-model expectations
(:func:`host.cnn_cycles.expected_runs`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from host import cnn_image, memory_map
from host.cnn_cycles import expected_runs
from host.cnn_image import image_writes, input_writes, output_addresses
from host.encoding import entry_layout_fields

from .cnn import CnnEngine
from .spmv_sim import (EngineBuild, build_timed, cached_verilog, dedupe_modules,
                       simulate_cases, strip_memory_init)

__all__ = ["COCOTB_MODULE", "TOPLEVEL", "engine_verilog", "build_engine", "CnnCase",
           "CnnResult", "run_cnn_cases"]

COCOTB_MODULE = Path(__file__).resolve().parents[1] / "tests" / "hw" / "cocotb_cnn.py"
TOPLEVEL = "cnn_engine"
_SOURCES = ("cnn.py", "pe.py", "broadcast.py", "requant.py", "ice40_spram.py", "spmv.py",
            "cnn_sim.py")


def engine_verilog(engine: CnnEngine) -> str:
    """Simulation Verilog of ``engine`` (memory zero-init stripped but the accumulators',
    identical PE modules merged), cached on disk by parameters and generator sources."""
    from .simulate import generate_verilog
    here = Path(__file__).resolve().parent
    sources = [here / name for name in _SOURCES] + [
        inspect.getfile(entry_layout_fields), inspect.getfile(cnn_image),
        inspect.getfile(memory_map)]
    return cached_verilog(
        "cnn", engine, sources,
        lambda: dedupe_modules(strip_memory_init(generate_verilog(engine, TOPLEVEL))))


def build_engine(engine: CnnEngine) -> EngineBuild:
    """Verilog + Verilator build of ``engine`` (both cached)."""
    return build_timed(engine_verilog, engine, TOPLEVEL)


@dataclass
class CnnCase:
    """One input through one model.

    Attributes
    ----------
    name : str
    image : host.cnn_image.CnnImage
        Loaded only when it differs (identity) from the previous case's.
    model : host.compressed.CompressedModel
        The model ``image`` was built from (for the golden model).
    x : ndarray
        Quantized input, ``model.input_shape``.
    """

    name: str
    image: object
    model: object
    x: np.ndarray


@dataclass
class CnnResult:
    """RTL results of one case next to the expectations."""

    name: str
    outputs: np.ndarray
    cycles: int
    layer_cycles: np.ndarray
    layer_mac: np.ndarray
    expected: object            # host.cnn_cycles.CnnRun
    run_seconds: float

    @property
    def matches_golden(self) -> bool:
        return bool(np.array_equal(self.outputs, self.expected.outputs))

    @property
    def matches_model(self) -> bool:
        exp = self.expected
        return (self.cycles == exp.cycles
                and list(self.layer_cycles) == list(exp.layer_cycles)
                and list(self.layer_mac) == [ly.mac for ly in exp.layers])


def _expectations(engine: CnnEngine, cases, dense=False):
    """Expected runs of ``cases``, the golden model batched over runs of the same image."""
    runs, i = [], 0
    timing = engine.timing()
    while i < len(cases):
        j = i
        while j < len(cases) and cases[j].image is cases[i].image \
                and cases[j].model is cases[i].model:
            j += 1
        xs = np.stack([np.asarray(cs.x, dtype=np.int64) for cs in cases[i:j]])
        runs += expected_runs(engine.cfg, cases[i].image, cases[i].model, xs, timing, dense)
        i = j
    return runs


def case_data(engine: CnnEngine, cases, runs) -> dict:
    """The ``.npz`` arrays for ``tests/hw/cocotb_cnn.py``."""
    cfg = engine.cfg
    out = {"n_cases": np.int64(len(cases)), "lane_width": np.int64(engine.lane_width),
           "n_pe": np.int64(cfg.n_pe), "data_width": np.int64(engine.data_width)}
    prev = None
    for i, (case, run) in enumerate(zip(cases, runs)):
        prefix = f"c{i}_"
        if case.image is not prev:
            writes = image_writes(cfg, case.image)
            prev = case.image
        else:
            writes = {"region": np.zeros(0, np.int64), "addr": np.zeros(0, np.int64),
                      "data": np.zeros(0, np.int64),
                      "lanes": np.zeros((0, cfg.n_pe), np.int64)}
        for key, value in writes.items():
            out[prefix + "w_" + key] = value
        inp = input_writes(cfg, case.image, case.x)
        out[prefix + "x_addr"] = inp["addr"]
        out[prefix + "x_data"] = inp["data"]
        out[prefix + "n_layers"] = np.int64(case.image.n_layers)
        out[prefix + "out_addr"] = output_addresses(case.image, cfg.fm_lanes)
        out[prefix + "expected"] = run.outputs
        out[prefix + "layer_cycles"] = run.layer_cycles
        out[prefix + "layer_mac"] = np.array([ly.mac for ly in run.layers], dtype=np.int64)
        out[prefix + "cycles"] = np.int64(run.cycles)
        out[prefix + "name"] = np.array(str(case.name))
    return out


def run_cnn_cases(engine: CnnEngine, build: Path, cases, *, test_dir=None, check=True,
                  dense=False) -> tuple[list[CnnResult], float]:
    """Run ``cases`` (:class:`CnnCase`) in one simulation; returns ``(results, simulator wall
    seconds)``.  With ``check`` a mismatch (outputs or cycles) fails the cocotb test and raises
    ``AssertionError`` here.  ``dense`` also models every case without zero skipping
    (``LayerCycles.dense_mac``)."""
    cases = list(cases)
    runs = _expectations(engine, cases, dense)
    data = case_data(engine, cases, runs)
    got, seconds = simulate_cases("cnn", build, TOPLEVEL, COCOTB_MODULE, data,
                                  test_dir=test_dir, check=check)
    out = []
    for i, (case, run) in enumerate(zip(cases, runs)):
        out.append(CnnResult(case.name, got[f"c{i}_out"], int(got[f"c{i}_cycles"]),
                             got[f"c{i}_layer_cycles"], got[f"c{i}_layer_mac"], run,
                             float(got[f"c{i}_run_seconds"])))
    return out, seconds
