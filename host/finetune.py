"""Trained quantization (Deep Compression stage 2): fine-tune the shared-weight codebooks.

After pruning and weight sharing every weight of a layer is ``codebook[index]``, index 0 being
the fixed 0.0 of pruned weights.  Fine-tuning trains only the non-zero centroids with the
task loss (cross-entropy) on training data: each weight's gradient flows into its centroid, so
a centroid's gradient is the sum of the gradients of the weights of its cluster (autograd gives
exactly that through the indexing ``W = codebook[index]``).  The indices (which weight shares
which centroid), the zero positions, the biases and everything else stay fixed, so the
compressed model's structure and encoding do not change; only the codebook values do.

Needs PyTorch (``pip install 'spine[torch]'``), imported when :func:`finetune_codebooks` runs.
"""

from __future__ import annotations

import numpy as np

from .errors import ModelError
from .floatmodel import (
    LSTM,
    Conv2d,
    Flatten,
    FloatModel,
    Linear,
    MaxPool2d,
    ReLU,
    weight_matrix,
)
from .torch_import import require_torch

__all__ = ["finetune_codebooks", "shared_loss"]


def _check(model: FloatModel, assignments, codebooks):
    """Validated int64 assignments and float64 codebooks (index 0 forced to 0.0)."""
    if len(assignments) != len(model.layers) or len(codebooks) != len(model.layers):
        raise ModelError(f"model {model.name!r} has {len(model.layers)} layers but "
                         f"{len(assignments)} assignments and {len(codebooks)} codebooks; give "
                         f"one per layer (None for layers without weights)")
    out_a, out_c = [], []
    for index, (layer, assign, book) in enumerate(zip(model.layers, assignments, codebooks)):
        matrix = weight_matrix(layer)
        where = f"model {model.name!r}, layer {index} ({layer.kind})"
        if matrix is None:
            if assign is not None or book is not None:
                raise ModelError(f"{where} has no weights; its assignment and codebook must be "
                                 f"None")
            out_a.append(None)
            out_c.append(None)
            continue
        if assign is None or book is None:
            raise ModelError(f"{where}: assignment and codebook are required for a layer with "
                             f"weights")
        assign = np.asarray(assign)
        book = np.asarray(book, dtype=np.float64).ravel()
        if assign.shape != matrix.shape:
            raise ModelError(f"{where}: assignment shape {assign.shape} is not the weight "
                             f"matrix shape {matrix.shape}")
        if not np.issubdtype(assign.dtype, np.integer):
            raise ModelError(f"{where}: assignment must hold integer codebook indices, not "
                             f"{assign.dtype}")
        if book.size < 1 or not np.all(np.isfinite(book)):
            raise ModelError(f"{where}: the codebook must be a non-empty finite vector")
        if assign.size and (assign.min() < 0 or assign.max() >= book.size):
            raise ModelError(f"{where}: assignment indices must be in 0..{book.size - 1} (the "
                             f"codebook has {book.size} entries)")
        if book[0] != 0.0:
            raise ModelError(f"{where}: codebook entry 0 must be 0.0 (the pruned weights), "
                             f"not {book[0]}")
        out_a.append(assign.astype(np.int64))
        out_c.append(book)
    return out_a, out_c


def _tensor(torch, array):
    return torch.tensor(np.asarray(array, dtype=np.float64))


def _forward(torch, model: FloatModel, matrices, x):
    """Torch forward of ``model`` with the weight matrix of layer ``i`` taken from
    ``matrices[i]`` (see :func:`host.floatmodel.weight_matrix` for its layout)."""
    functional = torch.nn.functional
    for layer, matrix in zip(model.layers, matrices):
        if isinstance(layer, Linear):
            x = functional.linear(x, matrix, _tensor(torch, layer.bias))
        elif isinstance(layer, Conv2d):
            x = functional.conv2d(x, matrix.reshape(layer.weight.shape),
                                  _tensor(torch, layer.bias), stride=layer.stride,
                                  padding=layer.padding)
        elif isinstance(layer, LSTM):
            hidden = layer.hidden
            bias = _tensor(torch, np.add(layer.b_ih, layer.b_hh))
            h = x.new_zeros((x.shape[0], hidden))
            c = x.new_zeros((x.shape[0], hidden))
            outputs = []
            for t in range(x.shape[1]):
                z = functional.linear(torch.cat([x[:, t], h], dim=1), matrix, bias)
                i, f, g, o = z.chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outputs.append(h)
            x = torch.stack(outputs, dim=1) if layer.return_sequences else h
        elif isinstance(layer, ReLU):
            x = torch.relu(x)
        elif isinstance(layer, MaxPool2d):
            x = functional.max_pool2d(x, 2)
        elif isinstance(layer, Flatten):
            x = x.reshape(x.shape[0], -1)
        else:
            raise ModelError(f"layer kind {layer.kind!r} is not supported by fine-tuning")
    return x


class _Shared:
    """Trainable centroids (entries 1..) of every layer and the weight matrices they give."""

    def __init__(self, torch, assignments, codebooks):
        self.torch = torch
        self.index = [None if a is None else torch.from_numpy(a) for a in assignments]
        self.centroids = [None if c is None else torch.nn.Parameter(torch.from_numpy(c[1:].copy()))
                          for c in codebooks]

    def parameters(self):
        return [c for c in self.centroids if c is not None and c.numel()]

    def matrices(self):
        torch = self.torch
        out = []
        for index, centroids in zip(self.index, self.centroids):
            if index is None:
                out.append(None)
                continue
            # Entry 0 is a constant: it gets no gradient and pruned weights stay exactly 0.
            book = torch.cat([centroids.new_zeros(1), centroids])
            out.append(book[index])
        return out

    def codebooks(self):
        return [None if c is None
                else np.concatenate([[0.0], c.detach().numpy().astype(np.float64)])
                for c in self.centroids]


def _labels(torch, model, x, y):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    if x.shape[1:] != model.input_shape or x.shape[0] != y.shape[0] or y.ndim != 1:
        raise ModelError(f"model {model.name!r} expects inputs (n, "
                         f"{', '.join(map(str, model.input_shape))}) and n integer labels, gets "
                         f"{x.shape} and {y.shape}")
    if len(model.output_shape) != 1:
        raise ModelError(f"model {model.name!r} outputs shape {model.output_shape}, not a "
                         f"vector of class scores; fine-tuning needs a classifier")
    if y.size and (y.min() < 0 or y.max() >= model.output_shape[0]):
        raise ModelError(f"labels must be in 0..{model.output_shape[0] - 1}")
    # Copies: the inputs may be read-only (the cached digits split), which torch warns about.
    return torch.tensor(x), torch.tensor(y.astype(np.int64))


def _loss(torch, model, shared, x, y, batch_size):
    total = 0.0
    with torch.no_grad():
        matrices = shared.matrices()
        for start in range(0, x.shape[0], batch_size):
            logits = _forward(torch, model, matrices, x[start:start + batch_size])
            total += float(torch.nn.functional.cross_entropy(
                logits, y[start:start + batch_size], reduction="sum"))
    return total / max(1, x.shape[0])


def shared_loss(model: FloatModel, assignments, codebooks, x, y, *, batch_size: int = 256
                ) -> float:
    """Mean cross-entropy of ``model`` with weights ``codebooks[i][assignments[i]]``.

    Parameters are as for :func:`finetune_codebooks`; the model's own weight values are not
    used, only its biases and structure.
    """
    torch = require_torch()
    assignments, codebooks = _check(model, assignments, codebooks)
    x, y = _labels(torch, model, x, y)
    return _loss(torch, model, _Shared(torch, assignments, codebooks), x, y, batch_size)


def finetune_codebooks(model: FloatModel, assignments: list, codebooks: list, x_train, y_train,
                       *, epochs: int = 5, lr: float = 1e-3, batch_size: int = 64,
                       seed: int = 0, progress: bool = True) -> list:
    """Train the shared weights (centroids) of a pruned, weight-shared model.

    Parameters
    ----------
    model : FloatModel
        The float model; its structure and biases are used (biases stay frozen), its weight
        values are replaced by the codebooks.
    assignments : list
        Per layer: ``None`` for layers without weights, else an integer array shaped like
        :func:`host.floatmodel.weight_matrix` of the layer holding each weight's codebook index
        (0 = pruned).
    codebooks : list
        Per layer: ``None`` or the float codebook vector; entry 0 must be 0.0.
    x_train : array_like, shape ``(n, *model.input_shape)``
        Training inputs.
    y_train : array_like of int, shape ``(n,)``
        Class labels; the model's output is taken as class logits.
    epochs : int
        Passes over the training data (Adam, mini-batches shuffled with ``seed``).
    lr : float
        Adam learning rate.
    batch_size : int
        Mini-batch size.
    seed : int
        Seed of the shuffling, for reproducible results.
    progress : bool
        Show a tqdm progress bar over the epochs.

    Notes
    -----
    Training runs in float64 on one CPU thread (the previous thread count is restored), so a
    given seed gives the same codebooks whatever the number of cores.

    Returns
    -------
    list
        Per layer: ``None`` or the new codebook (float64, same length, entry 0 exactly 0.0).
        The codebooks after the epoch with the lowest mean training loss are returned, the
        given codebooks counting as epoch 0, so the training loss never increases.  Centroids
        may change order; the assignments remain valid as they are.

    Raises
    ------
    ModelError
        If PyTorch is missing or the arguments do not match the model.
    """
    torch = require_torch()
    from tqdm.auto import tqdm

    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"`epochs` must be a non-negative integer, not {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, not {batch_size!r}")
    assignments, codebooks = _check(model, assignments, codebooks)
    x, y = _labels(torch, model, x_train, y_train)
    threads = torch.get_num_threads()
    # One thread: spine-sized layers are too small to gain from intra-op threads (on a busy
    # machine they lose many times over), and the result does not depend on the core count.
    torch.set_num_threads(1)
    try:
        return _train(torch, tqdm, model, assignments, codebooks, x, y, epochs=epochs, lr=lr,
                      batch_size=batch_size, seed=seed, progress=progress)
    finally:
        torch.set_num_threads(threads)


def _train(torch, tqdm, model, assignments, codebooks, x, y, *, epochs, lr, batch_size, seed,
           progress):
    shared = _Shared(torch, assignments, codebooks)
    params = shared.parameters()
    best_loss = _loss(torch, model, shared, x, y, 256)
    best = shared.codebooks()
    if not params or epochs == 0 or x.shape[0] == 0:
        return best
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(range(epochs), desc=f"fine-tune {model.name}", unit="epoch", disable=not progress)
    for _ in bar:
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], batch_size):
            batch = order[start:start + batch_size]
            optimizer.zero_grad()
            logits = _forward(torch, model, shared.matrices(), x[batch])
            torch.nn.functional.cross_entropy(logits, y[batch]).backward()
            optimizer.step()
        loss = _loss(torch, model, shared, x, y, 256)
        if loss < best_loss:
            best_loss, best = loss, shared.codebooks()
        bar.set_postfix(loss=f"{loss:.4f}", best=f"{best_loss:.4f}")
    return best
