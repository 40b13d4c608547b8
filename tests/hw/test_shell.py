"""The whole shell (UART pins -> decoder -> region memories) under Verilator + cocotb.

One Verilator build (cached by hdl.simulate) is shared by all cases; the cocotb cases are in
tests/hw/cocotb_shell.py.  Two simulator runs (commands and errors / fuzz) so pytest-xdist can
run them in parallel.
"""

import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
try:
    import hdl  # noqa: F401
except ModuleNotFoundError:
    sys.path.insert(0, str(ROOT))

from hdl import simulate  # noqa: E402

COCOTB = Path(__file__).with_name("cocotb_shell.py")
sys.path.insert(0, str(COCOTB.parent))
import cocotb_shell  # noqa: E402

TOP = "spine_shell"


@pytest.fixture(scope="module")
def shell_build():
    verilog = simulate.generate_verilog(cocotb_shell.make_core(), TOP)
    start = time.monotonic()
    build = simulate.build_simulation(verilog, TOP)
    print(f"\n{TOP}: Verilator build {time.monotonic() - start:.1f} s now "
          f"({simulate.build_info(build)})")
    return verilog, build


def test_shell_lints_clean(shell_build):
    verilog, _ = shell_build
    simulate.lint_verilog(verilog, TOP)


def test_shell_commands(shell_build, tmp_path):
    _, build = shell_build
    results = simulate.run_cocotb(build, TOP, COCOTB, test_dir=tmp_path, seed=1,
                                  testcase=["identify", "write_read_checksum",
                                            "infer_and_status"])
    assert sorted(results.passed) == ["identify", "infer_and_status", "write_read_checksum"]


def test_shell_error_cases(shell_build, tmp_path):
    _, build = shell_build
    results = simulate.run_cocotb(build, TOP, COCOTB, test_dir=tmp_path, seed=2,
                                  testcase=["error_cases"])
    assert results.passed == ["error_cases"]


def test_shell_fuzz(shell_build, tmp_path):
    _, build = shell_build
    start = time.monotonic()
    results = simulate.run_cocotb(build, TOP, COCOTB, test_dir=tmp_path, seed=3,
                                  testcase=["fuzz_garbage_truncated_bitflips"],
                                  extra_env={"SPINE_FUZZ_SEED": "20261123",
                                             "SPINE_FUZZ_FRAMES": "240"})
    print(f"\nfuzz: {time.monotonic() - start:.1f} s")
    assert results.passed == ["fuzz_garbage_truncated_bitflips"]


# --- with the engines ----------------------------------------------------------------------

ENGINE_TOP = "spine_shell_engine"
LSTM_TOP = "spine_shell_lstm"


def _blocks_data(core, model):
    """The driver's WRITE blocks of ``model`` for ``core``'s engine (host.driver.model_image,
    from the core's own IDENTIFY answer) as arrays for the cocotb test: ``blocks`` (n, 5) =
    region, index, address, offset into ``words``, check; ``words`` as written and ``readback``
    as a READ must return them."""
    import numpy as np

    from host.driver import EngineInfo, model_image

    blocks, words, readback = [], [], []
    for block in model_image(model, EngineInfo.from_payload(core.identity_bytes)):
        blocks.append((int(block.region), block.index, block.address, len(words),
                       int(block.check)))
        words.extend(int(v) for v in block.words)
        readback.extend(int(v) for v in block.readback)
    return {"blocks": np.array(blocks, dtype=np.int64), "words": np.array(words, np.int64),
            "readback": np.array(readback, np.int64)}


def _engine_case(seed=7):
    import numpy as np

    from hdl.spmv import SpmvEngine
    from hdl.top import EngineBackend, SpineCore
    from host.activations import TableSpec
    from host.compressed import CompressedModel, QLinear
    from host.fixedpoint import Format
    from host.spmv_image import build_image, expected_run, random_layer

    rng = np.random.default_rng(seed)
    n_pe, act = 2, Format(16, 10)
    engine = SpmvEngine(n_pe, act_format=act, max_rows=16, max_cols=16,
                        max_entries_per_pe=96, max_layers=2)
    layers = [(random_layer(rng, 12, 16, 0.4, n_pe, acc_frac=act.frac + 12), True),
              (random_layer(rng, 10, 12, 0.5, n_pe, acc_frac=act.frac + 12), False)]
    model = CompressedModel("shell-mlp", (16,), [QLinear(m, r) for m, r in layers], n_pe, act,
                            32, TableSpec())
    image = build_image(engine, layers)
    core = SpineCore(EngineBackend(engine), clock_hz=cocotb_shell.CLOCK_HZ,
                     baud=cocotb_shell.BAUD, divisor=cocotb_shell.DIVISOR)
    data = {"n_pe": np.int64(n_pe), "engine": np.int64(1), **_blocks_data(core, model)}
    cases = 4
    for case in range(cases):
        x = np.round(rng.standard_normal(16) * (1 << act.frac)).astype(np.int64)
        x[rng.random(16) < 0.3] = 0
        run = expected_run(engine, image, x)
        data[f"x{case}"], data[f"expected{case}"] = x, run.outputs
        data[f"cycles{case}"] = np.int64(run.cycles)
    data["n_cases"] = np.int64(cases)
    return core, data


def _lstm_spram_case():
    """The LSTM engine as the iCE40 board builds it: serial element-wise schedule with the
    element-wise data (biases, tables, c, h, outputs) in the pairs' SPRAMs, 16-bit
    accumulators: every block read back through the SPRAM ports, INFER bit- and
    cycle-exact."""
    return _lstm_case(seed=9, n_pe=8, pe_group=2, overlap=False, memory="spram", acc_bits=16,
                      product_shift=13, ew_lanes=1)


def _lstm_case(seed=8, n_pe=2, **engine_kw):
    import numpy as np

    from hdl.lstm import LstmEngine
    from hdl.top import LstmBackend, SpineCore
    from host.compressed import CompressedModel
    from host.fixedpoint import Format
    from host.lstm_image import build_image, expected_run, random_lstm

    rng = np.random.default_rng(seed)
    act, steps, inputs, hidden, classes = Format(16, 11), 3, 4, 6, 3
    engine = LstmEngine(n_pe, hidden_max=8, input_max=inputs, steps_max=steps,
                        classes_max=4, act_format=act, max_entries_per_pe=64, **engine_kw)
    lstm, cls = random_lstm(rng, inputs, hidden, 0.4, n_pe, classes=classes)
    model = CompressedModel("shell-lstm", (steps, inputs), [lstm, cls], n_pe, act,
                            engine.acc_bits, engine.table_spec,
                            product_shift=engine.product_shift)
    image = build_image(engine, lstm, cls)
    core = SpineCore(LstmBackend(engine), clock_hz=cocotb_shell.CLOCK_HZ,
                     baud=cocotb_shell.BAUD, divisor=cocotb_shell.DIVISOR)
    data = {"n_pe": np.int64(n_pe), "engine": np.int64(2), **_blocks_data(core, model)}
    cases = 3
    for case in range(cases):
        x = np.round(rng.standard_normal((steps, inputs)) * (1 << act.frac)).astype(np.int64)
        x[rng.random((steps, inputs)) < 0.4] = 0
        run = expected_run(engine, image, x)
        data[f"x{case}"], data[f"expected{case}"] = x.ravel(), run.outputs
        data[f"state{case}"] = run.h                 # golden h_T, read from region STATE
        data[f"cycles{case}"] = np.int64(run.cycles.total)
    data["n_cases"] = np.int64(cases)
    return core, data


@pytest.mark.parametrize(("case", "top", "seed"), [(_engine_case, ENGINE_TOP, 4),
                                                   (_lstm_case, LSTM_TOP, 5),
                                                   (_lstm_spram_case, LSTM_TOP + "_spram", 6)],
                         ids=["spmv", "lstm", "lstm_spram"])
def test_shell_with_engine(tmp_path, case, top, seed):
    """Load through WRITE frames, read every word back (READ and CHECKSUM of every block, a
    corrupted word of each region found), INFER bit-exact with the golden and cycle models."""
    core, data = case()
    verilog = simulate.generate_verilog(core, top)
    build = simulate.build_simulation(verilog, top)
    results = simulate.run_cocotb(build, top, COCOTB, test_dir=tmp_path, seed=seed,
                                  testcase=["engine_load_readback_infer"], data=data)
    assert results.passed == ["engine_load_readback_infer"]


# --- fast checks (no simulator) ----------------------------------------------------------------


def test_crc16_next_matches_host_crc():
    import random

    from amaranth.hdl import Const
    from amaranth.sim import Simulator

    from hdl.command import crc16_next
    from host.protocol import crc16, crc16_bitwise

    rng = random.Random(5)
    data = bytes(rng.randrange(256) for _ in range(200))
    value = 0xFFFF
    for byte in data:
        value = crc16_next(value, byte)
    assert value == crc16(data) == crc16_bitwise(data)
    assert crc16(b"123456789") == 0x29B1
    # The gateware expression (XOR matrix) agrees with the integer algorithm.
    from amaranth.hdl import Module, Signal
    m = Module()
    crc, byte, out = Signal(16), Signal(8), Signal(16)
    m.d.comb += out.eq(crc16_next(crc, byte))
    checked = []

    async def bench(ctx):
        for _ in range(200):
            c, b = rng.randrange(1 << 16), rng.randrange(256)
            ctx.set(crc, c)
            ctx.set(byte, b)
            assert ctx.get(out) == crc16_next(c, b)
            checked.append(1)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert len(checked) == 200 and Const(0, 1) is not None


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_region_and_decoder_validation():
    from hdl.command import CommandDecoder, RegionMemories, RegionSpec
    from hdl.top import MemoriesBackend, SpineCore
    from host.protocol import RegionId

    with pytest.raises(ValueError, match=r"`width` of a region must be an integer from 1 to 32, "
                                         r"not 33"):
        RegionSpec(0, 33, 16)
    with pytest.raises(ValueError, match=r"`count` of a region must be an integer from 1 to 256"):
        RegionSpec(0, 8, 16, count=0)
    regions = [RegionSpec(0, 8, 16), RegionSpec(0, 8, 16)]
    with pytest.raises(ValueError, match=r"region numbers must be unique, not \[0, 0\]"):
        RegionMemories(regions)
    with pytest.raises(ValueError, match=r"region CONTROL \(7\) belongs to the decoder"):
        RegionMemories([RegionSpec(RegionId.CONTROL, 8, 4)])
    backend = MemoriesBackend()
    with pytest.raises(ValueError, match=r"`read_latency` must be a positive integer, not 0"):
        CommandDecoder(backend.regions, divisor=8, clock_hz=1, baud=1, params=backend.params,
                       read_latency=0)
    with pytest.raises(ValueError, match=r"baud 115200 from a 1 MHz clock"):
        SpineCore(backend, clock_hz=1_000_000, baud=115_200)
    core = SpineCore(backend, clock_hz=12_000_000, baud=1_000_000)
    assert core.divisor == 12
    assert core.identity_bytes[:4] == b"SPN1"
