"""The shell with the CNN engine (hdl.top.CnnBackend) under Verilator + cocotb, bit level.

A small CNN engine (2 PEs, 2 lanes per feature-map word) with a 3-channel input, so the
adapter's (H, W, C) input walk crosses channel groups and a partial last group.  One simulator
run: IDENTIFY (ROM bytes, hash, extension words, the driver's CnnConfig rebuilt from them),
then the driver's load image written through WRITE frames, every block read back (READ and
CHECKSUM, corrupted words found), and INFER bit-exact with the golden model and with the cycle
model (host.cnn_cycles) on every case.  The cocotb cases are in tests/hw/cocotb_shell.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

import cocotb_shell  # noqa: E402
from test_cnn import random_input, random_matrix  # noqa: E402
from test_shell import _blocks_data  # noqa: E402

from hdl import simulate  # noqa: E402

COCOTB = HERE / "cocotb_shell.py"
TOP = "spine_shell_cnn"
INPUT_SHAPE = (3, 5, 4)


def _cnn_case(seed=9):
    from hdl.cnn import CnnEngine
    from hdl.top import CnnBackend, SpineCore
    from host.cnn_cycles import expected_runs, model_for
    from host.cnn_image import CnnConfig, build_image
    from host.compressed import QConv2d, QFlatten, QLinear, QMaxPool2d
    from host.driver import cnn_input_order
    from host.protocol import engine_extension

    cfg = CnnConfig(n_pe=2, max_rows=8, max_entries_per_pe=64, max_pointers=128, max_bias=16,
                    fm_words=64, max_layers=2, fm_lanes=2, max_dim=6, max_pad=1, max_stride=2,
                    max_pool=1, fifo_depth=2)
    engine = CnnEngine(cfg)
    rng = np.random.default_rng(seed)
    layers = [QConv2d(random_matrix(rng, cfg, 5, 3 * 9, 0.5), 3, 3, 2, 1, True), QMaxPool2d(),
              QFlatten(), QLinear(random_matrix(rng, cfg, 4, 5, 0.8), False)]
    model = model_for(cfg, layers, INPUT_SHAPE, name="shell-cnn")
    image = build_image(cfg, model)
    backend = CnnBackend(engine)
    core = SpineCore(backend, clock_hz=cocotb_shell.CLOCK_HZ, baud=cocotb_shell.BAUD,
                     divisor=cocotb_shell.DIVISOR)
    config = json.dumps(cfg.to_dict(), sort_keys=True).encode()
    data = {"n_pe": np.int64(cfg.n_pe), "engine": np.int64(3),
            "identity": np.frombuffer(core.identity_bytes, dtype=np.uint8),
            "extension": np.array(engine_extension(backend.params), dtype=np.int64),
            "config": np.frombuffer(config, dtype=np.uint8), **_blocks_data(core, model)}
    cases = 3
    xs = np.stack([random_input(rng, cfg, INPUT_SHAPE, 0.6) for _ in range(cases)])
    runs = expected_runs(cfg, image, model, xs, engine.timing())
    for case, (x, run) in enumerate(zip(xs, runs)):
        # INFER sends the map in (H, W, C) order; the last layer is linear, so the answer's
        # words are its output channels in order.
        data[f"x{case}"] = cnn_input_order(x, INPUT_SHAPE)
        data[f"expected{case}"], data[f"cycles{case}"] = run.outputs, np.int64(run.cycles)
    data["n_cases"] = np.int64(cases)
    return core, data


def test_shell_with_cnn_engine(tmp_path):
    core, data = _cnn_case()
    verilog = simulate.generate_verilog(core, TOP)
    build = simulate.build_simulation(verilog, TOP)
    tests = ["engine_ident", "engine_load_readback_infer"]
    results = simulate.run_cocotb(build, TOP, COCOTB, test_dir=tmp_path, seed=6,
                                  testcase=tests, data=data)
    assert sorted(results.passed) == sorted(tests)
