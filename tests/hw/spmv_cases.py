"""Random layer / MLP cases for the SpmvEngine hardware tests (shared by test files)."""

from __future__ import annotations

import numpy as np

from hdl.spmv import SpmvEngine
from host.spmv_image import build_image, random_layer
from host.compressed import SparseMatrix
from host.encoding import encode
from host.fixedpoint import Format
from host.golden import Diagnostics, spmv


def activations(rng, cols, density, fmt: Format, scale=0.25):
    """Random activation vector (act format integers) with ``density`` non-zeros."""
    span = max(1, int(fmt.max_int * scale))
    x = rng.integers(-span, span + 1, cols)
    x[x == 0] = 1
    return np.where(rng.random(cols) < density, x, 0).astype(np.int64)


def extreme_layer(rng, rows, cols, n_pe, engine: SpmvEngine) -> SparseMatrix:
    """Dense-ish layer with codebook extremes: products near 2**30 wrap 32-bit accumulators."""
    w = engine.weight_width
    size = 1 << engine.index_bits
    codebook = rng.choice([-(1 << (w - 1)), (1 << (w - 1)) - 1, -(1 << (w - 2)), 1 << (w - 2)],
                          size)
    codebook[0] = 0
    indices = np.where(rng.random((rows, cols)) < 0.9, rng.integers(1, size, (rows, cols)), 0)
    enc = encode(indices, n_pe, index_bits=engine.index_bits, run_bits=engine.run_bits)
    bias = rng.integers(-(1 << 30), 1 << 30, rows)
    return SparseMatrix(enc, codebook.astype(np.int64), Format(w, w - 2), bias)


def structured_layer(rng, rows, cols, n_pe, engine, density=0.4, empty_rows=(),
                     empty_cols=()):
    """Random layer with the given rows and columns forced empty."""
    mask = rng.random((rows, cols)) < density
    mask[list(empty_rows), :] = False
    mask[:, list(empty_cols)] = False
    return random_layer(rng, rows, cols, density, n_pe, index_bits=engine.index_bits,
                        run_bits=engine.run_bits,
                        weight_format=Format(engine.weight_width, engine.weight_width - 2),
                        mask=mask)


def layer_cases(engine: SpmvEngine, seed: int, repeats: int = 2):
    """Single- and multi-layer cases ``(name, image, x)`` for ``engine``."""
    rng = np.random.default_rng(seed)
    act = engine.act_format
    n = engine.n_pe
    R, C = engine.max_rows, engine.max_cols
    wf = Format(engine.weight_width, engine.weight_width - 2)
    kw = dict(index_bits=engine.index_bits, run_bits=engine.run_bits, weight_format=wf)
    cases = []

    def add(name, layers, x_list):
        image = build_image(engine, layers)
        for k, x in enumerate(x_list):
            cases.append((f"{name}#{k}", image if k == 0 else None, x))

    for rep in range(repeats):
        rows = int(rng.integers(max(1, R // 3), R + 1))
        cols = int(rng.integers(max(1, C // 3), C + 1))
        if rows % n == 0 and n > 1:
            rows -= 1
        layer = random_layer(rng, rows, cols, 0.25, n, **kw)
        add(f"random{rep} {rows}x{cols}", [(layer, rep % 2 == 1)],
            [activations(rng, cols, 0.5, act), np.zeros(cols, np.int64),
             activations(rng, cols, 1.0, act), activations(rng, cols, 0.1, act)])
    rows, cols = min(R, 3 * n + 2), min(C, 7)
    layer = structured_layer(rng, rows, cols, n, engine,
                             empty_rows=range(0, rows, 3), empty_cols=(0, cols // 2))
    add(f"empty rows/cols {rows}x{cols}", [(layer, False)],
        [activations(rng, cols, 1.0, act), activations(rng, cols, 0.5, act)])
    # Tall and very sparse: zero runs longer than 2**run_bits - 1 need padding entries.
    mask = rng.random((R, min(C, 16))) < 0.03
    mask[-n:, ::2] = True                     # the last local row of every PE, every other column
    layer = random_layer(rng, R, min(C, 16), 0.03, n, mask=mask, **kw)
    assert layer.encoded.padding_count() > 0 or n << engine.run_bits >= R
    add(f"padding {R}x{min(C, 16)}", [(layer, False)], [activations(rng, min(C, 16), 1.0, act)])
    # An all-zero matrix (no entries at all): bias only.
    layer = random_layer(rng, min(R, 9), min(C, 5), 0.0, n, **kw)
    add("zero matrix", [(layer, True)], [activations(rng, min(C, 5), 1.0, act)])
    # Dense, extreme values: saturating outputs and wrapping accumulators (saturation needs
    # accumulators wider than the activations after the requantization shift).
    rows, cols = min(R, 2 * n + 1), C
    shift = engine.weight_width - 2 - engine.product_shift
    can_saturate = engine.acc_bits - shift > act.width
    for _ in range(50):     # until some accumulators wrap and some outputs saturate
        layer = extreme_layer(rng, rows, cols, n, engine)
        x = rng.choice([act.min_int, act.max_int], cols)
        diag = Diagnostics()
        spmv(layer, x[None], act, engine.acc_bits, False, diag, engine.product_shift)
        if diag.accumulator_overflows > 0 and (diag.saturations > 0 or not can_saturate):
            break
    else:
        raise AssertionError("no extreme case with wrapping and saturation found")
    add(f"extreme {rows}x{cols}", [(layer, False)], [x, np.clip(-x, act.min_int, act.max_int)])
    # Full density.
    layer = random_layer(rng, min(R, n + 3), min(C, 12), 1.0, n, **kw)
    add("dense", [(layer, False)], [activations(rng, min(C, 12), 0.8, act)])
    # MLP chains, ReLU between layers.
    if engine.max_layers >= 2:
        sizes = [C, R, max(1, R // 2), max(1, R // 5)][:engine.max_layers + 1]
        sizes = [max(1, min(s, R, C)) for s in sizes]
        layers = []
        for i in range(len(sizes) - 1):
            m = random_layer(rng, sizes[i + 1], sizes[i], 0.3, n, index_bits=engine.index_bits,
                             run_bits=engine.run_bits, weight_format=Format(wf.width, wf.width - 1),
                             bias_scale=4.0)
            layers.append((m, i < len(sizes) - 2))
        add(f"mlp {'-'.join(map(str, sizes))}", layers,
            [activations(rng, sizes[0], 0.7, act, 0.5) for _ in range(3)])
    return cases
