"""Magnitude pruning, plain and load-balance-aware (ESE).

Rows are interleaved over the PEs as in EIE: row ``i`` belongs to PE ``i mod n_pe``.  Plain
magnitude pruning keeps the largest weights of the whole matrix; load-balance-aware pruning
keeps the largest weights *of every PE's sub-matrix*, the same number (+-1) in each, so no PE
waits for another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["keep_count", "magnitude_mask", "balanced_mask", "Balance", "pe_balance"]


def _check_density(density: float) -> float:
    density = float(density)
    if not 0.0 < density <= 1.0:
        raise ValueError(f"`density` must be in (0, 1], not {density}")
    return density


def keep_count(size: int, density: float) -> int:
    """Number of weights kept out of ``size`` at ``density`` (round half up, at least 1)."""
    density = _check_density(density)
    if size == 0:
        return 0
    return int(min(size, max(1, np.floor(size * density + 0.5))))


def _top_k_mask(values: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` largest ``|values|``; ties broken by position (stable)."""
    flat = np.abs(values).ravel()
    mask = np.zeros(flat.size, dtype=bool)
    if k > 0:
        order = np.argsort(-flat, kind="stable")
        mask[order[:k]] = True
    return mask.reshape(values.shape)


def magnitude_mask(weights: np.ndarray, density: float) -> np.ndarray:
    """Keep the ``keep_count(size, density)`` largest-magnitude weights of the matrix."""
    weights = np.asarray(weights)
    return _top_k_mask(weights, keep_count(weights.size, density))


def balanced_mask(weights: np.ndarray, density: float, n_pe: int) -> np.ndarray:
    """Load-balance-aware pruning of a 2-D matrix over ``n_pe`` row-interleaved PEs.

    The total kept is ``keep_count(size, density)``; it is split as evenly as the PEs'
    sub-matrix sizes allow (``total // n_pe`` each, one more for the first ``total % n_pe``
    PEs with room), and every PE keeps its largest-magnitude weights.
    """
    weights = np.asarray(weights)
    if weights.ndim != 2:
        raise ValueError(f"`weights` must be a 2-D matrix, not shape {weights.shape}")
    if not isinstance(n_pe, int) or n_pe < 1:
        raise ValueError(f"`n_pe` must be a positive integer, not {n_pe!r}")
    rows, cols = weights.shape
    total = keep_count(weights.size, density)
    capacity = np.array([len(range(pe, rows, n_pe)) * cols for pe in range(n_pe)])
    quota = _water_fill(capacity, total)
    mask = np.zeros(weights.shape, dtype=bool)
    for pe in range(n_pe):
        mask[pe::n_pe] = _top_k_mask(weights[pe::n_pe], int(quota[pe]))
    return mask


def _water_fill(capacity: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over bins of the given capacities as evenly as possible.

    PEs whose sub-matrix is too small are filled; the others get ``base`` or ``base + 1``,
    so any two PEs that are not full differ by at most one.
    """
    quota = np.zeros(len(capacity), dtype=np.int64)
    remaining = int(total)
    order = np.argsort(capacity, kind="stable")
    for rank, pe in enumerate(order):
        left = len(order) - rank
        if capacity[pe] * left <= remaining:
            quota[pe] = capacity[pe]
            remaining -= int(capacity[pe])
            continue
        base, extra = divmod(remaining, left)
        rest = order[rank:]
        quota[rest] = base
        # Every PE from here on has room for base + 1 (its capacity exceeds the average);
        # the lowest-numbered ones take the extra non-zeros.
        quota[np.sort(rest)[:extra]] += 1
        break
    return quota


@dataclass(frozen=True)
class Balance:
    """Non-zeros per PE of one matrix: ``per_pe``, their mean and max, efficiency mean/max."""

    per_pe: tuple
    mean: float
    max: int

    @property
    def efficiency(self) -> float:
        """``mean / max``: 1.0 when every PE has the same work."""
        return self.mean / self.max if self.max else 1.0

    def to_dict(self) -> dict:
        return {"per_pe": list(self.per_pe), "mean": self.mean, "max": self.max,
                "efficiency": self.efficiency}


def pe_balance(mask: np.ndarray, n_pe: int) -> Balance:
    """Non-zeros per PE of a 2-D matrix (or boolean mask) under row interleaving."""
    mask = np.asarray(mask) != 0
    per_pe = tuple(int(mask[pe::n_pe].sum()) for pe in range(n_pe))
    return Balance(per_pe, float(np.mean(per_pe)), int(max(per_pe)))
