"""Host side of the CNN engine: layout, column order and cycle model (no simulator).

* An independent NumPy emulation of the engine's data flow (feature-map words, hardware column
  order, zero skipping, max-pool by read-modify-write) computes what the golden model computes.
* The MAC-phase model equals :func:`host.cyclemodel.spmv_cycles` when every word is full of
  non-zero activations (the same broadcast/pop recurrence), and zero words cost one cycle.
* Clear errors name the layer and the memory or limit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "hw"))

from test_cnn import CONFIGS, conv_model, random_input, random_matrix

from host.cnn_cycles import CnnTiming, layer_words, mac_cycles, model_for
from host.cnn_image import (CnnConfig, build_image, from_fm, groups, hw_columns,
                            input_addresses, to_fm)
from host.compressed import QConv2d, QFlatten, QLinear, QLSTM, QMaxPool2d
from host.cyclemodel import Timing, spmv_cycles
from host.fixedpoint import requantize, wrap
from host.golden import GoldenModel


def emulate(cfg: CnnConfig, image, x) -> np.ndarray:
    """The engine's data flow in NumPy: returns the last layer's output map (C, H, W)."""
    g = cfg.fm_lanes
    buf = to_fm(np.asarray(x).reshape(image.input_shape), g)
    for ly, enc, _desc in zip(image.layers, image.matrices, image.descriptors):
        c_in, h, w = ly.in_shape
        kh, kw = ly.kernel
        ng = groups(c_in, g)
        weights = np.asarray(ly.matrix.codebook)[enc.decode().astype(np.int64)]
        out = np.zeros(g * (groups(ly.rows, g) * ly.out_shape[1] * ly.out_shape[2] + 1),
                       np.int64)
        oh, ow = ly.computed_shape
        for oy in range(oh):
            for ox in range(ow):
                cols, vals = [], []
                for ky in range(kh):
                    for kx in range(kw):
                        iy, ix = oy * ly.stride - ly.pad + ky, ox * ly.stride - ly.pad + kx
                        if not (0 <= iy < h and 0 <= ix < w):
                            continue                      # padding: never read
                        for grp in range(ng):
                            word = buf[((iy * w + ix) * ng + grp) * g:][:g]
                            for lane in range(g):
                                if grp * g + lane < c_in and word[lane] != 0:
                                    cols.append(((ky * kw + kx) * ng + grp) * g + lane)
                                    vals.append(word[lane])
                acc = wrap(weights[:, cols] @ np.array(vals, np.int64) + ly.matrix.bias
                           if cols else ly.matrix.bias.astype(np.int64), cfg.acc_bits)
                y = requantize(acc, ly.matrix.weight_format.frac, cfg.act_format)
                if ly.relu:
                    y = np.maximum(y, 0)
                first = oy % (1 << ly.pool) == 0 and ox % (1 << ly.pool) == 0
                py, px = oy >> ly.pool, ox >> ly.pool
                for r in range(ly.rows):
                    a = ((py * ly.out_shape[2] + px) * groups(ly.rows, g) + r // g) * g + r % g
                    out[a] = y[r] if first else max(out[a], y[r])
        buf = out
    return from_fm(buf, image.output_shape, g)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_emulated_dataflow_equals_golden(name):
    cfg = CnnConfig(**CONFIGS[name])
    rng = np.random.default_rng(7)
    layers = [QConv2d(random_matrix(rng, cfg, 7, 3 * 9, 0.5, scale=0.3), 3, 3, 2, 1, True),
              QMaxPool2d(),
              QConv2d(random_matrix(rng, cfg, 5, 7 * 1, 0.7, scale=0.3), 7, 1, 1, 1, False),
              QFlatten(),
              QLinear(random_matrix(rng, cfg, 6, 5 * 4 * 5, 0.5, scale=0.3), False)]
    model = model_for(cfg, layers, (3, 9, 11))
    image = build_image(cfg, model)
    golden = GoldenModel(model)
    for density in (0.0, 0.4, 1.0):
        x = random_input(rng, cfg, (3, 9, 11), density)
        got = emulate(cfg, image, x).reshape(-1)
        assert np.array_equal(got, golden.forward_int(x[None])[0].reshape(-1))


def test_hw_columns_order():
    cfg = CnnConfig(**CONFIGS["n3_g4"])
    rng = np.random.default_rng(0)
    model = conv_model(rng, cfg, (6, 5, 5), 3, 1, 1, 4)
    ly = build_image(cfg, model).layers[0]
    cols = hw_columns(ly, 4)
    # golden column c*9 + ky*3 + kx -> ((ky*3 + kx) * 2 + c // 4) * 4 + c % 4
    assert cols[5 * 9 + 1 * 3 + 2] == ((1 * 3 + 2) * 2 + 1) * 4 + 1
    assert len(set(cols.tolist())) == len(cols)


def test_fm_layout_roundtrip():
    x = np.arange(5 * 3 * 2).reshape(5, 3, 2)
    flat = to_fm(x, 4)
    assert np.array_equal(from_fm(flat, (5, 3, 2), 4), x)
    assert np.array_equal(flat[input_addresses((5, 3, 2), 4)], x.reshape(-1))


def test_mac_cycles_equal_spmv_model_for_full_words():
    """Words full of non-zero activations: the window generator broadcasts one per cycle from
    cycle 1, exactly the SpMV broadcaster, so the MAC phase equals spmv_cycles."""
    cfg = CnnConfig(**CONFIGS["n3_g4"])
    rng = np.random.default_rng(3)
    for fifo in (1, 2, 8):
        model = conv_model(rng, cfg, (8, 4, 4), 3, 1, 0, 11, density=0.6)
        image = build_image(cfg, model)
        ly, enc = image.layers[0], image.matrices[0]
        timing = CnnTiming(fifo_depth=fifo)
        x = np.ones((8, 4, 4), np.int64)
        for n_words, pos, cols in layer_words(ly, x, cfg.fm_lanes):
            got = mac_cycles(enc.column_lengths(), n_words, pos, cols, timing)
            ref = spmv_cycles(enc, cols, Timing(fifo, 1, 1, 3, timing.pop_interval))
            assert got.cycles == ref.cycles and got.ideal == ref.ideal


def test_mac_cycles_zero_words_cost_one_cycle():
    col_len = np.ones((2, 8), np.int64)
    timing = CnnTiming()
    assert mac_cycles(col_len, 0, [], [], timing).cycles == 0
    assert mac_cycles(col_len, 5, [], [], timing).cycles == 6
    # One push from word 3 of 5: data of word 3 at cycle 4, push 4, pop 5, entry 6, +3.
    assert mac_cycles(col_len, 5, [3], [2], timing).cycles == 10


def test_config_errors():
    base = dict(CONFIGS["n3_g4"])
    with pytest.raises(ValueError, match=r"`fm_lanes` must be a power of two, not 3"):
        CnnConfig(**{**base, "fm_lanes": 3})
    with pytest.raises(ValueError, match=r"`n_pe` must be a positive integer, not 0"):
        CnnConfig(**{**base, "n_pe": 0})
    with pytest.raises(ValueError, match=r"`memory` must be 'bram' or 'spram'"):
        CnnConfig(**{**base, "memory": "dram"})
    from hdl.cnn import CnnEngine
    with pytest.raises(TypeError, match=r"`config` must be a host.cnn_image.CnnConfig"):
        CnnEngine({"n_pe": 3})


@pytest.mark.parametrize("override, message", [
    ({"fm_words": 40}, (r"layer 0 \(conv 3->6 3x3\): the input feature map 3x9x9 needs 81 "
                       r"words of 4 activations, the feature-map buffer holds `fm_words` = 40")),
    ({"max_entries_per_pe": 8}, (r"layer 0 \(conv 3->6 3x3\): the entry memory needs \d+ "
                                r"entries per PE up to this layer, the engine holds "
                                r"`max_entries_per_pe` = 8")),
    ({"max_pointers": 100}, r"layer 2 \(conv 6->6 3x3\): the pointer memory needs \d+ slots"),
    ({"max_bias": 10}, (r"layer 2 \(conv 6->6 3x3\): the bias memory needs 12 words up to "
                       r"this layer, the engine holds `max_bias` = 10")),
    ({"max_layers": 1}, (r"2 conv/linear layers, the engine's descriptor table holds "
                        r"`max_layers` = 1")),
    ({"max_rows": 5}, (r"layer 0 \(conv 3->6 3x3\): output channels 6 exceeds the engine's "
                      r"`max_rows` = 5")),
    ({"max_pool": 0}, (r"layer 1 \(maxpool2d\): layer 0 \(conv 3->6 3x3\) would pool 2x2, the "
                      r"engine pools at most 1x1 \(`max_pool` = 0\)")),
    ({"max_stride": 1}, (r"layer 2 \(conv 6->6 3x3\): stride 2 exceeds the engine's "
                        r"`max_stride` = 1")),
])
def test_image_errors_name_layer_and_memory(override, message):
    cfg = CnnConfig(**{**CONFIGS["n3_g4"], **override})
    rng = np.random.default_rng(1)
    ref = CnnConfig(**CONFIGS["n3_g4"])
    layers = [QConv2d(random_matrix(rng, ref, 6, 27, 0.5), 3, 3, 1, 1, True), QMaxPool2d(),
              QConv2d(random_matrix(rng, ref, 6, 54, 0.5), 6, 3, 2, 1, True)]
    with pytest.raises(ValueError, match=message):
        build_image(cfg, model_for(ref, layers, (3, 9, 9)))


def test_unsupported_layer():
    cfg = CnnConfig(**CONFIGS["n3_g4"])
    rng = np.random.default_rng(2)
    lstm = QLSTM(random_matrix(rng, cfg, 8, 6, 0.5), 4, 2)
    with pytest.raises(ValueError, match=r"layer 0 \(lstm\) is not supported by the CNN "
                                         r"engine"):
        build_image(cfg, model_for(cfg, [lstm], (3, 4)))


def test_for_model_fits_digits():
    from test_cnn import digits_cnn
    _, model = digits_cnn()
    cfg = CnnConfig.for_model(model)
    image = build_image(cfg, model)
    assert [ly.kind for ly in image.layers] == ["conv", "conv", "linear"]
    assert [ly.pool for ly in image.layers] == [1, 2, 0]
    assert image.output_shape == (10, 1, 1)


def test_for_model_kernel_larger_than_map():
    """A 5x5 kernel with padding 2 on a 3x3 map: the sized engine holds the kernel."""
    ref = CnnConfig(**CONFIGS["n3_g4"])
    model = conv_model(np.random.default_rng(4), ref, (2, 3, 3), 5, 1, 2, 4)
    cfg = CnnConfig.for_model(model, fm_lanes=4)
    assert cfg.max_dim == 5
    build_image(cfg, model)
