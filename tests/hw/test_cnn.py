"""CnnEngine on Verilator (cocotb): bit-exact against host.golden, cycle-exact against
host.cnn_cycles.  One Verilator build per engine configuration, all cases in one simulation.

Every case checks the model's outputs (== host.golden.GoldenModel), every layer's MAC-phase
and whole cycles and the run's cycles (== host.cnn_cycles with engine.timing()).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hdl.cnn import CnnEngine
from hdl.cnn_sim import CnnCase, build_engine, run_cnn_cases
from host.cnn_cycles import model_for
from host.cnn_image import CnnConfig, build_image
from host.compressed import QConv2d, QFlatten, QLinear, QMaxPool2d, QReLU, SparseMatrix
from host.encoding import encode
from host.fixedpoint import Format

CONFIGS = {
    # 3 PEs (channel counts rarely divisible), 4-lane words, shallow FIFO, 2-bit zero runs.
    "n3_g4": dict(n_pe=3, fm_lanes=4, fifo_depth=2, run_bits=2, max_rows=24,
                  max_entries_per_pe=2048, max_pointers=2048, max_bias=64, fm_words=512,
                  max_layers=4, max_dim=12, max_pad=2, max_stride=2, max_pool=2,
                  act_format=Format(12, 7), weight_width=12, acc_bits=24),
    # 8 PEs, 8-lane words, EIE FIFO depth: also the digits-cnn engine (same build).
    "n8_g8": dict(n_pe=8, fm_lanes=8, fifo_depth=8, max_rows=64, max_entries_per_pe=2048,
                  max_pointers=2048, max_bias=128, fm_words=512, max_layers=4, max_dim=12,
                  max_pad=2, max_stride=2, max_pool=2),
    # 4 PEs, 8 lanes, one requantizer per PE (4 output channels per cycle).
    "n4_g8_par": dict(n_pe=4, fm_lanes=8, fifo_depth=4, max_rows=24, max_entries_per_pe=2048,
                      max_pointers=2048, max_bias=64, fm_words=512, max_layers=4, max_dim=12,
                      max_pad=2, max_stride=2, max_pool=2, out_parallel=True),
    # 4 PEs in lockstep pairs (pe_group 2): images padded per pair, cycles from the model on
    # the padded hardware-order matrices.
    "n4_g4_pairs": dict(n_pe=4, pe_group=2, fm_lanes=4, fifo_depth=4, max_rows=24,
                        max_entries_per_pe=2048, max_pointers=2048, max_bias=64, fm_words=512,
                        max_layers=4, max_dim=12, max_pad=2, max_stride=2, max_pool=2),
}

SLOW_CONFIGS = {
    # 1 PE, 1 lane per word (every activation its own word), FIFO depth 1.
    "n1_g1": dict(n_pe=1, fm_lanes=1, fifo_depth=1, max_rows=24, max_entries_per_pe=4096,
                  max_pointers=2048, max_bias=64, fm_words=2048, max_layers=4, max_dim=12,
                  max_pad=2, max_stride=2, max_pool=2),
    # 5 PEs, 2-lane words.
    "n5_g2": dict(n_pe=5, fm_lanes=2, fifo_depth=4, max_rows=24, max_entries_per_pe=2048,
                  max_pointers=2048, max_bias=64, fm_words=1024, max_layers=4, max_dim=12,
                  max_pad=2, max_stride=2, max_pool=2),
    # 4 PEs with their entry memories in (the behavioural model of) iCE40 SPRAM.
    "n4_spram": dict(n_pe=4, fm_lanes=4, fifo_depth=8, max_rows=24, max_entries_per_pe=4096,
                     max_pointers=2048, max_bias=64, fm_words=512, max_layers=4, max_dim=12,
                     max_pad=2, max_stride=2, max_pool=2, memory="spram"),
    # 2 PEs, 2 lanes, parallel output, FIFO 1.
    "n2_g2_par": dict(n_pe=2, fm_lanes=2, fifo_depth=1, max_rows=24, max_entries_per_pe=2048,
                      max_pointers=2048, max_bias=64, fm_words=1024, max_layers=4, max_dim=12,
                      max_pad=2, max_stride=2, max_pool=2, out_parallel=True),
}


def random_matrix(rng, cfg: CnnConfig, rows, cols, density, *, frac=None, scale=1.0):
    """A random SparseMatrix encoded for ``cfg`` (codebook[0] = 0, random bias)."""
    size = 1 << cfg.index_bits
    mask = rng.random((rows, cols)) < density
    indices = np.where(mask, rng.integers(1, size, (rows, cols)), 0)
    width = cfg.weight_width
    frac = width - 3 if frac is None else frac
    hi = int((1 << (width - 1)) * scale) - 1
    book = rng.integers(-hi, hi + 1, size)
    book[0] = 0
    enc = encode(indices, cfg.n_pe, index_bits=cfg.index_bits, run_bits=cfg.run_bits)
    acc_frac = cfg.act_format.frac + frac
    bias = np.round(rng.standard_normal(rows) * (1 << acc_frac) * 0.5).astype(np.int64)
    return SparseMatrix(enc, book.astype(np.int64), Format(width, frac), bias)


def random_input(rng, cfg: CnnConfig, shape, density):
    fmt = cfg.act_format
    x = rng.integers(fmt.min_int, fmt.max_int + 1, shape)
    x = np.where(rng.random(shape) < density, x, 0)
    return x.astype(np.int64)


def conv_model(rng, cfg, shape, k, s, p, c_out, *, pool=0, relu=True, density=0.4,
               scale=0.25):
    c_in = shape[0]
    layers = [QConv2d(random_matrix(rng, cfg, c_out, c_in * k * k, density, scale=scale),
                      c_in, k, s, p, relu)]
    layers += [QMaxPool2d() for _ in range(pool)]
    return model_for(cfg, layers, shape)


def layer_cases(engine: CnnEngine, seed: int):
    """Random conv layers over every kernel/stride/padding combination, odd sizes, channel
    counts not divisible by N or G, pooling, ReLU on and off, all-zero and dense inputs, and
    whole small CNNs (conv, conv, pool, flatten, linear, linear)."""
    cfg = engine.cfg
    rng = np.random.default_rng(seed)
    cases = []

    def add(name, model, xs):
        image = build_image(cfg, model)
        for j, x in enumerate(xs):
            cases.append(CnnCase(f"{name} #{j}", image, model, x))

    for k in (1, 3, 5):
        for s in (1, 2):
            for p in (0, 1, 2):
                c_in, c_out = int(rng.integers(1, 8)), int(rng.integers(1, 12))
                h, w = int(rng.integers(max(k - 2 * p, 1), 10)), int(rng.integers(k, 10))
                h = max(h, k - 2 * p)
                oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
                pool = int(rng.integers(0, 3))
                while pool and (oh >> pool == 0 or ow >> pool == 0):
                    pool -= 1
                model = conv_model(rng, cfg, (c_in, h, w), k, s, p, c_out, pool=pool,
                                   relu=bool(rng.integers(0, 2)))
                xs = [random_input(rng, cfg, (c_in, h, w), d) for d in (0.5, 1.0)]
                add(f"conv k{k} s{s} p{p} {c_in}x{h}x{w}->{c_out} pool{pool}", model, xs)
    # All-zero input; all-zero weights; saturating weights (full-scale codebook, dense).
    model = conv_model(rng, cfg, (5, 7, 5), 3, 1, 1, 9, pool=1)
    add("zero input", model, [np.zeros((5, 7, 5), np.int64)])
    model = conv_model(rng, cfg, (3, 5, 5), 3, 2, 1, 7, density=0.0)
    add("zero weights", model, [random_input(rng, cfg, (3, 5, 5), 0.8)])
    model = conv_model(rng, cfg, (6, 5, 7), 3, 1, 1, 10, relu=False, density=1.0, scale=1.0)
    add("saturating", model, [random_input(rng, cfg, (6, 5, 7), 1.0)])
    # A whole small CNN: conv, conv + 2x2 pool, flatten, linear + ReLU, linear.
    c0, c1, c2 = 3, 13, 11
    layers = [QConv2d(random_matrix(rng, cfg, c1, c0 * 9, 0.4, scale=0.3), c0, 3, 1, 1, True),
              QConv2d(random_matrix(rng, cfg, c2, c1 * 25, 0.2, scale=0.2), c1, 5, 2, 2,
                      False),
              QReLU(), QMaxPool2d(), QFlatten()]
    flat = c2 * 2 * 2
    layers += [QLinear(random_matrix(rng, cfg, 17, flat, 0.5, scale=0.3), True),
               QLinear(random_matrix(rng, cfg, 10, 17, 0.6, scale=0.3), False)]
    model = model_for(cfg, layers, (c0, 9, 7))
    add("cnn", model, [random_input(rng, cfg, (c0, 9, 7), d) for d in (0.0, 0.3, 1.0)])
    return cases


def make_engine(params, **overrides) -> CnnEngine:
    return CnnEngine(CnnConfig(**{**params, **overrides}))


def run(engine, cases, tmp_path):
    built = build_engine(engine)
    print(f"\nVerilog {built.verilog_seconds:.1f} s, Verilator build "
          f"{built.build_seconds_now:.1f} s now, {built.build_seconds:.1f} s when built")
    results, seconds = run_cnn_cases(engine, built.build_dir, cases, test_dir=tmp_path)
    print(f"{len(results)} cases in {seconds:.1f} s")
    for r in results:        # the cocotb test already failed on any mismatch
        assert r.matches_golden and r.matches_model, r.name
    return results


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cnn_random_layers(name, tmp_path):
    engine = make_engine(CONFIGS[name])
    run(engine, layer_cases(engine, seed=sum(map(ord, name))), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_CONFIGS))
def test_cnn_random_layers_slow(name, tmp_path):
    engine = make_engine(SLOW_CONFIGS[name])
    run(engine, layer_cases(engine, seed=sum(map(ord, name))), tmp_path)


def digits_cnn(n_pe=8, acc_bits=32):
    from host.modelsource import resolve_model
    from host.pipeline import CompressConfig, compress_model
    source = resolve_model("digits-cnn")
    config = CompressConfig(n_pe=n_pe, density=source.defaults.get("density", 0.25),
                            bits=source.defaults.get("bits", 4), acc_bits=acc_bits)
    return source, compress_model(source.model, config, calib_x=source.train[0]).model


def run_digits(tmp_path, samples=None, acc_bits=32):
    from host.golden import GoldenModel
    source, model = digits_cnn(acc_bits=acc_bits)
    engine = make_engine(CONFIGS["n8_g8"], act_format=model.act_format,
                         acc_bits=model.acc_bits, product_shift=model.product_shift)
    golden = GoldenModel(model)
    x_test, y_test = source.test
    if samples is not None:
        x_test, y_test = x_test[:samples], y_test[:samples]
    q = golden.quantize_input(x_test)
    image = build_image(engine.cfg, model)
    cases = [CnnCase(f"sample {i}", image, model, q[i]) for i in range(len(q))]
    results = run(engine, cases, tmp_path)
    hw = np.array([np.argmax(r.outputs) for r in results])
    expected = np.argmax(golden.forward_int(q), axis=1)
    assert np.array_equal(hw, expected)
    accuracy = float(np.mean(hw == y_test))
    cycles = np.array([r.cycles for r in results])
    ideal = np.array([r.expected.ideal for r in results])
    print(f"digits-cnn on the CNN engine ({model.acc_bits}-bit accumulators, product shift "
          f"{model.product_shift}): {len(q)} samples, accuracy {accuracy:.4f}, "
          f"cycles per image mean {cycles.mean():.0f} (min {cycles.min()}, max "
          f"{cycles.max()}), ideal mean {ideal.mean():.0f}")
    return accuracy


def test_digits_cnn_subset(tmp_path):
    """The compressed bundled digits-cnn (conv, pool, conv, pool, pool, flatten, linear) on
    one start per image: hardware outputs == golden on the first 50 test samples."""
    run_digits(tmp_path, samples=50)


@pytest.mark.slow
def test_digits_cnn_whole_test_split(tmp_path):
    """The same over the whole test split (450 images): predictions == golden's on every
    sample; prints the accuracy."""
    accuracy = run_digits(tmp_path)
    assert accuracy > 0.9


@pytest.mark.slow
def test_digits_cnn_acc16_whole_test_split(tmp_path):
    """digits-cnn compressed for 16-bit accumulators (automatic product shift 14, activations
    Q6.9) on the 8-PE CNN engine built with them: predictions == golden's on all 450 images."""
    accuracy = run_digits(tmp_path, acc_bits=16)
    assert accuracy > 0.9


@pytest.mark.parametrize("name", ["n3_g4", "n4_g8_par"])
def test_cnn_lint(name):
    """``verilator --lint-only -Wall`` with only the generic Amaranth waivers (serial and
    parallel output stage)."""
    from hdl.cnn_sim import engine_verilog
    from hdl.simulate import AMARANTH_LINT_WAIVERS, lint_verilog
    engine = make_engine(CONFIGS[name])
    lint_verilog(engine_verilog(engine), "cnn_engine", waivers=AMARANTH_LINT_WAIVERS)


def test_cnn_bench_json(capsys):
    """``python -m hdl.bench cnn --parallel-output --json`` on three digits test images (the
    8-PE parallel output stage on a real model): RTL == golden and the cycle model, and the
    figures are consistent."""
    import json

    from hdl.bench.__main__ import main
    assert main(["cnn", "--pes", "8", "--samples", "3", "--parallel-output", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["matches_golden"] and r["matches_model"] and r["predictions_match_golden"]
    assert r["samples"] == 3
    assert 0 < r["ideal_cycles_per_image"] < r["cycles_per_image"]
    assert r["broadcasts_per_image"] <= r["dense_broadcasts_per_image"]
    assert r["dense_cycles_per_image"] >= r["cycles_per_image"]
    assert 0 < r["pe_utilisation"] <= r["pe_utilisation_mac"] <= 1
