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


def test_acc_bits_16_chooses_the_smallest_product_shift(capsys, tmp_path):
    """``--acc-bits 16``: the chosen p is the smallest whose accumulators (bias included) hold
    the calibration data with the stated margin, the package stores it, p - 1 would not fit,
    and the test set does not overflow either (digits-mlp)."""
    from dataclasses import replace

    from host.pipeline import OVERFLOW_MARGIN, CompressConfig, _peak_accumulator, compress_model
    out = tmp_path / "mlp16.spn"
    report = run_json(capsys, "digits-mlp", "--acc-bits", "16", "-o", str(out))
    p = report["product_shift"]
    choice = report["shift_choice"]
    assert choice["auto"] and choice["product_shift"] == p > 0
    assert choice["peak"] * OVERFLOW_MARGIN <= choice["limit"] == 2**15 - 1
    assert report["accumulator_overflows"] == 0
    assert report["accuracy_float"] - report["accuracy_compressed"] <= 0.015
    model = load_package(out)
    assert model.acc_bits == 16 and model.product_shift == p
    source = resolve_model("digits-mlp")
    smaller = compress_model(source.model, CompressConfig(
        acc_bits=16, product_shift=p - 1, density=source.defaults["density"]),
        calib_x=source.train[0])
    assert smaller.shift.peak * OVERFLOW_MARGIN > 2**15 - 1
    assert _peak_accumulator(replace(model), source.train[0]) == choice["peak"]
    assert main(["digits-mlp", "--acc-bits", "16"]) == 0
    assert f"product shift {p} (chosen from the calibration data): overflow margin" \
        in capsys.readouterr().out


def test_product_shift_override_and_errors(capsys):
    report = run_json(capsys, "digits-mlp", "--acc-bits", "16", "--product-shift", "10")
    assert report["product_shift"] == 10 and not report["shift_choice"]["auto"]
    assert report["accumulator_overflows"] > 0          # too small a shift: overflows counted
    assert run_json(capsys, "digits-mlp")["product_shift"] == 0
    assert main(["digits-mlp", "--acc-bits", "16", "--product-shift", "15"]) == 2
    assert "--product-shift 15 exceeds the 14 fraction bits" in capsys.readouterr().err


def test_acc_bits_16_lowers_calibrated_act_frac_when_the_shift_cannot_reach():
    """digits-cnn's pre-ReLU sums need more integer bits than its calibrated activations
    have: with the largest shift (its weights' 14 fraction bits) they still overflow, so the
    calibrated activation fraction is lowered; a given --act-frac is an error instead."""
    from host.errors import FitError
    from host.pipeline import CompressConfig, compress_model
    source = resolve_model("digits-cnn")
    wide = compress_model(source.model, CompressConfig(), calib_x=source.train[0])
    narrow = compress_model(source.model, CompressConfig(acc_bits=16), calib_x=source.train[0])
    lowered = narrow.shift.act_frac_lowered
    assert lowered >= 1
    assert narrow.model.act_format.frac == wide.model.act_format.frac - lowered
    assert narrow.shift.peak * 1.25 <= 2**15 - 1
    with pytest.raises(FitError, match="lower --act-frac by 1 or widen --acc-bits"):
        compress_model(source.model, CompressConfig(
            acc_bits=16, act_frac=wide.model.act_format.frac), calib_x=source.train[0])
