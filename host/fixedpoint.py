"""Fixed-point number formats: the one definition shared by the golden model and the HDL.

Every number that crosses into the hardware is a two's-complement integer ``q`` that stands for
the real value ``q / 2**frac``.  The rules below are the whole arithmetic of spine:

* **Quantize** a float: ``q = floor(x * 2**frac + 0.5)`` (round half up), then saturate.
* **Saturate** to a format: clamp to ``[-2**(width-1), 2**(width-1) - 1]``.
* **Wrap** to a width: keep the low ``width`` bits, reinterpret as signed.  Accumulators wrap
  (they do not saturate per addition), so the result of a sum does not depend on the order in
  which the hardware adds its terms; the final value is exact whenever the true sum fits.
* **Requantize** (shift right by ``shift`` bits): ``(q + 2**(shift-1)) >> shift`` with an
  arithmetic shift (round half up, as quantize), then saturate to the target format.

The HDL generator imports :class:`Format` and :func:`round_shift` from here; the golden model
uses the NumPy functions on ``int64`` arrays (wide enough for every format spine accepts:
``width <= 32`` and accumulators ``<= 48`` bits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Format",
    "quantize",
    "saturate",
    "wrap",
    "round_shift",
    "requantize",
    "MAX_WIDTH",
    "MAX_ACC_WIDTH",
]

MAX_WIDTH = 32
"""Largest width (bits) of a weight, activation or bias format."""

MAX_ACC_WIDTH = 48
"""Largest accumulator width (bits); products of two 24-bit values still fit ``int64``."""


@dataclass(frozen=True)
class Format:
    """A signed two's-complement fixed-point format.

    Parameters
    ----------
    width : int
        Total bits including the sign, ``2 <= width <= 48``.
    frac : int
        Fraction bits, ``0 <= frac < width``.  The value of integer ``q`` is ``q / 2**frac``.

    Raises
    ------
    TypeError
        If ``width`` or ``frac`` is not an integer.
    ValueError
        If they are out of range.
    """

    width: int
    frac: int

    def __post_init__(self):
        for name in ("width", "frac"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"`{name}` must be an integer, not {value!r}")
        if not 2 <= self.width <= MAX_ACC_WIDTH:
            raise ValueError(f"`width` must be between 2 and {MAX_ACC_WIDTH} bits, "
                             f"not {self.width}")
        if not 0 <= self.frac < self.width:
            raise ValueError(f"`frac` must be between 0 and width - 1 = {self.width - 1}, "
                             f"not {self.frac}")

    @property
    def min_int(self) -> int:
        """Smallest representable integer, ``-2**(width-1)``."""
        return -(1 << (self.width - 1))

    @property
    def max_int(self) -> int:
        """Largest representable integer, ``2**(width-1) - 1``."""
        return (1 << (self.width - 1)) - 1

    @property
    def scale(self) -> float:
        """Real value of one least-significant bit, ``2**-frac``."""
        return 2.0 ** -self.frac

    @property
    def max_value(self) -> float:
        """Largest representable real value."""
        return self.max_int * self.scale

    @property
    def min_value(self) -> float:
        """Smallest (most negative) representable real value."""
        return self.min_int * self.scale

    def to_float(self, q) -> np.ndarray:
        """Real values of integers ``q`` in this format."""
        return np.asarray(q, dtype=np.float64) * self.scale

    def to_dict(self) -> dict:
        return {"width": self.width, "frac": self.frac}

    @classmethod
    def from_dict(cls, d: dict) -> Format:
        return cls(int(d["width"]), int(d["frac"]))

    def __str__(self):
        return f"Q{self.width - self.frac - 1}.{self.frac} ({self.width} bit)"


def saturate(q, fmt: Format) -> np.ndarray:
    """Clamp integers ``q`` to the range of ``fmt``; returns ``int64``."""
    return np.clip(np.asarray(q, dtype=np.int64), fmt.min_int, fmt.max_int)


def quantize(x, fmt: Format) -> np.ndarray:
    """Quantize real values to ``fmt``: round half up, then saturate; returns ``int64``."""
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("cannot quantize NaN or infinite values")
    scaled = np.floor(x * (2.0 ** fmt.frac) + 0.5)
    scaled = np.clip(scaled, fmt.min_int, fmt.max_int)
    return scaled.astype(np.int64)


def wrap(q, width: int) -> np.ndarray:
    """Two's-complement wrap of integers ``q`` to ``width`` bits (as an adder of that width)."""
    q = np.asarray(q, dtype=np.int64)
    mask = (1 << width) - 1
    half = 1 << (width - 1)
    return ((q + half) & mask) - half


def round_shift(q, shift: int) -> np.ndarray:
    """Arithmetic right shift by ``shift`` bits with round half up; ``shift >= 0``."""
    q = np.asarray(q, dtype=np.int64)
    if shift < 0:
        raise ValueError(f"`shift` must be non-negative, not {shift}")
    if shift == 0:
        return q.copy()
    return (q + (1 << (shift - 1))) >> shift


def requantize(q, shift: int, fmt: Format) -> np.ndarray:
    """Round-shift ``q`` right by ``shift`` bits and saturate to ``fmt``."""
    return saturate(round_shift(q, shift), fmt)
