"""hdl.uart: divisor validation, TX->RX loopback at several divisors, bit-level RX, framing
errors."""

import random
import sys
from pathlib import Path

import pytest

try:
    import hdl  # noqa: F401
except ModuleNotFoundError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amaranth.hdl import Module
from amaranth.sim import Simulator

from hdl.uart import UART, UARTRx, UARTTx, baud_divisor, check_divisor


# --- validation --------------------------------------------------------------------------------

def test_baud_divisor_values():
    assert baud_divisor(12_000_000, 115_200) == 104
    assert baud_divisor(48_000_000, 1_000_000) == 48
    assert baud_divisor(16, 4) == 4


@pytest.mark.parametrize("baud", [0, -9600, 1.5, True, "115200"])
def test_baud_must_be_positive_integer(baud):
    with pytest.raises(ValueError, match=r"`baud` must be a positive integer, not "):
        baud_divisor(12_000_000, baud)


def test_baud_zero_message():
    with pytest.raises(ValueError, match=r"^`baud` must be a positive integer, not 0$"):
        baud_divisor(12_000_000, 0)


def test_clock_must_be_positive():
    with pytest.raises(ValueError, match=r"`clk_freq` must be a positive number of Hz, not 0"):
        baud_divisor(0, 9600)


def test_too_fast_baud_is_refused():
    with pytest.raises(ValueError, match=r"baud 6000000 is too fast for a 12 MHz clock: 2\.00 "
                                         r"clock cycles per bit, the UART needs at least 4"):
        baud_divisor(12_000_000, 6_000_000)


def test_baud_error_is_refused_with_numbers():
    # 12 MHz / 2 Mbaud... 12e6/2.6e6 = 4.6 -> 5 -> 2.4 Mbaud, 7.7 % off
    with pytest.raises(ValueError, match=r"baud 2600000 from a 12 MHz clock: the nearest divisor "
                                         r"5 gives 2400000 baud, a 7\.69% error \(must be below "
                                         r"2%\)"):
        baud_divisor(12_000_000, 2_600_000)


@pytest.mark.parametrize("divisor", [3, 0, -1, 4.0, None])
def test_divisor_validation(divisor):
    with pytest.raises(ValueError, match=r"`divisor` must be an integer >= 4 \(clock cycles per "
                                         r"bit\), not "):
        check_divisor(divisor)
    with pytest.raises(ValueError):
        UARTRx(divisor)
    with pytest.raises(ValueError):
        UARTTx(divisor)


# --- simulation --------------------------------------------------------------------------------

def _run(dut, bench, *, deadline_cycles):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run_until(deadline_cycles * 1e-6)


@pytest.mark.parametrize("divisor", [4, 5, 8, 13, 16])
def test_loopback(divisor):
    """Bytes sent by the transmitter come back out of the receiver, back to back."""
    uart = UART(divisor)
    m = Module()
    m.submodules.uart = uart
    m.d.comb += uart.rx.eq(uart.tx)
    rng = random.Random(divisor)
    sent = [0x00, 0xFF, 0x55, 0xAA] + [rng.randrange(256) for _ in range(20)]
    received = []

    async def bench(ctx):
        ctx.set(uart.rx_stream.ready, 1)
        pending = list(sent)
        for _ in range((len(sent) + 3) * 10 * divisor):
            if pending:
                ctx.set(uart.tx_stream.payload, pending[0])
                ctx.set(uart.tx_stream.valid, 1)
            else:
                ctx.set(uart.tx_stream.valid, 0)
            _, _, tx_ready, rx_valid, rx_data, ferr = await ctx.tick().sample(
                uart.tx_stream.ready, uart.rx_stream.valid, uart.rx_stream.payload,
                uart.framing_error)
            if pending and tx_ready:
                pending.pop(0)
            if rx_valid:
                received.append(rx_data)
            assert not ferr

    _run(m, bench, deadline_cycles=(len(sent) + 4) * 10 * divisor)
    assert received == sent


def _bits(byte, stop=1):
    return [0] + [(byte >> i) & 1 for i in range(8)] + [stop]


def _frame_levels(byte, divisor, stop=1):
    """The line levels of one frame of ``byte``, one per clock cycle.

    Parameters
    ----------
    byte : int
        The data byte (sent LSB first after the start bit).
    divisor : int
        Clock cycles per bit.
    stop : int
        The stop bit's level (0 makes a framing error).

    Returns
    -------
    list of int
        Each bit of :func:`_bits` repeated ``divisor`` times.
    """
    return [b for b in _bits(byte, stop) for _ in range(divisor)]


@pytest.mark.parametrize("divisor,skew", [(16, 0.0), (16, 0.03), (16, -0.03), (8, 0.02)])
def test_rx_with_baud_skew(divisor, skew):
    """A sender 2-3 % off the nominal bit time is still received correctly."""
    rx = UARTRx(divisor)
    data = [0xA5, 0x00, 0xFF, 0x3C, 0x81]
    got, errors = [], []

    async def bench(ctx):
        ctx.set(rx.stream.ready, 1)
        bit_time = divisor * (1 + skew)
        waveform = [1] * 5
        t = 0.0
        levels = []
        for byte in data:
            for b in _bits(byte):
                t += bit_time
                levels.append((round(t), b))
        # cycle -> level
        level_at = []
        prev = 0
        for end, b in levels:
            level_at += [b] * (end - prev)
            prev = end
        level_at = waveform + level_at + [1] * (3 * divisor)
        for cycle, lvl in enumerate(level_at, 1):
            ctx.set(rx.rx, lvl)
            _, _, v, p, fe = await ctx.tick().sample(rx.stream.valid, rx.stream.payload,
                                                     rx.framing_error)
            if v:
                got.append(p)
            if fe:
                errors.append(cycle)

    _run(rx, bench, deadline_cycles=60 * divisor * len(data))
    assert got == data
    assert errors == []


def test_framing_error_then_recovery():
    divisor = 8
    rx = UARTRx(divisor)
    got, errors = [], []

    async def bench(ctx):
        ctx.set(rx.stream.ready, 1)
        levels = [1] * 20
        levels += _frame_levels(0x5A, divisor, stop=0)                       # bad stop bit
        levels += [0] * (4 * divisor)                                        # line held low
        levels += [1] * (3 * divisor)
        levels += _frame_levels(0xC3, divisor)                               # a good byte
        levels += [1] * (3 * divisor)
        for lvl in levels:
            ctx.set(rx.rx, lvl)
            _, _, v, p, fe = await ctx.tick().sample(rx.stream.valid, rx.stream.payload,
                                                     rx.framing_error)
            if v:
                got.append(p)
            if fe:
                errors.append(1)

    _run(rx, bench, deadline_cycles=100 * divisor)
    assert errors == [1]
    assert got == [0xC3]


def test_glitch_is_not_a_start_bit():
    divisor = 16
    rx = UARTRx(divisor)
    got = []

    async def bench(ctx):
        ctx.set(rx.stream.ready, 1)
        levels = [1] * 10 + [0] * 3 + [1] * (12 * divisor)      # 3-cycle glitch
        levels += _frame_levels(0x42, divisor) + [1] * 40
        for lvl in levels:
            ctx.set(rx.rx, lvl)
            _, _, v, p = await ctx.tick().sample(rx.stream.valid, rx.stream.payload)
            if v:
                got.append(p)

    _run(rx, bench, deadline_cycles=40 * divisor)
    assert got == [0x42]


def test_overrun_keeps_latest_byte():
    divisor = 4
    rx = UARTRx(divisor)
    seen = {"overrun": 0}

    async def bench(ctx):
        ctx.set(rx.stream.ready, 0)
        levels = [1] * 8
        for byte in (0x11, 0x22):
            levels += _frame_levels(byte, divisor)
        levels += [1] * 10
        for lvl in levels:
            ctx.set(rx.rx, lvl)
            _, _, ov = await ctx.tick().sample(rx.overrun)
            seen["overrun"] += ov
        assert ctx.get(rx.stream.valid) == 1
        assert ctx.get(rx.stream.payload) == 0x22

    _run(rx, bench, deadline_cycles=200)
    assert seen["overrun"] == 1


def test_tx_waveform():
    divisor = 6
    tx = UARTTx(divisor)
    line = []

    async def bench(ctx):
        ctx.set(tx.stream.payload, 0xB4)
        ctx.set(tx.stream.valid, 1)
        await ctx.tick()
        ctx.set(tx.stream.valid, 0)
        for _ in range(12 * divisor):
            line.append(ctx.get(tx.tx))
            await ctx.tick()

    _run(tx, bench, deadline_cycles=14 * divisor)
    expected = _frame_levels(0xB4, divisor)
    assert line[:10 * divisor] == expected
    assert all(line[10 * divisor:])
