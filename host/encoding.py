"""EIE's per-PE compressed sparse column (CSC) encoding of a weight-index matrix.

Row ``i`` of a ``rows x cols`` matrix belongs to PE ``i mod n_pe`` and is that PE's local row
``i // n_pe``.  Every PE stores, column after column, one *entry* per non-zero of its own rows:

    entry = weight_index | (zero_run << index_bits)        (index_bits + run_bits wide)

``weight_index`` (``index_bits`` wide, default 4) selects a codebook value; ``zero_run``
(``run_bits`` wide, default 4) counts the zero local rows since the previous entry of the same
column (or since local row 0).  A gap longer than ``2**run_bits - 1`` zeros is bridged by
*padding entries* ``(weight_index 0, zero_run = 2**run_bits - 1)``, each standing for one zero
weight at the row it lands on; codebook entry 0 is always 0.0, so padding adds nothing, but it
costs the PE one cycle like any other entry.  In Amaranth terms an entry is the
``data.StructLayout({"weight_index": index_bits, "zero_run": run_bits})`` (first field in the
least significant bits), see :func:`entry_layout_fields`.

Column ``j`` of PE ``p`` holds entries ``col_ptr[p][j] : col_ptr[p][j + 1]``.  The engines'
pointer memories hold one *pointer word* per column (:func:`pointer_words`)::

    word = start | length << start_bits

``start`` is the column's first entry (relative to the matrix's entry base, ``start_bits`` =
the entry address width) and ``length`` its entry count, at most the PE's local rows (every
entry of a column lands on a distinct local row), so ``length_bits = bits_for(rows per PE)``
(:func:`pointer_fields`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EncodedMatrix", "encode", "entry_layout_fields", "pe_rows", "pointer_fields",
           "pointer_words",
           "pad_groups"]


def entry_layout_fields(index_bits: int, run_bits: int) -> dict[str, int]:
    """Field widths of one entry, LSB first: the shape of the HDL's ``StructLayout``."""
    return {"weight_index": index_bits, "zero_run": run_bits}


def pointer_fields(entries: int, rows: int) -> tuple[int, int]:
    """``(start_bits, length_bits)`` of a pointer word for an entry memory of ``entries`` words
    and ``rows`` local rows per PE: the entry address width ``max(1, ceil(log2(entries)))`` and
    ``max(1, bit_length(rows))``."""
    return max(1, (int(entries) - 1).bit_length()), max(1, int(rows).bit_length())


def pointer_words(col_ptr, start_bits: int) -> np.ndarray:
    """One PE's pointer words ``start | length << start_bits`` (int64, one per column) from its
    ``cols + 1`` column pointers; an empty column's ``start`` is 0 (it is never read)."""
    ptr = np.asarray(col_ptr, dtype=np.int64)
    length = np.diff(ptr)
    start = np.where(length > 0, ptr[:-1], 0)
    return start | (length << start_bits)


def pe_rows(rows: int, n_pe: int, pe: int) -> int:
    """Number of rows PE ``pe`` owns: ``len(range(pe, rows, n_pe))``."""
    return len(range(pe, rows, n_pe))


@dataclass
class EncodedMatrix:
    """One weight matrix in per-PE CSC form.

    Attributes
    ----------
    rows, cols : int
        Matrix shape.
    n_pe : int
        Number of PEs the rows are interleaved over.
    index_bits, run_bits : int
        Entry field widths (bits).
    entries : list of ndarray of uint16
        Per PE, packed entries in column order.
    col_ptr : list of ndarray of int64
        Per PE, ``cols + 1`` column start offsets into that PE's entries.
    """

    rows: int
    cols: int
    n_pe: int
    index_bits: int
    run_bits: int
    entries: list
    col_ptr: list

    @property
    def max_run(self) -> int:
        return (1 << self.run_bits) - 1

    @property
    def entry_bits(self) -> int:
        return self.index_bits + self.run_bits

    def column_lengths(self) -> np.ndarray:
        """Entries per (PE, column), padding included: int64 ``(n_pe, cols)``."""
        return np.stack([np.diff(ptr) for ptr in self.col_ptr])

    def entries_per_pe(self) -> np.ndarray:
        return np.array([len(e) for e in self.entries], dtype=np.int64)

    def padding_count(self) -> int:
        """Number of padding entries (weight index 0) over all PEs."""
        mask = (1 << self.index_bits) - 1
        return int(sum(int(np.count_nonzero((e & mask) == 0)) for e in self.entries))

    def fields(self, pe: int) -> tuple[np.ndarray, np.ndarray]:
        """``(weight_index, zero_run)`` arrays of PE ``pe``'s entries."""
        e = self.entries[pe].astype(np.int64)
        return e & ((1 << self.index_bits) - 1), e >> self.index_bits

    def coordinates(self, pe: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Global ``(row, col, weight_index)`` of every entry of PE ``pe``, padding included.

        Raises
        ------
        ValueError
            If the pointers or zero runs of this PE point outside the matrix.
        """
        ptr = self.col_ptr[pe]
        index, run = self.fields(pe)
        lengths = np.diff(ptr)
        if ptr[0] != 0 or ptr[-1] != len(index) or np.any(lengths < 0):
            raise ValueError(f"PE {pe}: column pointers are not monotonic from 0 to "
                             f"{len(index)}")
        col = np.repeat(np.arange(self.cols, dtype=np.int64), lengths)
        step = run + 1
        csum = np.cumsum(step)
        # Row position reached before each column's first entry, repeated over its entries.
        before = np.concatenate([[0], csum])[ptr[:-1]]
        local = csum - np.repeat(before, lengths) - 1
        depth = self.local_depth
        if len(local) and local.max() >= depth:
            raise ValueError(f"PE {pe}: an entry's zero runs reach past the "
                             f"{depth} local rows")
        row = pe + self.n_pe * local
        if np.any((row >= self.rows) & (index != 0)):
            raise ValueError(f"PE {pe}: a non-zero entry lands past the matrix's "
                             f"{self.rows} rows")
        return row, col, index

    @property
    def local_depth(self) -> int:
        """Local rows of the busiest PE, ``ceil(rows / n_pe)``: the accumulators every PE
        has.  Padding entries of :func:`pad_groups` may land on a PE's local rows past the
        matrix (global row ``>= rows``); real entries never do."""
        return -(-self.rows // self.n_pe)

    def decode(self) -> np.ndarray:
        """The dense weight-index matrix (uint16); inverse of :func:`encode` (padding
        entries past the matrix's rows dropped)."""
        dense = np.zeros((self.rows, self.cols), dtype=np.uint16)
        for pe in range(self.n_pe):
            row, col, index = self.coordinates(pe)
            inside = row < self.rows
            dense[row[inside], col[inside]] = index[inside]
        return dense


def encode(indices: np.ndarray, n_pe: int, *, index_bits: int = 4, run_bits: int = 4
           ) -> EncodedMatrix:
    """Encode a weight-index matrix (0 = zero weight) for ``n_pe`` row-interleaved PEs.

    Raises
    ------
    ValueError
        For a non-2-D matrix, an index that does not fit ``index_bits``, or bad widths.
    """
    indices = np.asarray(indices)
    if indices.ndim != 2:
        raise ValueError(f"`indices` must be a 2-D matrix, not shape {indices.shape}")
    if not isinstance(n_pe, int) or n_pe < 1:
        raise ValueError(f"`n_pe` must be a positive integer, not {n_pe!r}")
    for name, bits in (("index_bits", index_bits), ("run_bits", run_bits)):
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ValueError(f"`{name}` must be an integer from 1 to 8, not {bits!r}")
    if indices.size and (indices.min() < 0 or indices.max() >= 1 << index_bits):
        raise ValueError(f"weight indices must be in 0..{(1 << index_bits) - 1} for "
                         f"{index_bits}-bit indices")
    rows, cols = indices.shape
    max_run = (1 << run_bits) - 1
    entries, pointers = [], []
    for pe in range(n_pe):
        sub = indices[pe::n_pe]
        col, local = np.nonzero(sub.T)          # column-major: by column, then local row
        value = sub[local, col].astype(np.int64)
        prev = np.full(len(local), -1, dtype=np.int64)
        same_col = np.zeros(len(local), dtype=bool)
        same_col[1:] = col[1:] == col[:-1]
        prev[1:][same_col[1:]] = local[:-1][same_col[1:]]
        gap = local - prev - 1
        n_pad, run = np.divmod(gap, max_run + 1)
        # Each real entry is preceded by its padding entries.
        count = n_pad + 1
        total = int(count.sum())
        packed = np.full(total, max_run << index_bits, dtype=np.int64)
        last = np.cumsum(count) - 1
        packed[last] = value | (run << index_bits)
        entry_col = np.repeat(col, count)
        ptr = np.zeros(cols + 1, dtype=np.int64)
        ptr[1:] = np.cumsum(np.bincount(entry_col, minlength=cols))
        entries.append(packed.astype(np.uint16))
        pointers.append(ptr)
    return EncodedMatrix(rows, cols, n_pe, index_bits, run_bits, entries, pointers)


def pad_groups(encoded: EncodedMatrix, group: int) -> EncodedMatrix:
    """``encoded`` with padding entries added so that the PEs of every group ``g * group ..
    g * group + group - 1`` have the same entry count in every column (lockstep PE groups:
    one pointer word and one issue counter per group, :mod:`hdl.pe`).

    A shorter column gets padding entries (weight index 0, which is always 0.0) on the
    smallest local rows it does not use yet, so every entry of a column still sits on a
    distinct local row below :attr:`EncodedMatrix.local_depth` (the PE's accumulators), the
    zero runs only get shorter (never past ``2**run_bits - 1``) and :meth:`EncodedMatrix.decode`
    is unchanged.  A padding entry may land on a local row past the PE's own rows (a row past
    the matrix): it adds 0 to an accumulator no output reads.

    Parameters
    ----------
    encoded : EncodedMatrix
    group : int
        PEs per group (1: ``encoded`` itself); must divide ``encoded.n_pe``.

    Returns
    -------
    EncodedMatrix
        The padded encoding (a new object; ``encoded`` when nothing needs padding).

    Raises
    ------
    ValueError
        If ``group`` is not a positive integer dividing ``n_pe``.
    """
    if not isinstance(group, int) or isinstance(group, bool) or group < 1:
        raise ValueError(f"`group` must be a positive integer, not {group!r}")
    n_pe, cols = encoded.n_pe, encoded.cols
    if n_pe % group:
        raise ValueError(f"`group` ({group}) must divide the PE count ({n_pe})")
    lengths = encoded.column_lengths().reshape(n_pe // group, group, cols)
    target = np.repeat(lengths.max(axis=1), group, axis=0)              # (n_pe, cols)
    lengths = lengths.reshape(n_pe, cols)
    if np.array_equal(lengths, target):
        return encoded
    depth = encoded.local_depth
    shift = encoded.index_bits
    entries, pointers = list(encoded.entries), list(encoded.col_ptr)
    for pe in np.flatnonzero(np.any(lengths != target, axis=1)):
        row, col, index = encoded.coordinates(int(pe))
        local = (row - pe) // n_pe
        ptr = encoded.col_ptr[pe]
        packed = []
        for j in range(cols):
            rows_j, index_j = local[ptr[j]:ptr[j + 1]], index[ptr[j]:ptr[j + 1]]
            need = int(target[pe, j] - len(rows_j))
            if need:
                free = np.setdiff1d(np.arange(depth), rows_j)[:need]
                merged = np.concatenate([rows_j, free])
                order = np.argsort(merged, kind="stable")
                rows_j = merged[order]
                index_j = np.concatenate([index_j, np.zeros(need, np.int64)])[order]
            run = np.diff(np.concatenate([[-1], rows_j])) - 1
            packed.append(index_j | (run << shift))
        entries[pe] = (np.concatenate(packed) if packed else np.zeros(0)).astype(np.uint16)
        pointers[pe] = np.concatenate([[0], np.cumsum(target[pe])]).astype(np.int64)
    return EncodedMatrix(encoded.rows, cols, n_pe, encoded.index_bits, encoded.run_bits,
                         entries, pointers)
