"""Board profiles: platform, memory and DSP budget, clocks, UART, default engine.

``get_board(name)`` returns a :class:`Board`; ``BOARDS`` lists the names.  Each profile module
(``boards/icebreaker.py``, ...) defines ``BOARD`` plus module-level shortcuts (``CLOCK_HZ``,
``BAUD``, ...) that tools such as :mod:`hdl.sim` read.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

__all__ = ["Budget", "Board", "BOARDS", "get_board"]

#: Board name -> profile module (in this package).
BOARDS = {
    "icebreaker": "icebreaker",
    "ulx3s": "ulx3s",
}

#: iCE40 EBR (4 kbit) shapes, (depth, width).
ICE40_EBR_SHAPES = ((256, 16), (512, 8), (1024, 4), (2048, 2))
#: ECP5 DP16KD (18 kbit) shapes, (depth, width).
ECP5_DP16KD_SHAPES = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))


@dataclass(frozen=True)
class Budget:
    """What the FPGA has (the capacity check and the build report compare against it).

    Attributes
    ----------
    logic_cells : int
        LUT4 + flip-flop cells (iCE40: ICESTORM_LC).
    bram_blocks : int
        Block RAMs; ``bram_bits`` bits each (iCE40 EBR: 4096 bits, 256x16 .. 2048x2).
    spram_blocks : int
        Single-port RAMs; ``spram_bits`` bits each (iCE40UP: 256 kbit, 16384x16).
    dsp : int
        Multiplier blocks (iCE40UP SB_MAC16).
    """

    logic_cells: int
    bram_blocks: int
    bram_bits: int
    spram_blocks: int
    spram_bits: int
    dsp: int
    #: nextpnr cell type -> budget key, for reading its utilisation report.
    nextpnr_cells: dict = field(default_factory=dict)
    #: Block RAM shapes (depth, width) the capacity estimate may use.
    bram_shapes: tuple = ICE40_EBR_SHAPES

    def total(self, key: str) -> int:
        return {"logic_cells": self.logic_cells, "bram": self.bram_blocks,
                "spram": self.spram_blocks, "dsp": self.dsp}[key]


@dataclass(frozen=True)
class Board:
    """A board profile.

    Attributes
    ----------
    name : str
    family : str
        ``"ice40"`` or ``"ecp5"`` (selects the nextpnr flavour).
    device, package : str
    platform_factory : callable
        Returns a fresh amaranth-boards platform instance.
    osc_hz : int
        Board oscillator (Hz).
    clock_hz : int
        Default engine clock (Hz), made by the PLL from ``osc_hz``.
    baud : int
        Default UART baud rate.
    budget : Budget
    default_engine : dict
        :class:`hdl.spmv.SpmvEngine` keyword arguments of a build without a model.
    notes : str
        Free text shown by ``--help`` and in docs/boards.md.
    fifo_depth : int
        Broadcast FIFO depth per PE of every engine built for the board (with or without a
        model; EIE uses 8).  Each slot costs a ``k + value`` wide register per FIFO and widens
        every PE's read multiplexer, so small FPGAs use fewer (the cycle model follows:
        ``engine.timing().fifo_depth``).
    lstm_layout : dict
        :class:`hdl.lstm.LstmEngine` keyword arguments that every LSTM model build for the
        board adds (:func:`hdl.build.board_lstm_layout`; empty: the engine's defaults).  The
        iCEBreaker's runs the element-wise unit serially out of the SPRAMs.
    lstm_clock_hz : int or None
        Engine clock (Hz) of an LSTM model build when it differs from ``clock_hz`` (the LSTM
        engine's measured Fmax on this board is lower; :func:`hdl.build.board_clock_hz`);
        ``--freq`` overrides it.  None: ``clock_hz``.
    """

    name: str
    family: str
    device: str
    package: str
    platform_factory: object
    osc_hz: int
    clock_hz: int
    baud: int
    budget: Budget
    default_engine: dict
    notes: str = ""
    fifo_depth: int = 8
    lstm_layout: dict = field(default_factory=dict)
    lstm_clock_hz: int | None = None

    def platform(self):
        return self.platform_factory()


def get_board(name: str) -> Board:
    """The profile of board ``name``; ``ValueError`` listing the valid names otherwise."""
    if not isinstance(name, str) or name not in BOARDS:
        raise ValueError(f"unknown board {name!r}; valid boards: {', '.join(sorted(BOARDS))}")
    module = importlib.import_module(f"{__name__}.{BOARDS[name]}")
    return module.BOARD
