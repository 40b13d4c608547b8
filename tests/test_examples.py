"""The bundled example models: they load, classify the digits, and match PyTorch."""

import numpy as np
import pytest

from host.datasets import LAYOUTS, digits_inputs, digits_split
from host.errors import ModelError
from host.examples import EXAMPLES, example_names, load_example
from host.examples.train_digits import balanced_mask, simulate_compression
from host.floatmodel import (
    LSTM,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    weight_matrix,
)

NAMES = ["digits-mlp", "digits-lstm", "digits-cnn"]


@pytest.fixture(scope="module", params=NAMES)
def example(request):
    return load_example(request.param)


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.forward(x), axis=1) == y))


def test_names_and_registry():
    assert example_names() == sorted(NAMES)
    for spec in EXAMPLES.values():
        assert set(spec.defaults) == {"density", "bits"}
        assert 0 < spec.defaults["density"] <= 0.25 and spec.defaults["bits"] == 4
        assert spec.layout in LAYOUTS


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ModelError) as info:
        load_example("digits-gru")
    for name in NAMES:
        assert name in str(info.value)


def test_digits_split_is_fixed_and_stratified():
    split = digits_split()
    assert split.x_train.shape == (1347, 64) and split.x_test.shape == (450, 64)
    assert split.x_train.min() == 0.0 and split.x_train.max() == 1.0
    assert np.bincount(split.y_test).min() >= 43
    again = digits_split()
    np.testing.assert_array_equal(again.x_test, split.x_test)
    split.x_test[0, 0] = 5.0    # callers get copies
    assert digits_split().x_test[0, 0] != 5.0
    with pytest.raises(ValueError, match="layout"):
        digits_inputs(split.x_test, "gru")
    with pytest.raises(ValueError, match="64"):
        digits_inputs(split.x_test[:, :60], "mlp")


def test_example_loads_in_its_layout(example):
    model = example.model
    assert model.name == example.name
    assert example.x_train.shape == (1347, *model.input_shape)
    assert example.x_test.shape == (450, *model.input_shape)
    assert example.y_test.shape == (450,)
    assert model.output_shape == (10,)
    assert example.defaults == EXAMPLES[example.name].defaults
    assert example.defaults is not EXAMPLES[example.name].defaults     # a copy


def test_float_accuracy(example):
    assert _accuracy(example.model, example.x_test, example.y_test) >= 0.9
    assert _accuracy(example.model, example.x_train, example.y_train) >= 0.9


def test_shipped_weights_are_pruned_for_8_pes(example):
    """The weights were pruned in training with 8-PE balanced masks at the default density,
    so pruning them again at that density keeps exactly their non-zeros."""
    density = example.defaults["density"]
    for layer in example.model.layers:
        matrix = weight_matrix(layer)
        if matrix is None:
            continue
        nonzero = matrix != 0
        assert nonzero.sum() == int(np.floor(matrix.size * density + 0.5))
        per_pe = [int(nonzero[pe::8].sum()) for pe in range(8)]
        assert max(per_pe) - min(per_pe) <= 1
        np.testing.assert_array_equal(balanced_mask(matrix, density, 8), nonzero)


def test_simulated_compression_meets_the_targets(example):
    """Independent NumPy simulation of prune + 4-bit k-means + 16-bit weights at the defaults:
    within 1.5 points of the float accuracy, >= 10x smaller than float32."""
    result = simulate_compression(example.model, example.x_test, example.y_test,
                                  **example.defaults)
    assert abs(result["accuracy_float"] - result["accuracy_compressed"]) <= 0.015
    assert result["storage_ratio"] >= 10


def _torch_module(torch, model):
    """A PyTorch re-implementation of ``model`` (float64), built layer by layer."""
    nn = torch.nn

    def param(array):
        return nn.Parameter(torch.tensor(np.asarray(array, dtype=np.float64)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.steps = nn.ModuleList()
            for layer in model.layers:
                if isinstance(layer, Linear):
                    step = nn.Linear(*layer.weight.shape[::-1]).double()
                    step.weight, step.bias = param(layer.weight), param(layer.bias)
                elif isinstance(layer, Conv2d):
                    out, inp, k, _ = layer.weight.shape
                    step = nn.Conv2d(inp, out, k, stride=layer.stride,
                                     padding=layer.padding).double()
                    step.weight, step.bias = param(layer.weight), param(layer.bias)
                elif isinstance(layer, LSTM):
                    step = nn.LSTM(layer.input_size, layer.hidden, batch_first=True).double()
                    step.weight_ih_l0, step.weight_hh_l0 = param(layer.w_ih), param(layer.w_hh)
                    step.bias_ih_l0, step.bias_hh_l0 = param(layer.b_ih), param(layer.b_hh)
                    step.return_sequences = layer.return_sequences
                elif isinstance(layer, ReLU):
                    step = nn.ReLU()
                elif isinstance(layer, MaxPool2d):
                    step = nn.MaxPool2d(2)
                elif isinstance(layer, Flatten):
                    step = nn.Flatten()
                self.steps.append(step)

        def forward(self, x):
            for step in self.steps:
                if isinstance(step, nn.LSTM):
                    out, _ = step(x)
                    x = out if step.return_sequences else out[:, -1]
                else:
                    x = step(x)
            return x

    return Net().eval()


def test_forward_matches_torch(example):
    torch = pytest.importorskip("torch")
    net = _torch_module(torch, example.model)
    with torch.no_grad():
        want = net(torch.tensor(example.x_test)).numpy()
    np.testing.assert_allclose(example.model.forward(example.x_test), want, atol=1e-5, rtol=0)
