"""Cycle model of a whole LSTM sequence (+ classifier) on :class:`hdl.lstm.LstmEngine`.

Per time step ``t`` (``H`` hidden units)::

    mac_t = spmv_cycles(W, nonzero columns of [x_t ; h_(t-1)], timing)    (MAC phase)
    ew    = 4 * ceil(H / L) + EW_LATENCY + L        (element-wise unit, L = ew_lanes lanes)
    step  = mac_t + MAC_OVERHEAD + ew        (MAC_OVERHEAD: descriptor load + done detection)

and, with a classifier of ``R`` rows on h_T::

    cls   = spmv_cycles(W_cls, nonzero(h_T)) + MAC_OVERHEAD + R + OUTPUT_OVERHEAD

The engine's ``cycles`` output is ``sum(step) + cls``.  The tests compare every term with the
RTL (``stat_mac`` / ``stat_ew`` / ``cls_cycles`` / ``cycles``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cyclemodel import Timing, active_columns, spmv_cycles
from .encoding import EncodedMatrix

__all__ = ["LstmCycleReport", "lstm_cycles", "ew_cycles", "MAC_OVERHEAD", "EW_LATENCY",
           "OUTPUT_OVERHEAD", "GATES"]

GATES = 4
#: Non-MAC cycles around every MAC phase: one descriptor-load cycle + the done-detection cycle.
MAC_OVERHEAD = 2
#: Element-wise pipeline latency (issue, requantize, table, c, tanh(c), h, list write):
#: ``4 * ceil(H / lanes) + EW_LATENCY + lanes``.
EW_LATENCY = 5
#: Classifier output phase: one cycle per row + one pipeline stage + the finishing cycle.
OUTPUT_OVERHEAD = 2


def ew_cycles(hidden: int, lanes: int = 1) -> int:
    """Element-wise cycles of one step: ``lanes`` accumulator reads per cycle (from distinct
    PEs), gates i, f, g, o of a group of ``lanes`` units in 4 consecutive cycles, then the
    group's non-zero h values written to the next step's list one per cycle."""
    return GATES * -(-hidden // lanes) + EW_LATENCY + lanes


@dataclass
class LstmCycleReport:
    """Cycle counts of one sequence.

    Attributes
    ----------
    mac : ndarray (T,)
        MAC-phase cycles per step (= ``spmv_cycles``).
    ideal : ndarray (T,)
        Busiest PE's entries per step (lower bound of the MAC phase).
    ew : ndarray (T,)
        Element-wise cycles per step.
    steps : ndarray (T,)
        Whole step (``mac + MAC_OVERHEAD + ew``).
    cls_mac : int
        Classifier MAC cycles (0 without classifier).
    cls : int
        Whole classifier phase (0 without classifier).
    total : int
        The engine's ``cycles``.
    columns : list of ndarray
        Broadcast columns per step.
    """

    mac: np.ndarray
    ideal: np.ndarray
    ew: np.ndarray
    steps: np.ndarray
    cls_mac: int
    cls: int
    total: int
    columns: list


def lstm_cycles(matrix: EncodedMatrix, input_size: int, hidden: int, x_seq, h_seq,
                timing: Timing, classifier: EncodedMatrix | None = None,
                lanes: int = 1) -> LstmCycleReport:
    """Cycles of a sequence: ``x_seq`` (T, I) inputs, ``h_seq`` (T, H) the hidden states
    *after* every step (act-format integers; only their zero pattern matters)."""
    x_seq = np.asarray(x_seq)
    h_seq = np.asarray(h_seq)
    steps = len(x_seq)
    mac, ideal, columns = [], [], []
    h_prev = np.zeros(hidden, dtype=np.int64)
    for t in range(steps):
        cols = active_columns(np.concatenate([x_seq[t], h_prev]))
        report = spmv_cycles(matrix, cols, timing)
        mac.append(report.cycles)
        ideal.append(report.ideal)
        columns.append(cols)
        h_prev = h_seq[t]
    mac = np.array(mac, dtype=np.int64)
    ew = np.full(steps, ew_cycles(hidden, lanes), dtype=np.int64)
    step_total = mac + MAC_OVERHEAD + ew
    cls_mac = cls = 0
    if classifier is not None:
        cls_mac = spmv_cycles(classifier, active_columns(h_prev), timing).cycles
        cls = cls_mac + MAC_OVERHEAD + classifier.rows + OUTPUT_OVERHEAD
    return LstmCycleReport(mac, np.array(ideal, dtype=np.int64), ew, step_total, cls_mac,
                           cls, int(step_total.sum()) + cls, columns)
