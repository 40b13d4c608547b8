"""Memory image of an MLP in the SpMV engine (:class:`hdl.spmv.SpmvEngine`), loader write
lists, expectations.  Pure NumPy: everything takes a :class:`host.memory_map.SpmvParams` (or an
engine, whose ``params`` is used).

:func:`build_image` lays out the layers of an MLP (a list of :class:`host.compressed.QLinear`
or ``(SparseMatrix, relu)`` pairs) in the engine's memories; :func:`image_writes` turns the
image into loader writes ``(region, addr, data, lanes)``; :func:`expected_run` computes with
the golden and cycle models what the engine must produce.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .compressed import QLinear, SparseMatrix, requant_shift
from .cyclemodel import active_columns, spmv_cycles
from .fixedpoint import Format
from .golden import spmv
from .matrix_image import (LoaderWrites, MatrixMemories, check_encoding, check_weights,
                           pad_matrix)
from .memory_map import DESCRIPTOR_FIELDS, Field, Region, SpmvParams, params_of

__all__ = ["EngineImage", "build_image", "image_writes", "input_writes", "expected_run",
           "ExpectedRun", "pack_lanes"]


@dataclass
class EngineImage:
    """Memory contents of one model.

    Attributes
    ----------
    entries : ndarray (E, n_pe) int64
        Entry address ``e`` of every PE (packed entries, 0 where a PE has fewer).
    pointers : ndarray (K, n_pe) int64
        Pointer slot ``k`` of every PE (relative to the layer's ``entry_base``).
    codebooks : ndarray (layers, 2**index_bits) int64
    bias : ndarray (sum of rows,) int64, wrapped to acc_bits
    descriptors : ndarray (layers, 8) int64, columns as :class:`host.memory_map.Field`
    layers : list of (SparseMatrix, relu)
    """

    entries: np.ndarray
    pointers: np.ndarray
    codebooks: np.ndarray
    bias: np.ndarray
    descriptors: np.ndarray
    layers: list = field(default_factory=list)

    @property
    def n_layers(self) -> int:
        return len(self.layers)


def _as_pairs(layers):
    pairs = []
    for layer in layers:
        if isinstance(layer, QLinear):
            pairs.append((layer.matrix, bool(layer.relu)))
        elif isinstance(layer, tuple) and len(layer) == 2 and isinstance(layer[0], SparseMatrix):
            pairs.append((layer[0], bool(layer[1])))
        else:
            raise TypeError(f"layers must be QLinear or (SparseMatrix, relu) pairs, not "
                            f"{type(layer).__name__}")
    return pairs


def build_image(engine: SpmvParams, layers) -> EngineImage:
    """Lay out ``layers`` (run back to back) in ``engine``'s memories.

    Raises
    ------
    ValueError
        If a layer does not match the engine's encoding or does not fit its memories.
    """
    engine = params_of(engine, SpmvParams)
    pairs = _as_pairs(layers)
    if not 1 <= len(pairs) <= engine.max_layers:
        raise ValueError(f"the engine runs 1 to {engine.max_layers} layers, not {len(pairs)}")
    memories = MatrixMemories(engine.n_pe, engine.acc_bits, engine.max_entries_per_pe)
    descs = []
    prev_rows = None
    for n, (matrix, relu) in enumerate(pairs):
        enc = matrix.encoded
        where = f"layer {n}"
        check_encoding(engine, matrix, where)
        if enc.rows > engine.max_rows or enc.cols > engine.max_cols:
            raise ValueError(f"{where} is {enc.rows}x{enc.cols}, the engine holds at most "
                             f"{engine.max_rows}x{engine.max_cols}")
        if prev_rows is not None and enc.cols != prev_rows:
            raise ValueError(f"{where} has {enc.cols} inputs but the previous layer has "
                             f"{prev_rows} outputs")
        check_weights(engine, matrix, where)
        prev_rows = enc.rows
        if engine.pe_group > 1:
            # Lockstep groups: equal column lengths (zero padding), and the cycle model of
            # expected_run sees the padded encoding the hardware runs.
            matrix = pad_matrix(matrix, engine.pe_group)
            enc = matrix.encoded
            pairs[n] = (matrix, relu)
        entry_base, ptr_base, bias_base = memories.place(enc, matrix.codebook, matrix.bias)
        desc = np.zeros(len(DESCRIPTOR_FIELDS), dtype=np.int64)
        desc[Field.ROWS] = enc.rows
        desc[Field.COLS] = enc.cols
        desc[Field.ENTRY_BASE] = entry_base
        desc[Field.PTR_BASE] = ptr_base
        desc[Field.BIAS_BASE] = bias_base
        desc[Field.CODEBOOK] = n
        desc[Field.SHIFT] = requant_shift(matrix.weight_format, engine.product_shift)
        desc[Field.RELU] = int(relu)
        descs.append(desc)
    entry_base, ptr_base, bias_base = memories.entry_base, memories.ptr_base, memories.bias_base
    if entry_base > engine.max_entries_per_pe:
        raise ValueError(f"the layers need {entry_base} entries per PE, the engine holds "
                         f"{engine.max_entries_per_pe}")
    if ptr_base > engine.max_pointers:
        raise ValueError(f"the layers need {ptr_base} pointer slots, the engine holds "
                         f"{engine.max_pointers}")
    if bias_base > engine.max_bias:
        raise ValueError(f"the layers need {bias_base} biases, the engine holds "
                         f"{engine.max_bias}")
    return EngineImage(*memories.arrays(), np.stack(descs), pairs)


def pack_lanes(lanes: np.ndarray, lane_width: int) -> list[int]:
    """Rows of ``lanes`` (n, n_pe) packed into integers, lane ``p`` at bit ``p * lane_width``."""
    lanes = np.asarray(lanes, dtype=np.int64)
    if lanes.size == 0:
        return [0] * len(lanes)
    bits = ((lanes[:, :, None] >> np.arange(lane_width)) & 1).astype(np.uint8)
    bits = bits.reshape(len(lanes), -1)
    packed = np.packbits(bits, axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in packed]


def image_writes(engine: SpmvParams, image: EngineImage) -> dict[str, np.ndarray]:
    """Loader writes of ``image``: arrays ``region``, ``addr``, ``data`` (two's complement in
    ``data_width`` bits) and ``lanes`` (n, n_pe) in write order."""
    engine = params_of(engine, SpmvParams)
    writes = LoaderWrites(engine.n_pe)
    writes.add_matrix_memories(Region, image, engine.index_bits)
    for n, desc in enumerate(image.descriptors):
        writes.add(Region.DESCRIPTOR, (n << 3) + np.arange(len(desc)), data=desc)
    out = writes.arrays()
    out["data"] &= (1 << engine.data_width) - 1
    return out


def input_writes(engine: SpmvParams, activations) -> dict[str, np.ndarray]:
    """Loader writes of one input vector (every column, ascending from 0)."""
    engine = params_of(engine, SpmvParams)
    a = np.asarray(activations, dtype=np.int64).ravel()
    mask = (1 << engine.data_width) - 1
    return {"region": np.full(len(a), int(Region.INPUT), dtype=np.int64),
            "addr": np.arange(len(a), dtype=np.int64), "data": a & mask}


@dataclass
class ExpectedRun:
    """What the engine must produce for one input vector."""

    outputs: np.ndarray          # last layer's outputs (act format), int64 (rows,)
    layer_cycles: np.ndarray     # MAC cycles per layer (spmv_cycles)
    cycles: int                  # whole run (SpmvParams.run_cycles)
    ideal: np.ndarray            # per-layer ideal bound
    reports: list


def expected_run(engine: SpmvParams, image: EngineImage, activations) -> ExpectedRun:
    """Golden outputs and model cycle counts of ``image``'s layers on ``activations``."""
    engine = params_of(engine, SpmvParams)
    x = np.asarray(activations, dtype=np.int64).reshape(1, -1)
    timing = engine.timing()
    layer_cycles, ideal, reports, rows = [], [], [], []
    for matrix, relu in image.layers:
        report = spmv_cycles(matrix.encoded, active_columns(x[0]), timing)
        reports.append(report)
        layer_cycles.append(report.cycles)
        ideal.append(report.ideal)
        rows.append(matrix.rows)
        x = spmv(matrix, x, engine.act_format, engine.acc_bits, relu,
                 product_shift=engine.product_shift)
    return ExpectedRun(x[0], np.array(layer_cycles), engine.run_cycles(layer_cycles, rows),
                       np.array(ideal), reports)


DEFAULT_WEIGHT_FORMAT = Format(16, 12)


def random_layer(rng, rows: int, cols: int, density: float, n_pe: int, *,
                 index_bits: int = 4, run_bits: int = 4,
                 weight_format: Format = DEFAULT_WEIGHT_FORMAT,
                 acc_frac: int | None = None, bias_scale: float = 1.0, balance: bool = False,
                 mask=None) -> SparseMatrix:
    """A random :class:`SparseMatrix` (uniform sparsity, or ``balance`` per PE)."""
    from .encoding import encode
    if mask is None:
        if balance:
            from .pruning import balanced_mask
            mask = balanced_mask(rng.standard_normal((rows, cols)), density, n_pe)
        else:
            mask = rng.random((rows, cols)) < density
    size = 1 << index_bits
    indices = np.where(mask, rng.integers(1, size, (rows, cols)), 0)
    lo, hi = -(1 << (weight_format.width - 1)), (1 << (weight_format.width - 1)) - 1
    codebook = rng.integers(lo, hi + 1, size)
    codebook[0] = 0
    encoded = encode(indices, n_pe, index_bits=index_bits, run_bits=run_bits)
    bias = np.round(rng.standard_normal(rows) * bias_scale * (1 << 20)).astype(np.int64)
    return SparseMatrix(encoded, codebook.astype(np.int64), weight_format, bias)


__all__.append("random_layer")


def case_data(engine: SpmvParams, cases) -> tuple[dict, list]:
    """The ``.npz`` arrays for ``tests/hw/cocotb_spmv.py`` and the expectations.

    ``cases``: iterable of ``(name, image, x)``; ``image`` None reuses the previous case's
    image (no loader writes).  Returns ``(data, expected_runs)``.
    """
    engine = params_of(engine, SpmvParams)
    out = {"n_cases": np.int64(0), "lane_width": np.int64(engine.lane_width),
           "n_pe": np.int64(engine.n_pe), "data_width": np.int64(engine.data_width)}
    runs = []
    current = None
    for i, (name, image, x) in enumerate(cases):
        prefix = f"c{i}_"
        if image is not None:
            writes = image_writes(engine, image)
            current = image
        else:
            writes = LoaderWrites(engine.n_pe).arrays()
        if current is None:
            raise ValueError("the first case needs an image")
        run = expected_run(engine, current, x)
        runs.append(run)
        for key, value in writes.items():
            out[prefix + "w_" + key] = value
        out[prefix + "x"] = np.asarray(x, dtype=np.int64)
        out[prefix + "n_layers"] = np.int64(current.n_layers)
        out[prefix + "expected"] = run.outputs
        out[prefix + "layer_cycles"] = run.layer_cycles
        out[prefix + "cycles"] = np.int64(run.cycles)
        out[prefix + "name"] = np.array(str(name))
        out["n_cases"] = np.int64(i + 1)
    return out, runs


__all__.append("case_data")
