"""Run :class:`hdl.spmv.SpmvEngine` under Verilator/cocotb: shared by tests and the bench.

:func:`build_engine` generates the Verilog and builds (or reuses) the Verilator model;
:func:`run_engine_cases` runs a list of ``(name, image, x)`` cases in ONE simulation with the
cocotb driver ``tests/hw/cocotb_spmv.py`` and returns the RTL's outputs and cycle counts next
to the golden/cycle-model expectations (:func:`host.spmv_image.expected_run`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amaranth.hdl import ClockSignal, Instance, Module, ResetSignal
from amaranth.lib import wiring

from host import memory_map
from host.encoding import entry_layout_fields
from host.spmv_image import case_data

from .pe import ProcessingElement
from .spmv import SpmvEngine

__all__ = ["COCOTB_MODULE", "build_engine", "EngineBuild", "engine_verilog", "strip_memory_init",
           "dedupe_modules", "run_engine_cases", "CaseResult", "cached_verilog", "build_timed",
           "simulate_cases"]

COCOTB_MODULE = Path(__file__).resolve().parents[1] / "tests" / "hw" / "cocotb_spmv.py"
TOPLEVEL = "spmv_engine"


#: Sources whose text decides the engine's Verilog (with the engine's parameters).
_SOURCES = ("spmv.py", "pe.py", "broadcast.py", "requant.py", "ice40_spram.py",
            "spmv_sim.py")
_ZERO_INIT = re.compile(r"^\s+(\\?[\w.$]+) ?\[\d+\] = \d+'[dh]0+;\n", re.MULTILINE)


def strip_memory_init(verilog: str, keep=("acc_mem",)) -> str:
    """Remove the per-word zero initialisation Yosys writes for every memory (2.4 million
    lines for a 64-PE engine with 32k entries per PE), except for the memories in ``keep``:
    the accumulators must start at zero, no other memory is read before it is written.
    Verilator then leaves the other memories at its ``--x-initial`` value."""
    return _ZERO_INIT.sub(lambda m: m.group(0) if m.group(1).lstrip("\\") in keep else "",
                          verilog)


_MODULE_SPLIT = re.compile(r"(?m)^(?=module )")
_MODULE_NAME = re.compile(r"module (\\?\S+)\s*\(")
_BACKEND_COUNTER = re.compile(r"dump_module\$\d+")


def dedupe_modules(verilog: str) -> str:
    """Merge identical submodules: Amaranth writes one module per PE instance
    (``\\spmv_engine.pe0`` ... ``pe63``), identical but for their names and Yosys's internal
    counters; keep the first of each group and point the instances of the others at it, so
    Verilator compiles the PE once instead of ``n_pe`` times."""
    parts = _MODULE_SPLIT.split(verilog)
    head, modules = parts[0], parts[1:]
    canon, rename, kept = {}, {}, []
    for text in modules:
        match = _MODULE_NAME.match(text)
        if match is None:
            kept.append(text)
            continue
        name = match.group(1)
        key = _BACKEND_COUNTER.sub("dump_module$", text.replace(name, "\0MODULE", 1))
        if key in canon:
            rename[name] = canon[key]
        else:
            canon[key] = name
            kept.append(text)
    out = head + "".join(kept)
    if rename:
        pattern = re.compile("|".join(re.escape(n) + r"(?=\s)" for n in
                                      sorted(rename, key=len, reverse=True)))
        out = pattern.sub(lambda m: rename[m.group(0)], out)
    return out


PE_MODULE = "spmv_pe"


class _PeInstance(wiring.Component):
    """Stands in for a :class:`ProcessingElement`: same signature, elaborates to an instance of
    the separately generated module :data:`PE_MODULE`."""

    def __init__(self, members: dict, module: str = PE_MODULE):
        self.module = module
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        ports = {"i_clk": ClockSignal("sync"), "i_rst": ResetSignal("sync")}
        for path, member, value in self.signature.flatten(self):
            name = "__".join(str(part) for part in path)
            prefix = "i_" if member.flow == wiring.In else "o_"
            ports[prefix + name] = value
        m.submodules.pe = Instance(self.module, **ports)
        return m


def pe_module(role: str) -> str:
    """Name of the separately generated PE module of ``role`` (:data:`PE_MODULE` for solo)."""
    return PE_MODULE if role == "solo" else f"{PE_MODULE}_{role}"


class _SimulationEngine(SpmvEngine):
    """The engine with its PEs as instances of one separately generated module per role."""

    def make_pe(self, role="solo"):
        pe = ProcessingElement(**self.pe_params(), role=role)     # only for its signature
        pe._MustUse__silence = True
        return _PeInstance(dict(pe.signature.members), pe_module(role))


def split_engine_verilog(engine: SpmvEngine) -> str:
    """Verilog of ``engine`` with ONE PE module per role (:func:`pe_module`) instantiated
    ``n_pe`` times in all: Amaranth elaborates (and writes the memory initialisation of) a
    single PE of each role instead of ``n_pe`` copies, which is what makes a 64-PE engine with
    32k entries per PE take minutes."""
    from .pe import pe_roles
    from .simulate import generate_verilog
    pe_verilog = [generate_verilog(ProcessingElement(**engine.pe_params(), role=role),
                                   pe_module(role))
                  for role in sorted(set(pe_roles(engine.n_pe, engine.pe_group)))]
    engine._MustUse__silence = True      # described by its parameters, not elaborated itself
    params = engine.config()
    params["act_format"] = engine.act_format
    top = generate_verilog(_SimulationEngine(params.pop("n_pe"), **params), TOPLEVEL)
    return top + "\n" + "\n".join(pe_verilog)


def cached_verilog(prefix: str, engine, sources, make) -> str:
    """Simulation Verilog of ``engine`` from ``make()``, cached on disk under
    ``<build root>/verilog-cache/<prefix>-<digest>.v``.

    The digest covers ``engine.config()``, the Amaranth version and the text of every file in
    ``sources`` (paths), so a change of parameters or generator code makes a new entry.  On a
    hit ``engine`` is never elaborated (its unused-elaboratable warning is silenced).  Written
    atomically, so parallel test workers never read a partial file.
    """
    import amaranth

    from .simulate import default_build_root
    h = hashlib.sha256(json.dumps(engine.config(), sort_keys=True).encode())
    h.update(amaranth.__version__.encode())
    for path in sources:
        h.update(Path(path).read_bytes())
    cache = default_build_root() / "verilog-cache" / f"{prefix}-{h.hexdigest()[:20]}.v"
    if cache.exists():
        engine._MustUse__silence = True
        return cache.read_text()
    verilog = make()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(verilog)
    os.replace(tmp, cache)
    return verilog


def engine_verilog(engine: SpmvEngine) -> str:
    """Simulation Verilog of ``engine``: memory zero-init stripped (:func:`strip_memory_init`),
    identical PE modules merged (:func:`dedupe_modules`), cached on disk by parameters and
    generator sources (Amaranth needs minutes for a 64-PE engine)."""
    here = Path(__file__).resolve().parent
    sources = [here / name for name in _SOURCES] + [inspect.getfile(entry_layout_fields),
                                                    inspect.getfile(memory_map)]
    return cached_verilog(
        "spmv", engine, sources,
        lambda: dedupe_modules(strip_memory_init(split_engine_verilog(engine))))


def build_engine(engine: SpmvEngine) -> EngineBuild:
    """Verilog + Verilator build of ``engine`` (both cached)."""
    return build_timed(engine_verilog, engine, TOPLEVEL)


def build_timed(make_verilog, engine, toplevel: str) -> EngineBuild:
    """Verilog ``make_verilog(engine)`` and its Verilator build (top module ``toplevel``),
    each timed; what the engines' ``build_engine`` do.

    Parameters
    ----------
    make_verilog : callable
        An engine's (cached) simulation Verilog, e.g. :func:`engine_verilog`.
    engine : wiring.Component
    toplevel : str

    Returns
    -------
    EngineBuild
        ``reused`` when the build took less than half the time it took when it was made.
    """
    from .simulate import build_info, build_simulation
    start = time.monotonic()
    verilog = make_verilog(engine)
    middle = time.monotonic()
    build = build_simulation(verilog, toplevel)
    now = time.monotonic() - middle
    first = float(build_info(build).get("seconds") or 0.0)
    return EngineBuild(build, middle - start, now, first, now < 0.5 * first)


@dataclass
class EngineBuild:
    """A Verilator build of an engine and what it cost.

    Attributes
    ----------
    build_dir : Path
    verilog_seconds : float
        Verilog generation now (short when cached).
    build_seconds_now : float
        ``build_simulation`` now (short when the build was reused).
    build_seconds : float
        How long the Verilator build took when it was made.
    reused : bool
    """

    build_dir: Path
    verilog_seconds: float
    build_seconds_now: float
    build_seconds: float
    reused: bool


@dataclass
class CaseResult:
    """RTL results of one case next to the expectations."""

    name: str
    outputs: np.ndarray
    cycles: int
    layer_cycles: np.ndarray
    expected: object            # host.spmv_image.ExpectedRun
    load_seconds: float
    run_seconds: float

    @property
    def matches_golden(self) -> bool:
        return bool(np.array_equal(self.outputs, self.expected.outputs))

    @property
    def matches_model(self) -> bool:
        return (self.cycles == self.expected.cycles
                and list(self.layer_cycles) == list(self.expected.layer_cycles))


def run_engine_cases(engine: SpmvEngine, build: Path, cases, *, test_dir=None,
                     check: bool = True, extra_env=None) -> tuple[list[CaseResult], float]:
    """Run ``cases`` in one simulation; returns ``(results, simulator wall seconds)``.

    ``extra_env``: more ``SPINE_*`` variables for the cocotb driver (e.g. ``SPINE_PROGRESS``,
    a file it rewrites with the number of loader writes done).
    With ``check`` a mismatch (outputs or cycles) fails the cocotb test and raises
    ``AssertionError`` here; without it the results are returned for reporting.
    """
    cases = list(cases)
    data, runs = case_data(engine, cases)
    got, seconds = simulate_cases("spmv", build, TOPLEVEL, COCOTB_MODULE, data,
                                  test_dir=test_dir, check=check, extra_env=extra_env)
    out = []
    for i, ((name, _, _), run) in enumerate(zip(cases, runs)):
        out.append(CaseResult(str(name), got[f"c{i}_out"], int(got[f"c{i}_cycles"]),
                              got[f"c{i}_layer_cycles"], run,
                              float(got[f"c{i}_load_seconds"]),
                              float(got[f"c{i}_run_seconds"])))
    return out, seconds


def simulate_cases(kind: str, build: Path, toplevel: str, cocotb_module: Path, data: dict, *,
                   test_dir=None, check: bool = True, extra_env=None) -> tuple[dict, float]:
    """One simulation of an engine's cocotb case driver; what the engines' ``run_*_cases`` do.

    The driver gets ``data`` (:func:`hdl.simulate.run_cocotb`) and ``$SPINE_RESULTS``, the path
    of the ``.npz`` it writes its results to, ``<test_dir>/<kind>_results.npz``.

    Parameters
    ----------
    kind : str
        ``"spmv"``, ``"lstm"`` or ``"cnn"``: names the results file and the temporary folder.
    build : Path
        The Verilator build (:func:`build_timed`).
    toplevel : str
    cocotb_module : Path
        The driver, e.g. ``tests/hw/cocotb_spmv.py``.
    data : dict
        The cases' arrays.
    test_dir : path, optional
        Where the simulator runs (created); default a temporary folder, removed afterwards.
    check : bool
        Otherwise ``$SPINE_NO_CHECK=1``: the driver records mismatches instead of failing
        (with ``check`` a mismatch raises ``AssertionError`` here).
    extra_env : dict, optional
        More ``SPINE_*`` variables for the driver.

    Returns
    -------
    results : dict
        The arrays of the results ``.npz``.
    seconds : float
        Simulator wall seconds.
    """
    from .simulate import run_cocotb
    with tempfile.TemporaryDirectory(prefix=f"spine-{kind}-") as tmp:
        test_dir = Path(test_dir) if test_dir is not None else Path(tmp)
        test_dir.mkdir(parents=True, exist_ok=True)
        results_path = test_dir / f"{kind}_results.npz"
        env = {"SPINE_RESULTS": str(results_path)}
        if not check:
            env["SPINE_NO_CHECK"] = "1"
        env.update(extra_env or {})
        sim = run_cocotb(build, toplevel, cocotb_module, test_dir=test_dir, data=data,
                         extra_env=env)
        with np.load(results_path) as npz:
            got = {k: npz[k] for k in npz.files}
    return got, sim.seconds
