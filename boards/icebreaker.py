"""1BitSquared iCEBreaker: Lattice iCE40UP5K-SG48, 12 MHz oscillator, FT2232H USB (channel B
is the UART on FPGA pins 6 = RX, 9 = TX), two user LEDs (red 11, green 37).

Budget: 5280 logic cells, 30 EBR blocks of 4 kbit, 4 SPRAM blocks of 256 kbit, 8 SB_MAC16 DSPs.
Default clock: 36 MHz (12 MHz x 48 / 16) from the oscillator through the SB_PLL40_PAD
(``--freq 16 .. 275`` picks another; ``--freq 12`` runs from the oscillator without the
PLL).  The default build reaches 39.8 MHz at seed 1 (docs/ice40-resources.md has the
measured critical paths).  LSTM model builds default to 27 MHz (12 MHz x 72 / 32): the LSTM
engine in the board's layout reaches 32.45 MHz there (31.24 MHz at ``--freq 30``, 31-34 MHz
at ``--freq 36``).  Default UART 1 Mbaud (the
FT2232H does up to 12 Mbaud; pass ``--baud 115200`` for terminals that cannot do 1 Mbaud).
"""

from amaranth_boards.icebreaker import ICEBreakerPlatform

from . import Board, Budget

OSC_HZ = 12_000_000
CLOCK_HZ = 36_000_000
BAUD = 1_000_000

BUDGET = Budget(logic_cells=5280, bram_blocks=30, bram_bits=4096, spram_blocks=4,
                spram_bits=262_144, dsp=8,
                nextpnr_cells={"ICESTORM_LC": "logic_cells", "ICESTORM_RAM": "bram",
                               "ICESTORM_SPRAM": "spram", "ICESTORM_DSP": "dsp"})

#: The engine of a build without ``--model`` (``hdl.spmv.SpmvEngine`` keyword arguments).
#: Eight PEs in lockstep pairs (``pe_group=2``): each pair's entries share one SB_SPRAM256KA
#: word (4 SPRAMs x 2 bytes = 8 entries per cycle) and one pointer memory; every PE has its
#: codebook (1 EBR), 16-bit accumulators (1 EBR) and a DSP.  Block RAM is the limit: 28 of 30
#: EBR with the shell, 8 of 8 DSPs, 4089 LCs, 38.71 MHz (docs/ice40-resources.md).  The
#: 16-bit accumulators wrap like any others (``host.golden`` defines them bit-exactly).
DEFAULT_ENGINE = dict(n_pe=8, index_bits=4, run_bits=4, act_width=16, act_frac=10,
                      weight_width=16, acc_bits=16, max_rows=64, max_cols=64,
                      max_entries_per_pe=512, max_layers=2, memory="spram", pe_group=2)

#: Broadcast FIFO depth per PE: 4 instead of EIE's 8 saves ~670 LCs at 8 PEs (one 8:1 -> 4:1
#: read multiplexer of k + value bits per PE) for +0.3 % MAC cycles on digits-lstm
#: (docs/ice40-resources.md, plan item 4).
FIFO_DEPTH = 4

#: How an LSTM model build lays out the LSTM engine (``hdl.lstm.LstmEngine`` keyword arguments,
#: docs/lstm-engine.md "iCE40 layout").  The ESE overlap (the element-wise unit beside the next
#: step's MAC) needs per-PE gate buffers and a ninth multiplier; here the unit runs after each
#: MAC phase instead, reads the accumulators directly, multiplies on a PE's DSP and keeps its
#: bias, tables, c and h in the pairs' SPRAMs (idle while the PEs are), so that block RAM holds
#: only the PE side, the lists and the shell.  Per-step cycle statistics (a test aid) are off.
#: The broadcast FIFO is one deep (no per-PE read multiplexer: ~-400 LCs against 4 deep) for
#: +1.1 % cycles on digits-lstm (6901.4 -> 6977.4 per sequence; docs/ice40-resources.md,
#: section 7; 7001.4 since the timing registers of section 9, 7010.4 since section 10's).
LSTM_LAYOUT = dict(overlap=False, step_stats=False, memory="spram", ew_lanes=1, fifo_depth=1)

#: Engine clock of LSTM model builds: the digits-lstm build (4878 of 5280 LCs) reaches
#: Fmax 32.45 MHz at 27 MHz, seed 1 (39.28 MHz on the paths through the DSPs): 20 % of margin.
#: 30 MHz also meets (31.24 MHz, ``--freq 30``); 36 MHz does not (31-34 MHz, depending on the
#: placement; ~70 % of the delay is routing; docs/ice40-resources.md, sections 9 and 10).
LSTM_CLOCK_HZ = 27_000_000

BOARD = Board(
    name="icebreaker", family="ice40", device="iCE40UP5K", package="SG48",
    platform_factory=ICEBreakerPlatform, osc_hz=OSC_HZ, clock_hz=CLOCK_HZ, baud=BAUD,
    budget=BUDGET, default_engine=DEFAULT_ENGINE, fifo_depth=FIFO_DEPTH,
    lstm_layout=LSTM_LAYOUT, lstm_clock_hz=LSTM_CLOCK_HZ,
    notes="iCE40UP5K: 5280 LCs, 30 x 4 kbit EBR, 4 x 256 kbit SPRAM, 8 DSP; 12 MHz oscillator, "
          "PLL to 36 MHz by default, 27 MHz for LSTM models (--freq 16-275 MHz); UART on the "
          "FT2232H channel B at 1 Mbaud.")
