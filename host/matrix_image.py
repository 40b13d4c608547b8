"""The matrix part of an engine's memory image, shared by the SpMV, LSTM and CNN engines.

All three engines hold their sparse matrices the same way (one loader, regions ENTRY, POINTER,
CODEBOOK and BIAS): :func:`check_encoding` and :func:`check_weights` tell whether a matrix fits
an engine, :class:`MatrixMemories` lays matrices out one after another, and
:class:`LoaderWrites` collects the loader writes ``(region, addr, data, lanes)``.  Pure NumPy;
an ``engine`` is any object with the engine's ``n_pe``, ``index_bits``, ``run_bits`` and
``weight_width`` (:class:`host.memory_map.SpmvParams`, :class:`host.memory_map.LstmParams`,
:class:`host.cnn_image.CnnConfig`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .compressed import SparseMatrix, requant_shift
from .encoding import EncodedMatrix, pad_groups, pointer_fields, pointer_words
from .fixedpoint import wrap

__all__ = ["check_encoding", "check_weights", "MatrixMemories", "LoaderWrites", "pad_matrix"]


def pad_matrix(matrix: SparseMatrix, group: int) -> SparseMatrix:
    """``matrix`` with its encoding padded for lockstep PE groups of ``group``
    (:func:`host.encoding.pad_groups`; the same weights, so the golden model is unchanged)."""
    return replace(matrix, encoded=pad_groups(matrix.encoded, group))


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
    try:
        requant_shift(matrix.weight_format, getattr(engine, "product_shift", 0))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    book = np.asarray(matrix.codebook, dtype=np.int64)
    lo, hi = -(1 << (engine.weight_width - 1)), (1 << (engine.weight_width - 1)) - 1
    if book.min() < lo or book.max() > hi:
        raise ValueError(f"{where}: codebook values do not fit {engine.weight_width} bits")


class MatrixMemories:
    """Entry, pointer, codebook and bias memories, filled one matrix after another.

    Matrix ``n`` placed gets codebook slot ``n`` and the next entry addresses (as many per PE
    as its longest PE has entries, shorter PEs padded with 0), ``cols`` pointer slots (one
    pointer word per column, :func:`host.encoding.pointer_words`, relative to its entry base)
    and ``rows`` bias words.

    Parameters
    ----------
    n_pe : int
        Processing elements (lanes of the entry and pointer memories).
    acc_bits : int
        Accumulator width the biases are wrapped to.
    max_entries_per_pe : int
        Entry memory depth: its address width is the pointer words' ``start_bits``.

    Attributes
    ----------
    entry_base, ptr_base, bias_base : int
        Entries per PE, pointer slots and bias words used so far (the next matrix's bases).
    """

    def __init__(self, n_pe: int, acc_bits: int, max_entries_per_pe: int):
        self.n_pe = n_pe
        self.acc_bits = acc_bits
        self.start_bits = pointer_fields(max_entries_per_pe, 1)[0]
        self.entry_base = self.ptr_base = self.bias_base = 0
        self._entries, self._pointers, self._codebooks, self._bias = [], [], [], []

    def place(self, enc: EncodedMatrix, codebook, bias) -> tuple[int, int, int]:
        """Append one matrix.

        Parameters
        ----------
        enc : EncodedMatrix
            Its entries and column pointers (in the order the engine reads the columns).
        codebook : array_like of int
            Its codebook (the next slot).
        bias : array_like of int
            Its bias, ``enc.rows`` values in accumulator format.

        Returns
        -------
        tuple of int
            ``(entry_base, ptr_base, bias_base)`` of this matrix.
        """
        length = int(enc.entries_per_pe().max())
        block = np.zeros((length, self.n_pe), dtype=np.int64)
        for p in range(self.n_pe):
            block[:len(enc.entries[p]), p] = enc.entries[p]
        self._entries.append(block)
        self._pointers.append(np.stack([pointer_words(ptr, self.start_bits)
                                        for ptr in enc.col_ptr], axis=1))
        self._codebooks.append(np.asarray(codebook, dtype=np.int64))
        self._bias.append(wrap(np.asarray(bias, dtype=np.int64), self.acc_bits))
        bases = (self.entry_base, self.ptr_base, self.bias_base)
        self.entry_base += length
        self.ptr_base += enc.cols
        self.bias_base += enc.rows
        return bases

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The memories: ``(entries (E, n_pe), pointers (K, n_pe), codebooks (matrices,
        2**index_bits), bias (sum of rows,))``, int64."""
        return (np.concatenate(self._entries), np.concatenate(self._pointers),
                np.stack(self._codebooks), np.concatenate(self._bias))


class LoaderWrites:
    """Loader writes collected in write order.

    Parameters
    ----------
    n_pe : int
        Processing elements (columns of ``lanes``).
    """

    def __init__(self, n_pe: int):
        self.n_pe = n_pe
        self._parts = {"region": [], "addr": [], "data": [], "lanes": []}

    def add(self, region, addresses, data=None, lanes=None) -> None:
        """Append one write per address.

        Parameters
        ----------
        region : int
            ``load.region`` of every write.
        addresses : array_like of int
            The addresses, in write order.
        data : array_like of int, optional
            One value per write (0 without).
        lanes : array_like of int, optional
            ``(len(addresses), n_pe)`` per-PE values (0 without).
        """
        count = len(addresses)
        self._parts["region"].append(np.full(count, int(region), dtype=np.int64))
        self._parts["addr"].append(np.asarray(addresses, dtype=np.int64))
        self._parts["data"].append(np.zeros(count, np.int64) if data is None
                                   else np.asarray(data, dtype=np.int64))
        self._parts["lanes"].append(np.zeros((count, self.n_pe), np.int64) if lanes is None
                                    else np.asarray(lanes, dtype=np.int64))

    def add_matrix_memories(self, regions, image, index_bits: int) -> None:
        """Append the writes of an image's entries, pointers, codebooks and bias.

        Parameters
        ----------
        regions : enum
            The engine's region values (``ENTRY``, ``POINTER``, ``CODEBOOK``, ``BIAS``).
        image
            The image (its ``entries``, ``pointers``, ``codebooks`` and ``bias``, as
            :meth:`MatrixMemories.arrays`).
        index_bits : int
            Weight index width: codebook slot ``s`` is at ``s << index_bits``.
        """
        self.add(regions.ENTRY, np.arange(len(image.entries)), lanes=image.entries)
        self.add(regions.POINTER, np.arange(len(image.pointers)), lanes=image.pointers)
        size = 1 << index_bits
        for slot, book in enumerate(image.codebooks):
            self.add(regions.CODEBOOK, slot * size + np.arange(size), data=book)
        self.add(regions.BIAS, np.arange(len(image.bias)), data=image.bias)

    def arrays(self) -> dict[str, np.ndarray]:
        """The writes as arrays ``region``, ``addr``, ``data`` (signed values as given) and
        ``lanes`` (n, n_pe), int64; empty arrays when nothing was added."""
        if not self._parts["region"]:
            return {"region": np.zeros(0, np.int64), "addr": np.zeros(0, np.int64),
                    "data": np.zeros(0, np.int64), "lanes": np.zeros((0, self.n_pe), np.int64)}
        return {key: np.concatenate(parts) for key, parts in self._parts.items()}
