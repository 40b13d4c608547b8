"""8N1 UART receiver and transmitter as Amaranth stream components.

The bit time is an integer number of clock cycles, ``divisor = round(clk_freq / baud)``;
:func:`baud_divisor` computes it and refuses clock/baud pairs the UART cannot hit within 2 %.

Receiver (:class:`UARTRx`)::

    rx pin -> 2-flop synchroniser -> falling edge? -> wait divisor//2 (middle of the start bit)
           -> start bit still low? -> 8 data bits sampled one divisor apart (LSB first)
           -> stop bit sampled: high -> byte out on ``stream``; low -> ``framing_error`` pulse
              (and wait for the line to return high before hunting for the next start bit)

Transmitter (:class:`UARTTx`): start bit, 8 data bits LSB first, one stop bit; ``stream.ready``
is high only while the transmitter is idle, so a byte is accepted every ``10 * divisor`` cycles.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["MIN_DIVISOR", "MAX_BAUD_ERROR", "baud_divisor", "check_divisor", "UARTRx", "UARTTx",
           "UART"]

#: Smallest bit time in clock cycles the receiver samples reliably (mid-bit sampling needs a few
#: cycles of margin for the synchroniser).
MIN_DIVISOR = 4
#: Largest relative baud error :func:`baud_divisor` accepts (an 8N1 frame tolerates ~5 % in total,
#: shared between both ends).
MAX_BAUD_ERROR = 0.02


def _positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, not {value!r}")
    return value


def check_divisor(divisor) -> int:
    """Validate a bit time ``divisor`` (clock cycles per bit, integer >= :data:`MIN_DIVISOR`)."""
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < MIN_DIVISOR:
        raise ValueError(f"`divisor` must be an integer >= {MIN_DIVISOR} (clock cycles per bit), "
                         f"not {divisor!r}")
    return divisor


def baud_divisor(clk_freq, baud) -> int:
    """Clock cycles per bit for ``baud`` from a ``clk_freq`` Hz clock.

    Parameters
    ----------
    clk_freq : int or float
        Clock frequency (Hz, > 0).
    baud : int
        Baud rate (bits/s, positive integer).

    Returns
    -------
    int
        ``round(clk_freq / baud)``, at least :data:`MIN_DIVISOR`.

    Raises
    ------
    ValueError
        If an argument is not positive, the divisor is below :data:`MIN_DIVISOR`, or the baud
        rate actually produced differs from ``baud`` by :data:`MAX_BAUD_ERROR` (2 %) or more; the
        message names the clock, the baud rate and the error.
    """
    _positive_int("baud", baud)
    if isinstance(clk_freq, bool) or not isinstance(clk_freq, (int, float)) or not clk_freq > 0:
        raise ValueError(f"`clk_freq` must be a positive number of Hz, not {clk_freq!r}")
    divisor = round(clk_freq / baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(f"baud {baud} is too fast for a {clk_freq / 1e6:g} MHz clock: "
                         f"{clk_freq / baud:.2f} clock cycles per bit, the UART needs at least "
                         f"{MIN_DIVISOR}")
    actual = clk_freq / divisor
    error = abs(actual - baud) / baud
    if error >= MAX_BAUD_ERROR:
        raise ValueError(f"baud {baud} from a {clk_freq / 1e6:g} MHz clock: the nearest divisor "
                         f"{divisor} gives {actual:.0f} baud, a {error:.2%} error (must be below "
                         f"{MAX_BAUD_ERROR:.0%})")
    return divisor


class UARTRx(wiring.Component):
    """8N1 UART receiver.

    Parameters
    ----------
    divisor : int
        Bit time in clock cycles (>= 4).

    Attributes
    ----------
    rx : In(1)
        Serial input pin (idle high), asynchronous: it goes through a 2-flop synchroniser.
    stream : Out(stream.Signature(8))
        Received bytes.  ``valid`` stays high until ``ready``; a byte arriving while the previous
        one is still waiting replaces it and pulses ``overrun``.
    framing_error : Out(1)
        One-cycle pulse: a stop bit was sampled low (the byte is dropped).
    overrun : Out(1)
        One-cycle pulse: a byte was lost because ``stream`` was not ready.
    busy : Out(1)
        A frame is being received (start bit seen).
    """

    def __init__(self, divisor: int):
        self.divisor = check_divisor(divisor)
        super().__init__({
            "rx": In(1, init=1),
            "stream": Out(stream.Signature(8)),
            "framing_error": Out(1),
            "overrun": Out(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        div = self.divisor
        sync1 = Signal(init=1)
        line = Signal(init=1)
        m.d.sync += [sync1.eq(self.rx), line.eq(sync1)]

        timer = Signal(range(div))
        bits = Signal(range(8))
        shift = Signal(8)
        m.d.sync += [self.framing_error.eq(0), self.overrun.eq(0)]
        with m.If(self.stream.ready):
            m.d.sync += self.stream.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(div // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                m.d.comb += self.busy.eq(1)
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):           # a glitch, not a start bit
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [timer.eq(div - 1), bits.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                m.d.comb += self.busy.eq(1)
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [shift.eq(Cat(shift[1:], line)), timer.eq(div - 1),
                                 bits.eq(bits + 1)]
                    with m.If(bits == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                m.d.comb += self.busy.eq(1)
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):
                    m.d.sync += [self.stream.payload.eq(shift), self.stream.valid.eq(1),
                                 self.overrun.eq(self.stream.valid & ~self.stream.ready)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += self.framing_error.eq(1)
                    m.next = "BREAK"
            with m.State("BREAK"):               # wait for the line to go idle again
                with m.If(line):
                    m.next = "IDLE"
        return m


class UARTTx(wiring.Component):
    """8N1 UART transmitter.

    Parameters
    ----------
    divisor : int
        Bit time in clock cycles (>= 4).

    Attributes
    ----------
    stream : In(stream.Signature(8))
        Bytes to send; accepted (``ready``) only when the transmitter is idle.
    tx : Out(1)
        Serial output pin (idle high, registered).
    busy : Out(1)
        A byte is being sent.
    """

    def __init__(self, divisor: int):
        self.divisor = check_divisor(divisor)
        super().__init__({
            "stream": In(stream.Signature(8)),
            "tx": Out(1, init=1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        div = self.divisor
        timer = Signal(range(div))
        shift = Signal(10, init=0x3FF)       # stop, data[7:0], start; bit 0 goes out first
        left = Signal(range(11))
        # left == 0, as a register: `ready` comes straight from a flip-flop (for the clock).
        idle = Signal(init=1)
        m.d.comb += [self.tx.eq(shift[0]), self.busy.eq(~idle), self.stream.ready.eq(idle)]
        with m.If(idle):
            with m.If(self.stream.valid):
                m.d.sync += [shift.eq(Cat(Const(0, 1), self.stream.payload, Const(1, 1))),
                             left.eq(10), timer.eq(div - 1), idle.eq(0)]
        with m.Elif(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.Else():
            m.d.sync += [shift.eq(Cat(shift[1:], Const(1, 1))), left.eq(left - 1),
                         timer.eq(div - 1), idle.eq(left == 1)]
        return m


class UART(wiring.Component):
    """:class:`UARTRx` and :class:`UARTTx` sharing one ``divisor``.

    Attributes
    ----------
    rx : In(1), tx : Out(1)
        Pins.
    rx_stream : Out(stream.Signature(8)), tx_stream : In(stream.Signature(8))
        Received bytes / bytes to send.
    framing_error, overrun : Out(1)
        Receiver error pulses (see :class:`UARTRx`).
    """

    def __init__(self, divisor: int):
        self.divisor = check_divisor(divisor)
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "rx_stream": Out(stream.Signature(8)),
            "tx_stream": In(stream.Signature(8)),
            "framing_error": Out(1),
            "overrun": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.rx = rx = UARTRx(self.divisor)
        m.submodules.tx = tx = UARTTx(self.divisor)
        m.d.comb += [rx.rx.eq(self.rx), self.tx.eq(tx.tx),
                     self.framing_error.eq(rx.framing_error), self.overrun.eq(rx.overrun)]
        wiring.connect(m, rx.stream, wiring.flipped(self.rx_stream))
        wiring.connect(m, wiring.flipped(self.tx_stream), tx.stream)
        return m
