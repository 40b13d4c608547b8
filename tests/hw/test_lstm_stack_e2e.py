"""Stacked LSTM packages with projection through the driver and the simulated board.

* ``test_stacked_package_identify_round_trip`` (fast, no simulation): the board builder sizes
  an LstmEngine for a 2-layer LSTMP package; IDENTIFY's fields give the driver back the
  engine's sizes (layers, projection); the driver's image fills the DESCRIPTOR region exactly.
* ``test_host_run_sim_stacked_projection`` (slow: one board build, ~1.5 min):
  ``python -m host.run --sim --check --state`` on that package, every output and every final
  state r_T (region STATE) equal to the golden model's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))     # fake_board

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


def stacked_package(tmp_path):
    """torch.nn.LSTM(5, 12, num_layers=2, proj_size=6) + Linear(6, 4), compressed for 4 PEs."""
    torch = pytest.importorskip("torch")
    from host.package import save_package
    from host.pipeline import CompressConfig, compress_model
    from host.torch_import import from_torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(5, 12, num_layers=2, proj_size=6, batch_first=True)
            self.head = torch.nn.Linear(6, 4)

        def spine_layers(self):
            return [self.rnn, self.head]

    torch.manual_seed(0)
    model = from_torch(Net().double(), (7, 5), name="stack-proj")
    x = np.random.default_rng(0).normal(0, 1, (40, 7, 5))
    compressed = compress_model(model, CompressConfig(n_pe=4, density=0.5), calib_x=x).model
    path = tmp_path / "stack.spn"
    save_package(compressed, path)
    np.save(tmp_path / "x.npy", x[:10])
    return compressed, path, tmp_path / "x.npy"


def test_stacked_package_identify_round_trip(tmp_path):
    from hdl import build
    from fake_board import backend_info

    from host.driver import _lstm_layers, _lstm_limits, _lstm_params, model_mismatches
    from host.lstm_image import build_image
    from host.protocol import RegionId
    model, _, _ = stacked_package(tmp_path)
    assert [layer.proj_size for layer in model.layers[:2]] == [6, 6]
    params = build.engine_for_model(model)
    assert (params["layers_max"], params["proj_max"], params["hidden_max"],
            params["input_max"]) == (2, 6, 12, 6)
    backend = build.make_backend(params)
    info = backend_info(backend)
    assert info.hash_ok
    limits = _lstm_limits(info)
    assert (limits["layers_max"], limits["proj_max"], limits["hidden_max"],
            limits["input_max"], limits["steps_max"]) == (2, 6, 12, 6, 7)
    assert model_mismatches(model, info) == []
    engine = _lstm_params(info, model)
    assert engine.descriptor_words == info.region(RegionId.DESCRIPTOR).depth == 64
    image = build_image(engine, *_lstm_layers(model))
    assert max(addr for addr, _ in image.descriptors) < engine.descriptor_words
    # a 3-layer package does not fit this 2-layer engine: a clear message
    from host.compressed import CompressedModel
    three = CompressedModel("three", model.input_shape,
                            [model.layers[0], model.layers[0], model.layers[1],
                             model.layers[2]], model.n_pe, model.act_format, model.acc_bits)
    three.layers[1] = type(model.layers[1])(model.layers[1].matrix, 6, 12, True,
                                            model.layers[1].projection)
    problems = model_mismatches(three, info)
    assert "LSTM layers: model 3, engine at most 2" in problems


@pytest.mark.slow
def test_host_run_sim_stacked_projection(tmp_path):
    _, path, x_path = stacked_package(tmp_path)
    h_path = tmp_path / "h.npy"
    proc = subprocess.run([sys.executable, "-m", "host.run", "--sim", "--model", str(path),
                           "--input", str(x_path), "--check", "--json", "--state",
                           str(h_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["inferences"] == 10 and report["mismatches"] == 0
    # r_T of the second (projected) layer, read from region STATE, equals the golden model's
    assert report["state_mismatches"] == 0
    assert np.load(h_path).shape == (10, 6)
