"""The matrix part of an engine's memory image, shared by the SpMV, LSTM and CNN engines.

All three engines hold their sparse matrices the same way: :func:`check_encoding` and
:func:`check_weights` tell whether a matrix fits an engine.  Pure NumPy;
an ``engine`` is any object with the engine's ``n_pe``, ``index_bits``, ``run_bits`` and
``weight_width`` (:class:`host.memory_map.SpmvParams`, :class:`host.memory_map.LstmParams`,
:class:`host.cnn_image.CnnConfig`).
"""

from __future__ import annotations

import numpy as np

from .compressed import SparseMatrix

__all__ = ["check_encoding", "check_weights"]


def check_encoding(engine, matrix: SparseMatrix, where: str) -> None:
    """Check that ``matrix`` is encoded for ``engine``'s PEs and entry fields.

    Parameters
    ----------
    engine : SpmvParams, LstmParams or CnnConfig
        The engine (its ``n_pe``, ``index_bits`` and ``run_bits``).
    matrix : SparseMatrix
        The matrix to check.
    where : str
        What the matrix is, first words of the messages (``"layer 2"``).

    Raises
    ------
    ValueError
        If the PE count or the index / run widths differ from the engine's.
    """
    enc = matrix.encoded
    if enc.n_pe != engine.n_pe:
        raise ValueError(f"{where} is encoded for {enc.n_pe} PEs, the engine has {engine.n_pe}")
    if (enc.index_bits, enc.run_bits) != (engine.index_bits, engine.run_bits):
        raise ValueError(f"{where} has {enc.index_bits}-bit indices and {enc.run_bits}-bit "
                         f"runs, the engine {engine.index_bits} and {engine.run_bits}")


def check_weights(engine, matrix: SparseMatrix, where: str) -> None:
    """Check that ``matrix``'s codebook and its fraction bits fit ``engine``'s weights.

    Parameters
    ----------
    engine : SpmvParams, LstmParams or CnnConfig
        The engine (its ``weight_width``).
    matrix : SparseMatrix
        The matrix to check.
    where : str
        What the matrix is, first words of the messages.

    Raises
    ------
    ValueError
        If the weight fraction bits or a codebook value do not fit ``weight_width`` bits.
    """
    if matrix.weight_format.frac >= engine.weight_width:
        raise ValueError(f"{where}: weight fraction bits {matrix.weight_format.frac} do not "
                         f"fit a {engine.weight_width}-bit weight")
    book = np.asarray(matrix.codebook, dtype=np.int64)
    lo, hi = -(1 << (engine.weight_width - 1)), (1 << (engine.weight_width - 1)) - 1
    if book.min() < lo or book.max() > hi:
        raise ValueError(f"{where}: codebook values do not fit {engine.weight_width} bits")
