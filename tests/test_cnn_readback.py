"""The CNN engine's read-back port (hdl/readback.py wired into hdl/cnn.py) in Amaranth's
simulator: load a two-layer image, read every loaded word back through ``rb`` and compare
with the image (descriptor fields: the bits the engine keeps, BASE0 sign-extended)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from amaranth.hdl import Shape

sys.path.insert(0, str(Path(__file__).resolve().parent / "hw"))

from readback_sim import load_and_read_back
from test_cnn import random_matrix

from hdl.cnn import CnnEngine
from hdl.readback import wire_bits
from host.cnn_cycles import model_for
from host.cnn_image import FIELD_BITS, CnnConfig, Field, Region, build_image, image_writes
from host.compressed import QConv2d, QFlatten, QLinear, QMaxPool2d

WORD = (1 << 32) - 1


def _signed(value, width):
    value &= (1 << width) - 1
    return value - ((value >> (width - 1)) << width)


def test_cnn_readback():
    cfg = CnnConfig(n_pe=2, max_rows=8, max_entries_per_pe=64, max_pointers=128, max_bias=16,
                    fm_words=64, max_layers=2, fm_lanes=2, max_dim=6, max_pad=1, max_stride=2,
                    max_pool=1, fifo_depth=2)
    engine = CnnEngine(cfg)
    rng = np.random.default_rng(5)
    layers = [QConv2d(random_matrix(rng, cfg, 5, 3 * 9, 0.5), 3, 3, 2, 1, True), QMaxPool2d(),
              QFlatten(), QLinear(random_matrix(rng, cfg, 4, 5 * 1 * 1, 0.8), False)]
    writes = image_writes(cfg, build_image(cfg, model_for(cfg, layers, (3, 5, 4))))
    members = engine.descriptor_layout.members
    widths = {Region.ENTRY: engine.entry_bits, Region.POINTER: engine.ptr_bits,
              Region.CODEBOOK: cfg.weight_width, Region.BIAS: cfg.acc_bits}
    want = {}
    for region, addr, value, lanes in zip(writes["region"], writes["addr"], writes["data"],
                                          writes["lanes"]):
        region, addr, value = Region(int(region)), int(addr), int(value)
        if region in (Region.ENTRY, Region.POINTER):
            for p in range(cfg.n_pe):
                want[(region, p, addr)] = int(lanes[p])
        elif region in widths:
            want[(region, 0, addr)] = _signed(value, widths[region]) & WORD
        else:
            shape = Shape.cast(members[engine.field_members[Field(addr & 31)]])
            v = _signed(value, shape.width) if shape.signed else value & ((1 << shape.width) - 1)
            want[(region, 0, addr)] = v & WORD
    masks = {r: (1 << wire_bits(w)) - 1 for r, w in widths.items()}
    masks[Region.DESCRIPTOR] = WORD
    got = load_and_read_back(engine, cfg.n_pe, writes, want, masks)
    bad = [(k, got[k], v & masks[k[0]]) for k, v in want.items() if got[k] != v & masks[k[0]]]
    assert not bad, f"{len(bad)} of {len(want)} words differ, first {bad[:5]}"
    assert {region for region, _, _ in got} == set(Region) - {Region.INPUT}
    # The test can fail: BASE0 of the padded conv is negative and reads back sign-extended.
    base0 = got[(Region.DESCRIPTOR, 0, (0 << FIELD_BITS) | Field.BASE0)]
    assert base0 >> 31 == 1
