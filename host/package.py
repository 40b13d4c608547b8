"""``.spn`` package files: a :class:`CompressedModel` on disk, all or nothing.

The file is a :mod:`host.container` (magic, version, length, JSON header, arrays, SHA-256);
this module defines the model schema inside it (documented in docs/spn-format.md).

Meta (JSON)::

    {"schema": 1, 2 or 3, "name": str, "input_shape": [int...], "n_pe": int,
     "act_format": {"width", "frac"}, "acc_bits": int, "product_shift": int (schema 3),
     "table_spec": {"index_bits", "range_log2"},
     "layers": [{"kind": "linear" | "lstm" | "conv2d" | "maxpool2d" | "flatten" | "relu",
                 ...layer fields..., "matrix": {...} for weight layers}],
     "info": {...}}          # compression settings and report figures, informative only

Matrix fields: ``rows, cols, index_bits, run_bits, weight_format, entries`` (total entries).
Arrays of weight layer ``i``: ``L{i}.codebook`` (int32, ``2**index_bits``),
``L{i}.bias`` (int64, rows), ``L{i}.col_counts`` (uint32, ``(n_pe, cols)``: entries per PE and
column), and the entries of all PEs in PE order split into two Huffman-coded streams:
``L{i}.index_code`` / ``L{i}.index_lengths`` and ``L{i}.run_code`` / ``L{i}.run_lengths``
(uint8 bytes and uint8 code lengths).  Schema 2 adds the LSTM projection (LSTMP): an
``lstm`` layer with ``"proj_size": P`` and a ``"projection"`` matrix whose arrays have the
prefix ``L{i}p.``; a file without projections is written as schema 1 (readable by older
spines), and both schemas load.  Schema 3 adds ``"product_shift": p`` (p > 0: every product
is floored by p bits, :mod:`host.compressed`); a model with p = 0 is written without it (as
schema 1 or 2) and a file without it loads as p = 0.  ``tables.sigmoid`` and ``tables.tanh``
(int32) hold the activation tables; on load they must equal the ones :mod:`host.activations` makes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .activations import TableSpec, make_table
from .compressed import (CompressedModel, QConv2d, QFlatten, QLinear, QLSTM, QMaxPool2d,
                         QReLU, SparseMatrix, acc_frac)
from .container import read_container, write_container
from .encoding import EncodedMatrix
from .errors import PackageError
from .fixedpoint import Format
from .huffman import HuffmanCode

__all__ = ["save_package", "load_package", "SCHEMA_VERSION", "config_digest"]

SCHEMA_VERSION = 3
#: Oldest model schema this spine reads (schema 1: no LSTM projections; schema 2: no product
#: shift).
MIN_SCHEMA_VERSION = 1
KIND = "spine-model"

_SIMPLE = {"maxpool2d": QMaxPool2d, "flatten": QFlatten, "relu": QReLU}


def _matrix_to_file(prefix: str, matrix: SparseMatrix, arrays: dict) -> dict:
    enc = matrix.encoded
    for name, (symbols, code) in matrix.entry_codes.items():
        arrays[f"{prefix}.{name}_code"] = np.frombuffer(code.encode(symbols), dtype=np.uint8)
        arrays[f"{prefix}.{name}_lengths"] = np.asarray(code.lengths, dtype=np.uint8)
    arrays[f"{prefix}.codebook"] = matrix.codebook.astype(np.int32)
    arrays[f"{prefix}.bias"] = matrix.bias.astype(np.int64)
    arrays[f"{prefix}.col_counts"] = enc.column_lengths().astype(np.uint32)
    return {"rows": enc.rows, "cols": enc.cols, "index_bits": enc.index_bits,
            "run_bits": enc.run_bits, "weight_format": matrix.weight_format.to_dict(),
            "entries": int(enc.entries_per_pe().sum())}


def save_package(model: CompressedModel, path) -> int:
    """Write ``model`` to ``path`` (atomically); returns the file size in bytes."""
    arrays: dict[str, np.ndarray] = {}
    layers = []
    schema = MIN_SCHEMA_VERSION
    for i, layer in enumerate(model.layers):
        meta = {"kind": layer.kind}
        if isinstance(layer, QLinear):
            meta["relu"] = bool(layer.relu)
        elif isinstance(layer, QLSTM):
            meta.update(input_size=layer.input_size, hidden=layer.hidden,
                        return_sequences=bool(layer.return_sequences))
        elif isinstance(layer, QConv2d):
            meta.update(in_channels=layer.in_channels, kernel=layer.kernel,
                        stride=layer.stride, padding=layer.padding, relu=bool(layer.relu))
        if hasattr(layer, "matrix"):
            meta["matrix"] = _matrix_to_file(f"L{i}", layer.matrix, arrays)
        if isinstance(layer, QLSTM) and layer.projection is not None:
            meta["proj_size"] = layer.proj_size
            meta["projection"] = _matrix_to_file(f"L{i}p", layer.projection, arrays)
            schema = 2
        layers.append(meta)
    arrays["tables.sigmoid"] = make_table("sigmoid", model.act_format,
                                          model.table_spec).astype(np.int32)
    arrays["tables.tanh"] = make_table("tanh", model.act_format, model.table_spec).astype(np.int32)
    meta = {"schema": schema, "name": model.name,
            "input_shape": list(model.input_shape), "n_pe": model.n_pe,
            "act_format": model.act_format.to_dict(), "acc_bits": model.acc_bits,
            "table_spec": model.table_spec.to_dict(), "layers": layers,
            "info": model.info}
    if model.product_shift:
        meta["schema"] = 3
        meta["product_shift"] = model.product_shift
    return write_container(path, meta, arrays, kind=KIND)


class _Reader:
    """Checked access to the meta and arrays of one file; errors name the file and field."""

    def __init__(self, path, arrays):
        self.path = str(path)
        self.arrays = arrays

    def fail(self, where: str, what: str):
        raise PackageError(f"package {self.path!r}, {where}: {what}; the file is damaged or "
                           f"was not written by spine — re-create it with "
                           f"`python -m host.compress`")

    def integer(self, meta: dict, key: str, where: str, lo: int, hi: int) -> int:
        value = meta.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            self.fail(where, f"field {key!r} must be an integer from {lo} to {hi}, "
                      f"not {value!r}")
        return value

    def array(self, name: str, dtype, shape=None) -> np.ndarray:
        if name not in self.arrays:
            self.fail("arrays", f"array {name!r} is missing")
        value = self.arrays[name]
        if value.dtype != np.dtype(dtype):
            self.fail(name, f"dtype is {value.dtype}, expected {np.dtype(dtype)}")
        if shape is not None and tuple(value.shape) != tuple(shape):
            self.fail(name, f"shape is {value.shape}, expected {tuple(shape)}")
        return value

    def format(self, meta, key, where) -> Format:
        value = meta.get(key)
        try:
            return Format.from_dict(value)
        except (TypeError, ValueError, KeyError) as error:
            self.fail(where, f"field {key!r} is not a valid fixed-point format ({error})")


def _matrix_from_file(reader: _Reader, prefix: str, meta, n_pe: int, acc_bits: int,
                      act: Format, product_shift: int = 0) -> SparseMatrix:
    where = (f"layer {prefix[1:-1]} projection" if prefix.endswith("p")
             else f"layer {prefix[1:]} matrix")
    if not isinstance(meta, dict):
        reader.fail(where, "matrix description missing")
    rows = reader.integer(meta, "rows", where, 1, 1 << 24)
    cols = reader.integer(meta, "cols", where, 1, 1 << 24)
    index_bits = reader.integer(meta, "index_bits", where, 1, 8)
    run_bits = reader.integer(meta, "run_bits", where, 1, 8)
    total = reader.integer(meta, "entries", where, 0, 1 << 31)
    wfmt = reader.format(meta, "weight_format", where)
    try:
        frac = acc_frac(act, wfmt, product_shift)
    except ValueError as error:
        reader.fail(where, str(error))
    if frac >= acc_bits:
        reader.fail(where, "accumulator too narrow for the formats")
    codebook = reader.array(f"{prefix}.codebook", np.int32, (1 << index_bits,)).astype(np.int64)
    if codebook[0] != 0 or codebook.min() < wfmt.min_int or codebook.max() > wfmt.max_int:
        reader.fail(f"{prefix}.codebook", "entry 0 must be 0 and all entries must fit "
                    f"{wfmt}")
    bias = reader.array(f"{prefix}.bias", np.int64, (rows,))
    lo, hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    if bias.size and (bias.min() < lo or bias.max() > hi):
        reader.fail(f"{prefix}.bias", f"values exceed {acc_bits}-bit accumulators")
    counts = reader.array(f"{prefix}.col_counts", np.uint32, (n_pe, cols)).astype(np.int64)
    if int(counts.sum()) != total:
        reader.fail(f"{prefix}.col_counts", f"counts add up to {int(counts.sum())}, "
                    f"not the {total} entries stored")
    streams = {}
    for name, bits in (("index", index_bits), ("run", run_bits)):
        lengths = reader.array(f"{prefix}.{name}_lengths", np.uint8, (1 << bits,))
        data = reader.array(f"{prefix}.{name}_code", np.uint8)
        try:
            code = HuffmanCode.from_lengths(lengths)
            streams[name] = code.decode(data.tobytes(), total).astype(np.int64)
        except PackageError as error:
            reader.fail(f"{prefix}.{name}_code", str(error))
    packed = (streams["index"] | (streams["run"] << index_bits)).astype(np.uint16)
    per_pe = counts.sum(axis=1)
    bounds = np.concatenate([[0], np.cumsum(per_pe)])
    entries, pointers = [], []
    for pe in range(n_pe):
        entries.append(packed[bounds[pe]:bounds[pe + 1]])
        ptr = np.zeros(cols + 1, dtype=np.int64)
        ptr[1:] = np.cumsum(counts[pe])
        pointers.append(ptr)
    encoded = EncodedMatrix(rows, cols, n_pe, index_bits, run_bits, entries, pointers)
    matrix = SparseMatrix(encoded, codebook, wfmt, bias.astype(np.int64))
    try:
        # Decoding every PE's coordinates checks its pointers and zero runs; the weights
        # decoded here stay cached for the golden model.
        matrix.weights_csr  # noqa: B018
    except ValueError as error:
        reader.fail(where, str(error))
    return matrix


def load_package(path) -> CompressedModel:
    """Read and fully validate a ``.spn`` file.

    Raises
    ------
    PackageError
        For a missing, truncated, corrupted, foreign or wrong-version file, or one whose
        content is inconsistent (shapes, ranges, encodings, tables).  Nothing is returned
        unless every check passed.
    """
    meta, arrays = read_container(path, expected_kind=KIND)
    reader = _Reader(path, arrays)
    schema = meta.get("schema")
    if not isinstance(schema, int) or isinstance(schema, bool) \
            or not MIN_SCHEMA_VERSION <= schema <= SCHEMA_VERSION:
        if isinstance(schema, int) and schema > SCHEMA_VERSION:
            raise PackageError(f"package {str(path)!r} uses model schema {schema}, newer than "
                               f"this spine reads ({SCHEMA_VERSION}): upgrade spine")
        reader.fail("meta", f"unknown model schema {schema!r}")
    n_pe = reader.integer(meta, "n_pe", "meta", 1, 1024)
    acc_bits = reader.integer(meta, "acc_bits", "meta", 8, 48)
    act = reader.format(meta, "act_format", "meta")
    product_shift = 0
    if "product_shift" in meta:
        if schema < 3:
            reader.fail("meta", "a product shift needs model schema 3")
        product_shift = reader.integer(meta, "product_shift", "meta", 0, 2 * act.width + 64)
    try:
        spec = TableSpec(**meta.get("table_spec", {}))
    except (TypeError, ValueError) as error:
        reader.fail("meta", f"bad table_spec ({error})")
    shape = meta.get("input_shape")
    if not isinstance(shape, list) or not shape or not all(
            isinstance(d, int) and d > 0 for d in shape):
        reader.fail("meta", f"bad input_shape {shape!r}")
    for name, function in (("tables.sigmoid", "sigmoid"), ("tables.tanh", "tanh")):
        stored = reader.array(name, np.int32, (spec.entries,))
        if not np.array_equal(stored, make_table(function, act, spec)):
            reader.fail(name, "the activation table differs from the one this spine "
                        "computes for the package's format")
    layers = []
    if not isinstance(meta.get("layers"), list) or not meta["layers"]:
        reader.fail("meta", "no layers")
    for i, item in enumerate(meta["layers"]):
        where = f"layer {i}"
        if not isinstance(item, dict):
            reader.fail(where, "not an object")
        kind = item.get("kind")
        if kind in _SIMPLE:
            layers.append(_SIMPLE[kind]())
            continue
        if kind not in ("linear", "lstm", "conv2d"):
            reader.fail(where, f"unknown layer kind {kind!r}")
        matrix = _matrix_from_file(reader, f"L{i}", item.get("matrix"), n_pe, acc_bits, act,
                                   product_shift)
        if kind == "linear":
            layers.append(QLinear(matrix, bool(item.get("relu", False))))
        elif kind == "lstm":
            inp = reader.integer(item, "input_size", where, 1, 1 << 20)
            hid = reader.integer(item, "hidden", where, 1, 1 << 20)
            proj = None
            if "projection" in item or "proj_size" in item:
                if schema < 2:
                    reader.fail(where, "an LSTM projection needs model schema 2")
                size = reader.integer(item, "proj_size", where, 1, 1 << 20)
                proj = _matrix_from_file(reader, f"L{i}p", item.get("projection"), n_pe,
                                         acc_bits, act, product_shift)
                if (proj.rows, proj.cols) != (size, hid):
                    reader.fail(where, f"projection {proj.rows}x{proj.cols} is not "
                                f"proj_size x hidden = {size}x{hid}")
            state = proj.rows if proj is not None else hid
            if matrix.rows != 4 * hid or matrix.cols != inp + state:
                reader.fail(where, f"matrix {matrix.rows}x{matrix.cols} does not fit an LSTM "
                            f"with input {inp}, hidden {hid} and recurrent state {state}")
            layers.append(QLSTM(matrix, inp, hid, bool(item.get("return_sequences", False)),
                                proj))
        else:
            inc = reader.integer(item, "in_channels", where, 1, 1 << 16)
            k = reader.integer(item, "kernel", where, 1, 64)
            if matrix.cols != inc * k * k:
                reader.fail(where, f"matrix has {matrix.cols} columns, a {k}x{k} kernel over "
                            f"{inc} channels needs {inc * k * k}")
            layers.append(QConv2d(matrix, inc, k,
                                  reader.integer(item, "stride", where, 1, 64),
                                  reader.integer(item, "padding", where, 0, 64),
                                  bool(item.get("relu", False))))
    try:
        model = CompressedModel(str(meta.get("name", Path(path).stem)), tuple(shape), layers,
                                n_pe, act, acc_bits, spec, info=meta.get("info", {}),
                                product_shift=product_shift)
    except ValueError as error:
        reader.fail("meta", str(error))
    _check_shapes(reader, model)
    return model


def _check_shapes(reader: _Reader, model: CompressedModel) -> None:
    """Walk the layer chain and check every layer accepts the previous layer's output."""
    shape = tuple(model.input_shape)
    for i, layer in enumerate(model.layers):
        where = f"layer {i} ({layer.kind})"
        if isinstance(layer, QLinear):
            if shape != (layer.matrix.cols,):
                reader.fail(where, f"expects input ({layer.matrix.cols},), gets {shape}")
            shape = (layer.matrix.rows,)
        elif isinstance(layer, QLSTM):
            if len(shape) != 2 or shape[1] != layer.input_size:
                reader.fail(where, f"expects input (T, {layer.input_size}), gets {shape}")
            size = layer.output_size
            shape = (shape[0], size) if layer.return_sequences else (size,)
        elif isinstance(layer, QConv2d):
            if len(shape) != 3 or shape[0] != layer.in_channels:
                reader.fail(where, f"expects ({layer.in_channels}, H, W), gets {shape}")
            k, s, p = layer.kernel, layer.stride, layer.padding
            oh, ow = (shape[1] + 2 * p - k) // s + 1, (shape[2] + 2 * p - k) // s + 1
            if oh < 1 or ow < 1:
                reader.fail(where, f"kernel {k} does not fit input {shape}")
            shape = (layer.matrix.rows, oh, ow)
        elif isinstance(layer, QMaxPool2d):
            if len(shape) != 3 or shape[1] < 2 or shape[2] < 2:
                reader.fail(where, f"needs a (C, H, W) input of at least 2x2, gets {shape}")
            shape = (shape[0], shape[1] // 2, shape[2] // 2)
        elif isinstance(layer, QFlatten):
            shape = (int(np.prod(shape)),)


def config_digest(model: CompressedModel) -> str:
    """Short hex digest of what the hardware must match: PEs, field widths and formats."""
    import hashlib
    import json
    widths = sorted({(m.encoded.index_bits, m.encoded.run_bits, m.weight_format.width)
                     for _, m in model.matrices()})
    facts = {"n_pe": model.n_pe, "act": model.act_format.to_dict(),
             "acc_bits": model.acc_bits, "widths": widths, "tables": model.table_spec.to_dict()}
    if model.product_shift:                 # p = 0 models keep their digests
        facts["product_shift"] = model.product_shift
    text = json.dumps(facts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
