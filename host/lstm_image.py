"""Memory image of an LSTM in the LSTM engine (:class:`hdl.lstm.LstmEngine`), loader writes,
expectations.  Pure NumPy: everything takes a :class:`host.memory_map.LstmParams` (or an
engine, whose ``params`` is used); the Verilator runner is :mod:`hdl.lstm_sim`.

:func:`build_image` lays out a :class:`host.compressed.QLSTM` (and an optional classifier
:class:`host.compressed.QLinear` on h_T) in the engine's memories; :func:`image_writes` and
:func:`sequence_writes` give the loader writes; :func:`expected_run` computes the golden
results (:meth:`host.golden.GoldenModel.lstm_step`) and the cycle model
(:func:`host.lstm_cycles.lstm_cycles`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .compressed import CompressedModel, QLinear, QLSTM, SparseMatrix
from .encoding import encode
from .fixedpoint import Format, wrap
from .golden import GoldenModel, spmv
from .lstm_cycles import LstmCycleReport, lstm_cycles
from .memory_map import (DESCRIPTOR_FIELDS, GATES, Field, LstmField, LstmParams, LstmRegion,
                         params_of)

__all__ = ["LstmImage", "build_image", "image_writes", "sequence_writes", "expected_run",
           "ExpectedLstmRun", "random_lstm", "case_data"]

_WEIGHT_FORMAT = Format(16, 14)


@dataclass
class LstmImage:
    """Memory contents of one LSTM (+ classifier)."""

    entries: np.ndarray          # (E, n_pe)
    pointers: np.ndarray         # (K, n_pe)
    codebooks: np.ndarray        # (layers, 2**index_bits)
    bias: np.ndarray             # (4H [+ classes],)
    descriptors: list            # [(addr, value)]
    lstm: QLSTM
    classifier: QLinear | None
    golden: GoldenModel


def _check_matrix(engine, matrix: SparseMatrix, where: str):
    enc = matrix.encoded
    if enc.n_pe != engine.n_pe:
        raise ValueError(f"{where} is encoded for {enc.n_pe} PEs, the engine has {engine.n_pe}")
    if (enc.index_bits, enc.run_bits) != (engine.index_bits, engine.run_bits):
        raise ValueError(f"{where} has {enc.index_bits}-bit indices and {enc.run_bits}-bit "
                         f"runs, the engine {engine.index_bits} and {engine.run_bits}")
    if matrix.weight_format.frac >= engine.weight_width:
        raise ValueError(f"{where}: weight fraction bits {matrix.weight_format.frac} do not "
                         f"fit a {engine.weight_width}-bit weight")
    book = np.asarray(matrix.codebook, dtype=np.int64)
    lo, hi = -(1 << (engine.weight_width - 1)), (1 << (engine.weight_width - 1)) - 1
    if book.min() < lo or book.max() > hi:
        raise ValueError(f"{where}: codebook values do not fit {engine.weight_width} bits")


def build_image(engine: LstmParams, lstm: QLSTM, classifier: QLinear | None = None,
                *, table_spec=None) -> LstmImage:
    """Lay out ``lstm`` (slot 0) and ``classifier`` (slot 1) in ``engine``'s memories."""
    engine = params_of(engine, LstmParams)
    if not isinstance(lstm, QLSTM):
        raise TypeError(f"`lstm` must be a QLSTM, not {type(lstm).__name__}")
    hidden, inputs = lstm.hidden, lstm.input_size
    if not 1 <= hidden <= engine.hidden_max:
        raise ValueError(f"hidden {hidden} does not fit the engine (hidden_max "
                         f"{engine.hidden_max})")
    if not 1 <= inputs <= engine.input_max:
        raise ValueError(f"input size {inputs} does not fit the engine (input_max "
                         f"{engine.input_max})")
    mat = lstm.matrix
    if (mat.rows, mat.cols) != (GATES * hidden, inputs + hidden):
        raise ValueError(f"LSTM matrix is {mat.rows}x{mat.cols}, expected "
                         f"{GATES * hidden}x{inputs + hidden}")
    _check_matrix(engine, mat, "LSTM matrix")
    layers = [(mat, False)]
    if classifier is not None:
        cm = classifier.matrix
        if cm.cols != hidden:
            raise ValueError(f"classifier has {cm.cols} inputs, the LSTM {hidden} units")
        if not 1 <= cm.rows <= engine.classes_max:
            raise ValueError(f"classifier has {cm.rows} outputs, the engine holds "
                             f"{engine.classes_max}")
        _check_matrix(engine, cm, "classifier")
        layers.append((cm, bool(classifier.relu)))
    entry_base = ptr_base = bias_base = 0
    blocks, ptrs, books, biases, descs = [], [], [], [], []
    for n, (matrix, relu) in enumerate(layers):
        enc = matrix.encoded
        length = int(enc.entries_per_pe().max())
        block = np.zeros((length, engine.n_pe), dtype=np.int64)
        for p in range(engine.n_pe):
            block[:len(enc.entries[p]), p] = enc.entries[p]
        blocks.append(block)
        ptrs.append(np.stack([np.asarray(c, dtype=np.int64) for c in enc.col_ptr], axis=1))
        books.append(np.asarray(matrix.codebook, dtype=np.int64))
        biases.append(wrap(np.asarray(matrix.bias, dtype=np.int64), engine.acc_bits))
        # The h list holds columns I + u; the classifier's column u is slot ptr_base + u.
        base = ptr_base if n == 0 else ptr_base - inputs
        fields = {Field.ROWS: enc.rows, Field.COLS: enc.cols, Field.ENTRY_BASE: entry_base,
                  Field.PTR_BASE: base, Field.BIAS_BASE: bias_base, Field.CODEBOOK: n,
                  Field.SHIFT: matrix.weight_format.frac, Field.RELU: int(relu)}
        descs += [((n << 3) | int(f), int(fields[f])) for f in DESCRIPTOR_FIELDS]
        entry_base += length
        ptr_base += enc.cols + 1
        bias_base += enc.rows
    if entry_base > engine.max_entries_per_pe:
        raise ValueError(f"the model needs {entry_base} entries per PE, the engine holds "
                         f"{engine.max_entries_per_pe}")
    seq = {LstmField.HIDDEN: hidden, LstmField.INPUT: inputs,
           LstmField.CLASSIFY: int(classifier is not None)}
    for g in range(GATES):
        row = g * hidden
        seq[LstmField.GATE0 + g] = ((row // engine.n_pe) << engine.pe_bits) | (row % engine.n_pe)
    descs += [((2 << 3) | int(f), int(v)) for f, v in seq.items()]
    model = CompressedModel("lstm", (1, inputs), [lstm] + ([classifier] if classifier else []),
                            engine.n_pe, engine.act_format, engine.acc_bits,
                            table_spec if table_spec is not None else engine.table_spec)
    if model.table_spec != engine.table_spec:
        raise ValueError(f"table spec {model.table_spec} differs from the engine's "
                         f"{engine.table_spec}")
    return LstmImage(np.concatenate(blocks), np.concatenate(ptrs), np.stack(books),
                     np.concatenate(biases), descs, lstm, classifier, GoldenModel(model))


def _writes():
    return {"region": [], "addr": [], "data": [], "lanes": []}


def _add(w, n_pe, region, addresses, data=None, lanes=None):
    count = len(addresses)
    w["region"].append(np.full(count, int(region), dtype=np.int64))
    w["addr"].append(np.asarray(addresses, dtype=np.int64))
    w["data"].append(np.zeros(count, np.int64) if data is None
                     else np.asarray(data, dtype=np.int64))
    w["lanes"].append(np.zeros((count, n_pe), np.int64) if lanes is None
                      else np.asarray(lanes, dtype=np.int64))


def _finish(engine, w):
    mask = (1 << engine.data_width) - 1
    if not w["region"]:
        return {"region": np.zeros(0, np.int64), "addr": np.zeros(0, np.int64),
                "data": np.zeros(0, np.int64), "lanes": np.zeros((0, engine.n_pe), np.int64)}
    return {"region": np.concatenate(w["region"]), "addr": np.concatenate(w["addr"]),
            "data": np.concatenate(w["data"]) & mask, "lanes": np.concatenate(w["lanes"])}


def image_writes(engine: LstmParams, image: LstmImage) -> dict:
    """Loader writes of the model (arrays ``region, addr, data, lanes``)."""
    engine = params_of(engine, LstmParams)
    w, n = _writes(), engine.n_pe
    _add(w, n, LstmRegion.ENTRY, np.arange(len(image.entries)), lanes=image.entries)
    _add(w, n, LstmRegion.POINTER, np.arange(len(image.pointers)), lanes=image.pointers)
    size = 1 << engine.index_bits
    for slot, book in enumerate(image.codebooks):
        _add(w, n, LstmRegion.CODEBOOK, slot * size + np.arange(size), data=book)
    _add(w, n, LstmRegion.BIAS, np.arange(len(image.bias)), data=image.bias)
    addr, value = zip(*image.descriptors)
    _add(w, n, LstmRegion.DESCRIPTOR, addr, data=value)
    return _finish(engine, w)


def sequence_writes(engine: LstmParams, x_seq) -> dict:
    """Loader writes of one input sequence ``(T, I)``: the x list, the per-step ends, STEPS."""
    engine = params_of(engine, LstmParams)
    x_seq = np.asarray(x_seq, dtype=np.int64)
    steps = len(x_seq)
    if not 1 <= steps <= engine.steps_max:
        raise ValueError(f"the engine runs 1 to {engine.steps_max} steps, not {steps}")
    cols, values, ends = [], [], []
    for t in range(steps):
        nz = np.flatnonzero(x_seq[t])
        cols.append(nz)
        values.append(x_seq[t][nz])
        ends.append(sum(map(len, cols)))
    cols, values = np.concatenate(cols), np.concatenate(values)
    if len(cols) > engine.max_xlist:
        raise ValueError(f"the sequence has {len(cols)} non-zero inputs, the x list holds "
                         f"{engine.max_xlist}")
    aw = engine.act_format.width
    w, n = _writes(), engine.n_pe
    packed = (cols << aw) | (values & ((1 << aw) - 1))
    _add(w, n, LstmRegion.XLIST, np.arange(len(cols)), data=packed)
    _add(w, n, LstmRegion.XEND, np.arange(steps), data=ends)
    _add(w, n, LstmRegion.DESCRIPTOR, [(2 << 3) | LstmField.STEPS], data=[steps])
    return _finish(engine, w)


@dataclass
class ExpectedLstmRun:
    """What the engine must produce for one sequence."""

    h: np.ndarray                # h_T (H,)
    outputs: np.ndarray          # classifier outputs (classes,) or empty
    cycles: LstmCycleReport


def expected_run(engine: LstmParams, image: LstmImage, x_seq) -> ExpectedLstmRun:
    """Golden h_T and classifier outputs of ``image`` on ``x_seq`` ``(T, I)``, and the cycle
    model's counts."""
    engine = params_of(engine, LstmParams)
    x_seq = np.asarray(x_seq, dtype=np.int64)
    golden, lstm = image.golden, image.lstm
    h = np.zeros((1, lstm.hidden), dtype=np.int64)
    c = np.zeros((1, lstm.hidden), dtype=np.int64)
    hs = []
    for t in range(len(x_seq)):
        h, c = golden.lstm_step(lstm, x_seq[t][None], h, c)
        hs.append(h[0])
    outputs = np.zeros(0, dtype=np.int64)
    cls_enc = None
    if image.classifier is not None:
        outputs = spmv(image.classifier.matrix, h, engine.act_format, engine.acc_bits,
                       image.classifier.relu)[0]
        cls_enc = image.classifier.matrix.encoded
    report = lstm_cycles(lstm.matrix.encoded, lstm.input_size, lstm.hidden, x_seq,
                         np.array(hs), engine.timing(), cls_enc, engine.ew_lanes)
    return ExpectedLstmRun(h[0], outputs, report)


def random_lstm(rng, input_size: int, hidden: int, density: float, n_pe: int, *,
                index_bits=4, run_bits=4, weight_format=_WEIGHT_FORMAT,
                bias_scale=1.0, classes: int = 0, mask=None):
    """A random :class:`QLSTM` (and a classifier :class:`QLinear` if ``classes``)."""
    size = 1 << index_bits
    rows, cols = GATES * hidden, input_size + hidden
    if mask is None:
        mask = rng.random((rows, cols)) < density
    indices = np.where(mask, rng.integers(1, size, (rows, cols)), 0)
    span = 1 << (weight_format.width - 1)
    codebook = rng.integers(-span, span, size)
    codebook[0] = 0
    enc = encode(indices, n_pe, index_bits=index_bits, run_bits=run_bits)
    bias = np.round(rng.standard_normal(rows) * bias_scale
                    * (1 << (weight_format.frac + 8))).astype(np.int64)
    lstm = QLSTM(SparseMatrix(enc, codebook.astype(np.int64), weight_format, bias),
                 input_size, hidden)
    cls = None
    if classes:
        cidx = np.where(rng.random((classes, hidden)) < max(density, 0.3),
                        rng.integers(1, size, (classes, hidden)), 0)
        cenc = encode(cidx, n_pe, index_bits=index_bits, run_bits=run_bits)
        cbias = rng.integers(-(1 << 22), 1 << 22, classes)
        cls = QLinear(SparseMatrix(cenc, codebook.astype(np.int64), weight_format, cbias))
    return lstm, cls


def case_data(engine: LstmParams, cases) -> tuple[dict, list]:
    """``.npz`` arrays for ``tests/hw/cocotb_lstm.py``.  ``cases``: ``(name, image, x_seq)``;
    ``image`` None reuses the previous image (no model writes)."""
    engine = params_of(engine, LstmParams)
    out = {"n_cases": np.int64(0), "lane_width": np.int64(engine.lane_width),
           "n_pe": np.int64(engine.n_pe), "data_width": np.int64(engine.data_width)}
    runs, current = [], None
    for i, (name, image, x_seq) in enumerate(cases):
        if image is not None:
            writes = image_writes(engine, image)
            current = image
        else:
            writes = _finish(engine, _writes())
        if current is None:
            raise ValueError("the first case needs an image")
        seq = sequence_writes(engine, x_seq)
        writes = {k: np.concatenate([writes[k], seq[k]]) for k in writes}
        run = expected_run(engine, current, x_seq)
        runs.append(run)
        p = f"c{i}_"
        for key, value in writes.items():
            out[p + "w_" + key] = value
        out[p + "hidden"] = np.int64(current.lstm.hidden)
        out[p + "steps"] = np.int64(len(x_seq))
        out[p + "expected_h"] = run.h
        out[p + "expected_out"] = run.outputs
        out[p + "mac"] = run.cycles.mac
        out[p + "ew"] = run.cycles.ew
        out[p + "cls_mac"] = np.int64(run.cycles.cls_mac)
        out[p + "cycles"] = np.int64(run.cycles.total)
        out[p + "name"] = np.array(str(name))
        out["n_cases"] = np.int64(i + 1)
    return out, runs
