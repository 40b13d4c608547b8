"""``.spn`` package files: round trips and refusal of every kind of bad file."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from host.compressed import CompressedModel, QFlatten, QLinear, QLSTM
from host.container import pack_container, unpack_container
from host.encoding import encode
from host.errors import PackageError
from host.fixedpoint import Format, quantize
from host.golden import GoldenModel
from host.package import load_package, save_package
from host.compressed import SparseMatrix

ACT = Format(16, 10)


def small_model(seed=0, n_pe=3):
    rng = np.random.default_rng(seed)

    def matrix(rows, cols):
        codebook = np.zeros(16, dtype=np.int64)
        codebook[1:] = quantize(rng.uniform(-1, 1, 15), Format(16, 13))
        idx = (rng.random((rows, cols)) < 0.3) * rng.integers(1, 16, (rows, cols))
        idx[:, 0] = 0
        idx[0, 1] = 0
        idx[-1, 1] = 5   # a long zero run: padding entries
        bias = quantize(rng.uniform(-0.5, 0.5, rows), Format(32, 23))
        return SparseMatrix(encode(idx, n_pe), codebook, Format(16, 13), bias)

    layers = [QLSTM(matrix(4 * 6, 5 + 6), 5, 6), QLinear(matrix(70, 6), relu=True),
              QFlatten(), QLinear(matrix(4, 70))]
    return CompressedModel("small", (7, 5), layers, n_pe, ACT, info={"note": "test"})


def test_round_trip_is_bit_exact(tmp_path):
    model = small_model()
    path = tmp_path / "m.spn"
    size = save_package(model, path)
    assert size == path.stat().st_size
    loaded = load_package(path)
    for (_, a), (_, b) in zip(model.matrices(), loaded.matrices()):
        assert all(np.array_equal(x, y) for x, y in zip(a.encoded.entries, b.encoded.entries))
        assert all(np.array_equal(x, y) for x, y in zip(a.encoded.col_ptr, b.encoded.col_ptr))
        assert np.array_equal(a.codebook, b.codebook) and np.array_equal(a.bias, b.bias)
    x = quantize(np.random.default_rng(1).uniform(-1, 1, (9, 7, 5)), ACT)
    assert np.array_equal(GoldenModel(model).forward_int(x), GoldenModel(loaded).forward_int(x))
    assert loaded.info == {"note": "test"}


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("pkg") / "good.spn"
    save_package(small_model(), path)
    return path.read_bytes()


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_flipped_byte_is_refused(tmp_path_factory, good_bytes, data):
    position = data.draw(st.integers(0, len(good_bytes) - 1))
    bit = data.draw(st.integers(0, 7))
    damaged = bytearray(good_bytes)
    damaged[position] ^= 1 << bit
    path = tmp_path_factory.mktemp("flip") / "bad.spn"
    path.write_bytes(bytes(damaged))
    with pytest.raises(PackageError, match="bad.spn"):
        load_package(path)


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.3, 0.5, 0.99])
def test_truncated_file_is_refused(tmp_path, good_bytes, fraction):
    path = tmp_path / "cut.spn"
    path.write_bytes(good_bytes[:int(len(good_bytes) * fraction)])
    with pytest.raises(PackageError):
        load_package(path)


def test_foreign_and_missing_files_are_refused(tmp_path):
    npz = tmp_path / "model.npz"
    np.savez(npz, a=np.zeros(3))
    with pytest.raises(PackageError, match="not a spine"):
        load_package(npz)
    with pytest.raises(PackageError, match="missing.spn"):
        load_package(tmp_path / "missing.spn")


def rewrite(good_bytes, tmp_path, change):
    """A valid container (checksum right) whose model content was changed by ``change``."""
    meta, arrays = unpack_container(good_bytes)
    change(meta, arrays)
    path = tmp_path / "edited.spn"
    path.write_bytes(pack_container(meta, arrays, kind="spine-model"))
    return path


@pytest.mark.parametrize("change, message", [
    (lambda m, a: m.update(schema=99), "upgrade spine"),
    (lambda m, a: m.update(n_pe=0), "n_pe"),
    (lambda m, a: m["layers"][0].update(kind="gru"), "unknown layer kind 'gru'"),
    (lambda m, a: m["layers"][0].update(hidden=7), "does not fit an LSTM"),
    (lambda m, a: a.update({"L0.codebook": np.ones(16, np.int32)}), "entry 0 must be 0"),
    (lambda m, a: a.update({"tables.tanh": a["tables.tanh"] + 1}), "activation table"),
    (lambda m, a: a.pop("L1.bias"), "'L1.bias' is missing"),
    (lambda m, a: a["L1.col_counts"].__setitem__((0, 1), a["L1.col_counts"][0, 1] + 1),
     "add up to"),
    (lambda m, a: m["layers"][3]["matrix"].update(cols=71), "shape"),
])
def test_inconsistent_content_is_refused(tmp_path, good_bytes, change, message):
    path = rewrite(good_bytes, tmp_path, change)
    with pytest.raises(PackageError, match=message):
        load_package(path)


def test_zero_runs_past_the_matrix_are_refused(tmp_path, good_bytes):
    def grow_runs(meta, arrays):
        # Make every zero run of layer 1's entries the longest: rows overflow the matrix.
        lengths = arrays["L1.run_lengths"]
        assert json.dumps(meta)  # still valid JSON
        new = np.zeros_like(lengths)
        new[15] = 1
        arrays["L1.run_lengths"] = new
        total = meta["layers"][1]["matrix"]["entries"]
        arrays["L1.run_code"] = np.zeros((total + 7) // 8, np.uint8)
    path = rewrite(good_bytes, tmp_path, grow_runs)
    with pytest.raises(PackageError, match="zero runs reach past"):
        load_package(path)


def projected_model(seed=3, n_pe=3):
    """Two stacked LSTMs, the first with a projection (P = 4), then a classifier."""
    rng = np.random.default_rng(seed)

    def matrix(rows, cols, bias=True):
        codebook = np.zeros(16, dtype=np.int64)
        codebook[1:] = quantize(rng.uniform(-1, 1, 15), Format(16, 13))
        idx = (rng.random((rows, cols)) < 0.4) * rng.integers(1, 16, (rows, cols))
        b = quantize(rng.uniform(-0.5, 0.5, rows), Format(32, 23)) if bias else \
            np.zeros(rows, np.int64)
        return SparseMatrix(encode(idx, n_pe), codebook, Format(16, 13), b)

    layers = [QLSTM(matrix(4 * 6, 5 + 4), 5, 6, True, matrix(4, 6, bias=False)),
              QLSTM(matrix(4 * 3, 4 + 3), 4, 3), QLinear(matrix(2, 3))]
    return CompressedModel("proj", (7, 5), layers, n_pe, ACT)


def test_projection_round_trip_schema_2(tmp_path):
    """A projected LSTM is written as schema 2 and reads back bit-exactly; a model without a
    projection stays schema 1 (older spines read it)."""
    from host.container import read_container
    model = projected_model()
    save_package(model, tmp_path / "p.spn")
    assert read_container(tmp_path / "p.spn", expected_kind="spine-model")[0]["schema"] == 2
    loaded = load_package(tmp_path / "p.spn")
    assert loaded.layers[0].proj_size == 4 and loaded.layers[1].projection is None
    assert len(loaded.matrices()) == 4
    x = quantize(np.random.default_rng(2).uniform(-1, 1, (5, 7, 5)), ACT)
    assert np.array_equal(GoldenModel(model).forward_int(x), GoldenModel(loaded).forward_int(x))
    save_package(small_model(), tmp_path / "s.spn")
    assert read_container(tmp_path / "s.spn", expected_kind="spine-model")[0]["schema"] == 1


def test_projection_in_schema_1_or_wrong_shape_is_refused(tmp_path):
    from host.container import read_container, write_container
    save_package(projected_model(), tmp_path / "p.spn")
    meta, arrays = read_container(tmp_path / "p.spn", expected_kind="spine-model")
    bad = dict(meta, schema=1)
    write_container(tmp_path / "b.spn", bad, arrays, kind="spine-model")
    with pytest.raises(PackageError, match="projection needs model schema 2"):
        load_package(tmp_path / "b.spn")
    bad = json.loads(json.dumps(meta))
    bad["layers"][0]["proj_size"] = 5
    write_container(tmp_path / "c.spn", bad, arrays, kind="spine-model")
    with pytest.raises(PackageError, match="projection 4x6 is not proj_size x hidden = 5x6"):
        load_package(tmp_path / "c.spn")


def test_compress_stacked_projected_lstm_round_trip(tmp_path):
    """The pipeline compresses every matrix of a stacked LSTM with projection (gate matrices
    and projections, same density); the package round-trips; the golden model follows the
    float model (its predictions agree on most inputs)."""
    from host.floatmodel import LSTM, FloatModel, Linear
    from host.pipeline import CompressConfig, compress_model
    rng = np.random.default_rng(4)
    h, p = 8, 3
    layers = [LSTM(rng.normal(0, 0.5, (4 * h, 4)), rng.normal(0, 0.5, (4 * h, p)),
                   rng.normal(0, 0.2, 4 * h), rng.normal(0, 0.2, 4 * h), True,
                   rng.normal(0, 0.5, (p, h))),
              LSTM(rng.normal(0, 0.5, (4 * h, p)), rng.normal(0, 0.5, (4 * h, h)),
                   rng.normal(0, 0.2, 4 * h), rng.normal(0, 0.2, 4 * h)),
              Linear(rng.normal(0, 1, (3, h)), rng.normal(0, 0.1, 3))]
    fm = FloatModel("pstack", (6, 4), layers)
    x = rng.normal(0, 1, (64, 6, 4))
    result = compress_model(fm, CompressConfig(n_pe=3, density=0.8, bits=6), calib_x=x)
    model = result.model
    assert model.layers[0].proj_size == p and model.layers[0].projection.cols == h
    assert model.layers[1].projection is None
    assert [s.kind for s in result.layers] == ["lstm", "lstm proj", "lstm", "linear"]
    save_package(model, tmp_path / "m.spn")
    loaded = load_package(tmp_path / "m.spn")
    golden = GoldenModel(loaded)
    agree = np.mean(golden.predict(x) == np.argmax(fm.forward(x), axis=1))
    assert agree >= 0.8, agree
    with pytest.raises(ValueError, match="fine-tuning does not support LSTMs with a projection"):
        compress_model(fm, CompressConfig(n_pe=3, finetune_epochs=1), calib_x=x,
                       train=(x, np.zeros(64, int)))


def test_product_shift_round_trip_schema_3_and_old_files_load_as_zero(tmp_path):
    """p > 0 is written as schema 3 and reads back (golden bit-exact); p = 0 stays schema 1
    without the field; a file without the field loads as p = 0; p in an older schema or one
    larger than a layer's weight fraction bits is refused."""
    from dataclasses import replace

    from host.container import read_container, write_container
    model = replace(small_model(), product_shift=5)
    save_package(model, tmp_path / "p.spn")
    meta, arrays = read_container(tmp_path / "p.spn", expected_kind="spine-model")
    assert meta["schema"] == 3 and meta["product_shift"] == 5
    loaded = load_package(tmp_path / "p.spn")
    assert loaded.product_shift == 5
    x = quantize(np.random.default_rng(4).uniform(-1, 1, (6, 7, 5)), ACT)
    assert np.array_equal(GoldenModel(model).forward_int(x), GoldenModel(loaded).forward_int(x))
    assert not np.array_equal(GoldenModel(small_model()).forward_int(x),
                              GoldenModel(loaded).forward_int(x))
    save_package(small_model(), tmp_path / "z.spn")
    zmeta = read_container(tmp_path / "z.spn", expected_kind="spine-model")[0]
    assert zmeta["schema"] == 1 and "product_shift" not in zmeta
    assert load_package(tmp_path / "z.spn").product_shift == 0
    write_container(tmp_path / "b.spn", dict(meta, schema=2), arrays, kind="spine-model")
    with pytest.raises(PackageError, match="product shift needs model schema 3"):
        load_package(tmp_path / "b.spn")
    write_container(tmp_path / "c.spn", dict(meta, product_shift=14), arrays,
                    kind="spine-model")
    with pytest.raises(PackageError, match="product shift 14 exceeds the 13 fraction bits"):
        load_package(tmp_path / "c.spn")
