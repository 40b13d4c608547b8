"""Read-back of an engine's loadable memories through their existing read ports.

While the engine is idle its memories' read ports are unused, so the shell can read every word
the loader writes (regions ENTRY, POINTER, CODEBOOK, BIAS, DESCRIPTOR of
:class:`host.memory_map.Region`) by steering those ports' addresses: a 2:1 mux on each read
address (selected by :attr:`ReadbackSignature.en` while not busy), no extra memory.  The
host's READ and CHECKSUM commands then see the words actually stored (docs/protocol.md).

* ENTRY, POINTER: every PE reads ``addr`` at once (entry memory; pointer word ``addr``);
  the engine returns PE ``pe``'s word.  A follower of a PE pair (:mod:`hdl.pe`) returns its
  byte of its leader's entry word and its leader's pointer word.
* CODEBOOK: PE 0's copy (all PEs hold identical copies, always written together).
* BIAS: the bias memory's read port of the output stage.
* DESCRIPTOR: the descriptor registers (no memory); each field reads back the bits the engine
  keeps, zero-extended; COLS (not stored) reads 0.

``data`` holds the word one cycle after ``en`` (the memories' read latency), defined on the
bits of the region's wire word (8, 16 or 32 bits, :func:`wire_bits`; the shell sends no
more): unsigned words zero-extended, CODEBOOK and BIAS words sign-extended to it.
"""

from __future__ import annotations

from amaranth.hdl import Array, C, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from host.memory_map import Region

__all__ = ["ReadbackSignature", "READBACK_DATA_BITS", "connect_readback", "wire_bits"]

#: Width of :attr:`ReadbackSignature.data` (the region bus word).
READBACK_DATA_BITS = 32


class ReadbackSignature(wiring.Signature):
    """Engine read-back port, from the initiator's (the shell's) side.

    Members
    -------
    en : Out(1)
        Read this cycle (honoured only while the engine is not busy).
    region : Out(3)
        A :class:`host.memory_map.Region` (ENTRY .. DESCRIPTOR).
    pe : Out(pe_bits)
        PE of ENTRY and POINTER reads.
    addr : Out(addr_width)
        Word address, as the loader's ``load.addr`` of the same word.
    data : In(32)
        The word read, one cycle after ``en`` (bits above the region's wire word undefined).
    """

    def __init__(self, n_pe: int, addr_width: int):
        super().__init__({
            "en": Out(1), "region": Out(3), "pe": Out(max(1, (n_pe - 1).bit_length())),
            "addr": Out(addr_width), "data": In(READBACK_DATA_BITS),
        })


def connect_readback(m, rb, busy, pes, bias_port, descriptor_words):
    """Wire the read-back port ``rb`` (the engine's ``In(ReadbackSignature)``).

    Parameters
    ----------
    m : Module
        The engine's module; call this after the engine's own logic, so that the bias read
        port assignments made here take precedence while reading back.
    rb : the engine's read-back interface
    busy : Value or None
        The engine is running (read-back is ignored); ``None``: the initiator raises ``rb.en``
        only while the engine is idle, and ``rb.en`` is used as it is (the LSTM engine:
        ``busy`` kept off its SPRAM address paths).
    pes : list of ProcessingElement
        Each with the ``rb_en``/``rb_addr`` inputs and ``rb_entry``/``rb_ptr``/``rb_weight``
        outputs.
    bias_port : ReadPort
        The bias memory's read port (time-shared with the output stage).
    descriptor_words : dict of int -> Value
        DESCRIPTOR address -> the stored field (registers); absent addresses read 0.
    """
    active = Signal()
    m.d.comb += active.eq(rb.en if busy is None else rb.en & ~busy)
    for pe in pes:
        m.d.comb += [pe.rb_en.eq(active), pe.rb_addr.eq(rb.addr)]
    with m.If(active):
        m.d.comb += [bias_port.addr.eq(rb.addr), bias_port.en.eq(1)]

    # The selection, registered with the read (the data arrive one cycle later).
    region = Signal(3)
    pe_sel = Signal.like(rb.pe)
    desc_addr = Signal(max(1, max(descriptor_words).bit_length()))
    with m.If(active):
        m.d.sync += [region.eq(rb.region), pe_sel.eq(rb.pe), desc_addr.eq(rb.addr)]

    def pick(values):
        return Array(values)[pe_sel] if len(values) > 1 else values[0]

    # Only the bits of a region's wire word (8 x word_bytes) are defined: the shell sends no
    # more.  The BIAS word is the default of every bit; the other regions override the bits of
    # their wire word (fewer multiplexer inputs on the high bits).
    weight = pes[0].rb_weight
    m.d.comb += rb.data.eq(bias_port.data.as_signed())
    with m.Switch(region):
        with m.Case(Region.ENTRY):
            entry = pick([pe.rb_entry for pe in pes])
            m.d.comb += rb.data[:wire_bits(len(entry))].eq(entry)
        with m.Case(Region.POINTER):
            ptr = pick([pe.rb_ptr for pe in pes])
            m.d.comb += rb.data[:wire_bits(len(ptr))].eq(ptr)
        with m.Case(Region.CODEBOOK):
            m.d.comb += rb.data[:wire_bits(len(weight))].eq(weight.as_signed())
        with m.Case(Region.DESCRIPTOR):
            # two multiplexer levels: descriptor k (address >> 3) per field, then the field
            # (a plain tree of 2:1 multiplexers; absent words read 0)
            # (each word keeps its shape: signed fields are sign-extended, as before)
            ks = 1 << max(0, len(desc_addr) - 3)
            fields = []
            for f in range(8):
                column = [Value.cast(descriptor_words.get((k << 3) | f, C(0, 1)))
                          for k in range(ks)]
                fields.append(Array(column)[desc_addr[3:]] if ks > 1 else column[0])
            m.d.comb += rb.data.eq(Array(fields)[desc_addr[:3]])


def wire_bits(width: int) -> int:
    """Bits of a ``width``-bit word on the wire (8 x word_bytes: 8, 16 or 32), as
    :attr:`hdl.command.RegionSpec.word_bytes`."""
    return 8 if width <= 8 else 16 if width <= 16 else 32
