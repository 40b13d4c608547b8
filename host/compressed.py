"""The compressed model: what the hardware runs, layer by layer, in integers.

Every layer with weights is a :class:`SparseMatrix`: an EIE-encoded weight-index matrix, its
codebook in the layer's weight format, and a bias in accumulator format.  Numbers:

* activations (inputs, hidden states, cell states, layer outputs): ``CompressedModel.act_format``
* codebook entries: ``SparseMatrix.weight_format`` (one per layer)
* products: ``act.frac + weight.frac`` fraction bits, then shifted right (floor) by the
  model's ``product_shift`` p before they are added
* accumulators: ``acc_bits`` wide, wrapping, :func:`acc_frac` ``= act.frac + weight.frac - p``
  fraction bits; biases are stored in that format
* requantization (accumulator -> activation): a rounding right shift by :func:`requant_shift`
  ``= weight.frac - p`` bits

:func:`acc_frac` and :func:`requant_shift` are the one definition of those scales: the
compressor (bias quantization), the golden model and the engines' images use them.
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
    "acc_frac", "requant_shift", "check_product_shift", "SparseMatrix", "QLinear", "QLSTM",
    "QConv2d", "QMaxPool2d", "QFlatten", "QReLU", "CompressedModel",
]


def check_product_shift(product_shift, act: Format, weight_width: int,
                        where: str = "model") -> int:
    """Validate a product shift: an integer ``0 <= p < act.width + weight_width`` (a product
    has ``act.width + weight_width`` bits).  Returns it; ``ValueError``/``TypeError`` naming
    ``where`` otherwise."""
    if not isinstance(product_shift, (int, np.integer)) or isinstance(product_shift, bool):
        raise TypeError(f"{where}: `product_shift` must be an integer, not {product_shift!r}")
    limit = act.width + weight_width
    if not 0 <= product_shift < limit:
        raise ValueError(f"{where}: `product_shift` must be from 0 to {limit - 1} (products of "
                         f"{act.width}-bit activations and {weight_width}-bit weights have "
                         f"{limit} bits), not {product_shift}")
    return int(product_shift)


def requant_shift(weight_format: Format, product_shift: int = 0) -> int:
    """Right shift (bits, round half up) from accumulator to activation format:
    ``weight_format.frac - product_shift``.

    Raises
    ------
    ValueError
        If it is negative: the accumulators would have fewer fraction bits than the
        activations.
    """
    shift = weight_format.frac - int(product_shift)
    if shift < 0:
        raise ValueError(f"product shift {product_shift} exceeds the {weight_format.frac} "
                         f"fraction bits of weight format {weight_format}: the accumulators "
                         f"would have fewer fraction bits than the activations; use a product "
                         f"shift of at most {weight_format.frac} (--product-shift), or widen "
                         f"the accumulators (--acc-bits)")
    return shift


def acc_frac(act: Format, weight_format: Format, product_shift: int = 0) -> int:
    """Fraction bits of a layer's accumulators and bias:
    ``act.frac + weight_format.frac - product_shift`` (checked by :func:`requant_shift`)."""
    return act.frac + requant_shift(weight_format, product_shift)


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
        In accumulator format (:func:`acc_frac` fraction bits).
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

    @cached_property
    def row_selector(self) -> scipy.sparse.csr_matrix:
        """``(rows, nnz)`` 0/1 int64 matrix summing the per-entry terms of
        :attr:`weights_csr` (in its storage order) into their rows."""
        csr = self.weights_csr
        nnz = csr.nnz
        rows = np.repeat(np.arange(self.rows), np.diff(csr.indptr))
        return scipy.sparse.csr_matrix((np.ones(nnz, np.int64), (rows, np.arange(nnz))),
                                       shape=(self.rows, nnz), dtype=np.int64)

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
        Accumulator width (bits, wrapping).
    table_spec : TableSpec
        Sigmoid/tanh tables (used by LSTM layers).
    info : dict
        Free-form metadata: source model, compression settings, report figures.
    product_shift : int
        Bits every product is shifted right (floor) by before it is added (0: exact products;
        see the module docstring).  ``0 <= product_shift < act.width + weight width``, and at
        most every layer's weight fraction bits.
    """

    name: str
    input_shape: tuple
    layers: list
    n_pe: int
    act_format: Format
    acc_bits: int = 32
    table_spec: TableSpec = field(default_factory=TableSpec)
    info: dict = field(default_factory=dict)
    product_shift: int = 0

    def __post_init__(self):
        if not isinstance(self.product_shift, (int, np.integer)) \
                or isinstance(self.product_shift, bool) or self.product_shift < 0:
            raise ValueError(f"model {self.name!r}: `product_shift` must be a non-negative "
                             f"integer, not {self.product_shift!r}")
        self.product_shift = int(self.product_shift)
        for where, matrix in self._named_matrices():
            check_product_shift(self.product_shift, self.act_format,
                                matrix.weight_format.width, f"model {self.name!r}")
            try:
                requant_shift(matrix.weight_format, self.product_shift)
            except ValueError as error:
                raise ValueError(f"model {self.name!r}, {where}: {error}") from None

    def _named_matrices(self):
        for index, matrix in self.matrices():
            layer = self.layers[index]
            proj = getattr(layer, "projection", None) is matrix
            yield f"layer {index} ({layer.kind}{' projection' if proj else ''})", matrix

    def acc_frac(self, matrix: SparseMatrix) -> int:
        """Fraction bits of ``matrix``'s accumulators and bias (:func:`acc_frac`)."""
        return acc_frac(self.act_format, matrix.weight_format, self.product_shift)

    def requant_shift(self, matrix: SparseMatrix) -> int:
        """``matrix``'s requantization shift (:func:`requant_shift`)."""
        return requant_shift(matrix.weight_format, self.product_shift)

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
