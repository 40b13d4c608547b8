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
enabled).  Without a request the port reads a default address (the host's read of the
engine's own data while idle: read data one cycle later).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Signal

__all__ = ["SpramShare", "EW_BASE"]

#: First SPRAM word of the element-wise data (the entries stay below: at most 8192 per PE).
EW_BASE = 8192


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
        """Drive the port: ``aux_en = enable`` (static through a phase; the PE idle), the first
        request that is on, else a read of ``default_addr`` (``None``: nobody uses the word
        read without a request; the port then reads the last request's address, one
        multiplexer level less).  ``others``: signals that use the SPRAM outside this port in
        a cycle (a loader entry write, a read-back), counted by the check.  Returns the
        sticky conflict flag (1 from the first cycle with two accesses, or a request while
        ``enable`` is off, until reset).

        The write data are selected among the write requests only (they matter only with
        ``aux_we``): one write request drives ``aux_wdata`` directly."""
        m, pe = self.m, self.pe
        on = Signal(name=f"{self.name}_enable")
        m.d.comb += on.eq(enable)
        enable = on
        addr = Signal(14, name=f"{self.name}_addr")
        we = Signal(name=f"{self.name}_we")
        wdata = Signal(16, name=f"{self.name}_wdata")
        mask = Signal(4, name=f"{self.name}_mask", init=0b1111)
        m.d.comb += addr.eq(self._requests[-1][1] if default_addr is None else default_addr)
        writes = [d for _, _, w, d, _ in self._requests if w]
        if writes:
            m.d.comb += wdata.eq(writes[-1])
        for en, a, w, d, k in reversed(self._requests):    # the first request wins
            with m.If(en):
                m.d.comb += [addr.eq(a), we.eq(w)]
                if w:
                    m.d.comb += wdata.eq(d)
                if k is not None:
                    m.d.comb += mask.eq(k)
        m.d.comb += [pe.aux_en.eq(enable), pe.aux_addr.eq(addr), pe.aux_we.eq(we),
                     pe.aux_wdata.eq(wdata)]
        if hasattr(pe, "aux_mask"):
            m.d.comb += pe.aux_mask.eq(mask)
        # the check (simulation reads it; unused on the board, where it is optimised away)
        conflict = Signal(name=f"{self.name}_conflict")
        ons = [en for en, *_ in self._requests] + list(others)
        count = Signal(range(len(ons) + 1), name=f"{self.name}_accesses")
        m.d.comb += count.eq(sum(Cat(on).as_unsigned() for on in ons))
        requests = Cat(*(en for en, *_ in self._requests)).any()
        with m.If((count > 1) | (requests & ~enable)):
            m.d.sync += conflict.eq(1)
        return conflict

