"""Train the bundled digit models.

``python -m host.examples.train_digits [--model NAME] [--out DIR]``.

What this script does, for each model (see ``README.md`` beside it for the numbers):

1. **Dense training.**  The PyTorch network is trained on the digits training split
   (:func:`host.datasets.digits_split`, 1347 images) with Adam and cross-entropy, on the CPU,
   one thread, fixed seeds, so a rerun gives the same weights.
2. **Iterative load-balance-aware pruning and retraining** (Deep Compression stage 1 with ESE's
   load balancing).  The density steps down a schedule (e.g. 0.5, 0.35, then the example's
   recommended density).  At every step each layer's weight matrix, in the layout of
   :func:`host.floatmodel.weight_matrix` (``[W_ih | W_hh]`` for an LSTM, ``(C_out,
   C_in*k*k)`` for a convolution), gets a mask that keeps its largest-magnitude weights *per
   PE*: row ``i`` belongs to PE ``i mod 8`` and every PE keeps the same number of weights (the
   rule of :func:`host.pruning.balanced_mask`).  The network is then retrained with the pruned
   weights held at exactly zero.
3. The final sparse float weights are converted with :func:`host.torch_import.from_torch` and
   written with :func:`host.floatmodel.save_npz` (float32).

So the shipped weights are the *pruned and retrained* float weights: their "float accuracy"
(``accuracy_float`` in the compressor's report) is the accuracy of this sparse float model, and
compressing it at the recommended density keeps exactly its non-zeros.  No weight sharing or
quantization is trained in; the compressor's k-means (2**4 - 1 shared values per layer) and
16-bit fixed point run on these weights as they are.

``--check`` (on by default) then simulates the compressor in float NumPy, independently of
``host.compress``: the same balanced pruning, 1-D k-means with linear initialisation per layer,
rounding of the shared values to 16-bit fixed point, and evaluation on the test split; it
prints the accuracies and an estimate of the storage.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datasets import digits_inputs, digits_split
from ..floatmodel import FloatModel, save_npz, weight_matrix, with_weight_matrix
from ..torch_import import from_torch, require_torch
from . import EXAMPLES

N_PE = 8
"""PEs the load-balance-aware pruning is done for (the board's sparse engine)."""

SEED = 0


# ----------------------------------------------------------------------------------------------
# Architectures


def _build(name: str):
    torch = require_torch()
    nn = torch.nn

    class DigitsLSTM(nn.Module):
        """LSTM over the image rows; the classifier reads the last hidden state ``h_T``."""

        def __init__(self, hidden=64):
            super().__init__()
            self.lstm = nn.LSTM(8, hidden, batch_first=True)
            self.classifier = nn.Linear(hidden, 10)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.classifier(out[:, -1])

        def spine_layers(self):
            return [self.lstm, self.classifier]

    if name == "digits-mlp":
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                             nn.Linear(64, 10))
    if name == "digits-lstm":
        return DigitsLSTM(64)
    if name == "digits-cnn":
        # The second max-pool pair reduces 2x2 to 1x1 (a global max), keeping the classifier
        # small: a 10-row matrix spreads over 8 PEs badly and costs column counts for little.
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64, 10))
    raise KeyError(name)


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters of one model."""

    dense_epochs: int
    schedule: tuple          # densities of the pruning steps before the example's target
    retrain_epochs: int
    lr: float = 3e-3
    retrain_lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 0.0
    share_epochs: int = 10   # final retraining through the weight sharing (straight-through)
    pull: float = 0.05       # per step, fraction of the way kept weights move to their centroid


RECIPES = {
    "digits-mlp": Recipe(dense_epochs=40, schedule=(0.5, 0.35, 0.25), retrain_epochs=20),
    "digits-lstm": Recipe(dense_epochs=60, schedule=(0.5, 0.35), retrain_epochs=20,
                          retrain_lr=3e-3),
    "digits-cnn": Recipe(dense_epochs=40, schedule=(0.5, 0.35), retrain_epochs=20),
}


# ----------------------------------------------------------------------------------------------
# NumPy pieces of the compression pipeline (independent re-implementations)


def balanced_mask(matrix: np.ndarray, density: float, n_pe: int = N_PE) -> np.ndarray:
    """Load-balance-aware magnitude pruning mask of a 2-D matrix over row-interleaved PEs.

    Keeps ``round(size * density)`` weights in total (half up, at least 1), split as evenly as
    the PEs' sub-matrices allow; each PE keeps its largest ``|w|`` (ties by position).
    """
    rows, cols = matrix.shape
    total = int(min(matrix.size, max(1, np.floor(matrix.size * density + 0.5))))
    capacity = np.array([len(range(pe, rows, n_pe)) * cols for pe in range(n_pe)])
    quota = np.zeros(n_pe, dtype=np.int64)
    remaining = total
    while remaining > 0:
        open_pes = np.flatnonzero(quota < capacity)
        share, extra = divmod(remaining, len(open_pes))
        for rank, pe in enumerate(open_pes):
            add = min(share + (rank < extra), capacity[pe] - quota[pe])
            quota[pe] += add
            remaining -= add
    mask = np.zeros(matrix.shape, dtype=bool)
    for pe in range(n_pe):
        sub = np.abs(matrix[pe::n_pe]).ravel()
        keep = np.zeros(sub.size, dtype=bool)
        keep[np.argsort(-sub, kind="stable")[:quota[pe]]] = True
        mask[pe::n_pe] = keep.reshape(-1, cols)
    return mask


def kmeans_1d(values: np.ndarray, clusters: int, iterations: int = 100):
    """Lloyd's 1-D k-means with centroids initialised linearly over ``[min, max]``.

    Returns the sorted centroids and each value's cluster index.
    """
    centroids = np.linspace(values.min(), values.max(), clusters)
    assign = None
    for _ in range(iterations):
        new = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        counts = np.bincount(assign, minlength=clusters)
        sums = np.bincount(assign, weights=values, minlength=clusters)
        centroids = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), centroids))
    return centroids, assign


def entries_per_column(mask: np.ndarray, n_pe: int, run_bits: int = 4) -> np.ndarray:
    """EIE entries per (PE, column) including zero-run padding, ``(n_pe, cols)``."""
    max_run = (1 << run_bits) - 1
    cols = mask.shape[1]
    out = np.zeros((n_pe, cols), dtype=np.int64)
    for pe in range(n_pe):
        sub = mask[pe::n_pe]
        for col in range(cols):
            local = np.flatnonzero(sub[:, col])
            gaps = np.diff(np.concatenate([[-1], local])) - 1
            out[pe, col] = len(local) + int(np.sum(gaps // (max_run + 1)))
    return out


def simulate_compression(model: FloatModel, x, y, *, density: float, bits: int = 4,
                         n_pe: int = N_PE, weight_bits: int = 16, count_bits=None) -> dict:
    """Prune, share and round ``model``'s weights; return accuracy and a storage estimate.

    Storage model: per weight layer ``entries * (bits + 4)`` bits (padding entries included),
    ``n_pe * cols * count_bits`` bits of per-PE column counts (``count_bits=None``: as many
    bits as the layer's longest column needs), a ``2**bits``-entry codebook
    and the biases (LSTM: ``b_ih + b_hh`` folded) at ``weight_bits``; against float32 of all
    weights and biases as stored in the float model.
    """
    layers = []
    compressed_bits = 0
    float_bits = 0
    for layer in model.layers:
        matrix = weight_matrix(layer)
        if matrix is None:
            layers.append(layer)
            continue
        mask = balanced_mask(matrix, density, n_pe)
        centroids, assign = kmeans_1d(matrix[mask], (1 << bits) - 1)
        peak = np.abs(centroids).max()
        frac = weight_bits - 1 - max(0, int(np.floor(np.log2(peak))) + 1) if peak else 0
        centroids = np.floor(centroids * 2.0 ** frac + 0.5) / 2.0 ** frac
        shared = np.zeros_like(matrix)
        shared[mask] = centroids[assign]
        layers.append(with_weight_matrix(layer, shared))
        biases = sum(a.size for k, a in layer.arrays().items() if k.startswith("b"))
        folded = biases // 2 if layer.kind == "lstm" else biases
        counts = entries_per_column(mask, n_pe)
        width = count_bits if count_bits is not None else max(1, int(counts.max()).bit_length())
        compressed_bits += (counts.sum() * (bits + 4) + counts.size * width
                            + (1 << bits) * weight_bits + folded * weight_bits)
        float_bits += 32 * (matrix.size + biases)
    shared_model = FloatModel(model.name + "-shared", model.input_shape, layers)
    return {
        "accuracy_float": accuracy(model, x, y),
        "accuracy_compressed": accuracy(shared_model, x, y),
        "storage_ratio": float_bits / compressed_bits,
        "float_bits": int(float_bits),
        "compressed_bits": int(compressed_bits),
    }


def accuracy(model: FloatModel, x, y) -> float:
    """Top-1 accuracy of ``model`` (float forward) on ``x``, ``y``."""
    return float(np.mean(np.argmax(model.forward(x), axis=1) == y))


# ----------------------------------------------------------------------------------------------
# Training


def _weight_params(module):
    """Torch parameters forming each weight matrix, in FloatModel weight-layer order.

    Returns a list of lists: ``[weight]`` (Linear, Conv2d) or ``[weight_ih_l0, weight_hh_l0]``
    (a one-layer LSTM), matching :func:`host.floatmodel.weight_matrix`.
    """
    torch = require_torch()
    nn = torch.nn
    out = []
    for leaf in module.modules():
        if isinstance(leaf, (nn.Linear, nn.Conv2d)):
            out.append([leaf.weight])
        elif isinstance(leaf, nn.LSTM):
            out.append([leaf.weight_ih_l0, leaf.weight_hh_l0])
    return out


def _group_matrix(params) -> np.ndarray:
    """The weight matrix (float64) formed by a group of torch parameters."""
    return np.hstack([p.detach().double().numpy().reshape(p.shape[0], -1) for p in params])


def _set_group(params, matrix: np.ndarray) -> None:
    """Copy ``matrix`` (layout of :func:`_group_matrix`) into the group's parameters."""
    torch = require_torch()
    start = 0
    with torch.no_grad():
        for param in params:
            width = int(np.prod(param.shape[1:]))
            part = np.ascontiguousarray(matrix[:, start:start + width]).reshape(param.shape)
            param.copy_(torch.from_numpy(part))
            start += width


def shared_matrix(matrix: np.ndarray, mask: np.ndarray, bits: int) -> np.ndarray:
    """``matrix`` with its kept weights replaced by their k-means centroids (zeros elsewhere)."""
    out = np.zeros_like(matrix)
    if mask.any():
        centroids, assign = kmeans_1d(matrix[mask], (1 << bits) - 1)
        out[mask] = centroids[assign]
    return out


def _fit(module, x, y, *, epochs, lr, batch_size, weight_decay, generator, masks=None,
         share_bits=None, pull=0.0):
    """Adam + cosine schedule; ``masks`` (per weight group) hold pruned weights at zero;
    ``share_bits`` trains through weight sharing with a straight-through estimator, ``pull``
    the fraction of the way to its shared value each kept weight moves after every step."""
    torch = require_torch()
    groups = _weight_params(module)
    keep = []
    if masks is not None:
        for params, mask in zip(groups, masks):
            _set_group(params, _group_matrix(params) * mask)
            start = 0
            for param in params:
                width = int(np.prod(param.shape[1:]))
                part = np.ascontiguousarray(mask[:, start:start + width]).reshape(param.shape)
                keep.append((param, torch.from_numpy(part).to(param.dtype)))
                start += width
    optimizer = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs))
    loss_fn = torch.nn.CrossEntropyLoss()
    module.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], batch_size):
            batch = order[start:start + batch_size]
            optimizer.zero_grad()
            loss_fn(module(x[batch]), y[batch]).backward()
            if share_bits:
                # Straight-through estimator: add the gradients of the weight-shared network
                # (taken at the shared weights) to those of the float network, so the float
                # weights are trained to be good both as they are and after weight sharing.
                saved = [_group_matrix(params) for params in groups]
                for params, matrix, mask in zip(groups, saved, masks):
                    _set_group(params, shared_matrix(matrix, mask, share_bits))
                loss_fn(module(x[batch]), y[batch]).backward()
                for params, matrix in zip(groups, saved):
                    _set_group(params, matrix)
            optimizer.step()
            if share_bits and pull:
                # Draw every kept weight a little towards its shared value, so the float
                # network and its weight-shared version end up (nearly) the same.
                for params, mask in zip(groups, masks):
                    matrix = _group_matrix(params)
                    _set_group(params, matrix + pull * (shared_matrix(matrix, mask, share_bits)
                                                        - matrix))
            with torch.no_grad():
                for param, mask in keep:
                    param.mul_(mask)
        schedule.step()
    module.eval()


def train(name: str, *, verbose: bool = True) -> FloatModel:
    """Train, prune and retrain example ``name``; return the sparse float model."""
    torch = require_torch()
    spec = EXAMPLES[name]
    recipe = RECIPES[name]
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    split = digits_split()
    x = torch.tensor(digits_inputs(split.x_train, spec.layout), dtype=torch.float32)
    y = torch.tensor(split.y_train)
    x_test = digits_inputs(split.x_test, spec.layout)
    shape = tuple(x.shape[1:])
    module = _build(name)
    fit = {"batch_size": recipe.batch_size, "weight_decay": recipe.weight_decay,
           "generator": generator}

    def report(stage, masks=None):
        if verbose:
            model = from_torch(module, shape, name)
            text = f"  {name} {stage}: test accuracy {accuracy(model, x_test, split.y_test):.4f}"
            if masks is not None:
                layers, groups = [], iter(masks)
                for layer in model.layers:
                    matrix = weight_matrix(layer)
                    layers.append(layer if matrix is None else with_weight_matrix(
                        layer, shared_matrix(matrix, next(groups), spec.defaults["bits"])))
                shared = FloatModel(name, shape, layers)
                text += f", weight-shared {accuracy(shared, x_test, split.y_test):.4f}"
            print(text, flush=True)

    _fit(module, x, y, epochs=recipe.dense_epochs, lr=recipe.lr, **fit)
    report("dense")
    masks = None
    for density in (*recipe.schedule, spec.defaults["density"]):
        masks = [balanced_mask(_group_matrix(params), density)
                 for params in _weight_params(module)]
        _fit(module, x, y, epochs=recipe.retrain_epochs, lr=recipe.retrain_lr, masks=masks,
             **fit)
        report(f"density {density}", masks)
    if recipe.share_epochs:
        _fit(module, x, y, epochs=recipe.share_epochs, lr=recipe.retrain_lr, masks=masks,
             share_bits=spec.defaults["bits"], pull=recipe.pull, **fit)
        report(f"weight-sharing-aware retraining ({spec.defaults['bits']} bits)", masks)
    return from_torch(module, shape, name)


def main(argv=None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m host.examples.train_digits",
        description="Train, prune (8-PE load-balanced) and retrain the bundled digit models "
                    "and write them as .npz files.")
    parser.add_argument("--model", choices=sorted(EXAMPLES), action="append",
                        help="model to train (repeatable; default: all)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output directory (default: the host/examples package)")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the simulated compression check")
    args = parser.parse_args(argv)
    torch = require_torch()
    torch.set_num_threads(1)   # bit-reproducible CPU results
    args.out.mkdir(parents=True, exist_ok=True)
    split = digits_split()
    for name in args.model or sorted(EXAMPLES):
        spec = EXAMPLES[name]
        start = time.perf_counter()
        model = train(name)
        elapsed = time.perf_counter() - start
        path = args.out / spec.file
        save_npz(model, path)
        print(f"{name}: trained in {elapsed:.1f} s, wrote {path}", flush=True)
        if args.check:
            x_test = digits_inputs(split.x_test, spec.layout)
            result = simulate_compression(model, x_test, split.y_test, **spec.defaults)
            print(f"  simulated compression at {spec.defaults}: float "
                  f"{result['accuracy_float']:.4f}, compressed "
                  f"{result['accuracy_compressed']:.4f}, storage "
                  f"{result['storage_ratio']:.1f}x smaller than float32", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
