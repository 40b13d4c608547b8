"""The UART protocol decoder/responder of a spine board, and the region bus it drives.

The wire protocol is :mod:`host.protocol` (constants imported from there) and docs/protocol.md.

Data path::

    UART RX -> RX FIFO -> CommandDecoder --region bus--> RegionMemories / engine adapter
                               |   ^  \\--engine control (start, n_layers, busy, done, cycles)
                       payload buffer (MAX_PAYLOAD bytes, one BRAM block pair)
                               v
    UART TX <------------ responder (header, payload from buffer / info memory, CRC)

The info memory (one block RAM) holds the IDENTIFY answer, the STATUS fields (updated by a
byte-serial pass before every answer) and a copy of the CONTROL words (READ sends it).

A request is received completely into the payload buffer while its CRC-16 is computed; only
when the CRC matches is the command checked (length, region, bounds) and executed, so a
rejected frame never changes any memory.  Every request gets exactly one response.

Region bus
----------
A small memory-mapped port (:class:`RegionBusSignature`), initiator = the decoder:

``region`` (4 bits, a :class:`host.protocol.RegionId`), ``index`` (8 bits: PE number of per-PE
regions, else 0), ``addr`` (``addr_width`` bits, word address), ``wdata`` (32 bits, the word:
only its low ``8 * word_bytes`` bits are defined, targets use the region's ``width`` low bits),
``we`` (1: write ``wdata`` this cycle), ``re`` (1: read this cycle), ``rdata``
(32 bits, the word read, valid exactly ``read_latency`` cycles after ``re``; only its low
``8 * word_bytes`` bits are used, so targets need define no more; signed regions
sign-extended to them).  The decoder only issues accesses that are inside the region table
(:class:`RegionSpec`): targets need no bounds checks.  The CONTROL region (shell registers,
:class:`host.protocol.Control`) lives inside the decoder and never appears on the bus.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for, ceil_log2, exact_log2

from host.protocol import (CRC16_INIT, CRC16_POLY, FRAME_TIMEOUT_BYTES, MAX_PAYLOAD,
                           PROTOCOL_VERSION, REQUEST_SYNC, RESPONSE_SYNC, STATUS_BYTES,
                           STATUS_LAYOUT, Command, Control, EngineKind, Identity,
                           RegionDescription, RegionId, Status, engine_config_digest,
                           engine_extension, pack_identity)

__all__ = ["crc16_next", "RegionSpec", "RegionBusSignature", "EngineControlSignature",
           "RegionMemories", "CommandDecoder", "CONTROL_REGION", "REGION_BITS", "INDEX_BITS",
           "DATA_BITS", "WRITE_HEADER_BYTES", "ACCESS_HEADER_BYTES"]

REGION_BITS = 4
INDEX_BITS = 8
DATA_BITS = 32
#: WRITE payload: region u8, index u8, address u32 LE, then the words.
WRITE_HEADER_BYTES = 6
#: READ / CHECKSUM payload: region u8, index u8, address u32 LE, count u16 LE.
ACCESS_HEADER_BYTES = 8
#: INFER answer: cycles u32 LE, then the output words.
INFER_HEADER_BYTES = 4
#: Offset of the CONTROL words from the STATUS answer in the decoder's info memory.
CTRL_OFFSET = 32
#: Where an answer's payload comes from (the decoder's r_src): nothing, the IDENTIFY or STATUS
#: answer in the info memory, or the payload buffer (its first pidx bytes).  The info memory's
#: read address follows the STATUS answer when bit 1 is set (SRC_BUFFER does not read it).
SRC_NONE, SRC_IDENTIFY, SRC_STATUS, SRC_BUFFER = 0, 1, 2, 3


def crc16_next(crc, byte):
    """CRC-16/CCITT-FALSE register after shifting in ``byte`` (8 bits), MSB first.

    Works on Amaranth values (returns a 16-bit expression) and on Python ints alike; the same
    algorithm as :func:`host.protocol.crc16_bitwise` with :data:`host.protocol.CRC16_POLY`.
    """
    if isinstance(crc, int) and isinstance(byte, int):
        value = crc ^ (byte << 8)
        for _ in range(8):
            value = ((value << 1) ^ (CRC16_POLY if value & 0x8000 else 0)) & 0xFFFF
        return value
    # The CRC is linear over GF(2): each next-state bit is the XOR of some crc and byte bits.
    # Build that XOR matrix once in Python (from the integer algorithm) and emit it flat.
    crc, byte = Value.cast(crc), Value.cast(byte)
    terms = [[] for _ in range(16)]
    for bit in range(16):
        column = crc16_next(1 << bit, 0)
        for out in range(16):
            if column >> out & 1:
                terms[out].append(crc[bit])
    for bit in range(8):
        column = crc16_next(0, 1 << bit)
        for out in range(16):
            if column >> out & 1:
                terms[out].append(byte[bit])
    bits = []
    for out in range(16):
        value = Const(0, 1)
        for term in terms[out]:
            value = value ^ term
        bits.append(value)
    return Cat(*bits)


@dataclass(frozen=True)
class RegionSpec:
    """One memory region of the region bus.

    Parameters
    ----------
    region : int
        Region number (a :class:`host.protocol.RegionId`, 0..15).
    width : int
        Word width in bits (1..32); on the wire each word takes :attr:`word_bytes` bytes.
    depth : int
        Words per index (>= 1).
    count : int
        Indexes (PEs of a per-PE region, else 1; 1..256).
    readable, writable : bool
        Access by READ/CHECKSUM and by WRITE.
    signed : bool
        Words are two's complement (READ sign-extends them to the wire word).
    """

    region: int
    width: int
    depth: int
    count: int = 1
    readable: bool = True
    writable: bool = True
    signed: bool = False

    def __post_init__(self):
        for name, value, lo, hi in (("region", self.region, 0, 2 ** REGION_BITS - 1),
                                    ("width", self.width, 1, DATA_BITS),
                                    ("depth", self.depth, 1, 2 ** 32 - 1),
                                    ("count", self.count, 1, 2 ** INDEX_BITS)):
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise ValueError(f"`{name}` of a region must be an integer from {lo} to {hi}, "
                                 f"not {value!r}")

    @property
    def word_bytes(self) -> int:
        """Bytes per word on the wire: 1, 2 or 4."""
        return 1 if self.width <= 8 else 2 if self.width <= 16 else 4

    def describe(self) -> RegionDescription:
        return RegionDescription(int(self.region), self.word_bytes, self.count % 256, self.depth,
                                 self.readable, self.writable)


#: The shell's own registers (:class:`host.protocol.Control`), handled inside the decoder.
CONTROL_REGION = RegionSpec(RegionId.CONTROL, 32, len(Control), 1)


class RegionBusSignature(wiring.Signature):
    """Region bus, from the initiator's (the decoder's) side; see the module docstring.

    Members
    -------
    region : Out(4), index : Out(8), addr : Out(addr_width)
    wdata : Out(32), we : Out(1), re : Out(1)
    rdata : In(32)
        Valid ``read_latency`` cycles after ``re``.
    """

    def __init__(self, addr_width: int):
        if not isinstance(addr_width, int) or not 1 <= addr_width <= 32:
            raise ValueError(f"`addr_width` must be an integer from 1 to 32, not {addr_width!r}")
        self.addr_width = addr_width
        super().__init__({
            "region": Out(REGION_BITS), "index": Out(INDEX_BITS), "addr": Out(addr_width),
            "wdata": Out(DATA_BITS), "we": Out(1), "re": Out(1), "rdata": In(DATA_BITS),
        })


class EngineControlSignature(wiring.Signature):
    """Engine control, from the decoder's side.

    Members
    -------
    start : Out(1)
        One-cycle pulse: run ``n_layers`` layers on the INPUT region.
    n_layers : Out(8)
    reset : Out(1)
        One-cycle pulse (RESET command): return the engine to idle (memories kept).
    busy : In(1)
    done : In(1)
        High from the end of a run until the next ``start``; the decoder waits for it.
    cycles : In(32)
        Clock cycles of the last run.
    """

    def __init__(self):
        super().__init__({
            "start": Out(1), "n_layers": Out(8), "reset": Out(1),
            "busy": In(1), "done": In(1), "cycles": In(32),
        })


def _addr_width(regions) -> int:
    return max(1, max(bits_for(r.depth - 1) for r in regions))


class RegionMemories(wiring.Component):
    """A bank of real memories behind the region bus (one :class:`Memory` per region and index),
    plus a copy "engine" (:data:`host.protocol.EngineKind.MEMORIES`): ``start`` copies INPUT
    words ``0 .. min(depths) - 1`` to OUTPUT, one word per cycle.

    Used to test the shell without an engine; the region table mirrors the engine's.

    Parameters
    ----------
    regions : list of RegionSpec
        Region numbers must be unique; CONTROL is not allowed (the decoder has it).
    read_latency : int
        Fixed at 1 cycle (registered memory output).

    Attributes
    ----------
    bus : In(RegionBusSignature)
    ctl : In(EngineControlSignature)
    """

    read_latency = 1

    def __init__(self, regions):
        regions = list(regions)
        if not regions:
            raise ValueError("`regions` must list at least one RegionSpec")
        ids = [int(r.region) for r in regions]
        if len(set(ids)) != len(ids):
            raise ValueError(f"region numbers must be unique, not {ids}")
        if RegionId.CONTROL in ids:
            raise ValueError("region CONTROL (7) belongs to the decoder, not to RegionMemories")
        self.regions = regions
        self.addr_width = _addr_width(regions)
        super().__init__({"bus": In(RegionBusSignature(self.addr_width)),
                          "ctl": In(EngineControlSignature())})

    def _spec(self, region):
        return next((r for r in self.regions if r.region == region), None)

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        sel_region = Signal(REGION_BITS)
        sel_index = Signal(INDEX_BITS)
        m.d.sync += [sel_region.eq(bus.region), sel_index.eq(bus.index)]
        src, dst = self._spec(RegionId.INPUT), self._spec(RegionId.OUTPUT)
        copying = Signal()
        copy_addr = Signal(self.addr_width + 1)
        copy_valid = Signal()
        copy_words = min(src.depth, dst.depth) if src and dst else 0
        rdata = Signal(DATA_BITS)
        m.d.comb += bus.rdata.eq(rdata)
        outputs = {}
        for spec in self.regions:
            for index in range(spec.count):
                mem = Memory(shape=spec.width, depth=spec.depth, init=[])
                m.submodules[f"r{int(spec.region)}_{index}"] = mem
                w, r = mem.write_port(), mem.read_port()
                hit = (bus.region == spec.region) & (bus.index == index)
                m.d.comb += [w.addr.eq(bus.addr), w.data.eq(bus.wdata[:spec.width]),
                             w.en.eq(bus.we & hit), r.addr.eq(bus.addr), r.en.eq(bus.re & hit)]
                if spec is src and index == 0:
                    m.d.comb += [r.addr.eq(Mux(copying, copy_addr, bus.addr)),
                                 r.en.eq(Mux(copying, 1, bus.re & hit))]
                    copy_data = r.data
                if spec is dst and index == 0:
                    dst_w = w
                word = r.data.as_signed() if spec.signed else r.data
                outputs.setdefault(spec, []).append(word)
        with m.Switch(sel_region):
            for spec, words in outputs.items():
                with m.Case(int(spec.region)):
                    if len(words) == 1:
                        m.d.comb += rdata.eq(words[0])
                    else:
                        with m.Switch(sel_index):
                            for index, word in enumerate(words):
                                with m.Case(index):
                                    m.d.comb += rdata.eq(word)
        # The copy engine.
        cycles = Signal(32)
        m.d.comb += [self.ctl.busy.eq(copying), self.ctl.cycles.eq(cycles)]
        if copy_words:
            with m.If(copying | copy_valid):
                m.d.sync += cycles.eq(cycles + 1)
            m.d.sync += copy_valid.eq(0)
            with m.If(copying):
                m.d.sync += [copy_addr.eq(copy_addr + 1), copy_valid.eq(1)]
                with m.If(copy_addr == copy_words - 1):
                    m.d.sync += copying.eq(0)
            last_addr = Signal.like(copy_addr)
            m.d.sync += last_addr.eq(copy_addr)
            with m.If(copy_valid):
                m.d.comb += [dst_w.addr.eq(last_addr), dst_w.data.eq(copy_data),
                             dst_w.en.eq(1)]
                with m.If(~copying):
                    m.d.sync += self.ctl.done.eq(1)
            with m.If(self.ctl.start):
                m.d.sync += [copying.eq(1), copy_addr.eq(0), cycles.eq(0),
                             self.ctl.done.eq(0)]
        else:
            with m.If(self.ctl.start):
                m.d.sync += self.ctl.done.eq(1)
        with m.If(self.ctl.reset):
            m.d.sync += [copying.eq(0), copy_valid.eq(0), self.ctl.done.eq(0)]
        return m


def _region_table(regions):
    table = sorted([*regions, CONTROL_REGION], key=lambda r: int(r.region))
    return table


class CommandDecoder(wiring.Component):
    """Protocol decoder/responder (docs/protocol.md).

    Parameters
    ----------
    regions : list of RegionSpec
        Regions behind the region bus (not CONTROL, which the decoder implements).  INFER needs
        an INPUT and an OUTPUT region.
    divisor : int
        UART bit time in clock cycles: sets the frame timeout,
        ``FRAME_TIMEOUT_BYTES * 10 * divisor`` cycles without a byte inside a frame.
    clock_hz, baud : int
        Reported by IDENTIFY.
    params : dict
        Engine parameters reported by IDENTIFY and hashed into its ``config_hash``: keys
        ``engine`` (:class:`host.protocol.EngineKind`), ``n_pe``, ``index_bits``, ``run_bits``,
        ``act_width``, ``act_frac``, ``weight_width``, ``acc_bits``, ``max_layers``,
        ``max_rows``, ``max_cols``, ``max_entries_per_pe``, ``max_pointers``, ``max_bias``.
    read_latency : int
        Region bus read latency in cycles (>= 1).
    rx_fifo_depth : int
        Bytes buffered between the UART receiver and the decoder (they arrive while a response
        is being sent or the engine runs), rounded up to a power of two (a block RAM ring),
        plus one in the output register; 0 for none.

    Attributes
    ----------
    rx : In(stream.Signature(8)), tx : Out(stream.Signature(8))
        Byte streams from/to the UART.
    bus : Out(RegionBusSignature)
    engine : Out(EngineControlSignature)
    frame_active : Out(1)
        A frame is being received, executed or answered (LED).
    error : Out(1)
        The last answer was an error (LED).
    """

    def __init__(self, regions, *, divisor, clock_hz, baud, params, read_latency=1,
                 rx_fifo_depth=256):
        regions = list(regions)
        ids = [int(r.region) for r in regions]
        if len(set(ids)) != len(ids):
            raise ValueError(f"region numbers must be unique, not {ids}")
        if RegionId.CONTROL in ids:
            raise ValueError("region CONTROL (7) is implemented by the decoder; do not list it")
        if not isinstance(divisor, int) or divisor < 1:
            raise ValueError(f"`divisor` must be a positive integer, not {divisor!r}")
        if not isinstance(read_latency, int) or read_latency < 1:
            raise ValueError(f"`read_latency` must be a positive integer, not {read_latency!r}")
        if not isinstance(rx_fifo_depth, int) or rx_fifo_depth < 0:
            raise ValueError(f"`rx_fifo_depth` must be a non-negative integer, not "
                             f"{rx_fifo_depth!r}")
        self.regions = regions
        self.table = _region_table(regions)
        self.divisor = divisor
        self.read_latency = read_latency
        self.rx_fifo_depth = rx_fifo_depth
        self.timeout_cycles = FRAME_TIMEOUT_BYTES * 10 * divisor
        self.params = dict(params)
        self.config_hash = engine_config_digest(self.params)
        p = self.params
        self.identity = Identity(
            version=PROTOCOL_VERSION, engine=int(p.get("engine", EngineKind.MEMORIES)),
            clock_hz=int(clock_hz), baud=int(baud), config_hash=self.config_hash,
            n_pe=p["n_pe"], index_bits=p["index_bits"], run_bits=p["run_bits"],
            act_width=p["act_width"], act_frac=p["act_frac"], weight_width=p["weight_width"],
            acc_bits=p["acc_bits"], max_layers=p["max_layers"], max_rows=p["max_rows"],
            max_cols=p["max_cols"], max_entries_per_pe=p["max_entries_per_pe"],
            max_pointers=p["max_pointers"], max_bias=p["max_bias"], max_payload=MAX_PAYLOAD,
            regions=tuple(r.describe() for r in self.table),
            extension=engine_extension(self.params))
        self.identity_bytes = pack_identity(self.identity)
        #: Address of the STATUS answer in the info memory (after the IDENTIFY answer, a power
        #: of two so that ``status_base | byte`` needs no adder); the CONTROL words follow at
        #: ``status_base + CTRL_OFFSET``.
        self.status_base = 1 << ceil_log2(max(len(self.identity_bytes), 64))
        self.addr_width = _addr_width(regions)
        #: Address bits the bounds checks look at (CONTROL included).
        self.check_bits = _addr_width(self.table)
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "bus": Out(RegionBusSignature(self.addr_width)),
            "engine": Out(EngineControlSignature()),
            "frame_active": Out(1),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        bus, eng = self.bus, self.engine

        # --- RX FIFO ------------------------------------------------------------------------------
        if self.rx_fifo_depth:
            # A block RAM ring (rx_fifo_depth rounded up to a power of two, so that the
            # pointers wrap by themselves; one more bit tells full from empty) and one output
            # register (rx_valid, rx_byte): the block RAM's output is too slow to feed the frame
            # decisions in the same cycle.  A byte is read (rd.en, a function of registers
            # only, not of the decoder's state) when the output register is empty and no read
            # is under way (rd_pend); it reaches rx_byte a cycle later.  One byte every three
            # cycles at most, against one per ten bit times from the UART.
            k = ceil_log2(self.rx_fifo_depth)
            m.submodules.rx_fifo = rx_mem = Memory(shape=8, depth=1 << k, init=[])
            rx_w, rx_rd = rx_mem.write_port(), rx_mem.read_port()
            rx_wp, rx_rp = Signal(k + 1, name="rx_wp"), Signal(k + 1, name="rx_rp")
            rx_valid, rx_byte = Signal(name="rx_valid"), Signal(8, name="rx_byte")
            rx_ready = Signal(name="rx_ready")
            rd_pend = Signal(name="rx_rd_pend")
            full = (rx_wp[:k] == rx_rp[:k]) & (rx_wp[k] != rx_rp[k])
            m.d.comb += [self.rx.ready.eq(~full),
                         rx_w.addr.eq(rx_wp[:k]), rx_w.data.eq(self.rx.payload),
                         rx_w.en.eq(self.rx.valid & ~full)]
            with m.If(self.rx.valid & ~full):
                m.d.sync += rx_wp.eq(rx_wp + 1)
            issue = (rx_wp != rx_rp) & ~rx_valid & ~rd_pend
            m.d.comb += [rx_rd.addr.eq(rx_rp[:k]), rx_rd.en.eq(issue)]
            m.d.sync += rd_pend.eq(issue)
            with m.If(issue):
                m.d.sync += rx_rp.eq(rx_rp + 1)
            with m.If(rd_pend):
                m.d.sync += [rx_valid.eq(1), rx_byte.eq(rx_rd.data)]
            with m.Elif(rx_ready):
                m.d.sync += rx_valid.eq(0)
        else:
            rx_valid, rx_byte, rx_ready = self.rx.valid, self.rx.payload, self.rx.ready

        # --- payload buffer and info memory ---------------------------------------------------
        m.submodules.buf = buf = Memory(shape=8, depth=MAX_PAYLOAD, init=[])
        buf_w, buf_r = buf.write_port(), buf.read_port()
        # The info memory (one EBR): the IDENTIFY answer at 0 (as a ROM), the STATUS answer
        # at `status_base`, kept there byte by byte (counters updated by a byte-serial pass
        # before each answer, T_STAT below) instead of in flip-flops with a 28:1 multiplexer,
        # and the four CONTROL words (u32 LE, 16 bytes) at status_base + 32, which READ sends
        # from there (the decoder keeps N_LAYERS, N_INPUTS, N_OUTPUTS in registers too).
        # ram_style: block RAM even though it is small.
        ident = self.identity_bytes
        status_base = self.status_base
        m.submodules.info = info = Memory(shape=8, depth=status_base + CTRL_OFFSET + 16,
                                          init=list(ident), attrs={"ram_style": "block"})
        info_w, info_r = info.write_port(), info.read_port()
        # Writes are registered (address, data, enable): the byte multiplexers of the STATUS
        # pass and of the CONTROL / last_cycles writes are a cycle before the memory.  No byte
        # is read back sooner than two cycles after its write.
        iw_addr, iw_data, iw_en = Signal.like(info_w.addr), Signal(8), Signal()
        m.d.sync += [info_w.addr.eq(iw_addr), info_w.data.eq(iw_data), info_w.en.eq(iw_en)]
        ptr_bits = bits_for(MAX_PAYLOAD)
        buf_raddr = Signal(ptr_bits)
        info_raddr = Signal(len(info_r.addr))
        m.d.comb += [buf_r.addr.eq(buf_raddr), info_r.addr.eq(info_raddr)]

        # --- CRC (one register: request check, CHECKSUM, response) -----------------------------
        crc = Signal(16, init=CRC16_INIT)
        crc_in = Signal(8)
        crc_step = Signal()
        # The step is registered (byte and enable), so the CRC is updated a cycle after its
        # byte: the byte multiplexers and the XOR network are in different cycles.  Every
        # use of `crc` comes at least two cycles after the last step (a byte from the FIFO,
        # the UART's busy time, CK_WAIT), and no step is pending where it is re-initialised.
        crc_in_q = Signal(8)
        crc_step_q = Signal()
        # The CRC's byte: the byte received (default), a READ byte for CHECKSUM (crc_rb, in
        # R_BYTES) or the byte being sent (crc_tx): three sources, the byte multiplexers of the
        # states stay where they are (tx.payload).
        crc_rb, crc_tx = Signal(), Signal()
        buf_crc = Signal()               # CK_STORE0/1: the CRC into the payload buffer
        buf_cycles = Signal()            # I_CYCLES: the run's cycles into the payload buffer
        word_load, word_shift = Signal(), Signal()
        m.d.sync += [crc_in_q.eq(crc_in), crc_step_q.eq(crc_step)]
        with m.If(crc_step_q):
            m.d.sync += crc.eq(crc16_next(crc, crc_in_q))

        # --- frame registers -------------------------------------------------------------------
        seq = Signal(8)
        # The length's low bits: a frame with len > MAX_PAYLOAD is answered in LEN_CHECK.
        length = Signal(bits_for(MAX_PAYLOAD))
        # Payload byte index: receive, WRITE / INFER input reads, answer writes (READ,
        # CHECKSUM, INFER: from 0, after the request's bytes are used), transmit.
        pidx = Signal(ptr_bits)
        # The access header (payload bytes 0-7) goes straight into the access registers
        # cur_region, cur_index, cur_addr (below: the low check_bits bits of the address) and
        # a_count; a_addr_hi: a bit of the region above its 4 bits, or of the address above
        # check_bits, was set (BAD_ADDRESS either way: no region has such a number or depth).
        # Every field a command uses has arrived once its length check passed; a_addr_hi and
        # cur_addr need clearing for each frame.
        aw = self.check_bits
        a_addr_hi = Signal()
        # The count keeps the bits any command can use (a region's depth, or MAX_PAYLOAD
        # bytes), a_count_hi flags a bit above them (the count is out of range).
        cnt_bits = min(16, max(aw + 1, ptr_bits))
        a_count, a_count_hi = Signal(cnt_bits), Signal()
        cur_region = Signal(REGION_BITS)
        cur_index = Signal(INDEX_BITS)
        cur_addr = Signal(self.check_bits + 1)   # in range once the checks passed
        # One-hot header byte index (pidx for pidx < 8): no 11-bit compare on the byte enables.
        hdr = Signal(ACCESS_HEADER_BYTES, init=1)
        idle = Signal(range(self.timeout_cycles + 1))
        # Registered decisions, computed a cycle ahead so that no counter compare feeds the FSM's
        # next-state logic directly (iCE40 timing): idle == timeout - 1, last payload byte,
        # last response payload byte.
        idle_last = Signal()
        len_big, len_none, crc_ok = Signal(), Signal(), Signal()
        # The answer decided in PREP4: answer now (d_resp) with d_status / d_src (the length
        # follows from the source: IDENTIFY, STATUS, or empty), and RESET's side effects
        # (d_reset).  Status codes fit 3 bits (sent zero-extended).
        status_bits = bits_for(max(Status))
        d_resp, d_reset = Signal(), Signal()
        d_status, d_src = Signal(status_bits), Signal(2)
        # pidx + 1 == length, registered in every cycle: the last payload byte (PAYLOAD) or
        # the answer's last byte (T_PAY).  pidx and length never change in the cycle before
        # it is used (a byte every three cycles at most from the RX FIFO; T_PAY waits a cycle
        # after each byte and before the first).
        last1 = Signal()
        m.d.sync += last1.eq(pidx + 1 == length)
        pay_wait = Signal()              # T_PAY: the next byte's memory read is under way

        # --- response registers -----------------------------------------------------------------
        r_status = Signal(status_bits)
        # The answer's payload: SRC_NONE (empty), SRC_IDENTIFY / SRC_STATUS (info memory), or
        # SRC_BUFFER (the payload buffer's bytes 0 .. pidx - 1); the answer's length goes to
        # `length` (the request's is no longer needed) in T_COUNT.
        r_src = Signal(2)
        # The info memory follows the buffer's read address (IDENTIFY at 0, STATUS at
        # status_base); T_STAT overrides it.
        m.d.comb += info_raddr.eq(Mux(r_src[1], status_base, 0)
                                  | buf_raddr[:exact_log2(status_base)])

        # --- STATUS fields in the info memory, control registers ----------------------------
        # STATUS_LAYOUT: flags (byte 0), last_error (byte 1), reserved, then u32 counters at
        # 4-byte aligned offsets; field f = offset >> 2 of a counter is incremented by the pass.
        offsets, at = {}, 0
        for name, code in STATUS_LAYOUT:
            offsets[name] = at
            at += {"B": 1, "H": 2, "I": 4}[code]
        assert at == STATUS_BYTES <= 32 and offsets["flags"] == 0 and offsets["last_error"] == 1
        counter_names = ("good_frames", "bad_crc", "timeouts", "rejected", "infers")
        assert all(offsets[n] % 4 == 0 for n in (*counter_names, "last_cycles"))
        field = {name: offsets[name] >> 2 for name in (*counter_names, "last_cycles")}
        n_fields = (STATUS_BYTES + 3) // 4
        cnt_good = Signal()              # the frame being answered had a good CRC
        cnt_infer = Signal()             # an INFER run completed (answered now)
        err_seen = Signal()              # an error answer since RESET (LED)
        #: CONTROL register widths: N_LAYERS 8 bits, N_INPUTS / N_OUTPUTS 16 bits, USER 32 bits
        #: (writes keep the low bits, reads return them zero-extended).
        ctrl_widths = {Control.N_LAYERS: 8, Control.N_INPUTS: 16, Control.N_OUTPUTS: 16,
                       Control.USER: 32}
        # Registers of the words the decoder uses (USER is only in the info memory; READ sends
        # all of them from there).  N_INPUTS and N_OUTPUTS are kept only as far as INFER needs
        # them: the bits of the INPUT / OUTPUT depth, and a flag (*_over) computed when they
        # are written, the INFER bounds check (the value exceeds the depth, or the answer
        # would be longer than MAX_PAYLOAD); INFER uses the value only when the flag is clear.
        in_spec = next((r for r in self.regions if r.region == RegionId.INPUT), None)
        out_spec = next((r for r in self.regions if r.region == RegionId.OUTPUT), None)
        infer_ok = in_spec is not None and out_spec is not None
        n_layers = Signal(ctrl_widths[Control.N_LAYERS], name="ctrl_n_layers")
        n_inputs = Signal(bits_for(in_spec.depth) if infer_ok else 1, name="ctrl_n_inputs")
        n_outputs = Signal(bits_for(out_spec.depth) if infer_ok else 1, name="ctrl_n_outputs")
        n_in_over, n_out_over = Signal(), Signal()
        ctrl_base = status_base + CTRL_OFFSET
        # byte j of CONTROL word a is kept (else written as 0): j < width / 8
        ctrl_keep = Signal()
        flags = Cat(n_layers != 0, eng.busy, eng.done)

        # --- access state (WRITE / READ / CHECKSUM / INFER) -----------------------------------
        words = Signal(cnt_bits)         # words left (an in-range count, or fewer)
        wb_log2 = Signal(2)              # log2(word bytes) of cur_region
        byte_j = Signal(2)
        word = Signal(DATA_BITS)
        lat = Signal(range(self.read_latency + 1))
        # byte_j is the word's last byte: a 4-input function (one LUT), not a compare with
        # (1 << wb_log2) - 1 computed by a subtractor.
        last_byte = Signal()
        m.d.comb += last_byte.eq(Cat(Const(1, 1), byte_j[0], byte_j.all(), byte_j.all())
                                 .bit_select(wb_log2, 1))
        is_control = Signal()
        is_infer = Signal()
        # The command byte decoded as it arrives (one flag per command; none set: unknown), so
        # that DISPATCH's decision does not start with 8-bit compares.
        cmd_is = {c: Signal(name=f"cmd_is_{c.name.lower()}") for c in Command}
        is_checksum = cmd_is[Command.CHECKSUM]
        # Registered every cycle: `words` is never tested in the cycle after it changes.
        words_one = Signal()
        # Likewise for the CONTROL registers (changed only by a WRITE, frames before use).
        n_in_zero, n_out_zero = Signal(), Signal()

        # Region attributes of the requested region (combinational lookup, then registered).
        l_ok, l_read, l_write = Signal(), Signal(), Signal()
        l_wb_log2 = Signal(2)
        l_index_bad = Signal()           # index >= count (a compare with a constant)
        l_depth = Signal(self.check_bits + 1)
        with m.Switch(cur_region):
            for spec in self.table:
                with m.Case(int(spec.region)):
                    m.d.comb += [l_ok.eq(1), l_read.eq(spec.readable), l_write.eq(spec.writable),
                                 l_wb_log2.eq(exact_log2(spec.word_bytes)),
                                 l_index_bad.eq(cur_index >= spec.count), l_depth.eq(spec.depth)]
        k_ok, k_read, k_write = Signal(), Signal(), Signal()
        k_wb_log2 = Signal(2)
        k_depth = Signal(self.check_bits + 1)

        if infer_ok:
            in_log2 = exact_log2(in_spec.word_bytes)
            out_log2 = exact_log2(out_spec.word_bytes)

        # Registered check results (DECODE / PREP1-3 below).
        len_zero, len_le6, len_ne8 = Signal(), Signal(), Signal()
        # The length is <= MAX_PAYLOAD once LEN_CHECK passed: payload sizes fit ptr_bits.
        len_m6 = Signal(ptr_bits)
        # Bounds arithmetic at the address width `aw` (check_bits): every depth is <= 2**aw,
        # so an address with a bit at or above aw, or a count (word count) with a bit above
        # aw, is out of range for every region (flagged by *_hi); the sums are aw + 2 bits.
        count_zero, count_hi = Signal(), Signal()
        not_loaded, infer_oob, infer_len_bad = Signal(), Signal(), Signal()
        remainder_nz, read_too_long, index_bad = Signal(), Signal(), Signal()
        # address + count (WRITE: the payload's words, in a_count since PREP1).
        n_hi = Signal()
        end = Signal(self.check_bits + 2)

        def high(value, bits):
            """``value`` has a bit at or above ``bits`` (a 1-bit expression)."""
            return value[bits:].any() if len(value) > bits else Const(0, 1)
        oob = Signal()

        # Bus defaults.
        m.d.comb += [bus.region.eq(cur_region), bus.index.eq(cur_index),
                     bus.addr.eq(cur_addr[:self.addr_width]), bus.wdata.eq(word)]
        m.d.comb += eng.n_layers.eq(n_layers[:8])
        m.d.sync += [words_one.eq(words == 1), n_in_zero.eq(n_inputs == 0),
                     n_out_zero.eq(n_outputs == 0)]
        m.d.comb += self.error.eq(err_seen)

        # RESET (and the design's reset: BOOT): clear the STATUS fields in T_STAT
        do_clear = Signal(init=1)
        booting = Signal(init=1)         # the clearing pass after reset: no answer

        def answer(status, src=SRC_NONE):
            """The answer a state gives if it ends the request, loaded in every cycle of that
            state: the response registers' enable is the state alone (the decision only picks
            the next state, :func:`respond`).  The registers are used in the T_ states only."""
            m.d.sync += [r_status.eq(status), r_src.eq(src)]

        def respond():
            """Answer with the state's :func:`answer`; the counters are updated from the
            registered status in T_COUNT."""
            m.next = "T_COUNT"

        # R_BYTES: the word's next byte (CONTROL words: from the info memory)
        read_byte = Mux(is_control, info_r.data, word[:8])

        got = Signal()                   # a byte is taken from the RX FIFO this cycle
        m.d.comb += rx_ready.eq(got)
        receiving = Signal()

        with m.FSM(name="decoder") as fsm:
            # The STATUS fields are in a memory, which the reset does not clear: a clearing
            # pass (do_clear and booting are 1 after reset) without an answer.
            with m.State("BOOT"):
                m.next = "T_COUNT"

            # ---------------------------------------------------------------- receive
            with m.State("HUNT"):
                m.d.comb += got.eq(rx_valid)
                m.d.sync += [seq.eq(0), crc.eq(CRC16_INIT), idle.eq(0), idle_last.eq(0),
                             pidx.eq(0), a_addr_hi.eq(0), cur_addr.eq(0), hdr.eq(1)]
                with m.If(rx_valid & (rx_byte == REQUEST_SYNC)):
                    m.next = "CMD"

            def receive(next_state, action):
                """Common part of the header/payload/CRC states: take a byte or time out."""
                answer(Status.TIMEOUT)
                m.d.comb += [receiving.eq(1), got.eq(rx_valid)]
                with m.If(rx_valid):
                    m.d.sync += [idle.eq(0), idle_last.eq(0)]
                    action()
                    if next_state is not None:
                        m.next = next_state
                with m.Elif(idle_last):
                    respond()
                with m.Else():
                    m.d.sync += [idle.eq(idle + 1),
                                 idle_last.eq(idle == self.timeout_cycles - 2)]

            def crc_byte():
                m.d.comb += crc_step.eq(1)             # crc_in is rx_byte by default

            def store(target, step=True):
                def action():
                    if step:
                        crc_byte()
                    m.d.sync += target.eq(rx_byte)
                return action

            with m.State("CMD"):
                def command():
                    crc_byte()
                    m.d.sync += [flag.eq(rx_byte == c) for c, flag in cmd_is.items()]
                receive("SEQ", command)
            with m.State("SEQ"):
                receive("LEN0", store(seq))
            with m.State("LEN0"):
                receive("LEN1", store(length[:8]))
            with m.State("LEN1"):
                def len1():
                    crc_byte()
                    m.d.sync += length[8:].eq(rx_byte)          # the low bits kept
                    full = Cat(length[:8], rx_byte)
                    m.d.sync += [len_big.eq(full > MAX_PAYLOAD),
                                 len_none.eq(full == 0)]
                receive("LEN_CHECK", len1)
            with m.State("LEN_CHECK"):
                answer(Status.BAD_LENGTH)
                # the length decision a cycle after the byte (registered compares)
                with m.If(len_big):
                    respond()
                with m.Elif(len_none):
                    m.next = "CRC0"
                with m.Else():
                    m.next = "PAYLOAD"
            def keep_bits(i, target, lo, flag, set_only=False):
                """Payload byte ``i`` into ``target`` bits ``lo`` .. ``lo + 7`` (those it has);
                a set bit above them raises ``flag``."""
                keep = max(0, min(8, len(target) - lo))
                if keep:
                    m.d.sync += target[lo:lo + keep].eq(rx_byte[:keep])
                if keep < 8:
                    if set_only:
                        with m.If(rx_byte[keep:].any()):
                            m.d.sync += flag.eq(1)
                    else:
                        m.d.sync += flag.eq(rx_byte[keep:].any())

            def header_byte(i):
                """Access header byte ``i``: region, index, address (4 bytes), count (2)."""
                if i == 0:
                    keep_bits(i, cur_region, 0, a_addr_hi, set_only=True)
                elif i == 1:
                    m.d.sync += cur_index.eq(rx_byte)
                elif i < 6:
                    keep_bits(i, cur_addr[:aw], 8 * (i - 2), a_addr_hi, set_only=True)
                else:
                    # the high count byte arrives last: it sets or clears a_count_hi
                    keep_bits(i, a_count, 8 * (i - 6), a_count_hi, set_only=i == 6)

            with m.State("PAYLOAD"):
                def payload():
                    crc_byte()
                    m.d.comb += buf_w.en.eq(1)                 # rx_byte at pidx
                    m.d.sync += hdr.eq(hdr << 1)
                    for i in range(ACCESS_HEADER_BYTES):
                        with m.If(hdr[i]):
                            header_byte(i)
                    m.d.sync += pidx.eq(pidx + 1)
                    with m.If(last1):
                        m.next = "CRC0"
                receive(None, payload)
            # The CRC is compared a byte at a time (low byte first); the last step of the CRC
            # register is done two cycles after the last covered byte, before a byte can follow.
            with m.State("CRC0"):
                def crc0():
                    m.d.sync += crc_ok.eq(rx_byte == crc[:8])
                receive("CRC1", crc0)
            with m.State("CRC1"):
                def crc1():
                    m.d.sync += crc_ok.eq(crc_ok & (rx_byte == crc[8:]))
                receive("CRC_CHECK", crc1)
            with m.State("CRC_CHECK"):
                answer(Status.BAD_CRC)
                # the CRC decision a cycle after the byte (registered compare)
                with m.If(crc_ok):
                    m.d.sync += cnt_good.eq(1)
                    m.next = "DECODE"
                with m.Else():
                    respond()

            # ---------------------------------------------------------------- execute
            # Checks are computed over five registered stages (DECODE, PREP1-4) so that no
            # long carry chain sits in front of DISPATCH (iCE40 timing).
            with m.State("DECODE"):
                m.d.sync += [k_ok.eq(l_ok), k_read.eq(l_read), k_write.eq(l_write),
                             k_wb_log2.eq(l_wb_log2), index_bad.eq(l_index_bad),
                             k_depth.eq(l_depth), is_control.eq(cur_region == RegionId.CONTROL),
                             is_infer.eq(0),
                             byte_j.eq(0), pidx.eq(0), crc.eq(CRC16_INIT),
                             len_zero.eq(length == 0), len_m6.eq(length - WRITE_HEADER_BYTES),
                             len_le6.eq(length <= WRITE_HEADER_BYTES),
                             len_ne8.eq(length != ACCESS_HEADER_BYTES),
                             count_zero.eq((a_count == 0) & ~a_count_hi),
                             count_hi.eq(high(a_count, aw + 1) | a_count_hi)]
                if infer_ok:
                    m.d.sync += [
                        not_loaded.eq(n_layers == 0),
                        infer_oob.eq(n_in_over | n_out_over),
                        infer_len_bad.eq(length != (n_inputs << in_log2))]
                m.next = "PREP1"
            with m.State("PREP1"):
                # WRITE: the payload's words replace the count (a READ / CHECKSUM field that
                # WRITE does not have), so that the bounds check and the loop see one count.
                with m.If(cmd_is[Command.WRITE]):
                    m.d.sync += a_count.eq(len_m6 >> k_wb_log2)
                m.d.sync += remainder_nz.eq((len_m6 & ((1 << k_wb_log2) - 1)) != 0)
                # count * word_bytes > MAX_PAYLOAD: a compare with a constant per word size
                with m.Switch(k_wb_log2):
                    for log2 in range(3):
                        with m.Case(log2):
                            m.d.sync += read_too_long.eq(a_count_hi | (a_count > (MAX_PAYLOAD
                                                                                   >> log2)))
                m.next = "PREP2"
            with m.State("PREP2"):
                is_write = cmd_is[Command.WRITE]
                m.d.sync += [end.eq(cur_addr[:aw] + a_count[:aw + 1]),
                             n_hi.eq(Mux(is_write, high(a_count, aw + 1), count_hi))]
                m.next = "PREP3"
            with m.State("PREP3"):
                m.d.sync += oob.eq(a_addr_hi | n_hi | (end > k_depth))
                m.next = "PREP4"
            # PREP4 takes the answer decision (which error, or go on) on the registered checks;
            # DISPATCH acts on it, so the response registers' enable is one registered flag.
            with m.State("PREP4"):
                def decide(status=None, src=SRC_NONE):
                    if status is None:                 # no answer yet: DISPATCH goes on
                        m.d.sync += d_resp.eq(0)
                    else:
                        m.d.sync += [d_resp.eq(1), d_status.eq(status), d_src.eq(src)]
                m.d.sync += d_reset.eq(0)
                with m.If(cmd_is[Command.IDENTIFY]):
                    with m.If(~len_zero):
                        decide(Status.BAD_LENGTH)
                    with m.Else():
                        decide(Status.OK, SRC_IDENTIFY)
                with m.Elif(cmd_is[Command.STATUS]):
                    with m.If(~len_zero):
                        decide(Status.BAD_LENGTH)
                    with m.Else():
                        decide(Status.OK, SRC_STATUS)
                with m.Elif(cmd_is[Command.RESET]):
                    with m.If(~len_zero):
                        decide(Status.BAD_LENGTH)
                    with m.Else():
                        m.d.sync += d_reset.eq(1)
                        decide(Status.OK)
                with m.Elif(cmd_is[Command.WRITE]):
                    with m.If(len_le6 | remainder_nz):
                        decide(Status.BAD_LENGTH)
                    with m.Elif(~k_ok | ~k_write | index_bad | oob):
                        decide(Status.BAD_ADDRESS)
                    with m.Else():
                        decide()
                with m.Elif(cmd_is[Command.READ] | cmd_is[Command.CHECKSUM]):
                    with m.If(len_ne8 | (cmd_is[Command.READ] & read_too_long)):
                        decide(Status.BAD_LENGTH)
                    with m.Elif(~k_ok | ~k_read | index_bad | oob):
                        decide(Status.BAD_ADDRESS)
                    with m.Elif(count_zero & cmd_is[Command.READ]):
                        decide(Status.OK)
                    with m.Else():
                        decide()
                if infer_ok:
                    with m.Elif(cmd_is[Command.INFER]):
                        with m.If(not_loaded):
                            decide(Status.NOT_LOADED)
                        with m.Elif(infer_oob):
                            decide(Status.BAD_ADDRESS)
                        with m.Elif(infer_len_bad):
                            decide(Status.BAD_LENGTH)
                        with m.Else():
                            decide()
                with m.Else():
                    decide(Status.UNKNOWN_COMMAND)
                m.next = "DISPATCH"
            with m.State("DISPATCH"):
                # The access registers are loaded whatever the decision (by the command flags,
                # registered): their enable is the state alone, the decision picks the next
                # state only.  An answered request does not use them.
                answer(d_status, d_src)
                infer = cmd_is[Command.INFER] if infer_ok else Const(0, 1)
                m.d.sync += [
                    words.eq(Mux(infer, n_inputs, a_count)),
                    wb_log2.eq(Mux(infer, in_log2 if infer_ok else 0, k_wb_log2)),
                    pidx.eq(Mux(cmd_is[Command.WRITE], WRITE_HEADER_BYTES, 0)),
                    is_infer.eq(infer)]
                if infer_ok:
                    with m.If(infer):
                        m.d.sync += [cur_region.eq(RegionId.INPUT), cur_index.eq(0),
                                     cur_addr.eq(0), is_control.eq(0)]
                with m.If(d_resp):
                    with m.If(d_reset):
                        m.d.comb += eng.reset.eq(1)
                        m.d.sync += do_clear.eq(1)
                    respond()
                with m.Elif(cmd_is[Command.WRITE]):
                    m.next = "W_ADDR"
                with m.Elif(cmd_is[Command.READ] | cmd_is[Command.CHECKSUM]):
                    with m.If(count_zero):             # CHECKSUM of no words
                        m.next = "CK_STORE0"
                    with m.Else():
                        m.next = "R_ISSUE"
                if infer_ok:
                    with m.Else():                     # INFER (every other command answered)
                        with m.If(n_in_zero):
                            m.next = "I_START"
                        with m.Else():
                            m.next = "W_ADDR"

            # WRITE (and INFER's input writes): bytes from the buffer shift into `word` from the
            # top, four of them for every word: after the word's own bytes (byte_j below the word
            # size) the last one is read again, so the word ends at bit 0 (the bytes above it
            # are not used).  One shift register instead of a byte multiplexer per bit.
            with m.State("W_ADDR"):
                m.d.comb += buf_raddr.eq(pidx)
                own = Cat(byte_j == 0, ~byte_j[1], Const(1, 1), Const(1, 1)).bit_select(wb_log2, 1)
                m.d.sync += pidx.eq(pidx + own)
                m.next = "W_DATA"
            with m.State("W_DATA"):
                m.d.comb += word_shift.eq(1)
                m.d.sync += byte_j.eq(byte_j + 1)
                # CONTROL: the byte (or 0 above the register's width) into the info memory
                with m.Switch(Cat(byte_j, cur_addr[:2])):
                    for c in Control:
                        for j in range(4):
                            with m.Case(int(c) << 2 | j):
                                m.d.comb += ctrl_keep.eq(j < ctrl_widths[c] // 8)
                m.d.comb += [iw_addr.eq(ctrl_base | Cat(byte_j, cur_addr[:2])),
                             iw_data.eq(Mux(ctrl_keep, buf_r.data, 0)),
                             iw_en.eq(is_control)]
                with m.If(byte_j == 3):
                    m.next = "W_WRITE"                 # byte_j wraps to 0
                with m.Else():
                    m.next = "W_ADDR"
            with m.State("W_WRITE"):
                answer(Status.OK)
                with m.If(is_control):
                    value = word[:16]                  # N_INPUTS, N_OUTPUTS keep 16 bits
                    with m.Switch(cur_addr[:2]):
                        with m.Case(Control.N_LAYERS):
                            m.d.sync += n_layers.eq(word)
                        if infer_ok:
                            with m.Case(Control.N_INPUTS):
                                m.d.sync += [n_inputs.eq(value),
                                             n_in_over.eq(value > in_spec.depth)]
                            with m.Case(Control.N_OUTPUTS):
                                m.d.sync += [n_outputs.eq(value),
                                             n_out_over.eq(
                                                 (value > out_spec.depth)
                                                 | ((value << out_log2) + INFER_HEADER_BYTES
                                                    > MAX_PAYLOAD))]
                with m.Else():
                    m.d.comb += bus.we.eq(1)
                m.d.sync += [cur_addr.eq(cur_addr + 1), words.eq(words - 1)]
                with m.If(words_one):
                    with m.If(is_infer):
                        m.next = "I_START"
                    with m.Else():
                        respond()
                with m.Else():
                    m.next = "W_ADDR"

            # READ / CHECKSUM (and INFER's output reads): a bus read, then its bytes.
            with m.State("R_ISSUE"):
                m.d.comb += bus.re.eq(~is_control)
                m.d.sync += lat.eq(self.read_latency - 1)
                m.next = "R_WAIT"
            with m.State("R_WAIT"):
                # CONTROL: byte 0 of the word from the info memory (R_BYTES sends it)
                m.d.comb += info_raddr.eq(ctrl_base | Cat(Const(0, 2), cur_addr[:2]))
                # loaded in every cycle (the enable is the state): the last one, lat == 0, counts
                m.d.comb += word_load.eq(1)
                m.d.sync += [byte_j.eq(0), lat.eq(lat - 1)]
                with m.If(lat == 0):
                    m.next = "R_BYTES"
            with m.State("R_BYTES"):
                answer(Status.OK, SRC_BUFFER)
                # read_byte: the word shifts down a byte at a time (no byte multiplexer before
                # the CRC); CONTROL bytes come from the info memory, the next one addressed now.
                m.d.comb += word_shift.eq(1)               # the next byte to word[:8]
                m.d.comb += info_raddr.eq(ctrl_base | Cat((byte_j + 1)[:2], cur_addr[:2]))
                with m.If(is_checksum):
                    m.d.comb += [crc_rb.eq(1), crc_step.eq(1)]
                with m.Else():
                    m.d.comb += buf_w.en.eq(1)                 # read_byte at pidx
                    m.d.sync += pidx.eq(pidx + 1)
                m.d.sync += byte_j.eq(byte_j + 1)
                with m.If(last_byte):
                    m.d.sync += [cur_addr.eq(cur_addr + 1), words.eq(words - 1)]
                    with m.If(words_one):
                        with m.If(is_checksum):
                            m.next = "CK_WAIT"
                        with m.Else():
                            respond()
                    with m.Else():
                        m.next = "R_ISSUE"
            with m.State("CK_WAIT"):            # the last byte's CRC step
                m.next = "CK_STORE0"
            with m.State("CK_STORE0"):
                # pidx is 0 (no READ byte went to the buffer)
                m.d.comb += [buf_crc.eq(1), buf_w.en.eq(1)]
                m.d.sync += pidx.eq(pidx + 1)
                m.next = "CK_STORE1"
            with m.State("CK_STORE1"):
                answer(Status.OK, SRC_BUFFER)
                m.d.sync += pidx.eq(pidx + 1)          # 2: the CRC's two bytes
                m.d.comb += [buf_crc.eq(1), buf_w.en.eq(1)]
                respond()

            # INFER: start, wait, cycles, then read the outputs.
            with m.State("I_START"):
                m.d.comb += eng.start.eq(1)
                m.next = "I_WAIT"
            with m.State("I_WAIT"):
                # loaded in every cycle (the enable is the state): the last one counts
                m.d.sync += [cnt_infer.eq(1), byte_j.eq(0), pidx.eq(0)]
                with m.If(eng.done & ~eng.busy):
                    m.next = "I_CYCLES"
            with m.State("I_CYCLES"):
                answer(Status.OK, SRC_BUFFER)
                cycles_byte = eng.cycles.word_select(byte_j, 8)     # the engine is idle
                m.d.comb += [buf_w.en.eq(1), buf_cycles.eq(1),
                             # STATUS last_cycles, in the info memory
                             iw_addr.eq(status_base | offsets["last_cycles"] | byte_j),
                             iw_data.eq(cycles_byte), iw_en.eq(1)]
                m.d.sync += [pidx.eq(pidx + 1), byte_j.eq(byte_j + 1)]
                with m.If(byte_j == 3):
                    m.d.sync += byte_j.eq(0)
                    if infer_ok:
                        m.d.sync += [cur_region.eq(RegionId.OUTPUT), cur_index.eq(0),
                                     cur_addr.eq(0), words.eq(n_outputs),
                                     wb_log2.eq(exact_log2(out_spec.word_bytes))]
                    with m.If(n_out_zero):
                        respond()
                    with m.Else():
                        m.next = "R_ISSUE"

            # ---------------------------------------------------------------- respond
            def send(value, next_state, step_crc=True):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(value)]
                with m.If(self.tx.ready):
                    if step_crc:
                        m.d.comb += [crc_tx.eq(1), crc_step.eq(1)]
                    m.next = next_state

            # T_COUNT / T_STAT: the STATUS fields in the info memory are brought up to date
            # for this answer, one byte per cycle (read byte p, write byte p - 1 back): the
            # flags, last_error, +1 on the counters of `inc` (8-bit add with a carry across a
            # counter's bytes), or zeros after a RESET.  About 30 cycles per answer.
            inc = Signal(n_fields)       # per 4-byte field: add 1
            sp = Signal(6)               # byte read
            wp = Signal(6)               # byte written (read the cycle before)
            w_on = Signal()
            carry = Signal()
            is_error = Signal()
            with m.State("T_COUNT"):
                bits = [Const(0, 1)] * n_fields
                bits[field["good_frames"]] = cnt_good & ~do_clear
                bits[field["infers"]] = cnt_infer
                bits[field["rejected"]] = ((r_status == Status.BAD_LENGTH)
                                           | (r_status == Status.UNKNOWN_COMMAND)
                                           | (r_status == Status.BAD_ADDRESS)
                                           | (r_status == Status.NOT_LOADED))
                bits[field["bad_crc"]] = r_status == Status.BAD_CRC
                bits[field["timeouts"]] = r_status == Status.TIMEOUT
                with m.Switch(r_src):
                    for src, size in ((SRC_NONE, 0), (SRC_IDENTIFY, len(self.identity_bytes)),
                                      (SRC_STATUS, STATUS_BYTES), (SRC_BUFFER, pidx)):
                        with m.Case(src):
                            m.d.sync += length.eq(size)
                m.d.sync += [inc.eq(Cat(*bits)), is_error.eq(r_status != Status.OK),
                             cnt_good.eq(0), cnt_infer.eq(0), sp.eq(0), w_on.eq(0)]
                m.next = "T_STAT"
            with m.State("T_STAT"):
                m.d.comb += info_raddr.eq(status_base | sp)
                # what to do with byte wp, decided from sp a cycle ahead
                first_q, inc_q, flags_q, lerr_q = Signal(), Signal(), Signal(), Signal()
                m.d.sync += [sp.eq(sp + 1), wp.eq(sp), w_on.eq(1),
                             first_q.eq(sp[:2] == 0), inc_q.eq(inc.bit_select(sp[2:5], 1)),
                             flags_q.eq(sp == offsets["flags"]),
                             lerr_q.eq((sp == offsets["last_error"]) & is_error)]
                old_byte = info_r.data
                cin = Mux(first_q, inc_q, carry)
                new_byte = Signal(8)
                with m.If(do_clear):
                    m.d.comb += new_byte.eq(0)
                with m.Elif(flags_q):
                    m.d.comb += new_byte.eq(flags)
                with m.Elif(lerr_q):
                    m.d.comb += new_byte.eq(r_status)
                with m.Else():
                    m.d.comb += new_byte.eq(old_byte + cin)
                m.d.sync += carry.eq(cin & (old_byte == 0xFF))
                m.d.comb += [iw_addr.eq(status_base | wp), iw_data.eq(new_byte),
                             iw_en.eq(w_on)]
                # the design's reset also clears the CONTROL words (RESET keeps them)
                last = Mux(booting, CTRL_OFFSET + 15, STATUS_BYTES - 1)
                with m.If(w_on & (wp == last)):
                    m.d.sync += [do_clear.eq(0), booting.eq(0),
                                 err_seen.eq(~do_clear & (err_seen | is_error))]
                    with m.If(booting):
                        m.next = "HUNT"
                    with m.Else():
                        m.next = "T_SYNC"
            with m.State("T_SYNC"):
                send(RESPONSE_SYNC, "T_STATUS", step_crc=False)
                m.d.sync += crc.eq(CRC16_INIT)
            with m.State("T_STATUS"):
                send(r_status, "T_SEQ")
            with m.State("T_SEQ"):
                send(seq, "T_LEN0")
            with m.State("T_LEN0"):
                send(length[:8], "T_LEN1")
            with m.State("T_LEN1"):
                m.d.comb += buf_raddr.eq(0)
                m.d.sync += [pidx.eq(0), pay_wait.eq(1)]   # last1 follows pidx = 0 first
                with m.If(length == 0):
                    send(length[8:], "T_CRC0")
                with m.Else():
                    send(length[8:], "T_PAY")
            with m.State("T_PAY"):
                # The memories are read at pidx (a register): after each byte is taken, one
                # cycle (pay_wait) for the next byte's read, so that the UART's `ready` does
                # not reach a memory address (a byte takes 10 bit times anyway).
                value = Mux(r_src == SRC_BUFFER, buf_r.data, info_r.data)
                offer = ~pay_wait
                m.d.comb += [self.tx.valid.eq(offer), self.tx.payload.eq(value),
                             buf_raddr.eq(pidx)]
                m.d.sync += pay_wait.eq(self.tx.ready & offer)
                with m.If(self.tx.ready & offer):
                    m.d.comb += [crc_tx.eq(1), crc_step.eq(1)]
                    m.d.sync += pidx.eq(pidx + 1)
                    with m.If(last1):
                        m.next = "T_CRC0"
            with m.State("T_CRC0"):
                send(crc[:8], "T_CRC1", step_crc=False)
            with m.State("T_CRC1"):
                send(crc[8:], "HUNT", step_crc=False)

            m.d.comb += self.frame_active.eq(~fsm.ongoing("HUNT"))
        m.d.comb += crc_in.eq(Mux(crc_tx, self.tx.payload, Mux(crc_rb, read_byte, rx_byte)))
        # The payload buffer is always written at pidx: the byte received, the CHECKSUM's CRC
        # (low byte first), or else read_byte (a READ byte, INFER's cycles).
        m.d.comb += [buf_w.addr.eq(pidx),
                     buf_w.data.eq(Mux(receiving, rx_byte,
                                       Mux(buf_crc, Mux(pidx[0], crc[8:], crc[:8]),
                                           Mux(buf_cycles, eng.cycles.word_select(byte_j, 8),
                                               read_byte))))]
        # `word`: loaded from the bus (R_WAIT) or shifted down a byte (W_DATA: the buffer's
        # byte in at the top; R_BYTES: the next byte to send to word[:8]).
        with m.If(word_load):
            m.d.sync += word.eq(bus.rdata)
        with m.Elif(word_shift):
            m.d.sync += word.eq(Cat(word[8:], buf_r.data))
        # One-hot state register (Yosys does not recode it by itself, it has an init value):
        # each state test is one flip-flop instead of a 6-bit compare in every decision path.
        fsm.state.attrs["fsm_encoding"] = "one-hot"
        return m
