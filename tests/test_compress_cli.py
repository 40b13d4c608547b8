"""``python -m host.compress``: the targets on the bundled models, outputs and bad input."""

import json

import numpy as np
import pytest

from host.compress import main
from host.floatmodel import FloatModel, Linear, ReLU, save_npz
from host.golden import GoldenModel
from host.modelsource import resolve_model
from host.package import load_package


def run_json(capsys, *args):
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", ["digits-lstm", "digits-mlp", "digits-cnn"])
def test_bundled_models_meet_the_targets(capsys, tmp_path, name):
    """Issue target: >= 10x (pruning + 4-bit sharing, before Huffman), top-1 within 1.5 points
    of the float model, with 8 PEs; the written package predicts exactly as the report says."""
    out = tmp_path / f"{name}.spn"
    report = run_json(capsys, name, "--pes", "8", "-o", str(out))
    assert report["compression_ratio"] >= 10
    assert report["accuracy_float"] - report["accuracy_compressed"] <= 0.015
    assert report["compression_ratio_huffman"] > report["compression_ratio"]
    for layer in report["layers"]:
        assert layer["balance_after"]["max"] - min(layer["balance_after"]["per_pe"]) <= 1
    source = resolve_model(name)
    predictions = GoldenModel(load_package(out)).predict(source.test[0])
    assert np.mean(predictions == source.test[1]) == pytest.approx(
        report["accuracy_compressed"], abs=1e-12)


def test_text_report_and_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "mlp.png"
    assert main(["digits-mlp", "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert "compression ratio" in text and "accuracy" in text and "no package written" in text
    assert plot.stat().st_size > 10_000


def test_user_npz_model_with_data(capsys, tmp_path):
    rng = np.random.default_rng(0)
    model = FloatModel("mine", (12,), [Linear(rng.standard_normal((20, 12)), np.zeros(20)),
                                       ReLU(), Linear(rng.standard_normal((3, 20)), np.zeros(3))])
    save_npz(model, tmp_path / "mine.npz")
    x = rng.uniform(-1, 1, (40, 12))
    np.savez(tmp_path / "data.npz", x=x, y=np.argmax(model.forward(x), axis=1))
    report = run_json(capsys, str(tmp_path / "mine.npz"), "--data", str(tmp_path / "data.npz"),
                      "--density", "0.6", "--pes", "3", "--bits", "5")
    assert report["accuracy_float"] == 1.0
    assert report["n_pe"] == 3 and report["config"]["bits"] == 5
    assert [layer["kind"] for layer in report["layers"]] == ["linear", "linear"]


@pytest.mark.parametrize("args, message", [
    (["no-such-model"], "neither a bundled example"),
    (["digits-mlp", "--density", "0"], "density must be in (0, 1]"),
    (["digits-mlp", "--bits", "9"], "must be from 1 to 8"),
    (["digits-mlp", "--layer-density", "1=0.5"], "not a weight layer"),
    (["digits-mlp", "--layer-density", "x"], "expected LAYER=DENSITY"),
])
def test_bad_arguments_are_explained(capsys, args, message):
    try:
        code = main(args)
    except SystemExit as exit_:      # argparse rejects the argument itself
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_corrupt_model_file_is_refused(capsys, tmp_path):
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert "broken.npz" in err and "not a readable NumPy .npz" in err


def test_spn_given_as_model_is_refused(capsys, tmp_path):
    path = tmp_path / "m.spn"
    path.write_bytes(b"x")
    assert main([str(path)]) == 2
    assert "already a compressed spine package" in capsys.readouterr().err
