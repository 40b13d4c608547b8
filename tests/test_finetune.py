"""Centroid fine-tuning (trained quantization): loss goes down, zeros stay zero."""

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
    weight_matrix,
    with_weight_matrix,
)

pytest.importorskip("torch")

from host.finetune import finetune_codebooks, shared_loss


def _share(model, rng, bits=2, density=0.6):
    """Random pruning + a random codebook per weight layer (index 0 = 0.0)."""
    assignments, codebooks = [], []
    for layer in model.layers:
        matrix = weight_matrix(layer)
        if matrix is None:
            assignments.append(None)
            codebooks.append(None)
            continue
        keep = rng.random(matrix.shape) < density
        assign = np.where(keep, rng.integers(1, 1 << bits, matrix.shape), 0)
        book = np.concatenate([[0.0], np.sort(rng.normal(0, 0.6, (1 << bits) - 1))])
        assignments.append(assign.astype(np.uint8))
        codebooks.append(book)
    return assignments, codebooks


def _apply(model, assignments, codebooks):
    layers = [layer if a is None else with_weight_matrix(layer, c[a])
              for layer, a, c in zip(model.layers, assignments, codebooks)]
    return FloatModel(model.name, model.input_shape, layers)


def _cross_entropy(logits, y):
    logits = logits - logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def mlp_problem(seed=0):
    rng = np.random.default_rng(seed)
    model = FloatModel("tiny", (6,), [Linear(rng.normal(size=(8, 6)), rng.normal(0, .1, 8)),
                                      ReLU(),
                                      Linear(rng.normal(size=(3, 8)), rng.normal(0, .1, 3))])
    x = rng.normal(size=(64, 6))
    y = np.argmax(model.forward(x), axis=1)      # labels of the unshared teacher
    assignments, codebooks = _share(model, rng)
    return model, assignments, codebooks, x, y


def test_finetuning_lowers_the_loss_and_keeps_zeros():
    model, assignments, codebooks, x, y = mlp_problem()
    before = shared_loss(model, assignments, codebooks, x, y)
    tuned = finetune_codebooks(model, assignments, codebooks, x, y, epochs=8, lr=0.02,
                               batch_size=16, progress=False)
    after = shared_loss(model, assignments, tuned, x, y)
    assert after < before
    assert tuned[1] is None
    for old, new, assign in zip(codebooks, tuned, assignments):
        if old is None:
            continue
        assert new.shape == old.shape and new.dtype == np.float64
        assert new[0] == 0.0
        assert not np.array_equal(new, old)
        assert np.all(new[assign][assign == 0] == 0.0)     # pruned weights stay exactly zero
    # The inputs are not modified.
    np.testing.assert_array_equal(codebooks[0], mlp_problem()[2][0])


def test_loss_never_increases_even_with_a_huge_step():
    model, assignments, codebooks, x, y = mlp_problem(1)
    before = shared_loss(model, assignments, codebooks, x, y)
    tuned = finetune_codebooks(model, assignments, codebooks, x, y, epochs=2, lr=50.0,
                               progress=False)
    assert shared_loss(model, assignments, tuned, x, y) <= before


def test_deterministic_and_zero_epochs():
    import torch
    model, assignments, codebooks, x, y = mlp_problem(2)
    threads = torch.get_num_threads()
    runs = [finetune_codebooks(model, assignments, codebooks, x, y, epochs=3, seed=7,
                               progress=False) for _ in range(2)]
    for a, b in zip(*runs):
        assert (a is None and b is None) or np.array_equal(a, b)
    same = finetune_codebooks(model, assignments, codebooks, x, y, epochs=0, progress=False)
    np.testing.assert_array_equal(same[0], codebooks[0])
    assert torch.get_num_threads() == threads


def test_centroid_gradient_is_the_cluster_sum():
    """One tiny full-batch Adam step moves every centroid against the finite-difference
    derivative of the loss with respect to that centroid (the sum over its cluster)."""
    model, assignments, codebooks, x, y = mlp_problem(3)
    tuned = finetune_codebooks(model, assignments, codebooks, x, y, epochs=1, lr=1e-4,
                               batch_size=len(x), progress=False)
    for i, book in enumerate(codebooks):
        if book is None:
            continue
        for k in range(1, len(book)):
            step = 1e-6
            up, down = [list(codebooks) for _ in range(2)]
            up[i] = book.copy()
            up[i][k] += step
            down[i] = book.copy()
            down[i][k] -= step
            grad = (shared_loss(model, assignments, up, x, y)
                    - shared_loss(model, assignments, down, x, y)) / (2 * step)
            if abs(grad) > 1e-4:
                assert np.sign(tuned[i][k] - book[k]) == -np.sign(grad)


def test_forward_of_every_layer_kind_matches_numpy():
    """The torch forward used for training agrees with the NumPy float model."""
    rng = np.random.default_rng(4)
    cnn = FloatModel("cnn", (1, 6, 6), [
        Conv2d(rng.normal(0, .5, (3, 1, 3, 3)), rng.normal(0, .1, 3), padding=1), ReLU(),
        MaxPool2d(), Conv2d(rng.normal(0, .5, (4, 3, 2, 2)), rng.normal(0, .1, 4), stride=1),
        Flatten(), Linear(rng.normal(0, .5, (3, 16)), rng.normal(0, .1, 3))])
    lstm = FloatModel("lstm", (5, 4), [
        LSTM(rng.normal(0, .5, (12, 4)), rng.normal(0, .5, (12, 3)), rng.normal(0, .1, 12),
             rng.normal(0, .1, 12), return_sequences=True),
        LSTM(rng.normal(0, .5, (8, 3)), rng.normal(0, .5, (8, 2)), rng.normal(0, .1, 8),
             rng.normal(0, .1, 8)),
        Linear(rng.normal(0, .5, (3, 2)), rng.normal(0, .1, 3))])
    for model in (cnn, lstm):
        x = rng.normal(size=(10, *model.input_shape))
        y = rng.integers(0, 3, 10)
        assignments, codebooks = _share(model, rng, bits=3)
        want = _cross_entropy(_apply(model, assignments, codebooks).forward(x), y)
        assert shared_loss(model, assignments, codebooks, x, y) == pytest.approx(want, abs=1e-9)
        tuned = finetune_codebooks(model, assignments, codebooks, x, y, epochs=2,
                                   progress=False)
        assert shared_loss(model, assignments, tuned, x, y) <= want


def test_bad_arguments():
    model, assignments, codebooks, x, y = mlp_problem()
    with pytest.raises(ModelError, match="3 layers"):
        finetune_codebooks(model, assignments[:2], codebooks, x, y, progress=False)
    bad = [c.copy() if c is not None else None for c in codebooks]
    bad[0][0] = 0.5
    with pytest.raises(ModelError, match="entry 0"):
        finetune_codebooks(model, assignments, bad, x, y, progress=False)
    shape = list(assignments)
    shape[0] = assignments[0].T
    with pytest.raises(ModelError, match="shape"):
        finetune_codebooks(model, shape, codebooks, x, y, progress=False)
    big = list(assignments)
    big[2] = assignments[2] + 4
    with pytest.raises(ModelError, match="indices"):
        finetune_codebooks(model, big, codebooks, x, y, progress=False)
    relu = list(assignments)
    relu[1] = np.zeros((1, 1), dtype=int)
    with pytest.raises(ModelError, match="no weights"):
        finetune_codebooks(model, relu, codebooks, x, y, progress=False)
    with pytest.raises(ModelError, match="labels"):
        finetune_codebooks(model, assignments, codebooks, x, y + 5, progress=False)
    with pytest.raises(ModelError, match="inputs"):
        finetune_codebooks(model, assignments, codebooks, x[:, :4], y, progress=False)
