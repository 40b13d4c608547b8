"""The bit-exact golden model: what the hardware computes, in NumPy integers.

All arithmetic follows :mod:`host.fixedpoint`:

* **Sparse matrix-vector product** (every weight layer)::

      acc[i] = wrap(bias[i] + sum_j (codebook[index[i, j]] * a[j]) >> p, acc_bits)
      out[i] = saturate(round_shift(acc[i], weight.frac - p), act)  (then max(0, .) with ReLU)

  ``p`` is the model's ``product_shift`` (an arithmetic right shift, i.e. floor, of every
  product; 0: exact products); the accumulators and the bias have ``act.frac + weight.frac - p``
  fraction bits (:func:`host.compressed.acc_frac`, :func:`host.compressed.requant_shift`).
  The weights come from the encoded entries (:attr:`SparseMatrix.weights_csr`), the same bytes
  the hardware gets.  Accumulators wrap, so the order of the additions does not matter.
* **LSTM step** (``z`` = the product above over ``[x_t ; h_(t-1)]``, in act format)::

      i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o);   g = tanh(z_g)      (tables)
      c_t = saturate(round_shift(f * c_(t-1) + i * g, act.frac), act)
      h_t = saturate(round_shift(o * tanh(c_t), act.frac), act)
      r_t = spmv(W_hr, h_t)          (projection only: the product above, zero bias; r_t is
                                      then the recurrent state and the output)

  Stacked LSTM layers: layer l + 1 gets layer l's whole output sequence as its input.

* **Conv**: the product above for every output pixel's (c, ky, kx) input patch, zero padding.
* **Max-pool** 2x2 stride 2 and **flatten** (C, H, W order) on the integers.

Inputs are quantized with :func:`host.fixedpoint.quantize` to the activation format.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .activations import lookup, make_table
from .compressed import (CompressedModel, QConv2d, QFlatten, QLinear, QLSTM, QMaxPool2d,
                         QReLU, SparseMatrix, requant_shift)
from .fixedpoint import Format, quantize, requantize, round_shift, saturate, wrap
from .floatmodel import Flatten, MaxPool2d, ReLU, im2col

__all__ = ["GoldenModel", "spmv_accumulate", "spmv", "shifted_products_sum", "Diagnostics"]


#: Most per-entry products (int64) held at once by :func:`shifted_products_sum`.
PRODUCT_CHUNK = 1 << 22


def shifted_products_sum(matrix: SparseMatrix, a: np.ndarray, product_shift: int) -> np.ndarray:
    """``sum_j (w_ij * a_j) >> product_shift`` for a batch ``a`` ``(B, cols)`` int64, exact
    (int64, ``(B, rows)``): the per-entry products, batch chunks of at most
    :data:`PRODUCT_CHUNK` of them at a time."""
    csr = matrix.weights_csr
    out = np.empty((a.shape[0], matrix.rows), dtype=np.int64)
    step = max(1, PRODUCT_CHUNK // max(csr.nnz, 1))
    for lo in range(0, a.shape[0], step):
        terms = (a[lo:lo + step][:, csr.indices] * csr.data) >> product_shift
        out[lo:lo + step] = (matrix.row_selector @ terms.T).T
    return out


def spmv_accumulate(matrix: SparseMatrix, activations: np.ndarray, acc_bits: int,
                    diagnostics: Diagnostics | None = None,
                    product_shift: int = 0) -> np.ndarray:
    """Accumulators of ``matrix @ a + bias`` for a batch ``activations`` ``(B, cols)``: int64.

    ``product_shift`` p: every product is shifted right (floor) by p bits before it is added.
    ``diagnostics`` (optional) counts accumulators whose true sum did not fit ``acc_bits`` and
    records the largest true magnitude (:attr:`Diagnostics.peak_accumulator`).
    """
    a = np.asarray(activations, dtype=np.int64)
    if product_shift:
        exact = shifted_products_sum(matrix, a, product_shift) + matrix.bias
    else:
        exact = (matrix.weights_csr @ a.T).T + matrix.bias
    acc = wrap(exact, acc_bits)
    if diagnostics is not None:
        diagnostics.accumulator_overflows += int(np.count_nonzero(acc != exact))
        if exact.size:
            diagnostics.peak_accumulator = max(diagnostics.peak_accumulator,
                                               int(np.abs(exact).max()))
    return acc


def spmv(matrix: SparseMatrix, activations, act: Format, acc_bits: int, relu: bool = False,
         diagnostics=None, product_shift: int = 0) -> np.ndarray:
    """Layer output in act format: requantized (and ReLU'd) accumulators (``product_shift``:
    as :func:`spmv_accumulate`)."""
    acc = spmv_accumulate(matrix, activations, acc_bits, diagnostics, product_shift)
    shift = requant_shift(matrix.weight_format, product_shift)
    out = requantize(acc, shift, act)
    if diagnostics is not None:
        shifted = round_shift(acc, shift)
        diagnostics.saturations += int(np.count_nonzero(shifted != out))
    return np.maximum(out, 0) if relu else out


@dataclass
class Diagnostics:
    """Counts of events the fixed-point formats could not represent exactly."""

    accumulator_overflows: int = 0
    saturations: int = 0
    #: Largest magnitude of a true (unwrapped) accumulator value, bias included.
    peak_accumulator: int = 0


@dataclass
class GoldenModel:
    """Runs a :class:`CompressedModel` bit-exactly.

    Use :meth:`quantize_input` then :meth:`forward_int`, or :meth:`forward` from floats.
    """

    model: CompressedModel
    diagnostics: Diagnostics = field(default_factory=Diagnostics)

    def __post_init__(self):
        act = self.model.act_format
        self._sigmoid = make_table("sigmoid", act, self.model.table_spec)
        self._tanh = make_table("tanh", act, self.model.table_spec)

    @property
    def act(self) -> Format:
        return self.model.act_format

    def quantize_input(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.shape[1:] != tuple(self.model.input_shape):
            raise ValueError(f"model {self.model.name!r} expects inputs of shape "
                             f"(batch, {', '.join(map(str, self.model.input_shape))}), "
                             f"gets {x.shape}")
        return quantize(x, self.act)

    def forward(self, x) -> np.ndarray:
        """Output integers (act format) of float inputs ``x`` ``(B, *input_shape)``."""
        return self.forward_int(self.quantize_input(x))

    def predict(self, x) -> np.ndarray:
        """Class of every input: argmax of the output (lowest index on ties)."""
        return np.argmax(self.forward(x), axis=1)

    def forward_int(self, q) -> np.ndarray:
        """Output integers of quantized inputs ``q`` (int64, ``(B, *input_shape)``)."""
        x = np.asarray(q, dtype=np.int64)
        for layer in self.model.layers:
            x = self.layer_forward(layer, x)
        return x

    def _spmv(self, matrix: SparseMatrix, x: np.ndarray, relu: bool = False) -> np.ndarray:
        """:func:`spmv` with the model's activation format, accumulator width and product
        shift, counting into :attr:`diagnostics`."""
        return spmv(matrix, x, self.act, self.model.acc_bits, relu, self.diagnostics,
                    self.model.product_shift)

    def layer_forward(self, layer, x: np.ndarray) -> np.ndarray:
        if isinstance(layer, QLinear):
            return self._spmv(layer.matrix, x, layer.relu)
        if isinstance(layer, QLSTM):
            return self.lstm_forward(layer, x)
        if isinstance(layer, QConv2d):
            return self.conv_forward(layer, x)
        # Max-pool, flatten and ReLU are exact on integers: the float layers' code serves.
        if isinstance(layer, QMaxPool2d):
            return MaxPool2d().forward(x)
        if isinstance(layer, QFlatten):
            return Flatten().forward(x)
        if isinstance(layer, QReLU):
            return ReLU().forward(x)
        raise TypeError(f"unknown layer {layer!r}")

    def lstm_step(self, layer: QLSTM, x_t, h, c):
        """One time step on a batch: returns ``(h_t, c_t)`` (act-format int64).  With a
        projection ``h`` is the recurrent state ``r_(t-1)`` and the returned state is ``r_t``
        (:meth:`lstm_cell` gives the un-projected ``h_t`` too)."""
        state, c, _ = self.lstm_cell(layer, x_t, h, c)
        return state, c

    def lstm_cell(self, layer: QLSTM, x_t, h, c):
        """One time step: ``(state_t, c_t, h_t)`` where ``state_t`` is ``r_t`` with a
        projection and ``h_t`` without."""
        act, hsz, spec = self.act, layer.hidden, self.model.table_spec
        z = self._spmv(layer.matrix, np.concatenate([x_t, h], axis=1))
        gate_i = lookup("sigmoid", z[:, 0:hsz], act, spec, table=self._sigmoid)
        gate_f = lookup("sigmoid", z[:, hsz:2 * hsz], act, spec, table=self._sigmoid)
        gate_g = lookup("tanh", z[:, 2 * hsz:3 * hsz], act, spec, table=self._tanh)
        gate_o = lookup("sigmoid", z[:, 3 * hsz:4 * hsz], act, spec, table=self._sigmoid)
        c = saturate(round_shift(gate_f * c + gate_i * gate_g, act.frac), act)
        h = saturate(round_shift(gate_o * lookup("tanh", c, act, spec, table=self._tanh), act.frac),
                     act)
        if layer.projection is None:
            return h, c, h
        r = self._spmv(layer.projection, h)
        return r, c, h

    def lstm_forward(self, layer: QLSTM, x: np.ndarray) -> np.ndarray:
        batch, steps, _ = x.shape
        h = np.zeros((batch, layer.output_size), dtype=np.int64)
        c = np.zeros((batch, layer.hidden), dtype=np.int64)
        outputs = []
        for t in range(steps):
            h, c = self.lstm_step(layer, x[:, t], h, c)
            outputs.append(h)
        return np.stack(outputs, axis=1) if layer.return_sequences else h

    def conv_forward(self, layer: QConv2d, x: np.ndarray) -> np.ndarray:
        batch, _, height, width = x.shape
        k, s, p = layer.kernel, layer.stride, layer.padding
        oh, ow = (height + 2 * p - k) // s + 1, (width + 2 * p - k) // s + 1
        patches = im2col(x, k, s, p).reshape(batch * oh * ow, -1)
        out = self._spmv(layer.matrix, patches, layer.relu)
        return out.reshape(batch, oh * ow, -1).transpose(0, 2, 1).reshape(batch, -1, oh, ow)
