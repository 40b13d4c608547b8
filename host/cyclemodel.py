"""Cycle model of one sparse matrix-vector product on EIE's PE array.

The hardware (hdl/spmv.py) is built to follow these rules exactly; its testbenches compare the
RTL's cycle count with :func:`spmv_cycles`.

Semantics, for the non-zero activations in broadcast order ``c = 0 .. M-1`` (zero activations
are never broadcast, and finding the next non-zero costs nothing):

* **Broadcast** ``B[c]``: the cycle column ``c`` is pushed into every PE's FIFO (depth ``F``).
  It needs the previous push done and a free slot in every FIFO, i.e. column ``c - F`` popped
  by every PE in an earlier cycle::

      B[c] = max(first_broadcast, B[c-1] + 1, max_p pop_p[c-F] + 1)

* **Pop** ``pop_p[c]``: PE ``p`` takes the column from its FIFO (one per cycle, visible the
  cycle after the push) at most ``fetch_latency`` cycles before its entry stage frees up::

      pop_p[c] = max(B[c] + 1, pop_p[c-1] + pop_interval, E_p[c-1] - fetch_latency)

* **Entries**: the entry stage issues one entry per cycle, padding included, from
  ``S_p[c] = pop_p[c] + fetch_latency`` until ``E_p[c] = S_p[c] + w_p[c]``, where ``w_p[c]`` is
  the PE's entry count of that column (an empty column costs the pop stage a cycle only).

* **Done**: ``max(max_p E_p[M-1], B[M-1] + 1) + drain_latency`` cycles after the start, the
  last product is in its accumulator.

The *ideal bound* is the busiest PE's entry count over the broadcast columns: no schedule with
one entry per PE per cycle can be faster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .encoding import EncodedMatrix

__all__ = ["Timing", "CycleReport", "spmv_cycles", "active_columns", "REQUANT_LATENCY"]

#: Register stages of the output-stage requantizer (``hdl.requant.Requantizer(pipelined=True)``):
#: operands, ``acc + bias``, shift, rounding add, saturate / ReLU (the SpMV engine's output
#: phase, host.memory_map.OUTPUT_OVERHEAD).
REQUANT_LATENCY = 5


@dataclass(frozen=True)
class Timing:
    """Pipeline constants of the PE array (cycles).

    Parameters
    ----------
    fifo_depth : int
        Activation FIFO depth per PE (EIE: 8).
    fetch_latency : int
        Cycles from popping a column to issuing its first entry (pointer read).
    first_broadcast : int
        Cycle of the first broadcast after the start pulse.
    drain_latency : int
        Cycles from the last issued entry to its product sitting in the accumulator.
    pop_interval : int
        Fewest cycles between two pops of one PE (1: a pop every cycle; 2: a PE that pops in
        cycle P waits for the column's pointers and pops again at P + 2 at the earliest).
    """

    fifo_depth: int = 8
    fetch_latency: int = 1
    first_broadcast: int = 0
    drain_latency: int = 3
    pop_interval: int = 1

    def __post_init__(self):
        if not isinstance(self.fifo_depth, int) or self.fifo_depth < 1:
            raise ValueError(f"`fifo_depth` must be a positive integer, not {self.fifo_depth!r}")
        if not isinstance(self.pop_interval, int) or self.pop_interval < 1:
            raise ValueError(f"`pop_interval` must be a positive integer, not "
                             f"{self.pop_interval!r}")
        for name in ("fetch_latency", "first_broadcast", "drain_latency"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative integer, not {value!r}")


@dataclass(frozen=True)
class CycleReport:
    """Result of :func:`spmv_cycles`.

    Attributes
    ----------
    cycles : int
        Cycles from start to the last accumulation.
    ideal : int
        Busiest PE's entries in the broadcast columns (padding included).
    busy : ndarray
        Entries processed by each PE.
    """

    cycles: int
    ideal: int
    busy: np.ndarray

    @property
    def ratio(self) -> float:
        """``cycles / ideal`` (1.0 is perfect)."""
        return self.cycles / self.ideal if self.ideal else float("inf")

    @property
    def load_balance_efficiency(self) -> float:
        """EIE's ``1 - idle / total`` over all PEs, with total = cycles * n_pe."""
        total = self.cycles * len(self.busy)
        return float(self.busy.sum() / total) if total else 1.0


def active_columns(activations) -> np.ndarray:
    """Indices of the non-zero activations, in broadcast order (ascending)."""
    return np.flatnonzero(np.asarray(activations))


def spmv_cycles(matrix: EncodedMatrix, columns, timing: Timing = Timing(),
                release: tuple[int, int] | None = None) -> CycleReport:
    """Cycles of ``matrix @ a`` where ``columns`` are the indices of ``a``'s non-zeros.

    ``release = (first, fetch)`` (the LSTM engine's overlap; default none): columns
    ``first, first + 1, ...`` of the broadcast order may not be fetched before cycle ``fetch``
    (``B[c] >= fetch + 1``) and the phase does not end before cycle ``fetch``.
    """
    columns = np.asarray(columns, dtype=np.int64)
    work = matrix.column_lengths()[:, columns]          # (n_pe, M)
    n_pe, count = work.shape
    busy = work.sum(axis=1)
    ideal = int(busy.max()) if count else 0
    gate_from, gate_fetch = release if release is not None else (count, 0)
    if count == 0:
        return CycleReport(max(timing.first_broadcast + timing.drain_latency, gate_fetch), 0,
                           busy)
    depth, fetch = timing.fifo_depth, timing.fetch_latency
    pop = np.zeros((count, n_pe), dtype=np.int64)
    end = np.full(n_pe, -(1 << 40), dtype=np.int64)
    last_pop = np.full(n_pe, -(1 << 40), dtype=np.int64)
    broadcast = timing.first_broadcast - 1
    for c in range(count):
        broadcast = max(timing.first_broadcast, broadcast + 1)
        if c >= depth:
            broadcast = max(broadcast, int(pop[c - depth].max()) + 1)
        if c >= gate_from:
            broadcast = max(broadcast, gate_fetch + 1)
        this_pop = np.maximum(np.maximum(last_pop + timing.pop_interval, end - fetch),
                              broadcast + 1)
        pop[c] = this_pop
        last_pop = this_pop
        end = this_pop + fetch + work[:, c]
    cycles = max(int(end.max()), broadcast + 1) + timing.drain_latency
    return CycleReport(max(cycles, gate_fetch), ideal, busy)
