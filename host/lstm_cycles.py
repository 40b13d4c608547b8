"""Cycle model of a whole LSTM sequence (stacked layers, projections, classifier) on
:class:`hdl.lstm.LstmEngine`, with ESE's overlap of the element-wise work.

Layer-major order: layer ``l`` runs all ``T`` steps, then layer ``l + 1`` (its inputs are layer
``l``'s outputs), then the classifier.  A step of a layer (``H`` cells, ``N`` PEs, ``L`` lanes,
``s`` = the recurrent state: ``h``, or ``r`` with a projection)::

    SETUP  1                   descriptor
    MAC    mac + 1             broadcast x_t's non-zeros, then s_(t-1)'s (columns I + u); the
                               s part waits until the element-wise unit of step t-1 is done:
                               mac = spmv_cycles(W, cols, release=(len(x cols), F)) with F the
                               MAC cycle in which the unit finishes (0 if it already has)
    HWAIT  wait                first step of a layer only: the previous layer's unit
                               (with T = 1 an LWAIT before the next layer's SETUP waits for
                               it instead: its output is that layer's x_0)
    DRAIN  ceil(4H / N) + 1    accumulators -> gate buffers (N per cycle), accumulators clear
    ... the element-wise unit (E = ew_cycles(H, L) cycles from the buffers) starts and runs
        beside the next step's SETUP + MAC: the x part does not depend on h_t.

With a projection the step continues after the unit (``r_t`` needs all of ``h_t``).  The
last layer's last step (or any step with T = 1)::

    PWAIT  until the unit is done;  SETUP 1;  MAC Pm + 1 (Pm = spmv_cycles(W_hr, nonzero(h_t)));
    OUTPUT P + OUTPUT_OVERHEAD     (r_t requantized, to the state list and the next layer)

When a step ``t + 1`` follows (or, after a layer's last step with T >= 2, the next
layer's step 0, whose x_0 is this layer's r_0), the first ``ceil(n/2)`` of x_(t+1)'s ``n``
non-zero columns run beside the unit, the rest beside the output stage::

    SETUP 1;  MAC X + 1 (X = spmv_cycles(W, first half));
    SAVE ceil(P / N) + 1 (save_cycles: the rows the projection uses);  PWAIT;
    SETUP 1;  MAC Pm + 1;  PDRAIN ceil(P / N) + 1 (r_t's rows to the gate buffers);
    step t + 1:  SETUP 1;  MAC R + 1 (R = spmv_cycles(W, rest + r_t's columns I + u,
                 release=(len(rest), P + 1)): the output stage, P + OUTPUT_OVERHEAD cycles
                 from this SETUP, writes r_t's list);  DRAIN;  its mac = X + R

**Serial schedule** (``overlap=False``, no projection): nothing overlaps; a step is::

    SETUP 1;  MAC mac + 1 (mac = spmv_cycles(W, cols) + SERIAL_MAC_REGISTERS, nothing to
                           wait for);
    unit E = serial_ew_cycles(H, L, appends) (reads the accumulators directly, clears them)

and the next step's (or layer's, or the classifier's) SETUP follows the unit's last cycle;
its classifier output phase takes ``SERIAL_REQUANT_LATENCY`` cycles more (the pipelined
requantizer), its classifier MAC ``SERIAL_MAC_REGISTERS`` more.

After the last step: wait for the unit (FWAIT), then the classifier of ``R`` rows::

    cls = spmv_cycles(W_cls, nonzero(s_T)) + MAC_OVERHEAD + R + OUTPUT_OVERHEAD

:func:`stack_cycles` replays this cycle by cycle; the engine's ``cycles`` output is its
``total``.  The tests compare every term with the RTL (``stat_mac`` = mac, ``stat_ew`` = E,
``stat_pmac`` = Pm, ``cls_cycles``, ``cycles``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cyclemodel import Timing, active_columns, spmv_cycles
from .encoding import EncodedMatrix

__all__ = ["LstmCycleReport", "LayerTrace", "lstm_cycles", "stack_cycles", "ew_cycles",
           "serial_ew_cycles", "drain_cycles", "save_cycles",
           "MAC_OVERHEAD", "EW_LATENCY", "OUTPUT_OVERHEAD", "SERIAL_REQUANT_LATENCY",
           "SERIAL_EW_REGISTERS", "SERIAL_MAC_REGISTERS", "GATES"]

GATES = 4
#: Non-MAC cycles around every MAC phase: one descriptor-load cycle + the done-detection cycle.
MAC_OVERHEAD = 2
#: Element-wise pipeline latency (issue, requantize, table, c, tanh(c), h, list write):
#: ``4 * ceil(H / lanes) + EW_LATENCY + lanes``.
EW_LATENCY = 5
#: Output phase (classifier, projection): one cycle per row + one pipeline stage + the
#: finishing cycle.
OUTPUT_OVERHEAD = 2
#: Register stages of the serial engine's requantizer (``overlap=False``: sum, shift,
#: saturate; iCE40 timing of the accumulator / bias read -> requantize -> gate-table address
#: and output-buffer write paths): the element-wise unit and the classifier's output phase
#: take this many cycles more.
SERIAL_REQUANT_LATENCY = 3
#: Further register stages of the serial element-wise unit: the gate-table index (the z ->
#: table index -> gate-table address path), c and its cell-table index (the c -> table index
#: -> cell-table address path, in two), the multiplier's operands (the gate table -> y ->
#: multiplier and cell table -> tanh(c) -> multiplier paths end at a register, not at the
#: DSP), two for h (the product -> round / saturate -> SPRAM data path; the h write then
#: falls in a free cycle), and the unit's done flag (registered before the sequencer).
SERIAL_EW_REGISTERS = 8
#: Register stages of the serial engine's MAC-done flag: the end of a MAC phase (the list
#: pointers' compares, the PEs' busy flags) is registered before the sequencer acts on it
#: (iCE40 timing), so every serial MAC phase, the classifier's included, takes this many
#: cycles more (``stat_mac`` and ``cls_cycles`` count them).
SERIAL_MAC_REGISTERS = 1


def ew_cycles(hidden: int, lanes: int = 1) -> int:
    """Element-wise cycles of one step: ``lanes`` accumulator reads per cycle (from distinct
    PEs), gates i, f, g, o of a group of ``lanes`` units in 4 consecutive cycles, then the
    group's non-zero h values written to the next step's list one per cycle."""
    return GATES * -(-hidden // lanes) + EW_LATENCY + lanes


def serial_ew_cycles(hidden: int, lanes: int = 1, appends: bool = False) -> int:
    """Element-wise cycles of one step of the serial schedule (``overlap=False``): as
    :func:`ew_cycles` + 1 (the multiplier is a PE's, with a registered product) +
    :data:`SERIAL_REQUANT_LATENCY` (the pipelined requantizer) + :data:`SERIAL_EW_REGISTERS`
    (the gate-table index, c, its table index, the multiplier's operands, h and the done flag
    registered), and when the layer's outputs are also appended to the x list (every layer
    but the last) each non-zero ``h`` is written twice through the one list write port
    (``lanes`` more cycles at the end)."""
    return (ew_cycles(hidden, lanes) + 1 + SERIAL_REQUANT_LATENCY + SERIAL_EW_REGISTERS
            + (lanes if appends else 0))


@dataclass
class LayerTrace:
    """One layer's matrices and what it computed on a sequence (act-format integers; only the
    zero pattern matters).

    Attributes
    ----------
    matrix : EncodedMatrix
        ``[W_ih | W_hh]`` (4H x (I + S)).
    input_size, hidden : int
    x_seq : ndarray (T, I)
        The layer's inputs.
    states : ndarray (T, S)
        Recurrent state after every step (``r_t`` with a projection, else ``h_t``).
    projection : EncodedMatrix, optional
        ``W_hr`` (P x H).
    h_seq : ndarray (T, H), optional
        ``h_t`` before the projection (needed with a projection).
    """

    matrix: EncodedMatrix
    input_size: int
    hidden: int
    x_seq: np.ndarray
    states: np.ndarray
    projection: EncodedMatrix | None = None
    h_seq: np.ndarray | None = None


@dataclass
class LstmCycleReport:
    """Cycle counts of one sequence; per-step arrays have one entry per (layer, step) in
    layer-major order (index ``l * T + t``).

    Attributes
    ----------
    mac : ndarray
        LSTM MAC-phase cycles per step (``spmv_cycles``, including the wait of the state
        part for the element-wise unit; the RTL's ``stat_mac``).
    matvec : ndarray
        Matrix-vector cycles per step without that wait: ``spmv_cycles`` of the LSTM matrix
        over all broadcast columns, plus the projection's.
    ideal : ndarray
        Busiest PE's entries per step, LSTM and projection matrices (lower bound of the MAC
        phases).
    ew : ndarray
        Element-wise cycles per step.
    pmac : ndarray
        Projection MAC-phase cycles per step (0 without a projection).
    steps : ndarray
        Whole step (``mac + MAC_OVERHEAD + ew`` [+ projection phase]).
    cls_mac : int
        Classifier MAC cycles (0 without classifier).
    cls : int
        Whole classifier phase (0 without classifier).
    total : int
        The engine's ``cycles``.
    columns : list of ndarray
        Broadcast columns of every LSTM MAC phase.
    """

    mac: np.ndarray
    ideal: np.ndarray
    ew: np.ndarray
    steps: np.ndarray
    cls_mac: int
    cls: int
    total: int
    columns: list
    pmac: np.ndarray | None = None
    matvec: np.ndarray | None = None


def drain_cycles(hidden: int, n_pe: int) -> int:
    """DRAIN phase: one accumulator row per PE per cycle over the 4H gate rows, + 1."""
    return -(-GATES * hidden // n_pe) + 1


def save_cycles(proj: int, n_pe: int) -> int:
    """SAVE phase (projection layers): the ``ceil(P / N)`` local accumulator rows the
    projection uses go to the gate buffers' save area, one row per PE per cycle, + 1."""
    return -(-proj // n_pe) + 1


def stack_cycles(layers: list[LayerTrace], timing: Timing,
                 classifier: EncodedMatrix | None = None, lanes: int = 1,
                 overlap: bool = True) -> LstmCycleReport:
    """Cycles of a sequence through stacked layers (see the module docstring); ``overlap``
    False: the serial schedule (no projections)."""
    if not overlap:
        return _serial_cycles(layers, timing, classifier, lanes)
    mac, free, ideal, ew, pmac, starts, columns = [], [], [], [], [], [], []
    now = 1                     # cycle of the next SETUP (the start pulse is cycle 0)
    ew_idle_at = 0              # first cycle in which the element-wise unit is free
    state = None
    saved_x = None                      # projection layers: (x part's MAC cycles) of step t
    split = out_free = 0                # ... its x columns done, first cycle r_t is complete
    for n, layer in enumerate(layers):
        x_seq, states = np.asarray(layer.x_seq), np.asarray(layer.states)
        state = np.zeros(states.shape[1], dtype=np.int64)
        if n and len(x_seq) == 1:
            # LWAIT: with one step, this layer's x_0 is the previous layer's last output
            now = max(now, ew_idle_at) + 1
        e_cycles = ew_cycles(layer.hidden, lanes)
        drain = drain_cycles(layer.hidden, layer.matrix.n_pe)
        inputs = layer.input_size
        proj = layer.projection
        for t in range(len(x_seq)):
            starts.append(now)
            x_cols = active_columns(x_seq[t])
            cols = np.concatenate([x_cols, inputs + active_columns(state)])
            mac_start = now + 1
            alone = spmv_cycles(layer.matrix, cols, timing)
            if saved_x is not None:
                # projection layer, t > 0: the first half of the x part ran beside the unit of
                # step t - 1; now the rest, then r_(t-1)'s columns once the output stage
                # (running beside this MAC) has written them all
                rest = cols[split:]
                gate = (len(x_cols) - split, max(0, out_free - mac_start))
                s_cycles = spmv_cycles(layer.matrix, rest, timing, release=gate).cycles
                m_cycles = saved_x + s_cycles
                drain_start = mac_start + s_cycles + 1
            elif t:
                gate = (len(x_cols), max(0, ew_idle_at - mac_start))
                m_cycles = spmv_cycles(layer.matrix, cols, timing, release=gate).cycles
                drain_start = mac_start + m_cycles + 1
            else:
                m_cycles = alone.cycles
                drain_start = max(mac_start + m_cycles, ew_idle_at) + 1      # HWAIT
            launch = drain_start + drain - 1                 # DRAIN's last cycle
            ew_idle_at = launch + e_cycles
            now = launch + 1
            best = alone.ideal
            free_cycles = alone.cycles
            p_cycles = 0
            saved_x = None
            if proj is not None:
                prep = spmv_cycles(proj, active_columns(layer.h_seq[t]), timing)
                p_cycles = prep.cycles
                best += prep.ideal
                free_cycles += p_cycles
                follow = None                # the x part that runs next: step t+1's, or
                if t + 1 < len(x_seq):       # after the last step the next layer's x_0
                    follow = (layer.matrix, x_seq[t + 1])
                elif n + 1 < len(layers) and len(x_seq) > 1:
                    follow = (layers[n + 1].matrix, np.asarray(layers[n + 1].x_seq)[0])
                if follow is not None:
                    # the first half of x_(t+1)'s part (SETUP, MAC) beside the unit, then
                    # SAVE of the accumulator rows the projection uses; after the projection
                    # MAC, PDRAIN (its rows to the buffers) and the output stage beside the
                    # next MAC
                    x_next = active_columns(follow[1])
                    split = len(x_next) - len(x_next) // 2
                    saved_x = spmv_cycles(follow[0], x_next[:split], timing).cycles
                    rows = save_cycles(proj.rows, proj.n_pe)
                    save_last = now + 1 + saved_x + rows
                    setup = max(save_last, ew_idle_at) + 1   # (PWAIT)
                    pdrain_last = setup + 1 + p_cycles + rows
                    out_free = pdrain_last + 1 + proj.rows + OUTPUT_OVERHEAD
                    now = pdrain_last + 1
                else:
                    setup = max(launch + 1, ew_idle_at) + 1      # PWAIT
                    now = setup + 1 + p_cycles + 1 + proj.rows + OUTPUT_OVERHEAD
            mac.append(m_cycles)
            free.append(free_cycles)
            ideal.append(best)
            ew.append(e_cycles)
            pmac.append(p_cycles)
            columns.append(cols)
            state = states[t]
    # after the last step: the unit finishes (FWAIT), then the classifier
    end = max(now, ew_idle_at + 1)          # cycle after the unit's last (or the output's)
    cls_mac = cls = 0
    if classifier is not None:
        cls_mac = spmv_cycles(classifier, active_columns(state), timing).cycles
        cls = cls_mac + MAC_OVERHEAD + classifier.rows + OUTPUT_OVERHEAD
    total = end - 1 + cls
    steps = np.diff(np.array(starts + [end], dtype=np.int64))
    return LstmCycleReport(np.array(mac, dtype=np.int64), np.array(ideal, dtype=np.int64),
                           np.array(ew, dtype=np.int64), steps, cls_mac, cls, int(total),
                           columns, np.array(pmac, dtype=np.int64),
                           np.array(free, dtype=np.int64))


def _serial_cycles(layers, timing, classifier, lanes) -> LstmCycleReport:
    """:func:`stack_cycles` of the serial schedule: SETUP, MAC, unit, one after the other."""
    mac, ideal, ew, starts, columns = [], [], [], [], []
    now = 1                     # cycle of the next SETUP (the start pulse is cycle 0)
    state = None
    for n, layer in enumerate(layers):
        if layer.projection is not None:
            raise ValueError(f"LSTM layer {n} has a projection: the serial schedule "
                             f"(overlap=False) has none (use overlap=True)")
        x_seq, states = np.asarray(layer.x_seq), np.asarray(layer.states)
        state = np.zeros(states.shape[1], dtype=np.int64)
        e_cycles = serial_ew_cycles(layer.hidden, lanes, appends=n + 1 < len(layers))
        for t in range(len(x_seq)):
            starts.append(now)
            cols = np.concatenate([active_columns(x_seq[t]),
                                   layer.input_size + active_columns(state)])
            rep = spmv_cycles(layer.matrix, cols, timing)
            mac_cycles = rep.cycles + SERIAL_MAC_REGISTERS
            # SETUP at now, MAC now+1 .. now+1+mac (done cycle: the unit starts), unit
            # now+2+mac .. now+1+mac+E (its last cycle: the sequencer moves on)
            now += 2 + mac_cycles + e_cycles
            mac.append(mac_cycles)
            ideal.append(rep.ideal)
            ew.append(e_cycles)
            columns.append(cols)
            state = states[t]
    cls_mac = cls = 0
    if classifier is not None:
        cls_mac = (spmv_cycles(classifier, active_columns(state), timing).cycles
                   + SERIAL_MAC_REGISTERS)
        cls = (cls_mac + MAC_OVERHEAD + classifier.rows + OUTPUT_OVERHEAD
               + SERIAL_REQUANT_LATENCY)
    steps = np.diff(np.array(starts + [now], dtype=np.int64))
    zeros = np.zeros(len(mac), dtype=np.int64)
    return LstmCycleReport(np.array(mac, dtype=np.int64), np.array(ideal, dtype=np.int64),
                           np.array(ew, dtype=np.int64), steps, cls_mac, cls,
                           int(now - 1 + cls), columns, zeros, np.array(mac, dtype=np.int64))


def lstm_cycles(matrix: EncodedMatrix, input_size: int, hidden: int, x_seq, h_seq,
                timing: Timing, classifier: EncodedMatrix | None = None,
                lanes: int = 1) -> LstmCycleReport:
    """Cycles of one layer without projection: ``x_seq`` (T, I) inputs, ``h_seq`` (T, H) the
    hidden states *after* every step."""
    return stack_cycles([LayerTrace(matrix, input_size, hidden, x_seq, h_seq)], timing,
                        classifier, lanes)
