"""The float model: its NumPy forward pass against PyTorch, the .npz round trip, bad files.

PyTorch (float64) is the independent reference for every layer kind; agreement is required to
1e-5 (float64 on both sides, so the actual differences are ~1e-15).
"""

import json
import zipfile

import numpy as np
import pytest

from host.errors import ModelError
from host.floatmodel import (
    LSTM,
    Conv2d,
    Flatten,
    FloatModel,
    Linear,
    MaxPool2d,
    ReLU,
    load_npz,
    save_npz,
    weight_matrix,
    with_weight_matrix,
)

TOL = 1e-5


def _rng(seed=0):
    return np.random.default_rng(seed)


def _lstm(rng, inputs, hidden, return_sequences=False):
    return LSTM(rng.normal(0, 0.4, (4 * hidden, inputs)), rng.normal(0, 0.4, (4 * hidden, hidden)),
                rng.normal(0, 0.2, 4 * hidden), rng.normal(0, 0.2, 4 * hidden),
                return_sequences=return_sequences)


def cnn_model(rng):
    return FloatModel("cnn", (2, 9, 7), [
        Conv2d(rng.normal(0, 0.3, (4, 2, 3, 3)), rng.normal(0, 0.1, 4), stride=1, padding=1),
        ReLU(),
        MaxPool2d(),
        Conv2d(rng.normal(0, 0.3, (5, 4, 2, 2)), rng.normal(0, 0.1, 5), stride=2, padding=1),
        ReLU(),
        Flatten(),
        Linear(rng.normal(0, 0.3, (3, 30)), rng.normal(0, 0.1, 3)),
    ])


def lstm_model(rng):
    return FloatModel("lstm", (6, 5), [
        _lstm(rng, 5, 7, return_sequences=True),
        _lstm(rng, 7, 4),
        Linear(rng.normal(0, 0.3, (3, 4)), rng.normal(0, 0.1, 3)),
    ])


# ---------------------------------------------------------------------------------------------
# Forward pass against PyTorch


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tf(torch):
    return torch.nn.functional


def _t(array):
    import torch
    return torch.from_numpy(np.asarray(array, dtype=np.float64))


def test_linear_matches_torch(tf):
    rng = _rng(1)
    layer = Linear(rng.normal(size=(7, 11)), rng.normal(size=7))
    x = rng.normal(size=(5, 11))
    want = tf.linear(_t(x), _t(layer.weight), _t(layer.bias)).numpy()
    np.testing.assert_allclose(layer.forward(x), want, atol=TOL, rtol=0)


@pytest.mark.parametrize(("kernel", "stride", "padding", "size"), [
    (3, 1, 1, (8, 8)), (3, 1, 0, (8, 8)), (3, 2, 1, (9, 7)), (2, 2, 0, (5, 6)),
    (1, 1, 0, (4, 4)), (5, 3, 2, (11, 10)),
])
def test_conv2d_matches_torch(tf, kernel, stride, padding, size):
    rng = _rng(kernel * 100 + stride * 10 + padding)
    layer = Conv2d(rng.normal(size=(4, 3, kernel, kernel)), rng.normal(size=4), stride=stride,
                   padding=padding)
    x = rng.normal(size=(2, 3, *size))
    want = tf.conv2d(_t(x), _t(layer.weight), _t(layer.bias), stride=stride,
                     padding=padding).numpy()
    got = layer.forward(x)
    assert got.shape == want.shape == (2, *layer.output_shape((3, *size)))
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_conv2d_weight_matrix_is_im2col_layout():
    rng = _rng(2)
    layer = Conv2d(rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4), padding=1)
    matrix = weight_matrix(layer)
    assert matrix.shape == (4, 27)
    # (c, ky, kx) column order: the same matrix rebuilt into a layer gives the same conv.
    again = with_weight_matrix(layer, matrix)
    x = rng.normal(size=(1, 3, 5, 5))
    np.testing.assert_array_equal(again.forward(x), layer.forward(x))
    np.testing.assert_array_equal(matrix[1, 9 + 3 * 2 + 1], layer.weight[1, 1, 2, 1])


@pytest.mark.parametrize("size", [(8, 8), (7, 5), (2, 3)])
def test_maxpool_relu_flatten_match_torch(torch, tf, size):
    rng = _rng(3)
    x = rng.normal(size=(3, 4, *size))
    np.testing.assert_array_equal(MaxPool2d().forward(x), tf.max_pool2d(_t(x), 2).numpy())
    np.testing.assert_array_equal(ReLU().forward(x), tf.relu(_t(x)).numpy())
    np.testing.assert_array_equal(Flatten().forward(x), torch.flatten(_t(x), 1).numpy())
    assert MaxPool2d().output_shape((4, *size)) == (4, size[0] // 2, size[1] // 2)


def _torch_lstm(torch, layer):
    """A float64 torch.nn.LSTM carrying the weights of one spine LSTM layer."""
    net = torch.nn.LSTM(layer.input_size, layer.hidden, batch_first=True).double()
    with torch.no_grad():
        net.weight_ih_l0.copy_(_t(layer.w_ih))
        net.weight_hh_l0.copy_(_t(layer.w_hh))
        net.bias_ih_l0.copy_(_t(layer.b_ih))
        net.bias_hh_l0.copy_(_t(layer.b_hh))
    return net


@pytest.mark.parametrize("return_sequences", [False, True])
def test_lstm_matches_torch(torch, return_sequences):
    rng = _rng(4)
    layer = _lstm(rng, 5, 6, return_sequences)
    x = rng.normal(size=(4, 9, 5))
    out, (h, _) = _torch_lstm(torch, layer)(_t(x))
    want = out.detach().numpy() if return_sequences else h[-1].detach().numpy()
    np.testing.assert_allclose(layer.forward(x), want, atol=TOL, rtol=0)
    assert layer.output_shape((9, 5)) == want.shape[1:]


def test_stacked_lstm_model_matches_torch(torch, tf):
    rng = _rng(5)
    model = lstm_model(rng)
    x = rng.normal(size=(3, 6, 5))
    out, _ = _torch_lstm(torch, model.layers[0])(_t(x))
    out, _ = _torch_lstm(torch, model.layers[1])(out)
    head = model.layers[2]
    want = tf.linear(out[:, -1], _t(head.weight), _t(head.bias)).detach().numpy()
    np.testing.assert_allclose(model.forward(x), want, atol=TOL, rtol=0)


@pytest.mark.parametrize("num_layers, proj", [(1, 3), (2, 0), (3, 2)])
def test_stacked_projected_lstm_matches_torch(torch, num_layers, proj):
    """Stacked LSTM layers with an optional projection equal torch.nn.LSTM(num_layers=L,
    proj_size=P) in float64, over the whole output sequence and the last output."""
    rng = _rng(7 + num_layers)
    inputs, hidden, steps = 4, 6, 7
    net = torch.nn.LSTM(inputs, hidden, num_layers=num_layers, proj_size=proj,
                        batch_first=True).double()
    with torch.no_grad():
        for param in net.parameters():
            param.copy_(_t(rng.normal(0, 0.5, tuple(param.shape))))
    layers = []
    for k in range(num_layers):
        w = {name: getattr(net, f"{name}_l{k}").detach().numpy().copy()
             for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
             + (("weight_hr",) if proj else ())}
        layers.append(LSTM(w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"],
                           return_sequences=True, w_hr=w.get("weight_hr")))
    model = FloatModel("stack", (steps, inputs), layers)
    x = rng.normal(size=(3, steps, inputs))
    out, (h_n, _) = net(_t(x))
    np.testing.assert_allclose(model.forward(x), out.detach().numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(model.forward(x)[:, -1], h_n[-1].detach().numpy(), atol=TOL,
                               rtol=0)
    assert model.output_shape == (steps, proj or hidden)


def test_projection_survives_npz(tmp_path):
    rng = _rng(9)
    layer = LSTM(rng.normal(size=(8, 3)), rng.normal(size=(8, 1)), rng.normal(size=8),
                 rng.normal(size=8), w_hr=rng.normal(size=(1, 2)))
    model = FloatModel("p", (4, 3), [layer])
    save_npz(model, tmp_path / "p.npz")
    back = load_npz(tmp_path / "p.npz")
    np.testing.assert_array_equal(back.layers[0].w_hr, np.float32(layer.w_hr))
    from host.floatmodel import _check_param_shapes
    with pytest.raises(ModelError, match=r"projection w_hr \(1, 3\) is not \(P, H\)"):
        _check_param_shapes(LSTM(layer.w_ih, layer.w_hh, layer.b_ih, layer.b_hh,
                                 w_hr=np.zeros((1, 3))), "here")


def test_lstm_weight_matrix_stacks_input_and_recurrent():
    rng = _rng(6)
    layer = _lstm(rng, 3, 2)
    matrix = weight_matrix(layer)
    np.testing.assert_array_equal(matrix, np.hstack([layer.w_ih, layer.w_hh]))
    again = with_weight_matrix(layer, matrix)
    np.testing.assert_array_equal(again.w_ih, layer.w_ih)
    np.testing.assert_array_equal(again.w_hh, layer.w_hh)


def test_cnn_model_matches_torch(torch, tf):
    rng = _rng(7)
    model = cnn_model(rng)
    x = rng.normal(size=(2, 2, 9, 7))
    c1, _, _, c2, _, _, fc = model.layers
    y = tf.relu(tf.conv2d(_t(x), _t(c1.weight), _t(c1.bias), padding=1))
    y = tf.max_pool2d(y, 2)
    y = tf.relu(tf.conv2d(y, _t(c2.weight), _t(c2.bias), stride=2, padding=1))
    y = tf.linear(torch.flatten(y, 1), _t(fc.weight), _t(fc.bias))
    np.testing.assert_allclose(model.forward(x), y.numpy(), atol=TOL, rtol=0)
    outs = model.layer_outputs(x)
    assert [o.shape[1:] for o in outs] == model.shapes()[1:]


# ---------------------------------------------------------------------------------------------
# .npz round trip


@pytest.mark.parametrize("make", [cnn_model, lstm_model])
def test_npz_round_trip(tmp_path, make):
    rng = _rng(8)
    model = make(rng)
    path = tmp_path / "model.npz"
    save_npz(model, path)
    loaded = load_npz(path)
    assert loaded.name == model.name
    assert loaded.input_shape == model.input_shape
    assert [layer.kind for layer in loaded.layers] == [layer.kind for layer in model.layers]
    for old, new in zip(model.layers, loaded.layers):
        for key, value in old.arrays().items():
            # Stored as float32, read back as float64.
            np.testing.assert_array_equal(new.arrays()[key], value.astype(np.float32))
            assert new.arrays()[key].dtype == np.float64
        for attr in ("stride", "padding", "return_sequences"):
            assert getattr(new, attr, None) == getattr(old, attr, None)
    x = rng.normal(size=(2, *model.input_shape))
    np.testing.assert_allclose(loaded.forward(x), model.forward(x), atol=1e-4, rtol=0)
    # A second round trip is exact.
    save_npz(loaded, tmp_path / "again.npz")
    again = load_npz(tmp_path / "again.npz")
    np.testing.assert_array_equal(again.forward(x), loaded.forward(x))


# ---------------------------------------------------------------------------------------------
# Bad files


def _header(model_kind="linear"):
    return {"format": 1, "name": "m", "input_shape": [3],
            "layers": [{"kind": model_kind}]}


def _write(path, header, **arrays):
    np.savez(path, spine_float_model=np.array(json.dumps(header)), **arrays)


GOOD = {"0.weight": np.ones((2, 3), np.float32), "0.bias": np.zeros(2, np.float32)}


def _expect_error(path, *fragments):
    with pytest.raises(ModelError) as info:
        load_npz(path)
    message = str(info.value)
    assert path.name in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_good_handwritten_file_loads(tmp_path):
    _write(tmp_path / "ok.npz", _header(), **GOOD)
    model = load_npz(tmp_path / "ok.npz")
    assert model.output_shape == (2,)


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "absent.npz", "does not exist")


def test_corrupt_file(tmp_path):
    (tmp_path / "garbage.npz").write_bytes(b"this is not a zip archive at all")
    _expect_error(tmp_path / "garbage.npz", "not a readable")


def test_truncated_file(tmp_path):
    _write(tmp_path / "full.npz", _header(), **GOOD)
    data = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])
    _expect_error(tmp_path / "cut.npz")


def test_foreign_npz(tmp_path):
    np.savez(tmp_path / "foreign.npz", x=np.zeros(3), y=np.ones(2))
    _expect_error(tmp_path / "foreign.npz", "spine_float_model")


def test_zip_that_is_not_npz(tmp_path):
    with zipfile.ZipFile(tmp_path / "other.npz", "w") as archive:
        archive.writestr("readme.txt", "hello")
    _expect_error(tmp_path / "other.npz")


def test_missing_array(tmp_path):
    _write(tmp_path / "missing.npz", _header(), **{"0.weight": GOOD["0.weight"]})
    _expect_error(tmp_path / "missing.npz", "0.bias", "missing")


def test_unknown_kind(tmp_path):
    _write(tmp_path / "kind.npz", _header("batchnorm"), **GOOD)
    _expect_error(tmp_path / "kind.npz", "batchnorm")


def test_other_format_version(tmp_path):
    header = _header()
    header["format"] = 99
    _write(tmp_path / "future.npz", header, **GOOD)
    _expect_error(tmp_path / "future.npz", "99")


def test_malformed_header(tmp_path):
    np.savez(tmp_path / "json.npz", spine_float_model=np.array("{not json"), **GOOD)
    _expect_error(tmp_path / "json.npz", "header")


def test_non_finite_weights(tmp_path):
    weight = GOOD["0.weight"].copy()
    weight[0, 1] = np.nan
    _write(tmp_path / "nan.npz", _header(), **{"0.weight": weight, "0.bias": GOOD["0.bias"]})
    _expect_error(tmp_path / "nan.npz", "NaN")


def test_bad_bias_shape(tmp_path):
    _write(tmp_path / "bias.npz", _header(), **{"0.weight": GOOD["0.weight"],
                                                  "0.bias": np.zeros(5, np.float32)})
    _expect_error(tmp_path / "bias.npz", "bias")


def test_sizes_that_do_not_chain(tmp_path):
    header = {"format": 1, "name": "m", "input_shape": [4], "layers": [{"kind": "linear"}]}
    _write(tmp_path / "chain.npz", header, **GOOD)   # weight expects 3 inputs, gets 4
    _expect_error(tmp_path / "chain.npz", "linear")


def test_object_arrays_are_refused(tmp_path):
    np.savez(tmp_path / "pickle.npz", spine_float_model=np.array([{"evil": 1}], dtype=object))
    _expect_error(tmp_path / "pickle.npz")


def test_header_that_is_not_an_object(tmp_path):
    np.savez(tmp_path / "list.npz", spine_float_model=np.array("[1, 2]"), **GOOD)
    _expect_error(tmp_path / "list.npz", "header")


def test_bad_layer_attribute(tmp_path):
    header = {"format": 1, "name": "m", "input_shape": [1, 4, 4],
              "layers": [{"kind": "conv2d", "stride": "wide"}]}
    _write(tmp_path / "stride.npz", header, **{"0.weight": np.ones((2, 1, 3, 3), np.float32),
                                                 "0.bias": np.zeros(2, np.float32)})
    _expect_error(tmp_path / "stride.npz")


def test_npy_file_named_npz(tmp_path):
    with open(tmp_path / "array.npz", "wb") as f:
        np.save(f, np.zeros(3))
    _expect_error(tmp_path / "array.npz")
