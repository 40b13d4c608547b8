"""SpmvEngine on Verilator (cocotb): bit-exact against host.golden, cycle-exact against
host.cyclemodel.  One Verilator build per engine configuration, all cases in one simulation.

Every case checks the last layer's outputs (== host.golden.spmv), every layer's MAC-phase
cycles (== host.cyclemodel.spmv_cycles with engine.timing()) and the whole run's cycles
(== SpmvEngine.run_cycles).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from spmv_cases import layer_cases

from hdl.spmv import SpmvEngine
from host.spmv_image import build_image
from hdl.spmv_sim import build_engine, run_engine_cases
from host.fixedpoint import Format

CONFIGS = {
    # N = 1, shallow FIFO: the broadcast stalls on the single PE all the time.
    "n1": dict(n_pe=1, max_rows=40, max_cols=40, max_entries_per_pe=4096, fifo_depth=2,
               max_layers=3),
    # N = 4, 2-bit zero runs (padding everywhere), 12-bit formats, 24-bit accumulators.
    "n4": dict(n_pe=4, run_bits=2, max_rows=70, max_cols=64, max_entries_per_pe=4096,
               fifo_depth=4, max_layers=3, act_format=Format(12, 8), weight_width=12,
               acc_bits=24),
    # N = 8, EIE FIFO depth; also the digits-mlp engine (same build).
    "n8": dict(n_pe=8, max_rows=128, max_cols=128, max_entries_per_pe=4096, fifo_depth=8,
               max_layers=3, act_format=Format(16, 9)),
    # N = 4, 16-bit accumulators (one iCE40 block RAM per PE) with a product shift of 12: the
    # PEs floor every 28-bit product by 12 bits; sums wrap at 16 bits in some cases, and
    # 12-bit activations let the outputs saturate.
    "n4_acc16": dict(n_pe=4, max_rows=40, max_cols=40, max_entries_per_pe=1024, fifo_depth=4,
                     max_layers=3, act_format=Format(12, 8), acc_bits=16, product_shift=12),
    # N = 8 in lockstep pairs (the iCEBreaker layout): 4 FIFO readers, one SPRAM word holds
    # a pair's two entries; the image is padded per pair (host.encoding.pad_groups).
    "n8_pairs": dict(n_pe=8, pe_group=2, max_rows=70, max_cols=64, max_entries_per_pe=4096,
                     fifo_depth=4, max_layers=3, memory="spram"),
}

SLOW_CONFIGS = {
    "n3_f1": dict(n_pe=3, max_rows=50, max_cols=50, max_entries_per_pe=4096, fifo_depth=1,
                  max_layers=2, index_bits=3, run_bits=3),
    "n16": dict(n_pe=16, max_rows=160, max_cols=128, max_entries_per_pe=4096, fifo_depth=8,
                max_layers=4),
    "n4_spram": dict(n_pe=4, max_rows=64, max_cols=64, max_entries_per_pe=4096, fifo_depth=8,
                     max_layers=3, memory="spram"),
    # Pairs with BRAM entry memories (a 2 x entry_bits word), 2-bit runs, 6-bit entries.
    "n6_pairs_bram": dict(n_pe=6, pe_group=2, run_bits=2, max_rows=50, max_cols=40,
                          max_entries_per_pe=2048, fifo_depth=2, max_layers=2),
}

LINT_CONFIGS = {**CONFIGS, "n4_spram": SLOW_CONFIGS["n4_spram"],
                "n3_f1": SLOW_CONFIGS["n3_f1"], "n6_pairs_bram": SLOW_CONFIGS["n6_pairs_bram"]}


def make_engine(config) -> SpmvEngine:
    params = dict(config)
    return SpmvEngine(params.pop("n_pe"), **params)


def run(engine, cases, tmp_path):
    built = build_engine(engine)
    print(f"\nVerilog {built.verilog_seconds:.1f} s, Verilator build "
          f"{built.build_seconds_now:.1f} s now, {built.build_seconds:.1f} s when built")
    results, seconds = run_engine_cases(engine, built.build_dir, cases, test_dir=tmp_path)
    print(f"{len(results)} cases in {seconds:.1f} s")
    for r in results:        # the cocotb test already failed on any mismatch
        assert r.matches_golden and r.matches_model, r.name
    return results


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_engine_random_layers(name, tmp_path):
    engine = make_engine(CONFIGS[name])
    run(engine, layer_cases(engine, seed=sum(map(ord, name))), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_CONFIGS))
def test_engine_random_layers_slow(name, tmp_path):
    engine = make_engine(SLOW_CONFIGS[name])
    run(engine, layer_cases(engine, seed=sum(map(ord, name)), repeats=4), tmp_path)


def run_digits_mlp(tmp_path, acc_bits=32):
    """The compressed bundled digits-mlp (``acc_bits`` accumulators, automatic product shift),
    its QLinear layers back to back on one start per test sample, on an 8-PE engine built for
    it: hardware predictions == golden predictions on every sample (outputs bit-exact)."""
    from host.golden import GoldenModel
    from host.pipeline import CompressConfig, compress_model
    from host.modelsource import resolve_model
    source = resolve_model("digits-mlp")
    config = CompressConfig(n_pe=8, density=source.defaults.get("density", 0.25),
                            bits=source.defaults.get("bits", 4), acc_bits=acc_bits)
    model = compress_model(source.model, config, calib_x=source.train[0]).model
    layers = list(model.layers)
    assert all(type(layer).__name__ == "QLinear" for layer in layers), layers
    params = dict(CONFIGS["n8"], act_format=model.act_format, acc_bits=model.acc_bits,
                  index_bits=config.bits, run_bits=config.run_bits,
                  product_shift=model.product_shift)
    engine = make_engine(params)
    golden = GoldenModel(model)
    x_test, y_test = source.test
    q = golden.quantize_input(x_test)
    image = build_image(engine, layers)
    cases = [(f"sample {i}", image if i == 0 else None, q[i]) for i in range(len(q))]
    results = run(engine, cases, tmp_path)
    hw = np.array([np.argmax(r.outputs) for r in results])
    expected = np.argmax(golden.forward_int(q), axis=1)
    assert np.array_equal(hw, expected)
    accuracy = float(np.mean(hw == y_test))
    print(f"digits-mlp on the engine ({model.acc_bits}-bit accumulators, product shift "
          f"{model.product_shift}): {len(q)} samples, accuracy {accuracy:.3f}, "
          f"mean {np.mean([r.cycles for r in results]):.0f} cycles per inference")
    return accuracy


def test_digits_mlp_on_engine(tmp_path):
    """digits-mlp with 32-bit accumulators (see :func:`run_digits_mlp`)."""
    run_digits_mlp(tmp_path)


@pytest.mark.slow
def test_digits_mlp_acc16_on_engine(tmp_path):
    """digits-mlp compressed for 16-bit accumulators (product shift 14) on an engine built
    with them (its own build)."""
    assert run_digits_mlp(tmp_path, acc_bits=16) > 0.9


@pytest.mark.parametrize("name", sorted(LINT_CONFIGS))
def test_engine_lint(name):
    """``verilator --lint-only -Wall`` with only the generic Amaranth waivers
    (hdl.simulate.AMARANTH_LINT_WAIVERS); the engine needs no extra ones."""
    from hdl.simulate import AMARANTH_LINT_WAIVERS, lint_verilog
    from hdl.spmv_sim import engine_verilog
    engine = make_engine(LINT_CONFIGS[name])
    # The cached simulation Verilog (shared with the builds; only memory zero-init stripped).
    lint_verilog(engine_verilog(engine), "spmv_engine", waivers=AMARANTH_LINT_WAIVERS)


def test_engine_lint_direct_elaboration():
    """The Verilog of the engine elaborated as one design (the FPGA path, no PE instance
    split) is lint-clean too."""
    from hdl.simulate import AMARANTH_LINT_WAIVERS, generate_verilog, lint_verilog
    engine = make_engine(CONFIGS["n4"])
    lint_verilog(generate_verilog(engine, "spmv_engine"), "spmv_engine",
                 waivers=AMARANTH_LINT_WAIVERS)
