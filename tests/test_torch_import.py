"""Importing PyTorch modules: same outputs as PyTorch, clear errors for what spine cannot map."""

import sys
from collections import OrderedDict

import numpy as np
import pytest

from host.errors import ModelError
from host.torch_import import from_torch, load_torch_checkpoint, require_torch

torch = pytest.importorskip("torch")
nn = torch.nn

TOL = 1e-5


def _double(module):
    torch.manual_seed(0)
    for param in module.parameters():   # non-trivial biases and weights, reproducibly
        with torch.no_grad():
            param.copy_(torch.randn_like(param) * 0.4)
    return module.double().eval()


def _check_same(module, input_shape, batch=3, seed=0):
    model = from_torch(module, input_shape)
    x = np.random.default_rng(seed).normal(size=(batch, *input_shape))
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.forward(x), want, atol=TOL, rtol=0)
    return model


class LstmClassifier(nn.Module):
    """An LSTM whose last hidden state feeds a linear classifier (hand-written forward)."""

    def __init__(self, inputs=5, hidden=6, num_layers=1, bias=True, batch_first=True,
                 proj_size=0):
        super().__init__()
        self.batch_first = batch_first
        self.rnn = nn.LSTM(inputs, hidden, num_layers=num_layers, bias=bias,
                           batch_first=batch_first, proj_size=proj_size)
        self.head = nn.Linear(proj_size or hidden, 4)

    def forward(self, x):
        if not self.batch_first:
            x = x.transpose(0, 1)
        _, (h, _) = self.rnn(x)
        return self.head(h[-1])

    def spine_layers(self):
        return [self.rnn, self.head]


class TwoLstms(nn.Module):
    """Two separate LSTM modules stacked, then ReLU and a classifier."""

    def __init__(self):
        super().__init__()
        self.first = nn.LSTM(3, 5, batch_first=True)
        self.drop = nn.Dropout(0.5)
        self.second = nn.LSTM(5, 4, batch_first=True)
        self.out = nn.Sequential(nn.ReLU(), nn.Linear(4, 2))

    def forward(self, x):
        seq, _ = self.first(x)
        _, (h, _) = self.second(self.drop(seq))
        return self.out(h[-1])

    def spine_layers(self):
        return [self.first, self.drop, self.second, self.out]


def test_sequential_of_every_supported_layer():
    module = _double(nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.3),
        nn.Conv2d(4, 6, (3, 3), stride=(2, 2), padding=(1, 1)),
        nn.ReLU(inplace=True),
        nn.Dropout2d(0.1),
        nn.Conv2d(6, 6, 3, padding="same"),
        nn.Flatten(),
        nn.Identity(),
        nn.Linear(6 * 2 * 2, 8, bias=False),
        nn.ReLU(),
        nn.Linear(8, 3),
    ))
    model = _check_same(module, (2, 8, 7))
    assert [layer.kind for layer in model.layers] == [
        "conv2d", "relu", "maxpool2d", "conv2d", "relu", "conv2d", "flatten", "linear", "relu",
        "linear"]
    assert model.layers[3].stride == 2 and model.layers[3].padding == 1
    assert model.layers[5].padding == 1
    np.testing.assert_array_equal(model.layers[0].bias, np.zeros(4))
    assert model.layers[0].weight.dtype == np.float64


def test_nested_sequential():
    module = _double(nn.Sequential(OrderedDict(
        features=nn.Sequential(nn.Linear(7, 9), nn.ReLU(), nn.Sequential(nn.Linear(9, 5))),
        act=nn.ReLU(),
        head=nn.Sequential(nn.Sequential(nn.Linear(5, 2))),
    )))
    model = _check_same(module, (7,))
    assert [layer.kind for layer in model.layers] == ["linear", "relu", "linear", "relu",
                                                      "linear"]


def test_single_layer_module():
    _check_same(_double(nn.Linear(4, 3)), (4,))


@pytest.mark.parametrize("batch_first", [True, False])
def test_lstm_classifier(batch_first):
    module = _double(LstmClassifier(batch_first=batch_first))
    model = _check_same(module, (7, 5))
    assert [layer.kind for layer in model.layers] == ["lstm", "linear"]
    assert model.layers[0].return_sequences is False


def test_multi_layer_lstm_is_expanded():
    module = _double(LstmClassifier(num_layers=3, bias=False))
    model = _check_same(module, (6, 5))
    lstms = model.layers[:3]
    assert [layer.kind for layer in model.layers] == ["lstm"] * 3 + ["linear"]
    assert [layer.return_sequences for layer in lstms] == [True, True, False]
    for layer in lstms:
        np.testing.assert_array_equal(layer.b_ih, np.zeros(24))
        np.testing.assert_array_equal(layer.b_hh, np.zeros(24))


@pytest.mark.parametrize("num_layers", [1, 3])
def test_lstm_with_projection(num_layers):
    """nn.LSTM(proj_size=P): every layer keeps its projection weight_hr_l{k}; the float model
    equals PyTorch (h_n of the last layer is r_T, P wide)."""
    module = _double(LstmClassifier(inputs=5, hidden=7, num_layers=num_layers, proj_size=3))
    model = _check_same(module, (6, 5))
    lstms = model.layers[:num_layers]
    assert [layer.proj_size for layer in lstms] == [3] * num_layers
    assert [layer.input_size for layer in lstms] == [5] + [3] * (num_layers - 1)
    for k, layer in enumerate(lstms):
        np.testing.assert_array_equal(
            layer.w_hr, getattr(module.rnn, f"weight_hr_l{k}").detach().numpy())


def test_lstm_followed_by_lstm_returns_sequences():
    module = _double(TwoLstms())
    model = _check_same(module, (5, 3))
    assert [layer.kind for layer in model.layers] == ["lstm", "lstm", "relu", "linear"]
    assert [layer.return_sequences for layer in model.layers[:2]] == [True, False]


def test_weights_are_copied():
    module = _double(nn.Sequential(nn.Linear(3, 2)))
    model = from_torch(module, (3,))
    with torch.no_grad():
        module[0].weight.zero_()
    assert np.any(model.layers[0].weight != 0)


def test_unsupported_layer_names_path_and_class():
    module = nn.Sequential(OrderedDict(
        features=nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3),
                               nn.BatchNorm2d(2)),
        head=nn.Linear(2, 2),
    ))
    with pytest.raises(ModelError) as info:
        from_torch(module, (1, 8, 8))
    message = str(info.value)
    assert "'features.3'" in message
    assert "nn.BatchNorm2d" in message
    assert "supported: nn.Linear" in message


class Opaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)

    def forward(self, x):
        return self.a(x) * 2


def test_container_without_spine_layers():
    with pytest.raises(ModelError, match="spine_layers"):
        from_torch(nn.Sequential(nn.Linear(3, 3), Opaque()), (3,))


@pytest.mark.parametrize(("layer", "fragment"), [
    (nn.Conv2d(2, 2, 3, groups=2), "groups"),
    (nn.Conv2d(2, 2, 3, dilation=2), "dilation"),
    (nn.Conv2d(2, 2, (3, 1)), "square"),
    (nn.Conv2d(2, 2, 3, stride=(1, 2)), "stride"),
    (nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), "padding_mode"),
    (nn.MaxPool2d(3), "MaxPool2d(2)"),
    (nn.MaxPool2d(2, stride=1), "MaxPool2d(2)"),
    (nn.MaxPool2d(2, ceil_mode=True), "MaxPool2d(2)"),
    (nn.Flatten(start_dim=2), "start_dim"),
    (nn.Tanh(), "nn.Tanh"),
])
def test_unsupported_settings(layer, fragment):
    with pytest.raises(ModelError, match="layer '0'") as info:
        from_torch(nn.Sequential(layer), (2, 8, 8))
    assert fragment in str(info.value)


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"bidirectional": True}, "bidirectional"),
])
def test_unsupported_lstm(kwargs, fragment):
    with pytest.raises(ModelError, match=fragment):
        from_torch(nn.LSTM(3, 4, batch_first=True, **kwargs), (5, 3))


def test_shape_mismatch_and_bad_shapes():
    with pytest.raises(ModelError, match="expects input shape"):
        from_torch(nn.Sequential(nn.Linear(4, 2)), (5,))
    with pytest.raises(ModelError, match="input_shape"):
        from_torch(nn.Sequential(nn.Linear(4, 2)), (0,))
    with pytest.raises(ModelError, match="input_shape"):
        from_torch(nn.Sequential(nn.Linear(4, 2)), "four")
    with pytest.raises(ModelError, match="no layers"):
        from_torch(nn.Sequential(nn.Dropout()), (4,))
    with pytest.raises(ModelError, match="nn.Module"):
        from_torch({"weight": 1}, (4,))


# ---------------------------------------------------------------------------------------------
# Checkpoint files


def test_checkpoint_whole_module(tmp_path):
    module = _double(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)))
    torch.save(module, tmp_path / "net.pt")
    model = load_torch_checkpoint(tmp_path / "net.pt", input_shape=(4,))
    assert model.name == "net"
    x = np.random.default_rng(1).normal(size=(3, 4))
    with torch.no_grad():
        np.testing.assert_allclose(model.forward(x), module(torch.from_numpy(x)).numpy(),
                                   atol=TOL, rtol=0)


def test_checkpoint_dict_with_input_shape(tmp_path):
    module = _double(LstmClassifier())
    torch.save({"model": module, "input_shape": [7, 5], "name": "clf"}, tmp_path / "clf.pth")
    model = load_torch_checkpoint(tmp_path / "clf.pth")
    assert model.name == "clf" and model.input_shape == (7, 5)
    x = np.random.default_rng(2).normal(size=(2, 7, 5))
    with torch.no_grad():
        np.testing.assert_allclose(model.forward(x), module(torch.from_numpy(x)).numpy(),
                                   atol=TOL, rtol=0)
    # An explicit input_shape wins over the file's (here: a longer sequence).
    assert load_torch_checkpoint(tmp_path / "clf.pth", input_shape=(9, 5)).input_shape == (9, 5)


def test_checkpoint_without_input_shape(tmp_path):
    torch.save(nn.Sequential(nn.Linear(4, 2)), tmp_path / "bare.pt")
    with pytest.raises(ModelError, match="input_shape"):
        load_torch_checkpoint(tmp_path / "bare.pt")


def test_bare_state_dict_is_explained(tmp_path):
    torch.save(nn.Sequential(nn.Linear(4, 2)).state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ModelError) as info:
        load_torch_checkpoint(tmp_path / "weights.pt", input_shape=(4,))
    message = str(info.value)
    assert "weights.pt" in message and "state_dict" in message
    assert "load_state_dict" in message and "torch.save({'model': module" in message


def test_training_checkpoint_is_explained(tmp_path):
    net = nn.Sequential(nn.Linear(4, 2))
    torch.save({"epoch": 3, "model_state_dict": net.state_dict()}, tmp_path / "ckpt.pt")
    with pytest.raises(ModelError, match="state_dict"):
        load_torch_checkpoint(tmp_path / "ckpt.pt", input_shape=(4,))


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_torch_checkpoint(tmp_path / "absent.pt", input_shape=(4,))
    (tmp_path / "junk.pt").write_bytes(b"\x00not a torch file")
    with pytest.raises(ModelError, match="junk.pt"):
        load_torch_checkpoint(tmp_path / "junk.pt", input_shape=(4,))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ModelError, match="holds a list"):
        load_torch_checkpoint(tmp_path / "list.pt", input_shape=(4,))
    torch.save(nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2)), tmp_path / "bn.pt")
    with pytest.raises(ModelError, match=r"bn\.pt.*nn\.BatchNorm1d"):
        load_torch_checkpoint(tmp_path / "bn.pt", input_shape=(4,))


def test_missing_torch_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)   # makes `import torch` fail
    with pytest.raises(ModelError, match=r"pip install 'spine\[torch\]'"):
        require_torch()
    with pytest.raises(ModelError, match="spine"):
        from_torch(object(), (3,))
