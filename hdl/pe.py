"""One EIE processing element (PE): pointer read, entry issue, codebook decode, multiply,
accumulate.

Pipeline (one entry per cycle, padding included), cycle ``t`` = the entry's *issue* cycle::

    pop   P      take (pointer index k, value) from the broadcast FIFO, read the column's
                 pointer word (start, length) (host.encoding.pointer_words)  (fetch_latency = 1)
    issue t      entry address = entry_base + ptr presented to the entry memory
    S2    t + 1  entry (weight index, zero run) -> local row; codebook read
    S3    t + 2  weight -> product >> product_shift (registered, one SB_MAC16 on iCE40; the
                 shift is wiring); accumulator read
    S4    t + 3  accumulator + product (wraps at acc_bits) written back; a one-deep
                 forwarding register covers the write of the previous entry to the same row

The next column may be popped in the cycle that issues the current column's last entry, so a
busy PE issues back to back (the cycle model's ``pop_p[c] >= E_p[c-1] - fetch_latency``), but
not in the cycle its pointer word arrives: the pop decision uses registered flags only (iCE40
timing), so pops are at least two cycles apart (``pop_interval = 2``) and an empty column costs
two cycles.  The last product is in its accumulator three cycles
after the last issue (``drain_latency = 3``); :attr:`ProcessingElement.busy` follows the same
chain (an empty column's pointer read counts as an issue slot) so the engine's done detection
lands exactly on the model's cycle.

**Lockstep pairs** (``role`` "leader" / "follower", an engine's ``pe_group=2``): the leader
pops, reads the pointer word and issues as above, reading one entry word that holds its entry
(low byte) and its follower's (high byte: one SB_SPRAM256KA feeds two PEs).  The follower has
its own codebook, multiplier, accumulators and forwarding; its S2 takes the leader's S2
registers (valid, first-entry flag, activation) and the high byte, so both PEs run the same
cycles.  That needs equal column lengths within the pair: the host pads the shorter column
with zero-weight entries (:func:`host.encoding.pad_groups`), and the cycle model runs on the
padded encoding.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from host.encoding import entry_layout_fields, pointer_fields

from .ice40_spram import SPRAM_DEPTH, Ice40Spram

__all__ = ["ProcessingElement", "WriteSignature", "PairSignature", "column_layout", "addr_bits",
           "PE_ROLES", "pe_roles"]

#: A PE's part in a lockstep group: "solo" (on its own), "leader" (pops, pointers and the
#: entry memory of a pair) or "follower" (its own codebook, multiplier and accumulators, driven
#: by its leader).
PE_ROLES = ("solo", "leader", "follower")


def pe_roles(n_pe: int, pe_group: int) -> list[str]:
    """Role of every PE: all "solo" for ``pe_group`` 1; for 2, PE ``2g`` leads PE ``2g + 1``."""
    if pe_group == 1:
        return ["solo"] * n_pe
    return ["leader" if p % 2 == 0 else "follower" for p in range(n_pe)]


def addr_bits(depth: int) -> int:
    """Address width (bits) of a memory of ``depth`` words (at least 1)."""
    return max(1, ceil_log2(depth))


def column_layout(ptr_index_bits: int, act_width: int) -> data.StructLayout:
    """A broadcast element: the column's pointer index ``k`` and the activation value."""
    return data.StructLayout({"k": unsigned(ptr_index_bits), "value": signed(act_width)})


class WriteSignature(wiring.Signature):
    """A memory write request ``(addr, data, en)`` driven by the loader.

    Parameters
    ----------
    addr_width : int
        Address bits.
    shape : ShapeLike
        Data shape.
    """

    def __init__(self, addr_width: int, shape):
        super().__init__({"addr": Out(addr_width), "data": Out(shape), "en": Out(1)})


class PairSignature(wiring.Signature):
    """A leader's link to its follower (the leader's side; the follower has it flipped).

    Members
    -------
    valid, first : Out(1)
        An entry is in S2 this cycle / it is its column's first (the leader's S2 registers).
    value : Out(signed(act_width))
        The column's activation, in S2.
    entry : Out(entry_bits)
        The follower's entry in S2 (the high byte of the leader's entry word); also the
        read-back word one cycle after ``rb_en``.
    ptr : Out(ptr_bits)
        The leader's pointer read data (the follower's read-back; its words are the leader's).
    busy : Out(1)
        The leader's ``busy`` (the pair issues in lockstep).
    w_addr, w_data, w_en : In
        The follower's loader entry writes, into the leader's entry memory.
    """

    def __init__(self, act_width: int, entry_bits: int, ptr_bits: int, entry_addr_bits: int):
        super().__init__({
            "valid": Out(1), "first": Out(1), "value": Out(signed(act_width)),
            "entry": Out(entry_bits), "ptr": Out(ptr_bits), "busy": Out(1),
            "w_addr": In(entry_addr_bits), "w_data": In(entry_bits), "w_en": In(1),
        })


class ProcessingElement(wiring.Component):
    """A PE with its entry, pointer, codebook and accumulator memories.

    Parameters
    ----------
    index_bits, run_bits : int
        Entry field widths (bits).
    act_width : int
        Activation width (bits, signed).
    weight_width : int
        Codebook entry width (bits, signed).
    acc_bits : int
        Accumulator width (bits, wrapping).
    product_shift : int
        Bits every product is shifted right (arithmetic, floor) by before it is added
        (elaboration-time constant; the model's ``product_shift``, :mod:`host.compressed`).
    rows : int
        Accumulators (local rows) of this PE: ``ceil(max_rows / n_pe)``.
    entries : int
        Entry memory depth (entries, all layers).
    pointers : int
        Pointer slots ``k`` (all layers); column ``j`` of a layer reads the pointer word
        ``start | length << entry_addr_bits`` in slot ``ptr_base + j``
        (:func:`host.encoding.pointer_words`; ``length <= rows``).
    codebooks : int
        Codebook slots (one per layer), ``2**index_bits`` weights each.
    memory : str
        ``"bram"``: inferred entry memory; ``"spram"``: the entry memory is one
        :class:`hdl.ice40_spram.Ice40Spram` (16384 x 16 bit, entries in the low bits).
    role : str
        One of :data:`PE_ROLES`.  A leader's entry memory holds its follower's entries too
        (high byte of the SPRAM word, or bits ``entry_bits ..`` of a BRAM word; entries at most
        8 bits); it has a ``pair`` port (:class:`PairSignature`) to its follower, which has
        the flipped port and no ``col`` input, pointer memory or entry memory.  Both PEs'
        pointer words must be equal (:func:`host.encoding.pad_groups`).
    aux : bool
        Only for a solo or leader PE with ``memory="spram"`` (default False: no port, the
        netlist is unchanged): an idle-time port on the PE's SPRAM for the engine's own data
        (:class:`hdl.lstm.LstmEngine` keeps its element-wise data there while the PEs are
        idle).  While ``aux_en`` (static through a phase; the PE must be idle: it overrides
        the entry address) the SPRAM belongs to the port: it writes ``aux_wdata`` (16 bit;
        a leader's ``aux_mask``, 4 bit, enables its nibbles) to ``aux_addr`` (14 bit, a word
        address) when ``aux_we``, else reads ``aux_addr``; the word read is on ``aux_rdata``
        the next cycle (the SPRAM's registered read data, 1-cycle latency like a Memory read
        port; held while not reading).  The loader's entry writes and the read-back of the
        entries use the port as well (the engine's request multiplexer,
        :class:`hdl.spram_share.SpramShare`, has them): such a PE ignores ``entry_w`` (and its
        follower's forwarded writes), and ``rb_en`` does not reach its SPRAM; ``rb_entry``
        (and the follower's) shows the entries of the word the port read.
    ext_mul : bool
        Give the multiplier an outside port (``mul_*``, below); default False (no change).

    Attributes
    ----------
    col : In(stream.Signature(column_layout))
        Broadcast input; ``ready`` (pop) does not depend on ``valid``.
    entry_base : In(entry address bits)
        Layer's first entry address in the entry memory.
    cb_slot : In(codebook slot bits)
        Layer's codebook slot.
    busy : Out(1)
        Work is queued or in flight (see the module docstring).
    entry_w, ptr_w, cb_w : In(WriteSignature)
        Loader writes: entry address / pointer slot ``k`` / ``slot << index_bits | index``.
    drain : In(1)
        Output phase: the accumulator ports belong to ``acc_raddr``/``acc_clear``.
    acc_raddr : In(row bits)
        Accumulator read address (output phase); data on ``acc_rdata`` one cycle later.
    acc_rdata : Out(signed(acc_bits))
    acc_clear : In(1)
        Write zero to accumulator ``acc_clear_addr`` (output phase).
    acc_clear_addr : In(row bits)
    rb_en, rb_addr : In(1), In(read-back address bits)
        Read-back while idle (:mod:`hdl.readback`): read entry ``rb_addr``, pointer slot
        ``rb_addr`` and codebook word ``rb_addr`` through the pipeline's read ports.
    rb_entry, rb_ptr, rb_weight : Out
        Those words, one cycle after ``rb_en``.
    mul_sel, mul_a, mul_b : In(1), In(signed(act_width)) x 2 (``ext_mul`` only)
        The multiplier for an outside user while the PE is idle: ``mul_sel`` selects
        ``mul_a * mul_b`` (static through such a phase: no entry may be in S3).
    mul_out : Out(signed(2 * act_width)) (``ext_mul`` only)
        That product, registered (one cycle after ``mul_a``/``mul_b``).
    pair : Out(PairSignature) (leader) / In(PairSignature) (follower)
        The link of a PE pair; absent for a solo PE.  A follower has no ``col`` port, ignores
        ``ptr_w`` and ``entry_base``, and forwards its ``entry_w`` writes to its leader.
    """

    def __init__(self, *, index_bits: int, run_bits: int, act_width: int, weight_width: int,
                 acc_bits: int, rows: int, entries: int, pointers: int, codebooks: int,
                 memory: str = "bram", product_shift: int = 0,
                 role: str = "solo", ext_mul: bool = False, aux: bool = False):
        if role not in PE_ROLES:
            raise ValueError(f"`role` must be one of {', '.join(map(repr, PE_ROLES))}, not "
                             f"{role!r}")
        if role != "solo" and index_bits + run_bits > 8:
            raise ValueError(f"a PE pair needs entries of at most 8 bits (one byte of the "
                             f"shared 16-bit word each), not {index_bits + run_bits} "
                             f"(index_bits {index_bits} + run_bits {run_bits})")
        if memory not in ("bram", "spram"):
            raise ValueError(f"`memory` must be 'bram' or 'spram', not {memory!r}")
        if memory == "spram" and entries > SPRAM_DEPTH:
            raise ValueError(f"`entries` must be at most {SPRAM_DEPTH} with memory='spram', "
                             f"not {entries}")
        if not isinstance(aux, bool):
            raise TypeError(f"`aux` must be True or False, not {aux!r}")
        if aux and (memory != "spram" or role == "follower"):
            raise ValueError(f"`aux=True` needs the SPRAM of a solo or leader PE "
                             f"(memory='spram'), not memory={memory!r}, role={role!r}")
        self.memory = memory
        self.role = role
        self.aux = aux
        self.ext_mul = ext_mul
        self.index_bits = index_bits
        self.run_bits = run_bits
        self.act_width = act_width
        self.weight_width = weight_width
        self.acc_bits = acc_bits
        self.product_shift = product_shift
        self.rows = rows
        self.entries = entries
        self.pointers = pointers
        self.codebooks = codebooks
        self.entry_layout = data.StructLayout(
            {name: unsigned(bits) for name, bits in entry_layout_fields(index_bits,
                                                                        run_bits).items()})
        self.row_bits = addr_bits(rows)
        self.entry_addr_bits, self.len_bits = pointer_fields(entries, rows)
        self.ptr_bits = self.entry_addr_bits + self.len_bits    # start | length << start bits
        self.k_bits = addr_bits(pointers)
        self.cb_bits = addr_bits(codebooks)
        members = {
            "col": In(stream.Signature(column_layout(self.k_bits, act_width))),
            "entry_base": In(self.entry_addr_bits),
            "cb_slot": In(self.cb_bits),
            "busy": Out(1),
            "entry_w": In(WriteSignature(self.entry_addr_bits, self.entry_layout)),
            "ptr_w": In(WriteSignature(self.k_bits, unsigned(self.ptr_bits))),
            "cb_w": In(WriteSignature(self.cb_bits + index_bits, signed(weight_width))),
            "drain": In(1),
            "acc_raddr": In(self.row_bits),
            "acc_rdata": Out(signed(acc_bits)),
            "acc_clear": In(1),
            "acc_clear_addr": In(self.row_bits),
            "rb_en": In(1),
            "rb_addr": In(max(self.entry_addr_bits, self.k_bits, self.cb_bits + index_bits)),
            "rb_entry": Out(self.entry_layout.size),
            "rb_ptr": Out(self.ptr_bits),
            "rb_weight": Out(signed(weight_width)),
        }
        if role != "solo":
            link = PairSignature(act_width, self.entry_layout.size, self.ptr_bits,
                                 self.entry_addr_bits)
            members["pair"] = Out(link) if role == "leader" else In(link)
        if role == "follower":
            del members["col"]
        if aux:
            members.update({"aux_en": In(1), "aux_addr": In(14), "aux_we": In(1),
                            "aux_wdata": In(16), "aux_rdata": Out(16)})
            if role == "leader":
                members["aux_mask"] = In(4)
        members.update(self._ext_mul_members())
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        lead = self.role != "follower"            # solo or leader: pops, pointers, entries
        pair = self.role == "leader"
        E = self.entry_layout.size
        # --- memories -------------------------------------------------------------------------
        if lead:
            m.submodules.ptr_mem = ptr_mem = Memory(shape=unsigned(self.ptr_bits),
                                                    depth=self.pointers, init=[])
        if lead and self.memory == "bram":
            # A leader's word: its entry in the low E bits, its follower's in the high E bits.
            m.submodules.entry_mem = entry_mem = Memory(
                shape=unsigned(2 * E) if pair else self.entry_layout, depth=self.entries,
                init=[])
        m.submodules.cb_mem = cb_mem = Memory(shape=signed(self.weight_width),
                                              depth=self.codebooks << self.index_bits, init=[])
        m.submodules.acc_mem = acc_mem = Memory(shape=signed(self.acc_bits),
                                                depth=self.rows, init=[])

        # --- loader writes --------------------------------------------------------------------
        if self.role == "follower":
            # The follower's entries live in its leader's memory; its pointer words are the
            # leader's (pad_groups makes them equal), so its pointer writes are dropped.
            m.d.comb += [self.pair.w_addr.eq(self.entry_w.addr),
                         self.pair.w_data.eq(self.entry_w.data.as_value()),
                         self.pair.w_en.eq(self.entry_w.en)]
        else:
            ptr_wp = ptr_mem.write_port()
            m.d.comb += [ptr_wp.addr.eq(self.ptr_w.addr), ptr_wp.data.eq(self.ptr_w.data),
                         ptr_wp.en.eq(self.ptr_w.en)]
        if lead and self.memory == "bram":
            if pair:
                entry_wp = entry_mem.write_port(granularity=E)
                m.d.comb += [
                    entry_wp.addr.eq(Mux(self.entry_w.en, self.entry_w.addr, self.pair.w_addr)),
                    entry_wp.data.eq(Cat(self.entry_w.data.as_value(), self.pair.w_data)),
                    entry_wp.en.eq(Cat(self.entry_w.en, self.pair.w_en))]
            else:
                entry_wp = entry_mem.write_port()
                m.d.comb += [entry_wp.addr.eq(self.entry_w.addr),
                             entry_wp.data.eq(self.entry_w.data),
                             entry_wp.en.eq(self.entry_w.en)]
        cb_wp = cb_mem.write_port()
        m.d.comb += [cb_wp.addr.eq(self.cb_w.addr), cb_wp.data.eq(self.cb_w.data),
                     cb_wp.en.eq(self.cb_w.en)]

        s2_valid = Signal()
        s2_first = Signal()
        s2_value = Signal(signed(self.act_width))
        if lead:
            # --- pop: pointer read ------------------------------------------------------------
            ptr_r = ptr_mem.read_port()
            pend = Signal()                # pointer read in flight: the word arrives this cycle
            col_value = Signal(signed(self.act_width))
            ptr_reg = Signal(self.entry_addr_bits)   # next entry (relative to entry_base)
            cnt_reg = Signal(self.len_bits)          # entries of the column left

            start = Signal(self.entry_addr_bits)
            cnt = Signal(self.len_bits)
            with m.If(pend):
                m.d.comb += [start.eq(ptr_r.data[:self.entry_addr_bits]),
                             cnt.eq(ptr_r.data[self.entry_addr_bits:])]
            with m.Else():
                m.d.comb += [start.eq(ptr_reg), cnt.eq(cnt_reg)]
            # left = (cnt >= 2), more = (cnt >= 3): registered, computed from this cycle's
            # count (which drops by `have`).  So the pop decision (col.ready) depends on
            # registers only; in the cycle the pointer word arrives (pend) the PE does not pop
            # (the cycle model's pop_interval = 2).
            left = Signal()
            more = Signal()
            # (as bit tests: a magnitude compare would become a carry chain)
            m.d.sync += [left.eq(cnt[1:].any()), more.eq(cnt[2:].any() | (cnt[:2] == 3))]
            have = Signal()                # an entry issues this cycle
            m.d.comb += have.eq(Mux(pend, cnt != 0, left))
            m.d.comb += self.col.ready.eq(~pend & ~more)
            pop = self.col.valid & self.col.ready
            m.d.comb += [ptr_r.addr.eq(self.col.payload.k), ptr_r.en.eq(pop)]
            m.d.sync += pend.eq(pop)
            with m.If(pop):
                m.d.sync += col_value.eq(self.col.payload.value)
            m.d.sync += [ptr_reg.eq(start + have), cnt_reg.eq(cnt - have)]

            # --- issue: entry read ------------------------------------------------------------
            issue_addr = self.entry_base + start
            if self.memory == "bram":
                entry_r = entry_mem.read_port()
                m.d.comb += [entry_r.addr.eq(issue_addr), entry_r.en.eq(have)]
                word = Value.cast(entry_r.data)
                entry_port = entry_r
            else:
                # Single port: the loader writes only while the engine is idle.  Its writes
                # are registered first (the SPRAMs sit at the die corners: the shell's write
                # decision cannot also cross the chip in the same cycle).  A pair's entries
                # are bytes 0 (leader) and 1 (follower), written through the nibble masks.
                m.submodules.entry_spram = spram = Ice40Spram(masked=pair)
            if self.memory == "spram" and self.aux:
                # every access but the issue's comes through the aux port (the engine's
                # request multiplexer: its loader writes, read-back, element-wise data)
                m.d.comb += [spram.addr.eq(Mux(self.aux_en, self.aux_addr, issue_addr)),
                             spram.we.eq(self.aux_en & self.aux_we),
                             spram.wdata.eq(self.aux_wdata),
                             spram.re.eq(Mux(self.aux_en, ~self.aux_we, have)),
                             self.aux_rdata.eq(spram.rdata)]
                if pair:
                    m.d.comb += spram.mask.eq(self.aux_mask)
                word = spram.rdata
                entry_port = None
            elif self.memory == "spram":
                w_en = Signal()
                w_addr = Signal.like(self.entry_w.addr)
                w_data = Signal(16)
                if pair:
                    w_hi = Signal()
                    m.d.sync += [
                        w_en.eq(self.entry_w.en), w_hi.eq(self.pair.w_en),
                        w_addr.eq(Mux(self.entry_w.en, self.entry_w.addr, self.pair.w_addr)),
                        w_data.eq(Cat(self.entry_w.data.as_value(), Const(0, 8 - E),
                                      self.pair.w_data))]
                    lo, hi = w_en, w_hi
                    m.d.comb += [spram.we.eq(lo | hi), spram.mask.eq(Cat(lo, lo, hi, hi))]
                else:
                    m.d.sync += [w_en.eq(self.entry_w.en), w_addr.eq(self.entry_w.addr),
                                 w_data.eq(self.entry_w.data.as_value())]
                    m.d.comb += spram.we.eq(w_en)
                m.d.comb += [spram.addr.eq(Mux(spram.we, w_addr, issue_addr)),
                             spram.wdata.eq(w_data), spram.re.eq(have)]
                word = spram.rdata
                entry_port = None
            entry = data.View(self.entry_layout, word[:E])

            m.d.sync += [s2_valid.eq(have), s2_first.eq(pend)]
            with m.If(have):
                m.d.sync += s2_value.eq(col_value)
            if pair:
                # Per-cycle control of the follower: its S2 is the leader's S2.
                m.d.comb += [self.pair.valid.eq(s2_valid), self.pair.first.eq(s2_first),
                             self.pair.value.eq(s2_value),
                             self.pair.entry.eq(word[8 if self.memory == "spram" else E:][:E]),
                             self.pair.ptr.eq(ptr_r.data), self.pair.busy.eq(self.busy)]
        else:
            m.d.comb += [s2_valid.eq(self.pair.valid), s2_first.eq(self.pair.first),
                         s2_value.eq(self.pair.value)]
            entry = data.View(self.entry_layout, self.pair.entry)

        # --- S2: row and codebook read --------------------------------------------------------
        row_reg = Signal(self.row_bits)
        row = Signal(self.row_bits)
        m.d.comb += row.eq(Mux(s2_first, 0, row_reg + 1) + entry.zero_run)
        with m.If(s2_valid):
            m.d.sync += row_reg.eq(row)
        cb_r = cb_mem.read_port()
        m.d.comb += [cb_r.addr.eq(Cat(entry.weight_index, self.cb_slot)), cb_r.en.eq(s2_valid)]

        # --- S3: multiply, accumulator read ---------------------------------------------------
        s3_valid = Signal()
        s3_tok = Signal()
        # The S3 entry's row is row_reg: it took the row when the entry left S2 (s2_valid), and
        # row_reg is read only while an entry is in S3 or S4 (s3_row / s4_row are used with
        # s3_valid / s4_valid only), so no separate S3 row register is needed; the row adder
        # then feeds only row_reg, whose flip-flops pack into the adder's logic cells.
        s3_row = row_reg
        s3_value = Signal(signed(self.act_width))
        first_empty = (pend & ~have) if lead else 0      # an empty column's issue slot
        m.d.sync += [s3_valid.eq(s2_valid), s3_tok.eq(s2_valid | first_empty),
                     s3_value.eq(s2_value)]
        product_shape = signed(self.weight_width + self.act_width)
        product = self._multiply(m, cb_r.data, s3_value)
        if self.product_shift:
            # Floor by product_shift bits (wiring), kept to acc_bits: the sum wraps there.
            product_shape = signed(min(self.weight_width + self.act_width - self.product_shift,
                                       self.acc_bits))
            product = product >> self.product_shift
        s4_prod = Signal(product_shape)
        s4_valid = Signal()
        s4_tok = Signal()
        s4_row = Signal(self.row_bits)
        # The product register is zero when no entry is in S4, so that the drain's clear can
        # go through the adder (below).
        m.d.sync += [s4_prod.eq(Mux(s3_valid, product, 0)),
                     s4_valid.eq(s3_valid), s4_tok.eq(s3_tok), s4_row.eq(s3_row)]

        acc_r = acc_mem.read_port()
        acc_w = acc_mem.write_port()
        m.d.comb += [acc_r.addr.eq(Mux(self.drain, self.acc_raddr, s3_row)),
                     acc_r.en.eq(self.drain | s3_valid),
                     self.acc_rdata.eq(acc_r.data)]

        # --- S4: accumulate with forwarding ---------------------------------------------------
        # fw_hit: the entry now in S4 has the row of the previous S4 entry, whose sum is in
        # fw_data (its write collides with this entry's S3 read); compared one cycle early
        # (S3 row against S4 row) so that the compare is off the adder path.
        fw_hit = Signal()
        fw_data = Signal(signed(self.acc_bits))
        old = Signal(signed(self.acc_bits))
        total = Signal(signed(self.acc_bits))
        m.d.sync += fw_hit.eq(s4_valid & (s4_row == s3_row))
        # In the output phase s4_prod is 0 and old is forced to 0: total = 0 clears the row
        # (no data multiplexer on the write port).  `zero` is drain a cycle late (the first
        # clear comes a cycle after the first output-phase read; S4 is empty around the
        # phase change), so the engine-wide drain net does not feed the adder directly.
        zero = Signal()
        m.d.sync += zero.eq(self.drain)
        m.d.comb += [old.eq(Mux(zero, 0, Mux(fw_hit, fw_data, acc_r.data))),
                     total.eq(old + s4_prod)]          # truncated: wraps at acc_bits
        m.d.sync += fw_data.eq(total)
        m.d.comb += acc_w.data.eq(total)
        with m.If(self.drain):
            m.d.comb += [acc_w.addr.eq(self.acc_clear_addr), acc_w.en.eq(self.acc_clear)]
        with m.Else():
            m.d.comb += [acc_w.addr.eq(s4_row), acc_w.en.eq(s4_valid)]

        if lead:
            m.d.comb += self.busy.eq(self.col.valid | pend | left | s2_valid
                                     | s3_tok | s4_tok)
        else:
            m.d.comb += self.busy.eq(self.pair.busy)

        # --- read-back (hdl.readback): the idle pipeline's read ports --------------------------
        # These assignments come last so that they take precedence while rb_en is high.  A
        # follower's entries and pointer words are its leader's reads (the same rb_addr).
        with m.If(self.rb_en):
            m.d.comb += [cb_r.addr.eq(self.rb_addr), cb_r.en.eq(1)]
            if lead:
                m.d.comb += [ptr_r.addr.eq(self.rb_addr), ptr_r.en.eq(1)]
                if entry_port is not None:
                    m.d.comb += [entry_port.addr.eq(self.rb_addr), entry_port.en.eq(1)]
                elif not self.aux:      # with aux: the engine reads through the aux port
                    m.d.comb += [spram.addr.eq(self.rb_addr), spram.re.eq(1)]
        m.d.comb += [self.rb_entry.eq(entry.as_value()),
                     self.rb_ptr.eq(ptr_r.data if lead else self.pair.ptr),
                     self.rb_weight.eq(cb_r.data)]
        return m

    # --- external multiplier use (ext_mul) -----------------------------------------------------
    # With ``ext_mul`` the PE's multiplier (its SB_MAC16 on iCE40) also serves an outside user
    # while the PE is idle (hdl.lstm's serial element-wise unit): ``mul_sel`` (static through
    # that phase) selects ``mul_a`` x ``mul_b`` as the multiplier's inputs; ``mul_out`` is the
    # product, registered (one cycle after the inputs).  Without ext_mul nothing changes.

    def _ext_mul_members(self) -> dict:
        if not self.ext_mul:
            return {}
        return {"mul_sel": In(1), "mul_a": In(signed(self.act_width)),
                "mul_b": In(signed(self.act_width)),
                "mul_out": Out(signed(2 * self.act_width))}

    def _multiply(self, m, weight, value):
        """The S3 product ``weight * value`` (comb); with ext_mul the multiplier's inputs are
        ``mul_a``, ``mul_b`` while ``mul_sel`` and the product is also registered on
        ``mul_out``.  (The accumulate path sees no entry while ``mul_sel``: the product
        register S4 adds is zero then.)"""
        if not self.ext_mul:
            return weight * value
        width = max(self.weight_width, self.act_width)
        a = Signal(signed(width))
        b = Signal(signed(self.act_width))
        m.d.comb += [a.eq(Mux(self.mul_sel, self.mul_a, weight)),
                     b.eq(Mux(self.mul_sel, self.mul_b, value))]
        product = Signal(signed(width + self.act_width))
        m.d.comb += product.eq(a * b)
        m.d.sync += self.mul_out.eq(product)
        return product
