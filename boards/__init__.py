"""Board profiles: platform, memory and DSP budget, clocks, UART, default engine."""
