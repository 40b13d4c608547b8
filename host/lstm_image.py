"""Memory image of an LSTM in the LSTM engine (:class:`hdl.lstm.LstmEngine`), loader writes,
expectations.  Pure NumPy: everything takes a :class:`host.memory_map.LstmParams` (or an
engine, whose ``params`` is used); the Verilator runner is :mod:`hdl.lstm_sim`.

:func:`build_image` lays out stacked :class:`host.compressed.QLSTM` layers (with their
projections, and an optional classifier :class:`host.compressed.QLinear` on the last output)
in the engine's memories; :func:`image_writes` and :func:`sequence_writes` give the loader
writes; :func:`expected_run` computes the golden results
(:meth:`host.golden.GoldenModel.lstm_cell`) and the cycle model
(:func:`host.lstm_cycles.stack_cycles`).  The activation tables (region TABLE) are written
by the host too: :func:`table_words`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .activations import TableSpec, make_table
from .compressed import CompressedModel, QLinear, QLSTM, SparseMatrix, requant_shift
from .encoding import encode
from .fixedpoint import Format
from .golden import GoldenModel, spmv
from .lstm_cycles import LayerTrace, LstmCycleReport, stack_cycles
from .matrix_image import (LoaderWrites, MatrixMemories, check_encoding, check_weights,
                           pad_matrix)
from .memory_map import (DESCRIPTOR_FIELDS, GATES, Field, LstmField, LstmParams, LstmRegion,
                         params_of, table_layout)

__all__ = ["LstmImage", "build_image", "image_writes", "sequence_writes", "expected_run",
           "ExpectedLstmRun", "random_lstm", "case_data", "table_words"]

_WEIGHT_FORMAT = Format(16, 14)


@dataclass
class LstmImage:
    """Memory contents of stacked LSTM layers (+ projections, + classifier)."""

    entries: np.ndarray          # (E, n_pe)
    pointers: np.ndarray         # (K, n_pe)
    codebooks: np.ndarray        # (matrices, 2**index_bits)
    bias: np.ndarray             # (4H [+ P] per layer [+ classes],)
    descriptors: list            # [(addr, value)]
    layers: list                 # QLSTM per layer
    classifier: QLinear | None
    golden: GoldenModel
    tables: np.ndarray           # TABLE region words (:func:`table_words`)

    @property
    def lstm(self) -> QLSTM:
        """The first (or only) LSTM layer."""
        return self.layers[0]

    @property
    def output_size(self) -> int:
        """Size of the last layer's output (``h_addr`` words): P with a projection, else H."""
        return self.layers[-1].output_size


def table_words(act: Format, spec: TableSpec) -> np.ndarray:
    """The TABLE region of the LSTM engine (:func:`host.memory_map.table_layout`): the gate
    table (sigmoid then tanh), then the cell table (tanh), ``3 * spec.entries`` words in
    ``act`` (int64), all from :func:`host.activations.make_table`."""
    sigmoid, tanh = make_table("sigmoid", act, spec), make_table("tanh", act, spec)
    words = np.concatenate([sigmoid, tanh, tanh]).astype(np.int64)
    assert len(words) == table_layout(spec)["words"]
    return words


def _check_matrix(engine, matrix: SparseMatrix, where: str):
    check_encoding(engine, matrix, where)
    check_weights(engine, matrix, where)


def _check_layers(engine: LstmParams, layers: list) -> None:
    """Every way stacked ``layers`` do not fit ``engine``, as a ValueError naming the layer."""
    if not 1 <= len(layers) <= engine.layers_max:
        raise ValueError(f"the model has {len(layers)} LSTM layers, the engine runs at most "
                         f"{engine.layers_max} (build it with a larger `layers_max`)")
    for n, lstm in enumerate(layers):
        if not isinstance(lstm, QLSTM):
            raise TypeError(f"LSTM layer {n} must be a QLSTM, not {type(lstm).__name__}")
        where = f"LSTM layer {n}"
        hidden, inputs, proj = lstm.hidden, lstm.input_size, lstm.proj_size
        if not 1 <= hidden <= engine.hidden_max:
            raise ValueError(f"{where}: hidden {hidden} does not fit the engine (hidden_max "
                             f"{engine.hidden_max})")
        if not 1 <= inputs <= engine.input_max:
            raise ValueError(f"{where}: input size {inputs} does not fit the engine "
                             f"(input_max {engine.input_max})")
        if n and inputs != layers[n - 1].output_size:
            raise ValueError(f"{where} takes {inputs} inputs, LSTM layer {n - 1} gives "
                             f"{layers[n - 1].output_size}")
        if proj > engine.proj_max:
            raise ValueError(f"{where}: projection size {proj} does not fit the engine "
                             f"(proj_max {engine.proj_max}; 0 means no projection hardware)")
        mat, state = lstm.matrix, lstm.output_size
        if (mat.rows, mat.cols) != (GATES * hidden, inputs + state):
            raise ValueError(f"{where}: LSTM matrix is {mat.rows}x{mat.cols}, expected "
                             f"{GATES * hidden}x{inputs + state}")
        _check_matrix(engine, mat, f"{where} matrix")
        if lstm.projection is not None:
            pm = lstm.projection
            if (pm.rows, pm.cols) != (proj, hidden):
                raise ValueError(f"{where}: projection is {pm.rows}x{pm.cols}, expected "
                                 f"{proj}x{hidden}")
            _check_matrix(engine, pm, f"{where} projection")


def build_image(engine: LstmParams, lstm, classifier: QLinear | None = None,
                *, table_spec=None) -> LstmImage:
    """Lay out the LSTM layers ``lstm`` (a QLSTM or a list of stacked QLSTMs, layer-major),
    their projections and ``classifier`` in ``engine``'s memories.

    Matrices in order: layer 0's gate matrix, its projection, layer 1's ..., the classifier;
    each gets the next codebook slot and the next entry / pointer / bias ranges.  Descriptor
    ``4l`` is layer ``l``'s gate matrix, ``4l + 3`` its projection (all zero: none),
    ``4l + 2`` its :class:`hdl.lstm.LstmField` values (HIDDEN 0 for unused layers), ``1`` the
    classifier.
    """
    engine = params_of(engine, LstmParams)
    layers = list(lstm) if isinstance(lstm, (list, tuple)) else [lstm]
    _check_layers(engine, layers)
    if engine.pe_group > 1:
        # Lockstep PE groups: every matrix padded to equal column lengths per group (zero
        # entries); the image keeps the padded layers, so expected_run's cycle model sees the
        # encoding the hardware runs.
        layers = [replace(ly, matrix=pad_matrix(ly.matrix, engine.pe_group),
                          projection=None if ly.projection is None
                          else pad_matrix(ly.projection, engine.pe_group)) for ly in layers]
        if classifier is not None:
            classifier = replace(classifier,
                                 matrix=pad_matrix(classifier.matrix, engine.pe_group))
    last = layers[-1]
    matrices = []                                  # (matrix, relu, descriptor k, column base)
    for n, layer in enumerate(layers):
        matrices.append((layer.matrix, False, 4 * n, 0))
        if layer.projection is not None:
            matrices.append((layer.projection, False, 4 * n + 3, layer.input_size))
    if classifier is not None:
        cm = classifier.matrix
        if cm.cols != last.output_size:
            raise ValueError(f"classifier has {cm.cols} inputs, the last LSTM layer gives "
                             f"{last.output_size}")
        if not 1 <= cm.rows <= engine.classes_max:
            raise ValueError(f"classifier has {cm.rows} outputs, the engine holds "
                             f"{engine.classes_max}")
        _check_matrix(engine, cm, "classifier")
        matrices.append((cm, bool(classifier.relu), 1, last.input_size))
    memories = MatrixMemories(engine.n_pe, engine.acc_bits, engine.max_entries_per_pe)
    descs = []
    for n, (matrix, relu, k, col_base) in enumerate(matrices):
        enc = matrix.encoded
        entry_base, ptr_base, bias_base = memories.place(enc, matrix.codebook, matrix.bias)
        # State lists hold columns I + u: the projection's / classifier's column u is slot
        # ptr_base + u.
        fields = {Field.ROWS: enc.rows, Field.COLS: enc.cols, Field.ENTRY_BASE: entry_base,
                  Field.PTR_BASE: ptr_base - col_base, Field.BIAS_BASE: bias_base,
                  Field.CODEBOOK: n,
                  Field.SHIFT: requant_shift(matrix.weight_format, engine.product_shift),
                  Field.RELU: int(relu)}
        descs += [((k << 3) | int(f), int(fields[f])) for f in DESCRIPTOR_FIELDS]
    if memories.entry_base > engine.max_entries_per_pe:
        raise ValueError(f"the model needs {memories.entry_base} entries per PE, the engine holds "
                         f"{engine.max_entries_per_pe}")
    for n in range(engine.layers_max):
        if engine.proj_max and (n >= len(layers) or layers[n].projection is None):
            descs += [(((4 * n + 3) << 3) | int(f), 0) for f in DESCRIPTOR_FIELDS]
        if n >= len(layers):
            descs.append((((4 * n + 2) << 3) | LstmField.HIDDEN, 0))
            continue
        hidden = layers[n].hidden
        seq = {LstmField.HIDDEN: hidden, LstmField.INPUT: layers[n].input_size}
        if n == 0:
            seq[LstmField.CLASSIFY] = int(classifier is not None)
        for g in range(GATES):
            row = g * hidden
            seq[LstmField.GATE0 + g] = (((row // engine.n_pe) << engine.pe_bits)
                                        | (row % engine.n_pe))
        descs += [(((4 * n + 2) << 3) | int(f), int(v)) for f, v in seq.items()]
    model = CompressedModel("lstm", (1, layers[0].input_size),
                            layers + ([classifier] if classifier else []),
                            engine.n_pe, engine.act_format, engine.acc_bits,
                            table_spec if table_spec is not None else engine.table_spec,
                            product_shift=engine.product_shift)
    if model.table_spec != engine.table_spec:
        raise ValueError(f"table spec {model.table_spec} differs from the engine's "
                         f"{engine.table_spec}")
    return LstmImage(*memories.arrays(), descs, layers, classifier, GoldenModel(model),
                     table_words(engine.act_format, model.table_spec))


def _finish(engine, writes: LoaderWrites) -> dict:
    out = writes.arrays()
    out["data"] &= (1 << engine.data_width) - 1
    return out


def image_writes(engine: LstmParams, image: LstmImage) -> dict:
    """Loader writes of the model (arrays ``region, addr, data, lanes``)."""
    engine = params_of(engine, LstmParams)
    writes = LoaderWrites(engine.n_pe)
    writes.add_matrix_memories(LstmRegion, image, engine.index_bits)
    addr, value = zip(*image.descriptors)
    writes.add(LstmRegion.DESCRIPTOR, addr, data=value)
    writes.add(LstmRegion.TABLE, np.arange(len(image.tables)),
               data=image.tables & ((1 << engine.act_format.width) - 1))
    return _finish(engine, writes)


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
    writes = LoaderWrites(engine.n_pe)
    packed = (cols << aw) | (values & ((1 << aw) - 1))
    writes.add(LstmRegion.XLIST, np.arange(len(cols)), data=packed)
    writes.add(LstmRegion.XEND, np.arange(steps), data=ends)
    writes.add(LstmRegion.DESCRIPTOR, [(2 << 3) | LstmField.STEPS], data=[steps])
    return _finish(engine, writes)


@dataclass
class ExpectedLstmRun:
    """What the engine must produce for one sequence."""

    h: np.ndarray                # the last layer's final output h_T / r_T (S,)
    outputs: np.ndarray          # classifier outputs (classes,) or empty
    cycles: LstmCycleReport


def expected_run(engine: LstmParams, image: LstmImage, x_seq) -> ExpectedLstmRun:
    """Golden results and cycle model of ``x_seq`` (T, I) through ``image``'s layers."""
    engine = params_of(engine, LstmParams)
    x_seq = np.asarray(x_seq, dtype=np.int64)
    golden = image.golden
    traces, seq = [], x_seq
    for layer in image.layers:
        state = np.zeros((1, layer.output_size), dtype=np.int64)
        c = np.zeros((1, layer.hidden), dtype=np.int64)
        states, hs = [], []
        for t in range(len(seq)):
            state, c, h = golden.lstm_cell(layer, seq[t][None], state, c)
            states.append(state[0])
            hs.append(h[0])
        traces.append(LayerTrace(layer.matrix.encoded, layer.input_size, layer.hidden, seq,
                                 np.array(states),
                                 None if layer.projection is None
                                 else layer.projection.encoded, np.array(hs)))
        seq = np.array(states)
    outputs = np.zeros(0, dtype=np.int64)
    cls_enc = None
    if image.classifier is not None:
        outputs = spmv(image.classifier.matrix, seq[-1][None], engine.act_format,
                       engine.acc_bits, image.classifier.relu,
                       product_shift=engine.product_shift)[0]
        cls_enc = image.classifier.matrix.encoded
    report = stack_cycles(traces, engine.timing(), cls_enc, engine.ew_lanes, engine.overlap)
    listed = sum(int(np.count_nonzero(tr.x_seq)) for tr in traces)
    if listed > engine.max_xlist:
        raise ValueError(f"the sequence and the layer outputs have {listed} non-zero values, "
                         f"the x list holds {engine.max_xlist} (`max_xlist`)")
    return ExpectedLstmRun(seq[-1], outputs, report)


def random_lstm(rng, input_size: int, hidden: int, density: float, n_pe: int, *,
                index_bits=4, run_bits=4, weight_format=_WEIGHT_FORMAT,
                bias_scale=1.0, classes: int = 0, mask=None, proj: int = 0, layers: int = 1):
    """A random :class:`QLSTM` (and a classifier :class:`QLinear` if ``classes``).  With
    ``proj`` every layer has a ``proj x hidden`` projection; with ``layers > 1`` a list of
    stacked layers is returned instead of one QLSTM."""
    size = 1 << index_bits
    span = 1 << (weight_format.width - 1)
    codebook = rng.integers(-span, span, size)
    codebook[0] = 0
    state = proj or hidden

    def sparse(rows, cols, dens, bias):
        idx = np.where(rng.random((rows, cols)) < dens, rng.integers(1, size, (rows, cols)), 0)
        enc = encode(idx, n_pe, index_bits=index_bits, run_bits=run_bits)
        return SparseMatrix(enc, codebook.astype(np.int64), weight_format, bias)

    stack = []
    for n in range(layers):
        inputs = input_size if n == 0 else state
        rows, cols = GATES * hidden, inputs + state
        bias = np.round(rng.standard_normal(rows) * bias_scale
                        * (1 << (weight_format.frac + 8))).astype(np.int64)
        if n == 0 and mask is not None:
            indices = np.where(mask, rng.integers(1, size, (rows, cols)), 0)
            enc = encode(indices, n_pe, index_bits=index_bits, run_bits=run_bits)
            matrix = SparseMatrix(enc, codebook.astype(np.int64), weight_format, bias)
        else:
            matrix = sparse(rows, cols, density, bias)
        projection = sparse(proj, hidden, max(density, 0.3), np.zeros(proj, np.int64)) \
            if proj else None
        stack.append(QLSTM(matrix, inputs, hidden, n < layers - 1, projection))
    cls = None
    if classes:
        cbias = rng.integers(-(1 << 22), 1 << 22, classes)
        cls = QLinear(sparse(classes, state, max(density, 0.3), cbias))
    return (stack if layers > 1 else stack[0]), cls


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
            writes = _finish(engine, LoaderWrites(engine.n_pe))
        if current is None:
            raise ValueError("the first case needs an image")
        seq = sequence_writes(engine, x_seq)
        writes = {k: np.concatenate([writes[k], seq[k]]) for k in writes}
        run = expected_run(engine, current, x_seq)
        runs.append(run)
        p = f"c{i}_"
        for key, value in writes.items():
            out[p + "w_" + key] = value
        out[p + "hidden"] = np.int64(current.output_size)
        out[p + "steps"] = np.int64(len(x_seq) * len(current.layers))
        out[p + "expected_h"] = run.h
        out[p + "expected_out"] = run.outputs
        out[p + "mac"] = run.cycles.mac
        out[p + "ew"] = run.cycles.ew
        out[p + "pmac"] = run.cycles.pmac
        out[p + "cls_mac"] = np.int64(run.cycles.cls_mac)
        out[p + "cycles"] = np.int64(run.cycles.total)
        out[p + "name"] = np.array(str(name))
        out["n_cases"] = np.int64(i + 1)
    return out, runs
