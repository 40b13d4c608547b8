"""Broadcast of non-zero activations to the PE array: one logical FIFO per PE.

EIE pushes every non-zero activation ``(value, column)`` into a FIFO of every processing
element (PE); a push stalls while any FIFO is full, and each PE pops at its own pace.  All PEs
receive the *same* sequence, so :class:`BroadcastFifo` keeps one copy of the ``depth`` slots
(a circular buffer written by the broadcaster) and one read pointer and fill level per PE.  It
behaves exactly like ``n_pe`` independent synchronous FIFOs of depth ``depth``:

* ``w_rdy`` (not full) is registered state: a pop in the same cycle does not make room for a
  push in that cycle (the cycle model's ``B[c] > pop_p[c-F]``);
* a pushed element is visible to the PEs the cycle after the push (``pop_p[c] > B[c]``).
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["BroadcastFifo", "check_positive"]


def check_positive(name: str, value, minimum: int = 1) -> int:
    """Return ``value`` if it is an integer ``>= minimum``, else raise with a clear message."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "positive integer" if minimum == 1 else f"integer >= {minimum}"
        if minimum == 0:
            kind = "non-negative integer"
        raise ValueError(f"`{name}` must be a {kind}, not {value!r}")
    return value


class BroadcastFifo(wiring.Component):
    """``n_pe`` FIFOs of depth ``depth`` that always receive the same pushes.

    Parameters
    ----------
    n_pe : int
        Number of readers (PEs), >= 1.
    shape : ShapeLike
        Element shape (e.g. a ``data.StructLayout`` of the activation value and column).
    depth : int
        Slots per FIFO, >= 1.

    Attributes
    ----------
    w : In(stream.Signature(shape))
        Push side; ``w.ready`` is high when no FIFO is full (registered).
    r : Out(ArrayLayout of n_pe streams)
        One pop stream per PE; ``r[p].valid`` when PE ``p``'s FIFO holds an element.
    empty : Out(1)
        All FIFOs empty.
    """

    def __init__(self, n_pe: int, shape, depth: int):
        self.n_pe = check_positive("n_pe", n_pe)
        self.depth = check_positive("depth", depth)
        self.shape = shape
        super().__init__({
            "w": In(stream.Signature(shape)),
            "r": Out(stream.Signature(shape)).array(n_pe),
            "empty": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        depth, n_pe = self.depth, self.n_pe
        slots = Array(Signal(self.shape, name=f"slot{i}") for i in range(depth))
        wp = Signal(range(max(depth, 2)))          # 1 bit (always 0) for depth 1

        levels = []
        full_any = Signal()
        full_bits = []
        for p in range(n_pe):
            rp = Signal(range(max(depth, 2)), name=f"rp{p}")
            level = Signal(range(depth + 1), name=f"level{p}")
            levels.append(level)
            port = self.r[p]
            m.d.comb += [port.valid.eq(level != 0), port.payload.eq(slots[rp])]
            pop = port.valid & port.ready
            push = self.w.valid & self.w.ready
            with m.If(pop):
                m.d.sync += rp.eq(_next(rp, depth))
            with m.If(push & ~pop):
                m.d.sync += level.eq(level + 1)
            with m.Elif(~push & pop):
                m.d.sync += level.eq(level - 1)
            full_bits.append(level == depth)
        m.d.comb += full_any.eq(_any(full_bits))
        m.d.comb += self.w.ready.eq(~full_any)
        m.d.comb += self.empty.eq(~_any([lv != 0 for lv in levels]))
        with m.If(self.w.valid & self.w.ready):
            m.d.sync += [slots[wp].eq(self.w.payload), wp.eq(_next(wp, depth))]
        return m


def _next(ptr, depth):
    """``(ptr + 1) mod depth`` for a pointer ``Signal(range(depth))``."""
    if depth == 1:
        return 0
    if depth & (depth - 1) == 0:
        return (ptr + 1)[:len(ptr)]
    from amaranth.hdl import Mux
    return Mux(ptr == depth - 1, 0, ptr + 1)


def _any(bits):
    """OR of a list of 1-bit values (balanced tree, fine for 64 inputs)."""
    from amaranth.hdl import Cat
    return Cat(*bits).any() if bits else 0
