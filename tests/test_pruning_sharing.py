"""Pruning and weight sharing against direct NumPy computations."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from host.pruning import balanced_mask, keep_count, magnitude_mask, pe_balance
from host.sharing import share_weights


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 40), st.integers(1, 30), st.integers(1, 12),
       st.floats(0.01, 1.0), st.integers(0, 2**32 - 1))
def test_balanced_mask_keeps_equal_counts_per_pe(rows, cols, n_pe, density, seed):
    w = np.random.default_rng(seed).standard_normal((rows, cols))
    mask = balanced_mask(w, density, n_pe)
    assert mask.sum() == keep_count(w.size, density)
    counts = np.array(pe_balance(mask, n_pe).per_pe)
    capacity = np.array([len(range(p, rows, n_pe)) * cols for p in range(n_pe)])
    # PEs that are not full differ by at most one non-zero.
    open_counts = counts[counts < capacity]
    if len(open_counts):
        assert open_counts.max() - open_counts.min() <= 1
        assert counts.max() - open_counts.min() <= 1
    # Within each PE, every kept weight is at least as large as every dropped one.
    for p in range(n_pe):
        kept, dropped = np.abs(w[p::n_pe][mask[p::n_pe]]), np.abs(w[p::n_pe][~mask[p::n_pe]])
        if kept.size and dropped.size:
            assert kept.min() >= dropped.max()


def test_magnitude_mask_keeps_largest():
    w = np.array([[0.1, -5.0, 0.3], [2.0, -0.2, 0.0]])
    assert magnitude_mask(w, 0.5).tolist() == [[False, True, True], [True, False, False]]


def test_balance_improves_on_skewed_matrix():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)) * np.where(np.arange(64) % 8 == 0, 10, 1)[:, None]
    before = pe_balance(magnitude_mask(w, 0.1), 8)
    after = pe_balance(balanced_mask(w, 0.1, 8), 8)
    assert before.efficiency < 0.5
    assert max(after.per_pe) - min(after.per_pe) <= 1


def test_density_validation():
    with pytest.raises(ValueError, match=r"`density` must be in \(0, 1\], not 0.0"):
        magnitude_mask(np.ones((2, 2)), 0.0)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_kmeans_is_a_fixed_point_of_lloyd(bits, seed):
    """Every kept weight maps to its nearest centroid, and each used centroid is the mean of
    its cluster (the two conditions of a converged 1-D k-means)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((30, 20))
    mask = rng.random(w.shape) < 0.5
    codebook, idx = share_weights(w, mask, bits, iterations=500)
    assert codebook[0] == 0 and np.all(idx[~mask] == 0) and np.all(idx[mask] >= 1)
    values, assigned = w[mask], idx[mask]
    nearest = np.argmin(np.abs(values[:, None] - codebook[None, 1:]), axis=1) + 1
    assert np.allclose(np.abs(values - codebook[assigned]), np.abs(values - codebook[nearest]))
    for k in np.unique(assigned):
        assert np.isclose(codebook[k], values[assigned == k].mean())


def test_kmeans_linear_initialisation_spans_range():
    w = np.linspace(-1, 1, 101)[None, :]
    codebook, _ = share_weights(w, np.ones_like(w, bool), 2, iterations=0)
    assert np.allclose(codebook[1:], [-1, 0, 1])
