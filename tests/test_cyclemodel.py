"""The vectorised cycle model against an independent cycle-by-cycle simulation.

The simulator below steps the PE array one clock at a time with explicit FIFOs, a pop stage
and an entry stage per PE, following the rules in host/cyclemodel.py's docstring; the model
computes the same schedule by recurrence.  They must agree exactly.
"""

from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from host.cyclemodel import Timing, active_columns, spmv_cycles
from host.encoding import encode


def simulate(work, timing):
    """``work`` (n_pe, M): entries of each broadcast column per PE.  Returns cycles."""
    n_pe, count = work.shape
    if count == 0:
        return timing.first_broadcast + timing.drain_latency
    fifos = [deque() for _ in range(n_pe)]
    pending = [deque() for _ in range(n_pe)]   # popped columns: (start cycle, work)
    remaining = [0] * n_pe                      # entries left in the column being issued
    end_of_work = [-(10**9)] * n_pe              # cycle the issued column's last entry ends
    popped = [0] * n_pe
    last_pop = [-(10**9)] * n_pe
    pushed = 0
    last_end = 0
    cycle = 0
    last_push = None
    while True:
        # Levels at the start of this cycle decide whether a push is allowed.
        levels = [len(f) for f in fifos]
        # Pop stage: one pop per pop_interval cycles, entries visible the cycle after the
        # push, and only when the entry stage is free within fetch_latency cycles.
        for p in range(n_pe):
            busy_until = max([end_of_work[p]] + [s + w for s, w in pending[p]])
            if (fifos[p] and fifos[p][0][1] < cycle and busy_until - timing.fetch_latency <= cycle
                    and cycle - last_pop[p] >= timing.pop_interval):
                last_pop[p] = cycle
                column, _ = fifos[p].popleft()
                pending[p].append((cycle + timing.fetch_latency, work[p, column]))
                popped[p] += 1
        # Entry stage: begin the next pending column whose start cycle has come.
        for p in range(n_pe):
            if remaining[p] == 0 and pending[p] and pending[p][0][0] <= cycle:
                start, w = pending[p].popleft()
                remaining[p] = w
                end_of_work[p] = start + w
            if remaining[p] > 0:
                remaining[p] -= 1
                last_end = max(last_end, cycle + 1)
        # Broadcast: needs every FIFO below depth at the start of the cycle.
        if (pushed < count and cycle >= timing.first_broadcast
                and all(level < timing.fifo_depth for level in levels)):
            for p in range(n_pe):
                fifos[p].append((pushed, cycle))
            pushed += 1
            last_push = cycle
        if pushed == count and all(popped[p] == count for p in range(n_pe)) \
                and all(not pending[p] and remaining[p] == 0 for p in range(n_pe)):
            ends = max(end_of_work)
            return max(ends, last_push + 1, last_end) + timing.drain_latency
        cycle += 1
        assert cycle < 10**6


@settings(max_examples=120, deadline=None)
@given(st.integers(1, 6), st.integers(0, 14), st.integers(1, 4), st.integers(0, 3),
       st.integers(0, 3), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_model_matches_cycle_simulation(n_pe, count, depth, fetch, first, interval, seed):
    rng = np.random.default_rng(seed)
    work = rng.integers(0, 5, (n_pe, count)) * (rng.random((n_pe, count)) < 0.7)
    timing = Timing(fifo_depth=depth, fetch_latency=fetch, first_broadcast=first,
                    drain_latency=2, pop_interval=interval)
    # Build an encoded matrix whose column lengths are exactly `work`.
    rows = n_pe * max(1, int(work.max()) if work.size else 1)
    matrix = np.zeros((rows, max(count, 1)), dtype=int)
    for p in range(n_pe):
        for c in range(count):
            matrix[p::n_pe][:work[p, c], c] = 1
    enc = encode(matrix, n_pe)
    report = spmv_cycles(enc, np.arange(count), timing)
    assert report.cycles == simulate(work, timing)
    assert report.ideal == (int(work.sum(axis=1).max()) if count else 0)
    assert report.cycles >= report.ideal


def test_ratio_close_to_one_with_balanced_deep_fifo():
    rng = np.random.default_rng(3)
    matrix = (rng.random((512, 512)) < 0.1) * rng.integers(1, 16, (512, 512))
    enc = encode(matrix, 8)
    report = spmv_cycles(enc, active_columns(rng.random(512) < 0.5), Timing(fifo_depth=8))
    assert report.ratio < 1.1
    shallow = spmv_cycles(enc, active_columns(rng.random(512) < 0.5), Timing(fifo_depth=1))
    assert shallow.cycles > report.cycles


def test_timing_validation():
    with pytest.raises(ValueError, match="`fifo_depth` must be a positive integer, not 0"):
        Timing(fifo_depth=0)
    with pytest.raises(ValueError, match="`pop_interval` must be a positive integer, not 0"):
        Timing(pop_interval=0)


def test_pop_interval_costs_only_short_columns():
    """With pop_interval = 2, a column of two or more entries hides the gap (back-to-back
    issue); only empty and one-entry columns cost an extra cycle each."""
    long_cols = np.array([[3, 2, 4, 2]])
    short_cols = np.array([[1, 0, 1, 0]])
    for work, slower in ((long_cols, False), (short_cols, True)):
        enc = encode(np.vstack([np.pad(np.ones((int(w), 1), int), ((0, 4 - int(w)), (0, 0)))
                                for w in work[0]]).reshape(4, 4, order="F"), 1)
        assert (enc.column_lengths() == work).all()
        one = spmv_cycles(enc, np.arange(4), Timing(pop_interval=1)).cycles
        two = spmv_cycles(enc, np.arange(4), Timing(pop_interval=2)).cycles
        assert (two > one) == slower, (work, one, two)
        assert simulate(work, Timing(pop_interval=2)) == two


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([2, 4, 8]), st.integers(1, 4))
def test_pair_padding_is_the_per_pair_maximum(seed, n_pe, run_bits):
    """On the pair-padded encoding (host.encoding.pad_groups) every PE of a pair works the
    longer of the two columns: the model's cycles equal a brute-force schedule whose per-PE
    work is the per-pair maximum of the unpadded work, and are never fewer than without
    pairs."""
    from host.encoding import pad_groups
    rng = np.random.default_rng(seed)
    rows, cols = int(rng.integers(1, 40)), int(rng.integers(1, 20))
    m = (rng.random((rows, cols)) < rng.choice([0.05, 0.3, 0.9])) * rng.integers(1, 16,
                                                                                  (rows, cols))
    enc = encode(m, n_pe, run_bits=run_bits)
    timing = Timing(fifo_depth=int(rng.integers(1, 5)), pop_interval=2)
    columns = active_columns(rng.random(cols) < 0.7)
    work = enc.column_lengths()[:, columns]
    paired = np.repeat(work.reshape(n_pe // 2, 2, -1).max(axis=1), 2, axis=0)
    padded = spmv_cycles(pad_groups(enc, 2), columns, timing)
    assert padded.cycles == simulate(paired, timing)
    assert padded.cycles >= spmv_cycles(enc, columns, timing).cycles
