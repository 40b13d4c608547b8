"""The compressed model: what the hardware runs, layer by layer, in integers.

Every layer with weights is a :class:`SparseMatrix`: an EIE-encoded weight-index matrix, its
codebook in the layer's weight format, and a bias in accumulator format.  Numbers:

* activations (inputs, hidden states, cell states, layer outputs): ``CompressedModel.act_format``
* codebook entries: ``SparseMatrix.weight_format`` (one per layer)
* products and accumulators: ``acc_bits`` wide, ``act.frac + weight.frac`` fraction bits,
  wrapping; biases are stored in that format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse

from .activations import TableSpec
from .encoding import EncodedMatrix
from .fixedpoint import Format
from .huffman import HuffmanCode

__all__ = [
    "SparseMatrix", "QLinear", "QLSTM", "QConv2d", "QMaxPool2d", "QFlatten", "QReLU",
    "CompressedModel",
]


@dataclass
class SparseMatrix:
    """One encoded weight matrix with its codebook and bias.

    Attributes
    ----------
    encoded : EncodedMatrix
        Per-PE CSC entries and column pointers.
    codebook : ndarray of int64, shape ``(2**index_bits,)``
        Shared weights in ``weight_format``; ``codebook[0] == 0``.
    weight_format : Format
        Fixed-point format of the codebook entries.
    bias : ndarray of int64, shape ``(rows,)``
        In accumulator format (``act.frac + weight_format.frac`` fraction bits).
    """

    encoded: EncodedMatrix
    codebook: np.ndarray
    weight_format: Format
    bias: np.ndarray

    @property
    def rows(self) -> int:
        return self.encoded.rows

    @property
    def cols(self) -> int:
        return self.encoded.cols

    @cached_property
    def weights_csr(self) -> scipy.sparse.csr_matrix:
        """Integer weights decoded from the encoded entries (padding dropped): int64 CSR."""
        rows, cols, values = [], [], []
        for pe in range(self.encoded.n_pe):
            row, col, index = self.encoded.coordinates(pe)
            keep = index != 0
            rows.append(row[keep])
            cols.append(col[keep])
            values.append(self.codebook[index[keep]])
        return scipy.sparse.csr_matrix(
            (np.concatenate(values).astype(np.int64),
             (np.concatenate(rows), np.concatenate(cols))),
            shape=(self.rows, self.cols), dtype=np.int64)

    def nonzeros(self) -> int:
        return int(self.weights_csr.nnz)

    @cached_property
    def entry_codes(self) -> dict[str, tuple[np.ndarray, HuffmanCode]]:
        """Huffman codes of the entries' two streams (all PEs' entries in PE order).

        Built once and shared by the compression report (coded sizes) and the package writer
        (coded streams).

        Returns
        -------
        dict
            ``{"index": (symbols, code), "run": (symbols, code)}``: the weight indices
            (alphabet ``2**index_bits``) and the zero runs (alphabet ``2**run_bits``) as int64
            arrays, each with its :meth:`HuffmanCode.from_symbols` code.
        """
        enc = self.encoded
        stream = np.concatenate(enc.entries).astype(np.int64) if enc.entries else \
            np.zeros(0, np.int64)
        index = stream & ((1 << enc.index_bits) - 1)
        run = stream >> enc.index_bits
        return {name: (symbols, HuffmanCode.from_symbols(symbols, 1 << bits))
                for name, symbols, bits in (("index", index, enc.index_bits),
                                            ("run", run, enc.run_bits))}


@dataclass
class QLinear:
    matrix: SparseMatrix
    relu: bool = False
    kind = "linear"


@dataclass
class QLSTM:
    """LSTM layer; ``matrix`` is ``[W_ih | W_hh]`` ``(4H, I + S)``, gates (i, f, g, o).

    ``projection`` (optional) is ``W_hr`` ``(P, H)`` with a zero bias (LSTMP): the recurrent
    state and output is ``r_t = requantize(W_hr h_t)``, ``S = P``; without it ``S = H``.
    """

    matrix: SparseMatrix
    input_size: int
    hidden: int
    return_sequences: bool = False
    projection: SparseMatrix | None = None
    kind = "lstm"

    @property
    def proj_size(self) -> int:
        """P (0: no projection)."""
        return 0 if self.projection is None else self.projection.rows

    @property
    def output_size(self) -> int:
        """Recurrent state / output size S (P with a projection, else H)."""
        return self.proj_size or self.hidden


@dataclass
class QConv2d:
    """Conv layer; ``matrix`` is ``(C_out, C_in*k*k)`` over (c, ky, kx) patches."""

    matrix: SparseMatrix
    in_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    relu: bool = False
    kind = "conv2d"


@dataclass
class QMaxPool2d:
    kind = "maxpool2d"


@dataclass
class QFlatten:
    kind = "flatten"


@dataclass
class QReLU:
    kind = "relu"


@dataclass
class CompressedModel:
    """A whole compressed network.

    Attributes
    ----------
    name : str
    input_shape : tuple
    layers : list
        ``QLinear``, ``QLSTM``, ``QConv2d``, ``QMaxPool2d``, ``QFlatten``, ``QReLU``.
    n_pe : int
        PE count the matrices are encoded for.
    act_format : Format
    acc_bits : int
    table_spec : TableSpec
        Sigmoid/tanh tables (used by LSTM layers).
    info : dict
        Free-form metadata: source model, compression settings, report figures.
    """

    name: str
    input_shape: tuple
    layers: list
    n_pe: int
    act_format: Format
    acc_bits: int = 32
    table_spec: TableSpec = field(default_factory=TableSpec)
    info: dict = field(default_factory=dict)

    def matrices(self) -> list[tuple[int, SparseMatrix]]:
        """``(layer index, matrix)`` of every weight matrix (an LSTM's projection follows its
        gate matrix, with the same layer index)."""
        out = []
        for i, layer in enumerate(self.layers):
            if hasattr(layer, "matrix"):
                out.append((i, layer.matrix))
            if getattr(layer, "projection", None) is not None:
                out.append((i, layer.projection))
        return out
