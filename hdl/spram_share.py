"""Several users of one PE's SPRAM through its idle-time port (:class:`hdl.pe.ProcessingElement`
with ``aux=True``), with a check that they never collide.

The LSTM engine keeps its element-wise data in the PE pairs' SPRAMs (``memory="spram"``,
``overlap=False``; docs/lstm-engine.md).  Each SPRAM is single-ported: per cycle one read or
one write.  :class:`SpramShare` merges the *requests* of its users (the read-back of the
entries, the loader's entry and element-wise data writes, the element-wise unit's reads and
writes, the classifier output stage's) into the PE's ``aux_*`` port, the one multiplexer in
front of the SPRAM besides the PE's issue address; the schedule is built so that no two
requests come in the same cycle, and :meth:`finish` adds a sticky ``conflict`` flag that the
simulation reads to prove it (two requests in one cycle, or a request while the port is not
enabled).  Because the requests are one-hot, the merge is an AND-OR (each request's address
gated by its enable, then ORed): two LUT levels on the iCE40 for four requests, where a
priority chain took one level per request (docs/ice40-resources.md, section 10).  Without a
request the port reads a default address (the host's read of the engine's own data while
idle: read data one cycle later).

:func:`ew_word` places an element-wise word above the entries by wiring (no adder).
"""

from __future__ import annotations

from functools import reduce
from operator import or_

from amaranth.hdl import C, Cat, Mux, Signal, Value

__all__ = ["SpramShare", "EW_BASE", "EW_HALF", "ew_word"]

#: First SPRAM word of the element-wise data (the entries stay below: at most 8192 per PE).
EW_BASE = 8192
#: Offset of the upper half of an element-wise area (the output buffer, h): 4096 words.
EW_HALF = 4096


def ew_word(addr, upper: bool = False) -> Value:
    """SPRAM word ``EW_BASE + addr`` (``EW_BASE + EW_HALF + addr`` when ``upper``), 14 bit, by
    wiring: ``addr`` (unsigned, below 8192; below 4096 when ``upper``) in the low bits, the
    offsets as constant high bits.  An ``EW_BASE + addr`` adder would do the same, but Yosys
    moves such adders behind the request multiplexer (one adder for all requests), which puts
    a carry chain between the requests and the SPRAM address."""
    a = Value.cast(addr)
    low = 12 if upper else 13
    return Cat(a[:low], C(0, max(0, low - len(a))), *([C(1, 1)] if upper else []), C(1, 1))


class SpramShare:
    """The users of PE ``pe``'s SPRAM (``pe.aux_*``), collected before :meth:`finish`.

    Parameters
    ----------
    m : Module
        The engine's module.
    pe : ProcessingElement
        A solo or leader PE built with ``aux=True``.
    name : str
        For signal names.
    """

    def __init__(self, m, pe, name: str):
        self.m = m
        self.pe = pe
        self.name = name
        self._requests = []
        #: The word read (16 bit), one cycle after a read request (or the default read).
        self.rdata = pe.aux_rdata

    def read(self, en, addr) -> None:
        """Read word ``addr`` (14 bit) when ``en``; the word is on :attr:`rdata` next cycle."""
        self._requests.append((en, addr, 0, 0, None))

    def write(self, en, addr, data, mask=None) -> None:
        """Write ``data`` (16 bit) to word ``addr`` when ``en``; ``mask`` (4 bit, only for a
        leader PE's SPRAM) enables nibbles, default all."""
        if mask is not None and not hasattr(self.pe, "aux_mask"):
            raise ValueError(f"{self.name}: a masked write needs a leader PE's SPRAM (`aux_mask`)")
        self._requests.append((en, addr, 1, data, mask))

    def finish(self, enable, default_addr=None, others=()) -> Signal:
        """Drive the port: ``aux_en = enable`` (static through a phase; the PE idle), the
        request that is on, else a read of ``default_addr`` (``None``: nobody uses the word
        read without a request; the port then reads address 0, one multiplexer level less).
        ``others``: signals that use the SPRAM outside this port in a cycle (a loader entry
        write, a read-back), counted by the check.  Returns the sticky conflict flag (1 from
        the first cycle with two accesses, or a request while ``enable`` is off, until reset).

        The requests are merged as one-hot (AND-OR: the check proves that at most one is on).
        The write data and mask are merged among the write requests only (they matter only
        with ``aux_we``): one write request drives ``aux_wdata`` directly."""
        m, pe = self.m, self.pe
        on = Signal(name=f"{self.name}_enable")
        m.d.comb += on.eq(enable)
        enable = on
        addr = Signal(14, name=f"{self.name}_addr")
        we = Signal(name=f"{self.name}_we")
        wdata = Signal(16, name=f"{self.name}_wdata")
        mask = Signal(4, name=f"{self.name}_mask")

        def merge(requests, width, pick):
            """AND-OR of ``pick(request)`` over ``requests`` (0 when none is on)."""
            gated = [Mux(r[0], pick(r), C(0, width)) for r in requests]
            return reduce(or_, gated[1:], gated[0]) if len(gated) > 1 else pick(requests[0])

        requests = self._requests
        writes = [r for r in requests if r[2]]
        merged = merge(requests, 14, lambda r: r[1])
        if default_addr is None:
            m.d.comb += addr.eq(merged)
        else:
            any_on = Signal(name=f"{self.name}_requested")
            m.d.comb += [any_on.eq(Cat(*(en for en, *_ in requests)).any()),
                         addr.eq(Mux(any_on, merged, default_addr))]
        if writes:
            m.d.comb += [we.eq(Cat(*(en for en, *_ in writes)).any()),
                         wdata.eq(merge(writes, 16, lambda r: r[3]))]
        # the nibble mask: a masked write's own, 0b1111 for the others
        masked = [r for r in writes if r[4] is not None]
        if masked:
            own = Signal(name=f"{self.name}_masked")
            m.d.comb += [own.eq(Cat(*(en for en, *_ in masked)).any()),
                         mask.eq(Mux(own, merge(masked, 4, lambda r: r[4]), 0b1111))]
        else:
            m.d.comb += mask.eq(0b1111)
        m.d.comb += [pe.aux_en.eq(enable), pe.aux_addr.eq(addr), pe.aux_we.eq(we),
                     pe.aux_wdata.eq(wdata)]
        if hasattr(pe, "aux_mask"):
            m.d.comb += pe.aux_mask.eq(mask)
        # the check (simulation reads it; unused on the board, where it is optimised away)
        conflict = Signal(name=f"{self.name}_conflict")
        ons = [en for en, *_ in requests] + list(others)
        count = Signal(range(len(ons) + 1), name=f"{self.name}_accesses")
        m.d.comb += count.eq(sum(Cat(on).as_unsigned() for on in ons))
        requested = Cat(*(en for en, *_ in requests)).any()
        with m.If((count > 1) | (requested & ~enable)):
            m.d.sync += conflict.eq(1)
        return conflict

