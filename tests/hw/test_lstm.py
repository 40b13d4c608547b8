"""LstmEngine on Verilator (cocotb): bit-exact against host.golden.GoldenModel.lstm_step,
cycle-exact against host.lstm_cycles.  One Verilator build per configuration, all cases of a
configuration in one simulation.

Every case checks h_T, the classifier outputs (when present), every step's MAC cycles
(== host.cyclemodel.spmv_cycles over the broadcast columns), every step's element-wise
cycles, the classifier's MAC cycles and the whole run's cycles.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hdl.lstm import LstmEngine
from hdl.lstm_sim import build_engine, run_lstm_cases
from host.lstm_image import build_image, random_lstm
from host.fixedpoint import Format

# Engines built only for their host-side facts (images, validation) are never elaborated.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

CONFIGS = {
    # 3 PEs (hidden sizes mostly not multiples of 3), narrow formats so that z, c and the
    # accumulators saturate / wrap, shallow FIFO, 2-bit zero runs (padding).  Default tables:
    # GoldenModel.lstm_step indexes its tables with the default TableSpec (see the docs).
    # Also up to 3 stacked layers with projections up to 7 (the stacked cases below).
    "n3": dict(n_pe=3, hidden_max=16, input_max=16, steps_max=32, classes_max=6,
               act_format=Format(10, 6), weight_width=10, acc_bits=22, run_bits=2,
               max_entries_per_pe=2048, fifo_depth=2, ew_lanes=2, layers_max=3, proj_max=7),
    # 8 PEs, the digits-lstm formats (also runs the bundled model).
    "n8": dict(n_pe=8, hidden_max=64, input_max=8, steps_max=32, classes_max=10,
               act_format=Format(16, 10), max_entries_per_pe=4096, fifo_depth=8, ew_lanes=4),
    # 2 PEs, FIFO depth 1, one element-wise lane (4H accumulator reads per step).
    "n2_l1": dict(n_pe=2, hidden_max=12, input_max=5, steps_max=32, classes_max=6,
                  max_entries_per_pe=512, fifo_depth=1, ew_lanes=1),
    # 2 PEs, 16-bit accumulators with a product shift of 13 (gates, classifier): the PEs floor
    # every product by 13 bits and the sums wrap at 16 bits where they overflow.
    "n2_acc16": dict(n_pe=2, hidden_max=8, input_max=5, steps_max=32, classes_max=6,
                     max_entries_per_pe=512, fifo_depth=2, ew_lanes=2, acc_bits=16,
                     product_shift=13),
    # 4 PEs in lockstep pairs (pe_group 2): images padded per pair, cycles from the model on
    # the padded encoding; 2 stacked layers with projections (the stacked cases).
    "n4_pairs": dict(n_pe=4, pe_group=2, hidden_max=10, input_max=10, steps_max=32,
                     classes_max=6, max_entries_per_pe=1024, fifo_depth=2, ew_lanes=2,
                     layers_max=2, proj_max=5),
    # 4 PEs in pairs with the entries in SPRAMs (memory "spram": one Ice40Spram model per
    # pair), 2 stacked layers with projections.
    "n4_pairs_spram": dict(n_pe=4, pe_group=2, hidden_max=10, input_max=10, steps_max=32,
                           classes_max=6, max_entries_per_pe=1024, fifo_depth=2, ew_lanes=2,
                           layers_max=2, proj_max=5, memory="spram"),
    # 3 solo PEs with SPRAM entries (one Ice40Spram each), one lane.
    "n3_spram": dict(n_pe=3, hidden_max=9, input_max=6, steps_max=32, classes_max=6,
                     max_entries_per_pe=512, fifo_depth=2, ew_lanes=1, memory="spram"),
    # Serial schedule (overlap=False): 8 PEs in pairs, 2 lanes on PEs 7 and 6's multipliers,
    # 16-bit accumulators with a product shift, 2 stacked layers (each lower-layer h written
    # twice through the one list memory), classifier.
    "n8_serial": dict(n_pe=8, pe_group=2, hidden_max=17, input_max=17, steps_max=32,
                      classes_max=6, max_entries_per_pe=1024, fifo_depth=2, ew_lanes=2,
                      acc_bits=16, product_shift=13, layers_max=2, overlap=False),
    # Serial with the element-wise data in the SPRAMs (memory "spram": bias, tables, c, h and
    # the output buffer in the four pairs' SPRAMs through the PEs' aux ports; the test also
    # checks that no SPRAM sees two accesses in a cycle), 16-bit accumulators, classifier,
    # 2 stacked layers.
    "n8_serial_spram": dict(n_pe=8, pe_group=2, hidden_max=17, input_max=17, steps_max=32,
                            classes_max=6, max_entries_per_pe=1024, fifo_depth=2, ew_lanes=1,
                            acc_bits=16, product_shift=13, layers_max=2, overlap=False,
                            memory="spram"),
    # Serial, one lane, no step statistics (stat ports read 0: outputs and totals compared).
    "n2_serial_nostats": dict(n_pe=2, hidden_max=9, input_max=9, steps_max=32, classes_max=6,
                              max_entries_per_pe=1024, fifo_depth=1, ew_lanes=1, layers_max=2,
                              overlap=False, step_stats=False),
}
SLOW_CONFIGS = {
    # 8 PEs, 4 lanes, digits formats, 2 stacked layers with projection (slow: own build).
    "n8_stack": dict(n_pe=8, hidden_max=40, input_max=40, steps_max=20, classes_max=10,
                     act_format=Format(16, 10), max_entries_per_pe=4096, fifo_depth=8,
                     ew_lanes=4, layers_max=2, proj_max=24),
    # 5 PEs, one lane, FIFO 1, 3 layers (slow: own build).
    "n5_l1_stack": dict(n_pe=5, hidden_max=11, input_max=11, steps_max=24, classes_max=3,
                        max_entries_per_pe=1024, fifo_depth=1, ew_lanes=1, layers_max=3,
                        proj_max=6),
}


def make_engine(config) -> LstmEngine:
    params = dict(config)
    return LstmEngine(params.pop("n_pe"), **params)


def run(engine, cases, tmp_path):
    t0 = time.monotonic()
    build, now, first = build_engine(engine)
    print(f"\nVerilator build: {now:.1f} s now, {first:.1f} s when built")
    results, seconds = run_lstm_cases(engine, build, cases, test_dir=tmp_path)
    print(f"{len(results)} cases in {seconds:.1f} s simulator, "
          f"{time.monotonic() - t0:.1f} s total")
    for r in results:           # the cocotb test already failed on any mismatch
        assert r.matches_golden and r.matches_model, r.name
    return results


def sequence(rng, steps, inputs, fmt: Format, density=0.7, scale=0.5):
    span = max(1, int(fmt.max_int * scale))
    x = rng.integers(-span, span + 1, (steps, inputs))
    return np.where(rng.random((steps, inputs)) < density, x, 0).astype(np.int64)


def _weight_kwargs(engine: LstmEngine):
    """The random layers' weight format (2 integer bits) and the keyword arguments that give
    :func:`host.lstm_image.random_lstm` the engine's index and run bits and that format."""
    wf = Format(engine.weight_width, engine.weight_width - 2)
    return wf, dict(index_bits=engine.index_bits, run_bits=engine.run_bits, weight_format=wf)


def _case_adder(engine: LstmEngine, cases: list):
    """``add(name, layers, cls, seqs)``: build the image of ``layers`` (one QLSTM or a stack)
    and ``cls`` and append one case per sequence to ``cases``, named ``name#k``; only the
    first carries the image (the later ones run on it)."""
    def add(name, layers, cls, seqs):
        image = build_image(engine, layers, cls)
        for k, x in enumerate(seqs):
            cases.append((f"{name}#{k}", image if k == 0 else None, x))
    return add


def random_cases(engine: LstmEngine, seed: int):
    rng = np.random.default_rng(seed)
    act, n = engine.act_format, engine.n_pe
    wf, kw = _weight_kwargs(engine)
    cases = []
    add = _case_adder(engine, cases)

    hiddens = [min(h, engine.hidden_max)
               for h in (1, 2, n + 1, 7, 13, engine.hidden_max, engine.hidden_max - 1, 5)]
    for rep, hidden in enumerate(hiddens):
        inputs = int(rng.integers(1, engine.input_max + 1))
        density = [0.3, 0.6, 1.0, 0.15][rep % 4]
        lstm, cls = random_lstm(rng, inputs, hidden, density, n, classes=(rep % 3) * 3, **kw,
                                bias_scale=0.5)
        steps = [3, 12, 1, 30][rep % 4]
        add(f"H{hidden} I{inputs} d{density}", lstm, cls,
            [sequence(rng, steps, inputs, act),
             sequence(rng, int(rng.integers(1, engine.steps_max + 1)), inputs, act, 0.3),
             np.zeros((2, inputs), np.int64)])
    # Saturating: extreme inputs, large weights and biases, 30 steps (c and z saturate).
    hidden = min(engine.hidden_max, 11)
    inputs = engine.input_max
    lstm, cls = random_lstm(rng, inputs, hidden, 0.8, n, classes=min(engine.classes_max, 4),
                            bias_scale=8.0, **kw)
    x = rng.choice([act.min_int, act.max_int, 0], (30, inputs))
    add(f"saturating z H{hidden}", lstm, cls, [x, np.clip(-x, act.min_int, act.max_int)])
    # Saturating c: i, f, g biases at +-64.0 dominate z, so c moves by ~1 per step.
    lstm, cls = random_lstm(rng, inputs, hidden, 0.2, n, classes=2, **kw)
    big = 1 << (act.frac + wf.frac + 6)
    signs = np.where(np.arange(hidden) % 2 == 0, 1, -1)
    lstm.matrix.bias[:2 * hidden] = big
    lstm.matrix.bias[2 * hidden:3 * hidden] = big * signs
    add(f"saturating c H{hidden}", lstm, cls, [sequence(rng, 30, inputs, act, 0.5, 0.05)])
    # All-zero matrix: bias only.
    lstm, cls = random_lstm(rng, 3, 4, 0.0, n, classes=2, bias_scale=4.0, **kw)
    add("zero matrix", lstm, cls, [sequence(rng, 5, 3, act)])
    return cases


def stacked_cases(engine: LstmEngine, seed: int):
    """Stacked layers (2 .. layers_max) with and without projections: random sizes (hidden 1
    up, mostly not multiples of n_pe), long sequences, zero inputs, a saturating stack."""
    rng = np.random.default_rng(seed)
    act, n = engine.act_format, engine.n_pe
    wf, kw = _weight_kwargs(engine)
    cases = []
    add = _case_adder(engine, cases)

    hiddens = [1, n + 1, engine.hidden_max, 2 * n + 1, engine.hidden_max - 1, 5]
    for rep, hidden in enumerate(hiddens):
        layers = 2 + rep % (engine.layers_max - 1) if engine.layers_max > 1 else 1
        proj = [0, 1, engine.proj_max, 3][rep % 4] if engine.proj_max else 0
        proj = min(proj, engine.input_max)
        if proj and proj >= hidden:
            proj = max(1, hidden - 1) if hidden > 1 else 1
        inputs = int(rng.integers(1, engine.input_max + 1))
        density = [0.4, 0.8, 0.2][rep % 3]
        stack, cls = random_lstm(rng, inputs, hidden, density, n,
                                 classes=min((rep % 3) * 2, engine.classes_max),
                                 layers=layers, proj=proj, bias_scale=0.5, **kw)
        stack = stack if isinstance(stack, list) else [stack]
        steps = [engine.steps_max, 5, 17][rep % 3]
        add(f"L{layers} H{hidden} P{proj} I{inputs} d{density}", stack, cls,
            [sequence(rng, steps, inputs, act),
             sequence(rng, int(rng.integers(1, engine.steps_max + 1)), inputs, act, 0.2),
             np.zeros((3, inputs), np.int64), sequence(rng, 1, inputs, act)])
    if engine.proj_max and engine.layers_max > 1:
        # Mixed stacks: a projection layer under a plain one (its last step overlaps the
        # plain layer's x_0 part) and the reverse, P not a multiple of n_pe, T = 1 (no
        # overlap) and T = 2 (one overlapped step, then the layer change) sequences.  (Own
        # random stream: the cases above and below stay as they were.)
        mrng = np.random.default_rng(seed + 1000)
        for p0, p1, hidden, upper_hidden in (
                (min(engine.proj_max, n + 2), 0, engine.hidden_max, engine.hidden_max - 1),
                (0, 1, 2, 3), (1, 0, 1, 2)):
            inputs = int(mrng.integers(1, engine.input_max + 1))
            lower, _ = random_lstm(mrng, inputs, hidden, 0.5, n, proj=p0, bias_scale=0.5,
                                   **kw)
            upper, cls = random_lstm(mrng, p0 or hidden, upper_hidden, 0.5, n, proj=p1,
                                     classes=min(2, engine.classes_max), bias_scale=0.5,
                                     **kw)
            add(f"mixed P{p0}/P{p1} H{hidden} I{inputs}", [lower, upper], cls,
                [sequence(mrng, 7, inputs, act), sequence(mrng, 1, inputs, act),
                 sequence(mrng, 2, inputs, act), np.zeros((2, inputs), np.int64)])
    # Saturating stack: extreme inputs, large weights and biases in every layer.
    hidden = min(engine.hidden_max, 9)
    proj = min(engine.proj_max, 4)
    stack, cls = random_lstm(rng, engine.input_max, hidden, 0.8, n, bias_scale=8.0,
                             classes=min(engine.classes_max, 3), layers=engine.layers_max,
                             proj=proj, **kw)
    stack = stack if isinstance(stack, list) else [stack]
    x = rng.choice([act.min_int, act.max_int, 0], (engine.steps_max, engine.input_max))
    add(f"saturating stack H{hidden} P{proj}", stack, cls, [x])
    return cases


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_lstm_random(name, tmp_path):
    """Random single-layer LSTMs (and on n3, stacked layers with projections) bit- and
    cycle-exact; all cases of a configuration in one simulation."""
    engine = make_engine(CONFIGS[name])
    cases = random_cases(engine, seed=sum(map(ord, name)))
    if engine.layers_max > 1:
        cases += stacked_cases(engine, seed=sum(map(ord, name)) + 1)
    run(engine, cases, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_CONFIGS))
def test_lstm_stacked_slow(name, tmp_path):
    """Further stacked configurations (own Verilator builds)."""
    engine = make_engine(SLOW_CONFIGS[name])
    run(engine, stacked_cases(engine, seed=sum(map(ord, name))), tmp_path)


def test_stacked_cases_cover_what_they_claim():
    """The n3 stacked cases include 2- and 3-layer stacks, projections, hidden size 1, a
    full-length sequence, and the saturating stack does saturate c in a lower layer."""
    engine = make_engine(CONFIGS["n3"])
    act = engine.act_format
    cases = stacked_cases(engine, seed=sum(map(ord, "n3")) + 1)
    images = [image for _, image, _ in cases if image is not None]
    assert {len(im.layers) for im in images} == {2, 3}
    assert any(layer.projection is not None for im in images for layer in im.layers)
    assert any(layer.hidden == 1 for im in images for layer in im.layers)
    assert max(len(x) for _, _, x in cases) == engine.steps_max
    assert min(len(x) for _, _, x in cases) == 1
    name, image, x = cases[-1]
    assert name.startswith("saturating")
    golden = image.golden
    layer = image.layers[0]
    state = np.zeros((1, layer.output_size), np.int64)
    c = np.zeros((1, layer.hidden), np.int64)
    saturated = 0
    for t in range(len(x)):
        state, c, _ = golden.lstm_cell(layer, x[t][None], state, c)
        saturated += int(np.count_nonzero((c == act.max_int) | (c == act.min_int)))
    assert saturated > 0


def test_saturating_cases_saturate():
    """The 'saturating' random cases of n3 drive z and c into saturation (golden model)."""
    from host.fixedpoint import requantize, round_shift
    from host.golden import spmv_accumulate
    engine = make_engine(CONFIGS["n3"])
    act = engine.act_format
    z_sat = c_sat = 0
    image = None
    for name, new_image, x in random_cases(engine, seed=sum(map(ord, "n3"))):
        image = new_image or image
        if not name.startswith("saturating"):
            continue
        lstm, golden = image.lstm, image.golden
        frac = lstm.matrix.weight_format.frac
        h = c = np.zeros((1, lstm.hidden), np.int64)
        for t in range(len(x)):
            acc = spmv_accumulate(lstm.matrix, np.concatenate([x[t][None], h], axis=1),
                                  engine.acc_bits)
            z_sat += int(np.count_nonzero(round_shift(acc, frac) != requantize(acc, frac, act)))
            h, c = golden.lstm_step(lstm, x[t][None], h, c)
            c_sat += int(np.count_nonzero((c == act.max_int) | (c == act.min_int)))
    assert z_sat > 0 and c_sat > 0, (z_sat, c_sat)


def _digits(n_samples, acc_bits=32, pe_group=1, **engine_kw):
    from host.golden import GoldenModel
    from host.pipeline import CompressConfig, compress_model
    from host.modelsource import resolve_model
    source = resolve_model("digits-lstm")
    model = compress_model(source.model, CompressConfig(n_pe=8, density=0.25,
                                                        acc_bits=acc_bits),
                           calib_x=source.train[0]).model
    lstm, cls = model.layers
    assert type(lstm).__name__ == "QLSTM" and type(cls).__name__ == "QLinear"
    params = dict(CONFIGS["n8"], act_format=model.act_format, acc_bits=model.acc_bits,
                  table_spec=model.table_spec, product_shift=model.product_shift,
                  pe_group=pe_group, **engine_kw)
    engine = make_engine(params)
    golden = GoldenModel(model)
    x_test, y_test = source.test
    q = golden.quantize_input(x_test)[:n_samples]
    image = build_image(engine, lstm, cls)
    return engine, golden, image, q, y_test[:n_samples]


def _run_digits(n_samples, tmp_path, acc_bits=32, **engine_kw):
    engine, golden, image, q, y = _digits(n_samples, acc_bits, **engine_kw)
    cases = [(f"sample {i}", image if i == 0 else None, q[i]) for i in range(len(q))]
    t0 = time.monotonic()
    results = run(engine, cases, tmp_path)
    hw = np.array([np.argmax(r.outputs) for r in results])
    expected = np.argmax(golden.forward_int(q), axis=1)
    assert np.array_equal(hw, expected)
    accuracy = float(np.mean(hw == y))
    steps = np.concatenate([r.mac for r in results])
    ew = results[0].ew[0]
    print(f"digits-lstm on the engine ({engine.acc_bits}-bit accumulators, product shift "
          f"{engine.product_shift}, {engine.config()}): {len(q)} samples, "
          f"accuracy {accuracy:.3f}, "
          f"{np.mean([r.cycles for r in results]):.0f} cycles per inference, "
          f"MAC {steps.mean():.1f} + element-wise {ew} cycles per step, "
          f"{time.monotonic() - t0:.1f} s")
    return accuracy


def test_digits_lstm_on_engine(tmp_path):
    """Bundled digits-lstm (8 PEs, 4 element-wise lanes), the whole test split (450 samples,
    ~1 min): predictions == golden on every sample, h_T and scores bit-exact, cycles exact."""
    _run_digits(450, tmp_path)


@pytest.mark.slow
def test_digits_lstm_acc16_on_engine(tmp_path):
    """digits-lstm compressed for 16-bit accumulators (product shift 14) on an 8-PE engine
    built with them (its own build), the whole test split."""
    assert _run_digits(450, tmp_path, acc_bits=16) > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("overlap", [True, False])
def test_digits_lstm_board_layout_on_engine(overlap, tmp_path):
    """digits-lstm for 16-bit accumulators on the iCE40 board's engine layout (8 PEs in pairs,
    one element-wise lane), with the overlap and with the serial schedule (overlap=False:
    the board build's), the whole test split; prints the cycles per sequence."""
    assert _run_digits(450, tmp_path, acc_bits=16, pe_group=2, ew_lanes=1,
                       overlap=overlap) > 0.9


def test_constructor_validation():
    with pytest.raises(ValueError, match="`hidden_max` must be a positive integer, not 0"):
        LstmEngine(4, hidden_max=0, input_max=4, steps_max=4, max_entries_per_pe=64)
    with pytest.raises(ValueError, match="`n_pe` must be a positive integer"):
        LstmEngine(0, hidden_max=4, input_max=4, steps_max=4, max_entries_per_pe=64)
    with pytest.raises(ValueError, match="cannot hold 1.0"):
        LstmEngine(2, hidden_max=4, input_max=4, steps_max=4, max_entries_per_pe=64,
                   act_format=Format(8, 7))
    with pytest.raises(ValueError, match="`ew_lanes` must be 1, 2 or 4 and at most `n_pe`"):
        LstmEngine(2, hidden_max=4, input_max=4, steps_max=4, max_entries_per_pe=64,
                   ew_lanes=4)
    with pytest.raises(TypeError, match="table_spec"):
        LstmEngine(2, hidden_max=4, input_max=4, steps_max=4, max_entries_per_pe=64,
                   table_spec=9)
    with pytest.raises(ValueError, match="`memory` must be 'bram' or 'spram', not 'dram'"):
        LstmEngine(2, hidden_max=4, input_max=4, steps_max=4, max_entries_per_pe=64,
                   memory="dram")
    with pytest.raises(ValueError, match="`max_entries_per_pe` must be at most 16384 with "
                                         "memory='spram'"):
        LstmEngine(2, hidden_max=4, input_max=4, steps_max=4, max_entries_per_pe=20000,
                   memory="spram")
    serial = dict(hidden_max=4, input_max=4, steps_max=4, overlap=False, memory="spram",
                  acc_bits=16, product_shift=13)
    with pytest.raises(ValueError, match="keeps the element-wise data in the SPRAMs of the "
                                         "first four PE pairs .*that needs four SPRAMs "
                                         "\\(`n_pe` / `pe_group` >= 4\\), not 2"):
        LstmEngine(4, pe_group=2, max_entries_per_pe=64, **serial)
    with pytest.raises(ValueError, match="`ew_lanes` 1, not 2; `max_entries_per_pe` at most "
                                         "8192 .*not 9000"):
        LstmEngine(8, pe_group=2, max_entries_per_pe=9000, ew_lanes=2, **serial)
    with pytest.raises(ValueError, match="`acc_bits` at most 16 \\(a bias is one 16-bit "
                                         "SPRAM word\\), not 32"):
        LstmEngine(8, pe_group=2, max_entries_per_pe=64, **{**serial, "acc_bits": 32,
                                                            "product_shift": 0})
    LstmEngine(4, max_entries_per_pe=64, **serial)            # 4 solo PEs: 4 SPRAMs
    kw = dict(hidden_max=4, input_max=4, steps_max=4, max_entries_per_pe=64)
    assert "memory" not in LstmEngine(2, **kw).config()
    assert LstmEngine(2, **kw, memory="spram").config()["memory"] == "spram"


def test_serial_mode_validation_and_config():
    """overlap=False needs proj_max 0 (and at most 2 lanes with stacked layers); overlap and
    step_stats appear in config() only when not their defaults (older hashes unchanged)."""
    small = dict(hidden_max=4, input_max=4, steps_max=4, max_entries_per_pe=64)
    with pytest.raises(ValueError, match="`overlap=False` \\(serial element-wise schedule\\) "
                                         "has no projection hardware: `proj_max` must be 0, "
                                         "not 3 \\(build a projection model with "
                                         "overlap=True\\)"):
        LstmEngine(2, proj_max=3, overlap=False, **small)
    with pytest.raises(ValueError, match="`ew_lanes` must be 1 or 2, not 4"):
        LstmEngine(4, layers_max=2, ew_lanes=4, overlap=False, **small)
    with pytest.raises(TypeError, match="`step_stats` must be True or False, not 0"):
        LstmEngine(2, step_stats=0, **small)
    plain = LstmEngine(2, **small).config()
    assert "overlap" not in plain and "step_stats" not in plain
    serial = LstmEngine(2, overlap=False, step_stats=False, **small).config()
    assert serial == {**plain, "overlap": False, "step_stats": False}
    LstmEngine(4, ew_lanes=4, overlap=False, **small)           # one layer: 4 lanes fit


@pytest.mark.parametrize("pe_group", [1, 2])
def test_serial_mode_uses_pe_multipliers(pe_group):
    """The serial element-wise lanes multiply on the last PEs' multipliers: the engine has
    n_pe full-width multipliers (n_pe + ew_lanes with the overlap), counted in the RTLIL
    (constant multiplications of the unit's row counters are not multipliers)."""
    import re

    from amaranth.back import rtlil
    for overlap, lanes in ((True, 2), (False, 2), (False, 1)):
        engine = LstmEngine(4, hidden_max=5, input_max=3, steps_max=4, classes_max=2,
                            max_entries_per_pe=64, ew_lanes=lanes, overlap=overlap,
                            pe_group=pe_group)
        text = rtlil.convert(engine, name="lstm_engine")
        widths = re.findall(r"cell \$mul \S+\n(?:\s+parameter \\[AB]_SIGNED \d+\n)*"
                            r"\s+parameter \\A_WIDTH (\d+)\n\s+parameter \\B_WIDTH (\d+)",
                            text)
        full = [w for w in widths if min(map(int, w)) >= engine.act_format.width]
        assert len(full) == 4 + (lanes if overlap else 0), (overlap, lanes, widths)


def test_serial_cycle_model():
    """host.lstm_cycles: the serial unit's cycles (registered product: + 1; lower layers
    write every h twice: + lanes) and the serial schedule's step = SETUP + MAC (+ its
    registered done flag) + done + unit (the RTL tests compare every step and the totals)."""
    from host.cyclemodel import Timing, spmv_cycles
    from host.lstm_cycles import (SERIAL_EW_REGISTERS, SERIAL_MAC_REGISTERS,
                                  SERIAL_REQUANT_LATENCY, LayerTrace, ew_cycles,
                                  serial_ew_cycles, stack_cycles)
    extra = 1 + SERIAL_REQUANT_LATENCY + SERIAL_EW_REGISTERS
    assert serial_ew_cycles(13, 2) == ew_cycles(13, 2) + extra
    assert serial_ew_cycles(13, 2, appends=True) == ew_cycles(13, 2) + extra + 2
    rng = np.random.default_rng(7)
    lstm, _ = random_lstm(rng, 3, 5, 0.6, 2)
    x = np.array([[1, 0, 2], [0, 0, 0]])
    h = np.array([[0, 3, 0, 1, 0], [1, 1, 0, 0, 0]])
    timing = Timing(fifo_depth=2)
    rep = stack_cycles([LayerTrace(lstm.matrix.encoded, 3, 5, x, h)], timing, overlap=False)
    mac = [spmv_cycles(lstm.matrix.encoded, [0, 2], timing).cycles + SERIAL_MAC_REGISTERS,
           spmv_cycles(lstm.matrix.encoded, [3 + 1, 3 + 3], timing).cycles
           + SERIAL_MAC_REGISTERS]
    assert list(rep.mac) == mac
    assert rep.total == sum(2 + m + serial_ew_cycles(5) for m in mac)
    proj, _ = random_lstm(rng, 3, 5, 0.6, 2, proj=2)
    with pytest.raises(ValueError, match="LSTM layer 0 has a projection: the serial schedule"):
        stack_cycles([LayerTrace(proj.matrix.encoded, 3, 2, x, h[:, :2],
                                 proj.projection.encoded, h)], timing, overlap=False)


def test_stacked_image_validation():
    """Clear errors when a stacked / projected model does not fit the engine."""
    rng = np.random.default_rng(3)
    engine = LstmEngine(3, hidden_max=6, input_max=6, steps_max=4, classes_max=2,
                        max_entries_per_pe=512, layers_max=2, proj_max=3)
    stack, _ = random_lstm(rng, 4, 5, 0.5, 3, layers=3)
    with pytest.raises(ValueError, match="the model has 3 LSTM layers, the engine runs at "
                                         "most 2"):
        build_image(engine, stack)
    stack, _ = random_lstm(rng, 4, 5, 0.5, 3, layers=2, proj=4)
    with pytest.raises(ValueError, match="LSTM layer 0: projection size 4 does not fit the "
                                         "engine \\(proj_max 3"):
        build_image(engine, stack)
    plain = LstmEngine(3, hidden_max=6, input_max=6, steps_max=4, classes_max=2,
                       max_entries_per_pe=512)
    stack, _ = random_lstm(rng, 4, 5, 0.5, 3, proj=2)
    with pytest.raises(ValueError, match="0 means no projection hardware"):
        build_image(plain, stack)
    a, _ = random_lstm(rng, 4, 5, 0.5, 3)
    b, _ = random_lstm(rng, 3, 5, 0.5, 3)
    with pytest.raises(ValueError, match="LSTM layer 1 takes 3 inputs, LSTM layer 0 gives 5"):
        build_image(engine, [a, b])
    stack, cls = random_lstm(rng, 4, 5, 0.5, 3, layers=2, proj=2, classes=2)
    build_image(engine, stack, cls)                       # fits
    with pytest.raises(ValueError, match="`layers_max` must be"):
        LstmEngine(3, hidden_max=6, input_max=6, steps_max=4, max_entries_per_pe=512,
                   layers_max=0)


def test_image_validation():
    engine = LstmEngine(2, hidden_max=4, input_max=3, steps_max=4, classes_max=2,
                        max_entries_per_pe=256)
    rng = np.random.default_rng(0)
    lstm, cls = random_lstm(rng, 3, 5, 0.5, 2, classes=2)
    with pytest.raises(ValueError, match="hidden 5 does not fit"):
        build_image(engine, lstm, cls)
    lstm, cls = random_lstm(rng, 3, 4, 0.5, 3, classes=2)
    with pytest.raises(ValueError, match="encoded for 3 PEs"):
        build_image(engine, lstm, cls)
    lstm, cls = random_lstm(rng, 3, 4, 0.5, 2, classes=3)
    with pytest.raises(ValueError, match="3 outputs"):
        build_image(engine, lstm, cls)


def test_ew_cycles_model():
    """host.lstm_cycles: element-wise cycles for 1, 2 and 4 lanes (the RTL tests above compare
    every step's MAC / element-wise cycles and the totals with this model)."""
    from host.lstm_cycles import EW_LATENCY, ew_cycles
    assert ew_cycles(64, 1) == 256 + EW_LATENCY + 1
    assert ew_cycles(64, 4) == 64 + EW_LATENCY + 4
    assert ew_cycles(13, 2) == 4 * 7 + EW_LATENCY + 2


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_lstm_lint(name):
    """``verilator --lint-only -Wall`` with only the generic Amaranth waivers."""
    from hdl.lstm_sim import engine_verilog
    from hdl.simulate import AMARANTH_LINT_WAIVERS, lint_verilog
    lint_verilog(engine_verilog(make_engine(CONFIGS[name])), "lstm_engine",
                 waivers=AMARANTH_LINT_WAIVERS)


def test_spmv_release_model():
    """host.cyclemodel.spmv_cycles(release=(first, F)) (the overlap's wait of the state part):
    F = 0 changes nothing; a late F delays the released columns (the MAC ends at least F + the
    released work later) and never the phase end before F; releasing nothing only holds the
    end."""
    from host.cyclemodel import Timing, spmv_cycles
    rng = np.random.default_rng(5)
    lstm, _ = random_lstm(rng, 6, 7, 0.5, 3)
    enc, timing = lstm.matrix.encoded, Timing(fifo_depth=2)
    cols = np.array([0, 2, 5, 6, 8, 11])
    free = spmv_cycles(enc, cols, timing).cycles
    assert spmv_cycles(enc, cols, timing, release=(3, 0)).cycles == free
    late = spmv_cycles(enc, cols, timing, release=(3, 200)).cycles
    tail = spmv_cycles(enc, cols[3:], timing).cycles
    assert late >= 200 + tail - 1 and late > free
    assert spmv_cycles(enc, cols, timing, release=(6, 500)).cycles == 500
    assert spmv_cycles(enc, [], timing, release=(0, 50)).cycles == 50
