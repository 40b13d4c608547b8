"""Output stage arithmetic: bias add, round-shift, saturate, ReLU (combinational).

Bit-exact with :func:`host.golden.spmv` (see :mod:`host.fixedpoint`)::

    sum = wrap(acc + bias, acc_bits)             (accumulators wrap; order does not matter)
    out = saturate((sum + 2**(shift-1)) >> shift, act)    (no rounding term for shift = 0)
    out = max(out, 0) if relu

The rounding add is one bit wider than the accumulator, so it never wraps (as in the golden
model's ``int64`` arithmetic).
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from host.fixedpoint import Format

__all__ = ["Requantizer"]


class Requantizer(wiring.Component):
    """Combinational requantizer.

    Parameters
    ----------
    acc_bits : int
        Accumulator and bias width (bits, signed, wrapping).
    act_format : Format
        Output activation format (only its width matters here).
    max_shift : int
        Largest shift (weight fraction bits) the ``shift`` input must carry.

    Attributes
    ----------
    acc, bias : In(signed(acc_bits))
    shift : In(bits_for(max_shift))
        Right shift (bits), the layer's weight fraction bits.
    relu : In(1)
    out : Out(signed(act_format.width))
    """

    def __init__(self, acc_bits: int, act_format: Format, max_shift: int):
        if not isinstance(act_format, Format):
            raise TypeError(f"`act_format` must be a host.fixedpoint.Format, not {act_format!r}")
        if not isinstance(acc_bits, int) or not act_format.width <= acc_bits <= 48:
            raise ValueError(f"`acc_bits` must be an integer from {act_format.width} to 48, "
                             f"not {acc_bits!r}")
        if not isinstance(max_shift, int) or not 0 <= max_shift < acc_bits:
            raise ValueError(f"`max_shift` must be an integer from 0 to {acc_bits - 1}, "
                             f"not {max_shift!r}")
        self.acc_bits = acc_bits
        self.act_format = act_format
        self.max_shift = max_shift
        super().__init__({
            "acc": In(signed(acc_bits)),
            "bias": In(signed(acc_bits)),
            "shift": In(unsigned(bits_for(max_shift))),
            "relu": In(1),
            "out": Out(signed(act_format.width)),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.acc_bits
        total = Signal(signed(n))
        m.d.comb += total.eq(self.acc + self.bias)            # truncated: wraps
        half = Signal(unsigned(n))
        m.d.comb += half.eq(((Const(1, n + 1) << self.shift) >> 1)[:n])   # 0 for shift 0
        rounded = Signal(signed(n + 1))
        m.d.comb += rounded.eq(total + half)
        shifted = Signal(signed(n + 1))
        m.d.comb += shifted.eq(rounded >> self.shift)
        fmt = self.act_format
        sat = Signal(signed(fmt.width))
        with m.If(shifted > fmt.max_int):
            m.d.comb += sat.eq(fmt.max_int)
        with m.Elif(shifted < fmt.min_int):
            m.d.comb += sat.eq(fmt.min_int)
        with m.Else():
            m.d.comb += sat.eq(shifted)
        m.d.comb += self.out.eq(Mux(self.relu & sat[-1], 0, sat))
        return m
