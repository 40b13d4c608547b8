"""Output stage arithmetic: bias add, round-shift, saturate, ReLU (combinational or pipelined).

Bit-exact with :func:`host.golden.spmv` (see :mod:`host.fixedpoint`)::

    sum = wrap(acc + bias, acc_bits)             (accumulators wrap; order does not matter)
    out = saturate((sum + 2**(shift-1)) >> shift, act)    (no rounding term for shift = 0)
    out = max(out, 0) if relu

The rounding add is one bit wider than the accumulator, so it never wraps (as in the golden
model's ``int64`` arithmetic).

Both forms round with ``(sum + 2**(s-1)) >> s == ((2*sum >> s) + 1) >> 1``,
which holds for every ``s >= 0`` (for ``s = 0``: ``(2*sum + 1) >> 1 == sum``), so the shift
comes before the rounding add (an incrementer, no rounding constant to shift into place).

The pipelined form (``pipelined=True``, :data:`REQUANT_LATENCY` = 5 register stages, one
result per cycle) splits the work so that no stage has more than one carry chain or one barrel
shifter (iCE40 timing)::

    stage 1   acc, bias, shift, relu registered      (the caller's memory read / PE select)
    stage 2   sum = acc + bias                       (acc_bits carry chain)
    stage 3   v = (2 * sum) >> shift                 (barrel shifter, arithmetic)
    stage 4   w = (v + 1) >> 1                       (acc_bits + 2 carry chain)
    stage 5   out = relu(saturate(w))                (sign / overflow bits, one mux)
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from host.cyclemodel import REQUANT_LATENCY
from host.fixedpoint import Format

__all__ = ["Requantizer", "REQUANT_LATENCY", "saturate"]


def saturate(m, value, fmt, name=None):
    """``value`` (a signed value of any width) saturated to the format ``fmt`` (comb); returns
    a signed ``fmt.width``-bit Signal.  ``value`` fits iff its bits from ``fmt.width - 1`` up
    are all equal (copies of the sign): a test of those bits, not two magnitude compares
    (carry chains)."""
    sat = Signal(signed(fmt.width), name=name)
    top = value[fmt.width - 1:]
    with m.If(top.all() | ~top.any()):
        m.d.comb += sat.eq(value[:fmt.width])
    with m.Elif(value[-1]):
        m.d.comb += sat.eq(fmt.min_int)
    with m.Else():
        m.d.comb += sat.eq(fmt.max_int)
    return sat


class Requantizer(wiring.Component):
    """Requantizer: ``out = relu(saturate(round_shift(wrap(acc + bias), shift)))``.

    Parameters
    ----------
    acc_bits : int
        Accumulator and bias width (bits, signed, wrapping).
    act_format : Format
        Output activation format (only its width matters here).
    max_shift : int
        Largest shift (weight fraction bits) the ``shift`` input must carry.
    pipelined : bool
        False (default): combinational, ``out`` follows the inputs in the same cycle.
        True: :data:`REQUANT_LATENCY` register stages; ``out`` is the result of the inputs
        presented :data:`REQUANT_LATENCY` cycles earlier (a new input every cycle).

    Attributes
    ----------
    acc, bias : In(signed(acc_bits))
    shift : In(bits_for(max_shift))
        Right shift (bits), the layer's weight fraction bits.
    relu : In(1)
    out : Out(signed(act_format.width))
    latency : int
        Cycles from the inputs to ``out`` (0 or :data:`REQUANT_LATENCY`).
    """

    def __init__(self, acc_bits: int, act_format: Format, max_shift: int, *,
                 pipelined: bool = False):
        if not isinstance(act_format, Format):
            raise TypeError(f"`act_format` must be a host.fixedpoint.Format, not {act_format!r}")
        if not isinstance(acc_bits, int) or not act_format.width <= acc_bits <= 48:
            raise ValueError(f"`acc_bits` must be an integer from {act_format.width} to 48, "
                             f"not {acc_bits!r}")
        if not isinstance(max_shift, int) or not 0 <= max_shift < acc_bits:
            raise ValueError(f"`max_shift` must be an integer from 0 to {acc_bits - 1}, "
                             f"not {max_shift!r}")
        if not isinstance(pipelined, bool):
            raise TypeError(f"`pipelined` must be True or False, not {pipelined!r}")
        self.acc_bits = acc_bits
        self.act_format = act_format
        self.max_shift = max_shift
        self.pipelined = pipelined
        self.latency = REQUANT_LATENCY if pipelined else 0
        super().__init__({
            "acc": In(signed(acc_bits)),
            "bias": In(signed(acc_bits)),
            "shift": In(unsigned(bits_for(max_shift))),
            "relu": In(1),
            "out": Out(signed(act_format.width)),
        })

    def elaborate(self, platform):
        if self.pipelined:
            return self._pipelined()
        m = Module()
        n = self.acc_bits
        total = Signal(signed(n))
        m.d.comb += total.eq(self.acc + self.bias)            # truncated: wraps
        # ((2 * total) >> shift + 1) >> 1, as in the pipelined form: one barrel shifter and an
        # incrementer (no rounding constant 2**(shift-1), a second shifter, to add).
        doubled = Signal(signed(n + 1))
        m.d.comb += doubled.eq(Cat(Const(0, 1), total).as_signed() >> self.shift)
        shifted = Signal(signed(n + 1))
        m.d.comb += shifted.eq((doubled + 1) >> 1)
        m.d.comb += self.out.eq(self._saturate_relu(m, shifted, self.relu))
        return m

    def _saturate_relu(self, m, value, relu):
        """``relu ? max(sat, 0) : sat`` of ``value`` saturated to the act format (comb)."""
        sat = saturate(m, value, self.act_format)
        return Mux(relu & sat[-1], 0, sat)

    def _pipelined(self):
        m = Module()
        n = self.acc_bits
        shift_shape = unsigned(len(self.shift))
        # Datapath registers carry no reset (they are qualified by the caller's valid bits).
        acc1 = Signal(signed(n), reset_less=True)
        bias1 = Signal(signed(n), reset_less=True)
        shift = [Signal(shift_shape, name=f"shift{i}", reset_less=True) for i in (1, 2)]
        relu = [Signal(name=f"relu{i}", reset_less=True) for i in (1, 2, 3, 4)]
        m.d.sync += [acc1.eq(self.acc), bias1.eq(self.bias), shift[0].eq(self.shift),
                     relu[0].eq(self.relu), shift[1].eq(shift[0])]
        m.d.sync += [relu[i].eq(relu[i - 1]) for i in (1, 2, 3)]
        sum2 = Signal(signed(n), reset_less=True)
        m.d.sync += sum2.eq(acc1 + bias1)                     # truncated: wraps
        v3 = Signal(signed(n + 1), reset_less=True)
        m.d.sync += v3.eq(Cat(Const(0, 1), sum2).as_signed() >> shift[1])
        w4 = Signal(signed(n + 1), reset_less=True)
        m.d.sync += w4.eq((v3 + 1) >> 1)
        out = Signal(signed(self.act_format.width), reset_less=True)
        m.d.sync += out.eq(self._saturate_relu(m, w4, relu[3]))
        m.d.comb += self.out.eq(out)
        return m
