"""The iCE40UP single-port RAM (SB_SPRAM256KA: 16384 words x 16 bits) behind one component.

:class:`Ice40Spram` instantiates the primitive when elaborated for an iCE40 platform and a
behavioural model (an :class:`amaranth.lib.memory.Memory`) otherwise (simulation, Verilator),
with the primitive's timing: one access per cycle, either a write (``we``) or a read whose data
appears on ``rdata`` the cycle after (``re``); ``rdata`` holds its value otherwise.
"""


from amaranth.hdl import ClockSignal, Const, Instance, Module, Mux
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["Ice40Spram", "SPRAM_DEPTH", "SPRAM_WIDTH", "check_entry_memory"]

SPRAM_DEPTH = 16384
"""Words of one SB_SPRAM256KA."""
SPRAM_WIDTH = 16
"""Bits per word."""


def check_entry_memory(memory, max_entries_per_pe, holder):
    """ValueError unless ``memory`` is ``"bram"`` or ``"spram"`` and, for ``"spram"``, the
    ``max_entries_per_pe`` entries fit one SB_SPRAM256KA (``holder``: what one SPRAM serves, for
    the message, e.g. "PE" or "PE pair or solo PE")."""
    if memory not in ("bram", "spram"):
        raise ValueError(f"`memory` must be 'bram' or 'spram', not {memory!r}")
    if memory == "spram" and max_entries_per_pe > SPRAM_DEPTH:
        raise ValueError(f"`max_entries_per_pe` must be at most {SPRAM_DEPTH} with "
                         f"memory='spram' (one SB_SPRAM256KA per {holder}), not "
                         f"{max_entries_per_pe}")


class Ice40Spram(wiring.Component):
    """One SB_SPRAM256KA (256 kbit), or its behavioural model.

    Parameters
    ----------
    behavioural : bool or None
        Force the model (True) or the primitive (False); None (default): the primitive when the
        platform is an iCE40 one (``platform.family`` "iCE40", any case), else the model.
    masked : bool
        Add the ``mask`` input (nibble write enables); default False (whole words).

    Attributes
    ----------
    addr : In(14)
        Word address.
    wdata : In(16)
    we : In(1)
        Write ``wdata`` to ``addr`` this cycle (the nibbles ``mask`` enables; all four
        without ``masked``).
    mask : In(4)
        Only with ``masked=True``: nibble write enables (MASKWREN; bit ``i`` = bits
        ``4i .. 4i + 3``), so one byte can be written keeping the other.
    re : In(1)
        Read ``addr`` this cycle; the word appears on ``rdata`` next cycle.
    rdata : Out(16)
    """

    def __init__(self, *, behavioural=None, masked=False):
        if behavioural not in (None, True, False):
            raise TypeError(f"`behavioural` must be None, True or False, not {behavioural!r}")
        if masked not in (True, False):
            raise TypeError(f"`masked` must be True or False, not {masked!r}")
        self.behavioural = behavioural
        self.masked = masked
        members = {"addr": In(14), "wdata": In(SPRAM_WIDTH), "we": In(1), "re": In(1),
                   "rdata": Out(SPRAM_WIDTH)}
        if masked:
            members["mask"] = In(4)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        mask = self.mask if self.masked else Const(0b1111, 4)
        model = self.behavioural
        if model is None:
            # amaranth's SiliconBluePlatform says "iCE40"
            model = str(getattr(platform, "family", "")).lower() != "ice40"
        if model:
            m.submodules.mem = mem = Memory(shape=SPRAM_WIDTH, depth=SPRAM_DEPTH, init=[])
            wp = mem.write_port(granularity=4)
            rp = mem.read_port()
            m.d.comb += [wp.addr.eq(self.addr), wp.data.eq(self.wdata),
                         wp.en.eq(Mux(self.we, mask, 0)),
                         rp.addr.eq(self.addr), rp.en.eq(self.re & ~self.we),
                         self.rdata.eq(rp.data)]
        else:
            m.submodules.spram = Instance(
                "SB_SPRAM256KA",
                i_ADDRESS=self.addr, i_DATAIN=self.wdata, i_MASKWREN=mask,
                i_WREN=self.we, i_CHIPSELECT=self.we | self.re, i_CLOCK=ClockSignal("sync"),
                i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1, o_DATAOUT=self.rdata)
        return m
