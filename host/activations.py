"""Sigmoid and tanh by table look-up: the one definition used by the golden model and the HDL.

A table holds ``f`` for ``|x|`` in ``[0, 2**range_log2)`` at ``2**index_bits`` evenly spaced
points, each entry being ``f`` at the *centre* of its interval, quantized to the activation
format.  For an input integer ``q`` in activation format ``A`` (``A.frac`` fraction bits):

    step_log2 = range_log2 - index_bits              # interval width 2**step_log2
    index     = min(|q| >> (A.frac + step_log2), 2**index_bits - 1)     (<< if negative shift)
    sigmoid(q) = T_sig[index]        if q >= 0 else  one - T_sig[index]   (one = 2**A.frac)
    tanh(q)    = T_tanh[index]       if q >= 0 else  -T_tanh[index]

Only ``x >= 0`` is stored; the symmetries ``sigmoid(-x) = 1 - sigmoid(x)`` and
``tanh(-x) = -tanh(x)`` give the rest.  With the defaults (512 entries over ``[0, 8)``, step
1/64) the table error is at most ``max|f'| * step / 2`` (1/512 for sigmoid, 1/128 for tanh)
plus half an LSB of the activation format, and past ``|x| >= 8`` the saturation error is below
``1 - tanh(8) < 3e-7`` and ``sigmoid(-8) < 3.4e-4``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fixedpoint import Format, quantize

__all__ = ["TableSpec", "make_table", "table_index", "lookup", "error_bound", "FUNCTIONS"]

FUNCTIONS = ("sigmoid", "tanh")


@dataclass(frozen=True)
class TableSpec:
    """Shape of the look-up tables: ``2**index_bits`` entries covering ``[0, 2**range_log2)``."""

    index_bits: int = 9
    range_log2: int = 3

    def __post_init__(self):
        if not isinstance(self.index_bits, int) or not 2 <= self.index_bits <= 12:
            raise ValueError(f"`index_bits` must be an integer from 2 to 12, "
                             f"not {self.index_bits!r}")
        if not isinstance(self.range_log2, int) or not 0 <= self.range_log2 <= 5:
            raise ValueError(f"`range_log2` must be an integer from 0 to 5, "
                             f"not {self.range_log2!r}")

    @property
    def entries(self) -> int:
        return 1 << self.index_bits

    @property
    def step_log2(self) -> int:
        return self.range_log2 - self.index_bits

    def to_dict(self) -> dict:
        return {"index_bits": self.index_bits, "range_log2": self.range_log2}


def _reference(function: str, x):
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if function == "tanh":
        return np.tanh(x)
    raise ValueError(f"`function` must be one of {FUNCTIONS}, not {function!r}")


def make_table(function: str, fmt: Format, spec: TableSpec = TableSpec()) -> np.ndarray:
    """The table of ``function`` (``"sigmoid"`` or ``"tanh"``) in format ``fmt``: int64.

    Raises
    ------
    ValueError
        If ``fmt`` cannot represent 1.0 (sigmoid and tanh outputs reach it).
    """
    if fmt.max_int < (1 << fmt.frac):
        raise ValueError(f"activation format {fmt} cannot hold 1.0; give it at least one "
                         f"integer bit (frac <= width - 2)")
    centres = (np.arange(spec.entries) + 0.5) * 2.0 ** spec.step_log2
    return quantize(_reference(function, centres), fmt)


def table_index(q, fmt: Format, spec: TableSpec = TableSpec()) -> np.ndarray:
    """Table index of activation-format integers ``q`` (see the module docstring)."""
    magnitude = np.abs(np.asarray(q, dtype=np.int64))
    shift = fmt.frac + spec.step_log2
    index = magnitude >> shift if shift >= 0 else magnitude << -shift
    return np.minimum(index, spec.entries - 1)


def lookup(function: str, q, fmt: Format, spec: TableSpec = TableSpec(),
           table: np.ndarray | None = None) -> np.ndarray:
    """``function`` of activation-format integers ``q``, bit-exact as the hardware: int64."""
    if table is None:
        table = make_table(function, fmt, spec)
    q = np.asarray(q, dtype=np.int64)
    value = table[table_index(q, fmt, spec)]
    if function == "sigmoid":
        return np.where(q >= 0, value, (1 << fmt.frac) - value)
    return np.where(q >= 0, value, -value)


def error_bound(function: str, fmt: Format, spec: TableSpec = TableSpec()) -> float:
    """Largest absolute error of :func:`lookup` against the real function, in real units.

    Against ``f(q * 2**-frac)``: the interval half-width times the function's largest slope
    (or, for inputs beyond the table, the distance from the last entry's centre onward),
    plus half an LSB of output rounding.
    """
    slope = 0.25 if function == "sigmoid" else 1.0
    half_step = 2.0 ** spec.step_log2 / 2
    tail = abs(1.0 - _reference(function, 2.0 ** spec.range_log2 - half_step))
    return max(slope * half_step, tail) + fmt.scale / 2
