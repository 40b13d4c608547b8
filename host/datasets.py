"""The data set of the bundled example models: scikit-learn's 8x8 handwritten digits.

``load_digits()`` ships inside scikit-learn (no download): 1797 images of 8x8 pixels with
intensities 0..16, ten classes.  :func:`digits_split` scales the pixels to ``[0, 1]`` and makes
one fixed, stratified train/test split (75 % / 25 %, ``random_state=0``) that the training
script, the examples and the accuracy reports all share.  :func:`digits_inputs` reshapes the
flat 64-pixel rows to the input layout of each example model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = ["LAYOUTS", "SPLIT_SEED", "TEST_SIZE", "Split", "digits_inputs", "digits_split"]

TEST_SIZE = 0.25
"""Fraction of the digits held out as the test split."""

SPLIT_SEED = 0
"""``random_state`` of the split: the split is the same on every machine and run."""

LAYOUTS = {
    "mlp": (64,),       # the flat image
    "lstm": (8, 8),     # image rows as 8 time steps of 8 features
    "cnn": (1, 8, 8),   # one channel of 8x8
}
"""Per-sample input shape of every model layout :func:`digits_inputs` knows."""


@dataclass(frozen=True)
class Split:
    """A train/test split of a classification data set.

    Attributes
    ----------
    x_train, x_test : ndarray of float64, shape ``(n, 64)``
        Pixels scaled to ``[0, 1]``, one flat row per image.
    y_train, y_test : ndarray of int64, shape ``(n,)``
        Class labels 0..9.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@functools.lru_cache(maxsize=1)
def _cached_split() -> tuple:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float64) / 16.0
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y)
    return x_train, y_train, x_test, y_test


def digits_split() -> Split:
    """The digits data set, pixels in ``[0, 1]``, split 75 / 25 stratified and deterministic.

    Returns
    -------
    Split
        1347 training and 450 test images (flat, 64 pixels each) with their labels.  The data
        set is read once and cached; every call returns fresh copies, free to modify.
    """
    return Split(*(np.array(a) for a in _cached_split()))


def digits_inputs(x_flat, layout: str) -> np.ndarray:
    """Reshape flat 64-pixel digit rows to a model's input layout.

    Parameters
    ----------
    x_flat : array_like, shape ``(n, 64)``
        Images as rows of 64 pixels in row-major (y, x) order, as :func:`digits_split` gives.
    layout : {"mlp", "lstm", "cnn"}
        ``"mlp"``: ``(n, 64)`` unchanged; ``"lstm"``: ``(n, 8, 8)``, the image rows as 8 time
        steps of 8 features; ``"cnn"``: ``(n, 1, 8, 8)``, one channel.

    Returns
    -------
    ndarray of float64
        The reshaped inputs (a view when possible).

    Raises
    ------
    ValueError
        For an unknown layout or rows that are not 64 pixels long.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown input layout {layout!r}; choose one of "
                         f"{', '.join(sorted(LAYOUTS))}")
    x_flat = np.asarray(x_flat, dtype=np.float64)
    if x_flat.ndim != 2 or x_flat.shape[1] != 64:
        raise ValueError(f"digit images must be rows of 64 pixels, shape (n, 64), "
                         f"not {x_flat.shape}")
    return x_flat.reshape((x_flat.shape[0],) + LAYOUTS[layout])
