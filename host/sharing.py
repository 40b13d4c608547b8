"""Weight sharing (Deep Compression stage 2): per-layer 1-D k-means into a small codebook.

Index 0 of every codebook is reserved for the value 0.0: pruned weights and EIE's padding
entries use it.  The surviving weights are clustered into the other ``2**bits - 1`` centroids,
initialised linearly between their minimum and maximum (the initialisation Deep Compression
found best).  The k-means is a 1-D Lloyd iteration written here (assignment by binary search
over the sorted centroids' midpoints), which is exact and much faster in 1-D than a general
library k-means, and deterministic.
"""

from __future__ import annotations

import numpy as np

__all__ = ["share_weights", "MAX_BITS"]

MAX_BITS = 8


def _assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index (into sorted ``centroids``) of the nearest centroid of each value."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(midpoints, values, side="left")


def share_weights(weights: np.ndarray, mask: np.ndarray, bits: int, *, iterations: int = 50):
    """Cluster the kept weights of one layer.

    Parameters
    ----------
    weights : ndarray of float
        The layer's weight matrix.
    mask : ndarray of bool
        Which weights survive pruning (same shape).
    bits : int
        Index width B, 1..8: the codebook has ``2**B`` entries, entry 0 being 0.0.
    iterations : int
        Maximum Lloyd iterations (stops early when assignments no longer change).

    Returns
    -------
    codebook : ndarray of float64, shape ``(2**bits,)``
        Sorted non-zero centroids in entries 1.., ``codebook[0] == 0.0``.
    indices : ndarray of uint8, same shape as ``weights``
        Codebook index of every weight; 0 where pruned.
    """
    if not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"`bits` must be an integer from 1 to {MAX_BITS}, not {bits!r}")
    weights = np.asarray(weights, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    n_clusters = (1 << bits) - 1
    codebook = np.zeros(1 << bits)
    indices = np.zeros(weights.shape, dtype=np.uint8)
    values = weights[mask]
    if values.size == 0:
        return codebook, indices
    lo, hi = values.min(), values.max()
    centroids = np.linspace(lo, hi, n_clusters) if n_clusters > 1 else np.array([values.mean()])
    assignment = _assign(values, centroids)
    for _ in range(iterations):
        sums = np.bincount(assignment, weights=values, minlength=n_clusters)
        counts = np.bincount(assignment, minlength=n_clusters)
        # An empty cluster keeps its previous centroid.
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        order = np.argsort(centroids, kind="stable")
        centroids = centroids[order]
        new_assignment = _assign(values, centroids)
        if np.array_equal(new_assignment, assignment) and np.all(order == np.arange(n_clusters)):
            break
        assignment = new_assignment
    codebook[1:] = centroids
    indices[mask] = assignment + 1
    return codebook, indices
