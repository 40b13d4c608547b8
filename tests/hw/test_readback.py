"""The engines' read-back port (hdl/readback.py) in Amaranth's simulator: load an image through
the loader port, read every loaded word back through ``rb`` and compare with the image (as
:func:`host.memory_map.descriptor_readback` says the descriptors read).  Covers the SpMV engine
with inferred (BRAM) and single-port (SPRAM) entry memories and the LSTM engine; the bit-level
shell tests (test_shell.py) cover the same through the UART on Verilator."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from readback_sim import load_and_read_back

from host.fixedpoint import Format
from host.memory_map import Region, descriptor_readback

WORD_MASK = (1 << 32) - 1


def _expected_words(writes, n_pe, matrix_layers, signed_widths):
    """(region, pe, addr) -> the 32-bit word a read returns, from the loader writes."""
    want = {}
    for region, addr, value, lanes in zip(writes["region"], writes["addr"], writes["data"],
                                          writes["lanes"]):
        region, addr = int(region), int(addr)
        if region in (Region.ENTRY, Region.POINTER):
            for p in range(n_pe):
                want[(region, p, addr)] = int(lanes[p])
        elif region in signed_widths:
            width = signed_widths[region]
            v = int(value) & ((1 << width) - 1)
            v -= (v >> (width - 1)) << width                   # sign-extend
            want[(region, 0, addr)] = v & WORD_MASK
        elif region == Region.DESCRIPTOR:
            want[(region, 0, addr)] = descriptor_readback(addr, int(value), matrix_layers)
    return want


def _wire_masks(engine):
    """Region -> mask of the bits a read defines (the region's wire word, hdl.readback)."""
    from hdl.readback import wire_bits
    widths = {Region.ENTRY: engine.entry_bits, Region.POINTER: engine.ptr_bits,
              Region.CODEBOOK: engine.weight_width, Region.BIAS: engine.acc_bits,
              Region.DESCRIPTOR: 32}
    return {region: (1 << wire_bits(width)) - 1 for region, width in widths.items()}


def _run(engine, writes, want):
    masks = _wire_masks(engine)
    got = load_and_read_back(engine, engine.n_pe, writes, want, masks)
    bad = [(k, got[k], v) for k, v in want.items() if got[k] != v & masks[k[0]]]
    assert not bad, f"{len(bad)} of {len(want)} words differ, first {bad[:5]}"
    return got


@pytest.mark.parametrize("memory", ["bram", "spram"])
def test_spmv_readback(memory):
    from hdl.spmv import SpmvEngine
    from host.spmv_image import build_image, image_writes, random_layer

    rng = np.random.default_rng(3)
    n_pe = 3
    engine = SpmvEngine(n_pe, max_rows=16, max_cols=16, max_entries_per_pe=80,
                        max_layers=2, memory=memory)
    layers = [(random_layer(rng, 13, 16, 0.4, n_pe), True),
              (random_layer(rng, 9, 13, 0.5, n_pe), False)]
    writes = image_writes(engine, build_image(engine, layers))
    want = _expected_words(writes, n_pe, engine.max_layers,
                           {Region.CODEBOOK: engine.weight_width, Region.BIAS: engine.acc_bits})
    got = _run(engine, writes, want)
    kinds = {region for region, _, _ in got}
    assert kinds == {0, 1, 2, 3, 4}
    # The test can fail: COLS reads 0 although 16 was written, negative weights sign-extend.
    assert got[(Region.DESCRIPTOR, 0, 1)] == 0
    assert any(v >> 15 for (region, _, _), v in got.items() if region == Region.CODEBOOK)


def test_lstm_readback():
    from hdl.lstm import LstmEngine
    from host.lstm_image import build_image, image_writes, random_lstm, sequence_writes
    from host.memory_map import LstmField

    rng = np.random.default_rng(4)
    n_pe = 2
    engine = LstmEngine(n_pe, hidden_max=6, input_max=4, steps_max=3, classes_max=3,
                        act_format=Format(16, 11), max_entries_per_pe=64)
    lstm, cls = random_lstm(rng, 4, 5, 0.4, n_pe, classes=3)
    writes = image_writes(engine, build_image(engine, lstm, cls))
    steps = sequence_writes(engine, rng.integers(-500, 500, (3, 4)))
    keep = steps["region"] == Region.DESCRIPTOR            # STEPS, not the x list
    writes = {k: np.concatenate([writes[k], steps[k][keep]]) for k in writes}
    want = _expected_words(writes, n_pe, 2,
                           {Region.CODEBOOK: engine.weight_width, Region.BIAS: engine.acc_bits})
    got = _run(engine, writes, want)
    assert got[(Region.DESCRIPTOR, 0, (2 << 3) | LstmField.STEPS)] == 3
    assert got[(Region.DESCRIPTOR, 0, (2 << 3) | LstmField.INPUT)] == 4
    assert got[(Region.DESCRIPTOR, 0, (0 << 3) | 1)] == 0
