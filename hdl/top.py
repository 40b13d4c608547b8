"""Board top level: clock (PLL) and reset, UART, command decoder, engine or plain memories, LEDs.

:class:`SpineCore` is the platform-independent part (pins ``rx``/``tx``/``leds`` as ports) and is
what the simulations run; :class:`BoardTop` wraps it for an amaranth-boards platform (PLL,
power-on reset, pin requests).

Back ends (what sits behind the region bus):

* :class:`MemoriesBackend`: :class:`hdl.command.RegionMemories`, real memories with the engine's
  region table and a copy engine (INFER copies INPUT to OUTPUT); for shell tests.
* :class:`EngineBackend`: :class:`hdl.spmv.SpmvEngine` behind a thin adapter
  (:class:`EngineAdapter`).  The loadable regions (ENTRY .. DESCRIPTOR) read back through the
  engine's read-back port (:mod:`hdl.readback`: the idle engine's own read ports); the OUTPUT
  region (the dense output buffer) is readable.
* :class:`LstmBackend`: :class:`hdl.lstm.LstmEngine` behind :class:`LstmAdapter`.  Regions 0-4
  as for the SpMV engine; INFER's dense T x I input sequence (INPUT region, written in address
  order) is turned into the engine's x list (non-zeros with their columns) and per-step ends
  on the fly; OUTPUT reads the classifier scores, STATE the last layer's final output h_T
  (r_T with a projection).
* :class:`CnnBackend`: :class:`hdl.cnn.CnnEngine` behind :class:`CnnAdapter`.  Regions 0-4 as
  for the SpMV engine (DESCRIPTOR addresses ``layer << 5 | field``); INFER's input map, sent
  in (H, W, C) order, is written into feature-map buffer 0 at the engine's activation
  addresses on the fly; OUTPUT reads the last layer's output map by activation address.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Cat, ClockDomain, ClockSignal, Const, Instance, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from host.memory_map import common_entries, late_entries
from host.protocol import EngineKind, RegionId

from .command import (DATA_BITS, CommandDecoder, EngineControlSignature, RegionBusSignature,
                      RegionMemories, RegionSpec, _addr_width)
from .readback import wire_bits
from .uart import UART, baud_divisor, check_divisor

__all__ = ["MemoriesBackend", "EngineBackend", "EngineAdapter", "LstmBackend", "LstmAdapter",
           "CnnBackend", "CnnAdapter",
           "SpineCore", "BoardTop",
           "pll_config", "default_test_regions", "N_LEDS", "ADAPTER_READ_LATENCY",
           "LSTM_ADAPTER_READ_LATENCY"]

N_LEDS = 4

#: Region bus read latency of the engine adapters: the engine's read-back port (1 cycle, the
#: memories) plus a register after the read word multiplexers.
ADAPTER_READ_LATENCY = 2

#: Region bus read latency of :class:`LstmAdapter`: :data:`ADAPTER_READ_LATENCY` + a register
#: on the read request (the bus's ``re``, ``region``, ``index``, ``addr`` -> the engine's
#: read-back port and ``out_addr`` / ``h_addr``): the request's path from the decoder to the
#: element-wise data's SPRAMs, through the engine's SPRAM request multiplexers, is too long
#: for the iCE40 clock in one cycle; and a register on the words read, before the final
#: OUTPUT / STATE multiplexer (the engine's read-back multiplexers, 8 PEs by 5 regions, fill a
#: clock cycle on their own at 36 MHz).
LSTM_ADAPTER_READ_LATENCY = ADAPTER_READ_LATENCY + 2
"""``leds``: 0 heartbeat, 1 frame in progress, 2 last answer was an error, 3 engine busy."""


def default_test_regions(n_pe=2, *, entries=64, pointers=32, codebook=32, bias=32,
                         descriptors=16, inputs=32, outputs=32):
    """A small region table shaped like the engine's, for :class:`MemoriesBackend`."""
    return [
        RegionSpec(RegionId.ENTRY, 8, entries, n_pe),
        RegionSpec(RegionId.POINTER, 12, pointers, n_pe),
        RegionSpec(RegionId.CODEBOOK, 16, codebook, signed=True),
        RegionSpec(RegionId.BIAS, 32, bias, signed=True),
        RegionSpec(RegionId.DESCRIPTOR, 32, descriptors),
        RegionSpec(RegionId.INPUT, 16, inputs, readable=False, signed=True),
        RegionSpec(RegionId.OUTPUT, 16, outputs, writable=False, signed=True),
    ]


class MemoriesBackend:
    """Plain memories behind the region bus (no engine).

    Parameters
    ----------
    regions : list of RegionSpec, optional
        Default :func:`default_test_regions`.
    """

    kind = EngineKind.MEMORIES
    read_latency = 1

    def __init__(self, regions=None):
        self.regions = list(regions) if regions is not None else default_test_regions()
        by_id = {int(r.region): r for r in self.regions}
        entry, inp = by_id.get(RegionId.ENTRY), by_id.get(RegionId.INPUT)
        out = by_id.get(RegionId.OUTPUT)
        self.params = {
            "engine": int(self.kind), "n_pe": entry.count if entry else 0, "index_bits": 0,
            "run_bits": 0, "act_width": inp.width if inp else 0, "act_frac": 0,
            "weight_width": 0, "acc_bits": 0, "max_layers": 0,
            "max_rows": out.depth if out else 0, "max_cols": inp.depth if inp else 0,
            "max_entries_per_pe": entry.depth if entry else 0, "max_pointers": 0, "max_bias": 0,
        }

    def build(self):
        return RegionMemories(self.regions)


def _matrix_regions(e, sizes=None) -> list:
    """ENTRY, POINTER, CODEBOOK and BIAS of an engine built on :mod:`hdl.pe` (read back through
    :mod:`hdl.readback`).

    Parameters
    ----------
    e : SpmvEngine, LstmEngine or CnnEngine
        The engine (``entry_bits``, ``ptr_bits``).
    sizes : object, optional
        Where the size parameters are (``n_pe``, ``max_entries_per_pe``, ``max_pointers``,
        ``weight_width``, ``max_layers``, ``index_bits``, ``acc_bits``, ``max_bias``): default
        ``e`` itself; a CnnEngine keeps them in its ``cfg``.
    """
    c = e if sizes is None else sizes
    return [
        RegionSpec(RegionId.ENTRY, e.entry_bits, c.max_entries_per_pe, c.n_pe),
        RegionSpec(RegionId.POINTER, e.ptr_bits, c.max_pointers, c.n_pe),
        RegionSpec(RegionId.CODEBOOK, c.weight_width, c.max_layers << c.index_bits,
                   signed=True),
        RegionSpec(RegionId.BIAS, c.acc_bits, c.max_bias, signed=True),
    ]


def _drive_loader(m, e, bus, *, valid, load=None):
    """Bus writes straight into engine ``e``'s loader (or into ``load``, a
    :func:`_registered_load` request): region numbers 0..4 are shared, ENTRY and POINTER words
    go to PE ``bus.index`` only (its lane), ``valid`` says which writes count."""
    load = e.load if load is None else load
    m.d.comb += [
        load.region.eq(bus.region[:3]),
        load.addr.eq(bus.addr),
        load.data.eq(bus.wdata),
        load.valid.eq(valid),
        # one-hot PE select: bit p is index == p (a decoder, not a barrel shifter)
        load.mask.eq(Cat(*(bus.index == p for p in range(e.n_pe)))),
    ]
    if load is e.load:
        for p in range(e.n_pe):
            m.d.comb += load.lanes[p].eq(bus.wdata)


def _registered_load(m, e):
    """A loader request (``region``, ``addr``, ``data``, ``mask``, ``valid``, the widths of
    ``e.load``) that reaches engine ``e``'s loader one cycle later, from registers: the
    adapter's write decode and the engine's loader are then a register apart (iCE40 timing,
    docs/ice40-resources.md, section 10).  Every PE lane carries ``data``, as
    :func:`_drive_loader` drives them."""
    load = e.load
    req = SimpleNamespace(region=Signal.like(load.region, name="ld_req_region"),
                          addr=Signal.like(load.addr, name="ld_req_addr"),
                          data=Signal.like(load.data, name="ld_req_data"),
                          mask=Signal.like(load.mask, name="ld_req_mask"),
                          valid=Signal(name="ld_req_valid"))
    m.d.sync += [load.region.eq(req.region), load.addr.eq(req.addr), load.data.eq(req.data),
                 load.mask.eq(req.mask), load.valid.eq(req.valid)]
    m.d.comb += [load.lanes[p].eq(load.data) for p in range(e.n_pe)]
    return req


def _registered_request(m, bus, index_bits, *, idle=1):
    """The read request of ``bus`` (``re``, ``region``, the low ``index_bits`` of ``index``,
    ``addr``) a cycle later, from registers, with ``rdata`` the bus's own: a bus-like object
    for :func:`_drive_readback` (one cycle more of read latency).  ``re`` is registered only
    when ``idle`` (a request in a cycle that is not idle is dropped)."""
    req = SimpleNamespace(re=Signal(name="rq_re"),
                          region=Signal.like(bus.region, name="rq_region", reset_less=True),
                          index=Signal(max(1, index_bits), name="rq_index", reset_less=True),
                          addr=Signal.like(bus.addr, name="rq_addr", reset_less=True),
                          rdata=bus.rdata)
    m.d.sync += [req.re.eq(bus.re & idle), req.region.eq(bus.region), req.index.eq(bus.index),
                 req.addr.eq(bus.addr)]
    return req


def _drive_readback(m, e, bus, *, state=False, word_register=False):
    """Bus reads of regions 0..4 (ENTRY .. DESCRIPTOR) go to engine ``e``'s read-back port,
    OUTPUT reads to its output buffer (``out_addr``), and with ``state`` STATE reads to the LSTM
    engine's final-output port (``h_addr`` / ``h_data``, same width as ``out_data``);
    ``bus.rdata`` is the one read, registered: latency 2 (:data:`ADAPTER_READ_LATENCY`; the
    read-back multiplexers of the engine and this OUTPUT / STATE multiplexer are a register
    away from the decoder, for the clock; 3 when ``bus`` is :func:`_registered_request`'s).
    ``word_register``: the engine's words are registered once more before the OUTPUT / STATE
    multiplexer (one cycle more).
    The decoder reads only while the engine is idle (INFER waits for the run to end)."""
    rb = e.rb
    m.d.comb += [rb.en.eq(bus.re & (bus.region <= RegionId.DESCRIPTOR)),
                 rb.region.eq(bus.region[:3]), rb.pe.eq(bus.index), rb.addr.eq(bus.addr),
                 e.out_addr.eq(bus.addr)]
    from_output = Signal()
    from_state = Signal()
    with m.If(bus.re):
        m.d.sync += from_output.eq(bus.region == RegionId.OUTPUT)
        if state:
            m.d.sync += from_state.eq(bus.region == RegionId.STATE)
    # Only the OUTPUT / STATE word's wire bits need the multiplexer (the shell sends no more).
    low = wire_bits(len(e.out_data))
    act = e.out_data.as_signed()
    if state:
        m.d.comb += e.h_addr.eq(bus.addr)
        act = Mux(from_state, e.h_data.as_signed(), act)
    engine_word, from_act = rb.data, from_output | from_state
    if word_register:
        engine_word = Signal(len(rb.data), name="rb_word", reset_less=True)
        act_word = Signal(signed(low), name="act_word", reset_less=True)
        from_act = Signal(name="from_act")
        m.d.sync += [engine_word.eq(rb.data), act_word.eq(act),
                     from_act.eq(from_output | from_state)]
        act = act_word
    word = Signal(len(bus.rdata))
    m.d.comb += [word.eq(engine_word),
                 word[:low].eq(Mux(from_act, act, engine_word[:low]))]
    m.d.sync += bus.rdata.eq(word)


def _drive_control(m, e, ctl, *, max_layers):
    """Connect the decoder's engine control ``ctl`` straight to engine ``e``.

    ``start`` goes to the engine with ``ctl.n_layers`` as its layer count when that lies in
    ``1 .. max_layers`` (else 1); the engine's ``busy``, ``done`` and ``cycles`` go back.

    Parameters
    ----------
    m : Module
        The adapter's module (comb statements are added to it).
    e : SpmvEngine or CnnEngine
        Engine with ``start``, ``n_layers``, ``busy``, ``done`` and ``cycles`` ports.
    ctl : EngineControlSignature interface
        The adapter's ``ctl`` port.
    max_layers : int
        The most layers the engine runs.
    """
    n_layers = Signal(range(1, max_layers + 1), init=1)
    with m.If((ctl.n_layers >= 1) & (ctl.n_layers <= max_layers)):
        m.d.comb += n_layers.eq(ctl.n_layers)
    m.d.comb += [e.start.eq(ctl.start), e.n_layers.eq(n_layers), ctl.busy.eq(e.busy),
                 ctl.done.eq(e.done), ctl.cycles.eq(e.cycles)]


def _engine_params(kind, e, *, max_rows, max_cols) -> dict:
    """The engine parameters IDENTIFY reports (and the configuration hash covers)."""
    return {
        "engine": int(kind), "n_pe": e.n_pe, "index_bits": e.index_bits,
        "run_bits": e.run_bits, "act_width": e.act_format.width,
        "act_frac": e.act_format.frac, "weight_width": e.weight_width,
        "acc_bits": e.acc_bits, "max_layers": e.max_layers, "max_rows": max_rows,
        "max_cols": max_cols, "max_entries_per_pe": e.max_entries_per_pe,
        "max_pointers": e.max_pointers, "max_bias": e.max_bias,
        **common_entries(e), **late_entries(kind, e),
    }


def _check_loader_words(engine, acc_bits):
    """Raise ValueError unless ``engine``'s loader words (``engine.data_width``) and its
    accumulator (``acc_bits``) fit the region bus's :data:`hdl.command.DATA_BITS`-bit words."""
    if acc_bits > DATA_BITS or engine.data_width > DATA_BITS:
        raise ValueError(f"the region bus carries {DATA_BITS}-bit words; the engine's "
                         f"loader words are {engine.data_width} bits")


class _EngineBusAdapter(wiring.Component):
    """What every engine adapter shares: the engine, its region table, the ``bus`` and ``ctl``
    ports sized for that table, read latency :data:`ADAPTER_READ_LATENCY` (2).

    A subclass defines ``check_engine(engine)`` (TypeError for the wrong engine class) and
    ``region_table(engine)`` as static methods, checks the engine's word sizes and then calls
    this ``__init__``.

    Parameters
    ----------
    engine : SpmvEngine, LstmEngine or CnnEngine
        The engine (``engine.n_pe`` PEs, at most 256: the bus's ``index`` is 8 bits).
    """

    read_latency = ADAPTER_READ_LATENCY

    def __init__(self, engine):
        if engine.n_pe > 256:
            raise ValueError(f"the region bus addresses at most 256 PEs, not {engine.n_pe}")
        self.engine = engine
        self.regions = self.region_table(engine)
        self.addr_width = _addr_width(self.regions)
        super().__init__({"bus": In(RegionBusSignature(self.addr_width)),
                          "ctl": In(EngineControlSignature())})


class _AdapterBackend:
    """A back end that is one engine behind its adapter class :attr:`adapter`: the engine type
    check and region table come from the adapter, :meth:`build` makes the adapter.

    Parameters
    ----------
    engine : SpmvEngine, LstmEngine or CnnEngine
        The engine ``adapter.check_engine`` accepts.
    """

    read_latency = ADAPTER_READ_LATENCY
    adapter: type[_EngineBusAdapter]

    def __init__(self, engine):
        self.adapter.check_engine(engine)
        self.engine = engine
        self.regions = self.adapter.region_table(engine)

    def build(self):
        return self.adapter(self.engine)


class EngineAdapter(_EngineBusAdapter):
    """:class:`hdl.spmv.SpmvEngine` behind the region bus.

    Writes: region ENTRY/POINTER go to PE ``index`` only (``mask = 1 << index``, every lane
    carries ``wdata``); CODEBOOK, BIAS, DESCRIPTOR, INPUT go to the engine's loader with
    ``addr``/``wdata``.  Reads (latency 2): ENTRY .. DESCRIPTOR through the engine's read-back
    port (:func:`_drive_readback`), OUTPUT from ``out_addr``/``out_data`` (sign-extended).
    ``ctl.reset`` (the RESET command) is ignored: the engine keeps its layer descriptors in
    registers, which a reset would clear, and it is always idle when a request is executed
    (INFER waits for ``done``).
    """

    def __init__(self, engine):
        self.check_engine(engine)
        if engine.acc_bits > DATA_BITS:
            raise ValueError(f"the region bus carries {DATA_BITS}-bit words; `acc_bits` must be "
                             f"at most {DATA_BITS}, not {engine.acc_bits}")
        super().__init__(engine)

    @staticmethod
    def check_engine(engine):
        """Raise TypeError unless ``engine`` is an :class:`hdl.spmv.SpmvEngine`."""
        from .spmv import SpmvEngine

        if not isinstance(engine, SpmvEngine):
            raise TypeError(f"`engine` must be an hdl.spmv.SpmvEngine, not {engine!r}")

    @staticmethod
    def region_table(engine):
        """The :class:`RegionSpec` list of ``engine``'s memories (no elaboration needed)."""
        e = engine
        act = e.act_format
        return [
            *_matrix_regions(e),
            RegionSpec(RegionId.DESCRIPTOR, 32, e.max_layers * 8),
            RegionSpec(RegionId.INPUT, act.width, e.max_cols, readable=False, signed=True),
            RegionSpec(RegionId.OUTPUT, act.width, e.max_rows, writable=False, signed=True),
        ]

    def elaborate(self, platform):
        m = Module()
        e, bus, ctl = self.engine, self.bus, self.ctl
        m.submodules.engine = e
        _drive_loader(m, e, bus, valid=bus.we & (bus.region != RegionId.OUTPUT))
        _drive_readback(m, e, bus)
        _drive_control(m, e, ctl, max_layers=e.max_layers)
        return m


class EngineBackend(_AdapterBackend):
    """:class:`hdl.spmv.SpmvEngine` behind :class:`EngineAdapter`.

    Parameters
    ----------
    engine : SpmvEngine
    """

    kind = EngineKind.SPMV
    adapter = EngineAdapter

    def __init__(self, engine):
        super().__init__(engine)
        e = engine
        self.params = _engine_params(self.kind, e, max_rows=e.max_rows, max_cols=e.max_cols)


class LstmAdapter(_EngineBusAdapter):
    """:class:`hdl.lstm.LstmEngine` behind the region bus.

    Writes: ENTRY/POINTER go to PE ``index`` only; CODEBOOK, BIAS, DESCRIPTOR to the engine's
    loader (descriptor "layer" 2 is :class:`hdl.lstm.LstmField`; the adapter keeps its own copy
    of ``INPUT`` = I).  INPUT (region 5, ``steps_max * input_max`` act words, written by INFER
    in address order from 0) is the dense sequence ``x[t, i]`` at address ``t * I + i``: a write
    to address 0 restarts the list; every non-zero word becomes the next x-list entry
    ``column << act.width | value`` (engine region XLIST), and after column ``I - 1`` of step
    ``t`` the list length goes to XEND[t] one cycle later (the decoder leaves at least two idle
    bus cycles between writes).  STEPS is a descriptor field written when the model is loaded.
    Every loader write is registered first (:func:`_registered_load`: it reaches the engine a
    cycle after the bus write).  ``ctl.start`` is delayed by two cycles (the last XEND write
    lands first) and ``ctl.done`` is masked in those cycles.  Reads (latency 4,
    :data:`LSTM_ADAPTER_READ_LATENCY`: the request is registered first, and only while the
    engine is idle; the words read are registered before the last multiplexer): regions 0-4
    through the engine's read-back port
    (:func:`_drive_readback`), OUTPUT (classifier scores, sign-extended), STATE (read-only,
    ``state_max`` words: the last layer's final output h_T, r_T with a projection, of the last
    run, from the engine's ``h_addr`` / ``h_data`` port, sign-extended).  TABLE (the activation
    tables, :func:`host.memory_map.table_layout`) is the engine's region TABLE, written and
    read back (sign-extended) as regions 0-4.
    ``ctl.reset`` and ``ctl.n_layers`` are ignored.
    """

    read_latency = LSTM_ADAPTER_READ_LATENCY

    def __init__(self, engine):
        self.check_engine(engine)
        _check_loader_words(engine, engine.acc_bits)
        super().__init__(engine)

    @staticmethod
    def check_engine(engine):
        """Raise TypeError unless ``engine`` is an :class:`hdl.lstm.LstmEngine`."""
        from .lstm import LstmEngine

        if not isinstance(engine, LstmEngine):
            raise TypeError(f"`engine` must be an hdl.lstm.LstmEngine, not {engine!r}")

    @staticmethod
    def region_table(engine):
        """The :class:`RegionSpec` list of ``engine``'s regions (no elaboration needed)."""
        e = engine
        act = e.act_format
        return [
            *_matrix_regions(e),
            RegionSpec(RegionId.DESCRIPTOR, 32, e.params.descriptor_words),
            RegionSpec(RegionId.INPUT, act.width, e.steps_max * e.input_max, readable=False,
                       signed=True),
            RegionSpec(RegionId.OUTPUT, act.width, max(1, e.classes_max), writable=False,
                       signed=True),
            RegionSpec(RegionId.STATE, act.width, e.state_max, writable=False, signed=True),
            RegionSpec(RegionId.TABLE, act.width, e.params.table_words, signed=True),
        ]

    def elaborate(self, platform):
        from amaranth.utils import bits_for

        from .lstm import LstmField, LstmRegion

        m = Module()
        e, bus, ctl = self.engine, self.bus, self.ctl
        m.submodules.engine = e
        load = e.load
        aw = e.act_format.width
        in_size = Signal(bits_for(e.input_max))
        col = Signal(bits_for(e.input_max))
        step = Signal(bits_for(e.steps_max))
        ptr = Signal(e.xlist_bits)
        end_pending = Signal()
        end_step = Signal.like(step)
        end_value = Signal.like(ptr)
        start_d = Signal(2)                            # ctl.start, 1 and 2 cycles later

        # Defaults: the bus to the loader, registered (regions 0-4 have the engine's numbers).
        load = _registered_load(m, e)
        _drive_loader(m, e, bus, valid=bus.we & (bus.region <= RegionId.DESCRIPTOR), load=load)
        seq_input = (2 << 3) | int(LstmField.INPUT)
        # in_last: a step's first column is its last (I <= 1); col_last: column col is
        # (col + 1 >= I), kept beside col (iCE40 timing: no adder and compare between the bus
        # and the step registers' enables)
        in_last = Signal()
        col_last = Signal()
        with m.If(bus.we & (bus.region == RegionId.DESCRIPTOR) & (bus.addr == seq_input)):
            m.d.sync += [in_size.eq(bus.wdata[:len(in_size)]),
                         in_last.eq(bus.wdata[:len(in_size)] <= 1)]

        # INPUT: the dense sequence -> x list + per-step ends.
        first = bus.addr == 0
        cur_col = Signal.like(col)
        cur_step = Signal.like(step)
        cur_ptr = Signal.like(ptr)
        m.d.comb += [cur_col.eq(Mux(first, 0, col)), cur_step.eq(Mux(first, 0, step)),
                     cur_ptr.eq(Mux(first, 0, ptr))]
        value = bus.wdata[:aw]
        nonzero = value != 0
        next_ptr = Signal.like(ptr)
        m.d.comb += next_ptr.eq(cur_ptr + nonzero)
        m.d.sync += end_pending.eq(0)
        with m.If(bus.we & (bus.region == RegionId.INPUT)):
            m.d.comb += [load.region.eq(LstmRegion.XLIST), load.addr.eq(cur_ptr),
                         load.data.eq((cur_col << aw) | value), load.valid.eq(nonzero)]
            m.d.sync += ptr.eq(next_ptr)
            with m.If(Mux(first, in_last, col_last)):
                m.d.sync += [col.eq(0), col_last.eq(in_last), step.eq(cur_step + 1),
                             end_pending.eq(1), end_step.eq(cur_step), end_value.eq(next_ptr)]
            with m.Else():
                m.d.sync += [col.eq(cur_col + 1), step.eq(cur_step),
                             col_last.eq(Mux(first, in_size <= 2, col + 2 >= in_size))]
        with m.Elif(end_pending):
            m.d.comb += [load.region.eq(LstmRegion.XEND), load.addr.eq(end_step),
                         load.data.eq(end_value), load.valid.eq(1)]

        # TABLE (the activation tables): engine region TABLE, written and read back
        with m.If(bus.we & (bus.region == RegionId.TABLE)):
            m.d.comb += [load.region.eq(LstmRegion.TABLE), load.valid.eq(1)]
        # reads: the request registered first (LSTM_ADAPTER_READ_LATENCY), only while the
        # engine is idle (the engine relies on it: hdl.lstm.LstmEngine, "Notes")
        idle = Signal()
        m.d.comb += idle.eq(~(ctl.busy | ctl.start))
        req = _registered_request(m, bus, len(e.rb.pe), idle=idle)
        _drive_readback(m, e, req, state=True, word_register=True)
        # the engine's read-back enable and region straight from registers (iCE40 timing: they
        # select the SPRAM request), TABLE as the engine's region TABLE
        rb_en = Signal(name="rq_rb_en")
        rb_region = Signal(3, name="rq_rb_region", reset_less=True)
        is_table = bus.region == RegionId.TABLE
        m.d.sync += [rb_en.eq(bus.re & idle & ((bus.region <= RegionId.DESCRIPTOR) | is_table)),
                     rb_region.eq(Mux(is_table, LstmRegion.TABLE, bus.region[:3]))]
        m.d.comb += [e.rb.en.eq(rb_en), e.rb.region.eq(rb_region)]
        # the start two cycles later: the last XEND write (registered) lands first
        m.d.sync += start_d.eq(Cat(ctl.start, start_d[0]))
        m.d.comb += [e.start.eq(start_d[1]), ctl.busy.eq(e.busy | start_d.any()),
                     ctl.done.eq(e.done & ~start_d.any()), ctl.cycles.eq(e.cycles)]
        return m


class LstmBackend(_AdapterBackend):
    """:class:`hdl.lstm.LstmEngine` behind :class:`LstmAdapter`.

    IDENTIFY reports ``engine`` :data:`host.protocol.EngineKind.LSTM`, ``max_layers`` (matrix
    slots), ``max_rows = 4 * hidden_max``, ``max_cols = input_max + hidden_max`` (the host derives
    ``hidden_max`` and ``input_max`` from them, ``steps_max`` from the INPUT region's depth,
    ``classes_max`` from the OUTPUT region's, ``layers_max`` and the projection hardware from
    the DESCRIPTOR region's, ``proj_max`` from ``max_bias``; :func:`host.driver._lstm_limits`).
    """

    kind = EngineKind.LSTM
    adapter = LstmAdapter
    read_latency = LSTM_ADAPTER_READ_LATENCY

    def __init__(self, engine):
        from .lstm import GATES

        super().__init__(engine)
        e = engine
        self.params = _engine_params(self.kind, e, max_rows=GATES * e.hidden_max,
                                     max_cols=e.input_max + e.hidden_max)


class CnnAdapter(_EngineBusAdapter):
    """:class:`hdl.cnn.CnnEngine` behind the region bus.

    Writes: ENTRY/POINTER go to PE ``index`` only; CODEBOOK, BIAS and DESCRIPTOR (address
    ``layer << FIELD_BITS | field``, :class:`host.cnn_image.Field`) to the engine's loader.
    INPUT (region 5, written by INFER in address order from 0) is the input map in (H, W, C)
    order, channels innermost: a write to address 0 restarts the walk; each write goes to
    feature-map buffer 0 at activation address ``word * G + lane`` (lane = channel % G), and
    after the last channel of a pixel the next write starts the next word.  The walk needs
    C_in: the adapter keeps copies of layer 0's IN_GROUPS and LAST_MASK descriptor fields
    (written when the model is loaded).  The pad lanes of the last channel group are not
    written (the engine masks them).  Reads (latency 2): regions 0-4 through the engine's
    read-back port (:func:`_drive_readback`), OUTPUT by activation address (``out_addr``,
    :func:`host.cnn_image.output_addresses`).  ``ctl.n_layers`` (CONTROL.N_LAYERS) is the
    number of hardware layers; ``ctl.reset`` is ignored.
    """

    def __init__(self, engine):
        self.check_engine(engine)
        _check_loader_words(engine, engine.cfg.acc_bits)
        super().__init__(engine)

    @staticmethod
    def check_engine(engine):
        """Raise TypeError unless ``engine`` is an :class:`hdl.cnn.CnnEngine`."""
        from .cnn import CnnEngine

        if not isinstance(engine, CnnEngine):
            raise TypeError(f"`engine` must be an hdl.cnn.CnnEngine, not {engine!r}")

    @staticmethod
    def region_table(engine):
        """The :class:`RegionSpec` list of ``engine``'s regions (no elaboration needed)."""
        from host.cnn_image import FIELD_BITS

        e, c = engine, engine.cfg
        act = c.act_format
        activations = c.fm_words * c.fm_lanes
        return [
            *_matrix_regions(e, c),
            RegionSpec(RegionId.DESCRIPTOR, 32, c.max_layers << FIELD_BITS),
            RegionSpec(RegionId.INPUT, act.width, activations, readable=False, signed=True),
            RegionSpec(RegionId.OUTPUT, act.width, activations, writable=False, signed=True),
        ]

    def elaborate(self, platform):
        from host.cnn_image import FIELD_BITS, Field

        m = Module()
        e, bus, ctl = self.engine, self.bus, self.ctl
        c = e.cfg
        lanes, lb = c.fm_lanes, e.lane_bits
        m.submodules.engine = e
        load = e.load
        # Layer 0's channel groups and last-group lane mask (C_in), snooped from the loader.
        in_groups = Signal(range(c.fm_words + 1), init=1)
        last_mask = Signal(lanes, init=1)
        with m.If(bus.we & (bus.region == RegionId.DESCRIPTOR)):
            with m.If(bus.addr == (0 << FIELD_BITS) | int(Field.IN_GROUPS)):
                m.d.sync += in_groups.eq(bus.wdata[:len(in_groups)])
            with m.If(bus.addr == (0 << FIELD_BITS) | int(Field.LAST_MASK)):
                m.d.sync += last_mask.eq(bus.wdata[:lanes])

        _drive_loader(m, e, bus, valid=bus.we & (bus.region <= RegionId.DESCRIPTOR))

        # INPUT: (H, W, C) order -> activation address word * G + lane in buffer 0.
        word = Signal(e.fm_addr_bits)
        lane = Signal(max(1, lb))
        group = Signal(range(c.fm_words + 1))
        first = bus.addr == 0
        cur_word = Signal.like(word)
        cur_lane = Signal.like(lane)
        cur_group = Signal.like(group)
        m.d.comb += [cur_word.eq(Mux(first, 0, word)), cur_lane.eq(Mux(first, 0, lane)),
                     cur_group.eq(Mux(first, 0, group))]
        mask_ext = Signal(lanes + 1)
        m.d.comb += mask_ext.eq(last_mask)
        last_group = cur_group + 1 >= in_groups
        word_end = Signal()
        m.d.comb += word_end.eq((cur_lane == lanes - 1)
                                | (last_group & ~mask_ext.bit_select(cur_lane + 1, 1)))
        with m.If(bus.we & (bus.region == RegionId.INPUT)):
            addr = cur_word if lb == 0 else Cat(cur_lane[:lb], cur_word)
            m.d.comb += [load.region.eq(RegionId.INPUT), load.addr.eq(addr),
                         load.data.eq(bus.wdata), load.valid.eq(1)]
            with m.If(word_end):
                m.d.sync += [word.eq(cur_word + 1), lane.eq(0),
                             group.eq(Mux(last_group, 0, cur_group + 1))]
            with m.Else():
                m.d.sync += [word.eq(cur_word), lane.eq(cur_lane + 1), group.eq(cur_group)]

        _drive_readback(m, e, bus)
        _drive_control(m, e, ctl, max_layers=c.max_layers)
        return m


def cnn_params(config) -> dict:
    """The parameters IDENTIFY reports for a CNN engine built from ``config``
    (:class:`host.cnn_image.CnnConfig`): the SpMV-style header (``max_rows`` = largest C_out,
    ``max_cols`` = ``max_pointers - 1``, the most hardware columns of one layer) and the
    extension words :data:`host.protocol.CNN_EXTENSION_KEYS`."""
    c = config
    return {
        "engine": int(EngineKind.CNN), "n_pe": c.n_pe, "index_bits": c.index_bits,
        "run_bits": c.run_bits, "act_width": c.act_format.width, "act_frac": c.act_format.frac,
        "weight_width": c.weight_width, "acc_bits": c.acc_bits, "max_layers": c.max_layers,
        "max_rows": c.max_rows, "max_cols": c.max_pointers - 1,
        "max_entries_per_pe": c.max_entries_per_pe, "max_pointers": c.max_pointers,
        "max_bias": c.max_bias, "fm_lanes": c.fm_lanes, "fm_words": c.fm_words,
        "max_dim": c.max_dim, "max_pad": c.max_pad, "max_stride": c.max_stride,
        "max_pool": c.max_pool, "fifo_depth": c.fifo_depth,
        "out_parallel": int(c.out_parallel), "memory": int(c.memory == "spram"),
        **common_entries(c),
    }


class CnnBackend(_AdapterBackend):
    """:class:`hdl.cnn.CnnEngine` behind :class:`CnnAdapter`.

    IDENTIFY reports ``engine`` :data:`host.protocol.EngineKind.CNN` and :func:`cnn_params`
    (the host rebuilds the :class:`host.cnn_image.CnnConfig` from them,
    :func:`host.driver.cnn_config`).
    """

    kind = EngineKind.CNN
    adapter = CnnAdapter

    def __init__(self, engine):
        super().__init__(engine)
        self.params = cnn_params(engine.cfg)


class SpineCore(wiring.Component):
    """UART + :class:`hdl.command.CommandDecoder` + back end, in the ``sync`` domain.

    Parameters
    ----------
    backend : MemoriesBackend, EngineBackend, LstmBackend or CnnBackend
    clock_hz : int
        ``sync`` clock frequency (Hz), reported by IDENTIFY.
    baud : int
        Baud rate; the divisor is ``baud_divisor(clock_hz, baud)`` unless ``divisor`` is given
        (simulations use a small divisor with nominal clock/baud numbers).
    divisor : int, optional
        Clock cycles per bit (>= 4).
    rx_fifo_depth : int
        Bytes buffered between the UART receiver and the decoder (default 256: one EBR block,
        fewer logic cells than a small FIFO in flip-flops).

    Attributes
    ----------
    rx : In(1), tx : Out(1)
        UART pins (idle high).
    leds : Out(4)
        0 heartbeat (~1.4 Hz at 48 MHz), 1 frame in progress, 2 error, 3 engine busy.
    """

    def __init__(self, backend, *, clock_hz, baud, divisor=None, rx_fifo_depth=256):
        self.backend = backend
        self.clock_hz = clock_hz
        self.baud = baud
        self.divisor = (baud_divisor(clock_hz, baud) if divisor is None
                        else check_divisor(divisor))
        self.decoder_args = dict(divisor=self.divisor, clock_hz=int(clock_hz), baud=int(baud),
                                 params=backend.params, read_latency=backend.read_latency,
                                 rx_fifo_depth=rx_fifo_depth)
        # Built here so that IDENTIFY bytes / config hash are inspectable before elaboration.
        self.decoder = CommandDecoder(backend.regions, **self.decoder_args)
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "leds": Out(N_LEDS)})

    @property
    def identity_bytes(self) -> bytes:
        return self.decoder.identity_bytes

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart = uart = UART(self.divisor)
        m.submodules.decoder = dec = self.decoder
        m.submodules.backend = back = self.backend.build()
        m.d.comb += [uart.rx.eq(self.rx), self.tx.eq(uart.tx)]
        wiring.connect(m, uart.rx_stream, dec.rx)
        wiring.connect(m, dec.tx, uart.tx_stream)
        wiring.connect(m, dec.bus, back.bus)
        ctl = back.ctl
        wiring.connect(m, dec.engine, ctl)
        heartbeat = Signal(26)
        m.d.sync += heartbeat.eq(heartbeat + 1)
        m.d.comb += self.leds.eq(Const(0, N_LEDS) | (heartbeat[-1]
                                                     | (dec.frame_active << 1)
                                                     | (dec.error << 2)
                                                     | (ctl.busy << 3)))
        return m


def pll_config(f_in_hz: float, f_out_hz: float) -> dict:
    """iCE40 SB_PLL40 settings for ``f_out_hz`` from ``f_in_hz`` (like Project IceStorm's icepll).

    Returns a dict with ``divr``, ``divf``, ``divq``, ``filter_range`` and the achieved
    ``f_out_hz``.  Raises ValueError if no setting lands within 1 % (the PLL makes 16-275 MHz).
    """
    if not f_out_hz > 0 or not f_in_hz > 0:
        raise ValueError(f"PLL frequencies must be positive, not {f_in_hz!r} -> {f_out_hz!r}")
    best = None
    for divr in range(16):
        f_pfd = f_in_hz / (divr + 1)
        if not 10e6 <= f_pfd <= 133e6:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not 533e6 <= f_vco <= 1066e6:
                continue
            for divq in range(1, 7):
                f_out = f_vco / 2 ** divq
                if not 16e6 <= f_out <= 275e6:
                    continue
                err = abs(f_out - f_out_hz)
                if best is None or err < best[0]:
                    best = (err, divr, divf, divq, f_pfd, f_out)
    if best is None or best[0] > 0.01 * f_out_hz:
        raise ValueError(f"the iCE40 PLL cannot make {f_out_hz / 1e6:g} MHz from "
                         f"{f_in_hz / 1e6:g} MHz within 1 %")
    _, divr, divf, divq, f_pfd, f_out = best
    filter_range = next(i for i, limit in enumerate((17e6, 26e6, 44e6, 66e6, 101e6, 1e12), 1)
                        if f_pfd < limit)
    return {"divr": divr, "divf": divf, "divq": divq, "filter_range": filter_range,
            "f_out_hz": f_out}


class BoardTop(wiring.Component):
    """A :class:`SpineCore` on an iCE40 board: SB_PLL40_PAD from the board oscillator to the
    ``sync`` clock, a power-on reset held until the PLL locks (+ the iCE40 BRAM start-up delay),
    UART resource ``uart`` 0, LEDs ``led`` 0.. (as many as the board has, up to 4).

    Parameters
    ----------
    core_factory : callable
        ``core_factory(clock_hz) -> SpineCore`` (the core needs the achieved PLL frequency).
    freq_hz : float
        Requested ``sync`` frequency; the nearest PLL setting is used (see :attr:`clock_hz`).
    use_pll : bool
        False: run from the board oscillator directly.
    """

    def __init__(self, core_factory, *, osc_hz, freq_hz, use_pll=True):
        self.use_pll = use_pll
        self.osc_hz = osc_hz
        if use_pll:
            self.pll = pll_config(osc_hz, freq_hz)
            self.clock_hz = self.pll["f_out_hz"]
        else:
            self.pll = None
            self.clock_hz = osc_hz
        self.core = core_factory(self.clock_hz)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = cd_sync = ClockDomain("sync")
        m.domains.por = ClockDomain("por", reset_less=True, local=True)
        clk_io = platform.request(platform.default_clk, dir="-")
        locked = Signal()
        clk = Signal()
        if self.use_pll:
            p = self.pll
            m.submodules.pll = Instance(
                "SB_PLL40_PAD",
                p_FEEDBACK_PATH="SIMPLE",
                p_DIVR=p["divr"], p_DIVF=p["divf"], p_DIVQ=p["divq"],
                p_FILTER_RANGE=p["filter_range"],
                i_PACKAGEPIN=clk_io.io, i_RESETB=1, i_BYPASS=0,
                o_PLLOUTGLOBAL=clk, o_LOCK=locked)
        else:
            from amaranth.lib import io
            m.submodules.clk_buf = clk_buf = io.Buffer("i", clk_io)
            m.d.comb += [clk.eq(clk_buf.i), locked.eq(1)]
        platform.add_clock_constraint(clk, self.clock_hz)
        m.d.comb += [ClockSignal("sync").eq(clk), ClockSignal("por").eq(clk)]
        # Reset: until the PLL locks, then 15 us more (iCE40 BRAMs read 0 for ~3 us).
        delay = int(15e-6 * self.clock_hz)
        timer = Signal(range(delay + 1))
        ready = Signal()
        with m.If(~locked):
            m.d.por += [timer.eq(0), ready.eq(0)]
        with m.Elif(timer == delay):
            m.d.por += ready.eq(1)
        with m.Else():
            m.d.por += timer.eq(timer + 1)
        m.d.comb += cd_sync.rst.eq(~ready)

        m.submodules.core = core = self.core
        uart = platform.request("uart", 0)
        m.d.comb += [core.rx.eq(uart.rx.i), uart.tx.o.eq(core.tx)]
        for i in range(N_LEDS):
            try:
                led = platform.request("led", i)
            except Exception:
                break
            m.d.comb += led.o.eq(core.leds[i])
        return m
