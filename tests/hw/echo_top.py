"""Test fixture: a tiny UART echo top level for the simulated-board harness (hdl/sim.py).

Every byte received on ``rx`` is sent back on ``tx`` (through a FIFO, so back-to-back bytes are
not lost).  Not shipped; it only exercises the harness's socket and bit-banging.
"""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from hdl.uart import UART


class EchoTop(wiring.Component):
    """UART echo: ``rx`` -> FIFO -> ``tx`` at ``divisor`` clocks per bit."""

    def __init__(self, divisor: int = 8, depth: int = 64):
        self.divisor = divisor
        self.depth = depth
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart = uart = UART(self.divisor)
        m.submodules.fifo = fifo = SyncFIFO(width=8, depth=self.depth)
        m.d.comb += [
            uart.rx.eq(self.rx), self.tx.eq(uart.tx),
            fifo.w_data.eq(uart.rx_stream.payload), fifo.w_en.eq(uart.rx_stream.valid),
            uart.rx_stream.ready.eq(fifo.w_rdy),
            uart.tx_stream.payload.eq(fifo.r_data), uart.tx_stream.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(uart.tx_stream.ready),
        ]
        return m
