"""Host side of the sparse CNN engine (``hdl/cnn.py``): parameters, layer plan, memory image.

A compressed CNN (``QConv2d`` [``QReLU``] [``QMaxPool2d`` ...] ... ``QFlatten`` ``QLinear`` ...)
becomes a list of *hardware layers* (:func:`plan_layers`); each is one sparse matrix-vector
product per output pixel:

* a **conv** layer: the pruned filter bank ``(C_out, C_in*k*k)`` times every input patch, then
  bias, requantize, ReLU and an optional max-pool (``pool`` successive 2x2 pools = one
  ``2**pool`` window, floor at the edges, as :class:`host.floatmodel.MaxPool2d`);
* a **linear** layer: the same with the whole input map as the "patch" (kernel = map size,
  one output pixel): flatten costs nothing.

Feature maps live in two ping-pong buffers of ``fm_words`` words of ``fm_lanes`` (``G``)
activations: activation ``(c, y, x)`` of a ``C x H x W`` map is lane ``c % G`` of word
``(y * W + x) * ng + c // G`` with ``ng = ceil(C / G)`` (channel groups innermost).  The
window generator reads the in-bounds words of a patch in ``(ky, kx, group)`` order, so the
matrix columns are stored in *hardware order*::

    hw column of (c, ky, kx) = ((ky * kw + kx) * ng + c // G) * G + c % G

(:func:`hw_columns`); the encoded entries of every column are unchanged, only the column
blocks and pointers are reordered (:func:`permute_columns`).

Nothing here imports ``hdl``: :class:`CnnConfig` carries the engine parameters the image needs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from .compressed import (QConv2d, QFlatten, QLinear, QMaxPool2d, QReLU, SparseMatrix,
                         requant_shift)
from .encoding import EncodedMatrix, pad_groups
from .fixedpoint import Format
from .matrix_image import LoaderWrites, MatrixMemories, check_encoding, check_weights
from .memory_map import Region as SpmvRegion, check_formats, check_pe_group
from .params import check_int

__all__ = ["Region", "Field", "FIELD_BITS", "CnnConfig", "HwLayer", "plan_layers",
           "hw_columns", "permute_columns", "CnnImage", "build_image", "image_writes",
           "input_addresses", "input_writes", "output_addresses", "to_fm", "from_fm"]


class Region(enum.IntEnum):
    """``load.region`` values of the CNN engine: the matrix regions are the SpMV engine's
    (:class:`host.memory_map.Region`, the loader is shared)."""

    ENTRY = SpmvRegion.ENTRY            #: addr = entry address; per-PE entry in ``lanes``
    POINTER = SpmvRegion.POINTER        #: addr = pointer slot; per-PE pointer word in ``lanes``
    CODEBOOK = SpmvRegion.CODEBOOK      #: addr = slot << index_bits | index; data = weight
    BIAS = SpmvRegion.BIAS              #: addr = bias address; data = bias (accumulator format)
    DESCRIPTOR = SpmvRegion.DESCRIPTOR  #: addr = layer << FIELD_BITS | field; data = value
    INPUT = SpmvRegion.INPUT            #: addr = activation address in feature-map buffer 0
    #:                                     (word * G + lane); data = activation


class Field(enum.IntEnum):
    """Layer descriptor fields (``load.addr = layer << FIELD_BITS | field``)."""

    ROWS = 0            #: output channels C_out (matrix rows)
    ENTRY_BASE = 1      #: first entry address of the layer (every PE)
    PTR_BASE = 2        #: first pointer slot (the layer uses hw columns slots)
    BIAS_BASE = 3       #: bias address of row 0
    CODEBOOK = 4        #: codebook slot
    SHIFT = 5           #: requantization shift = weight fraction bits
    RELU = 6            #: 1: ReLU after requantization
    IN_H = 7            #: input map height
    IN_W = 8            #: input map width
    KH = 9              #: kernel height (linear: input height)
    KW = 10             #: kernel width (linear: input width)
    STRIDE = 11         #: stride (both directions)
    PAD = 12            #: zero padding (all four sides)
    IN_GROUPS = 13      #: ng_in = ceil(C_in / G): words per input pixel
    LAST_MASK = 14      #: lanes of the last input channel group holding channels
    ROW_STRIDE = 15     #: IN_W * ng_in: words per input row
    KW_GROUPS = 16      #: KW * ng_in: hw columns / G per kernel row
    COL_STEP = 17       #: STRIDE * ng_in: input words per output column
    ROW_STEP = 18       #: STRIDE * ROW_STRIDE: input words per output row
    BASE0 = 19          #: -(PAD * IN_W + PAD) * ng_in (two's complement): word of (-pad, -pad)
    OUT_H = 20          #: conv output rows computed (cropped to a multiple of 2**POOL)
    OUT_W = 21          #: conv output columns computed (cropped likewise)
    POOL = 22           #: max-pool window 2**POOL (0: none)
    OUT_GROUPS = 23     #: ng_out = ceil(C_out / G): words per output pixel
    OUT_ROW_STRIDE = 24  #: (OUT_W >> POOL) * ng_out: words per output (pooled) row


#: Descriptor address bits per layer (``addr = layer << FIELD_BITS | field``).
FIELD_BITS = 5


@dataclass(frozen=True)
class CnnConfig:
    """Parameters of a CNN engine (validated; the HDL sizes its memories and counters from them).

    Parameters
    ----------
    n_pe : int
        Processing elements; output channel ``r`` belongs to PE ``r % n_pe``.
    index_bits, run_bits : int
        Entry field widths (bits, 1..8) as :func:`host.encoding.encode`.
    act_format : Format
        Activation format (2..32 bits).
    weight_width : int
        Codebook entry width (bits).
    acc_bits : int
        Accumulator width (bits, wrapping).
    max_rows : int
        Largest C_out (accumulators: ``ceil(max_rows / n_pe)`` per PE).
    max_entries_per_pe : int
        Entry memory depth per PE (all layers, padding entries included).
    max_pointers : int
        Pointer slots per PE (all layers' hardware columns, one pointer word each).
    max_bias : int
        Bias memory words (all layers' C_out).
    max_layers : int
        Descriptor table size and codebook slots.
    fm_lanes : int
        Activations per feature-map word (``G``, a power of two): the window generator reads
        one word per cycle and broadcasts its non-zero lanes one per cycle.
    fm_words : int
        Words per feature-map buffer (two buffers, ping-pong).
    max_dim : int
        Largest map height/width and kernel size (linear layers: kernel = input map).
    max_pad, max_stride, max_pool : int
        Largest padding, stride and pool exponent (``2**max_pool`` window).
    fifo_depth : int
        Broadcast FIFO depth per PE.
    memory : str
        ``"bram"`` or ``"spram"`` (PE entry memories, as :class:`hdl.spmv.SpmvEngine`).
    product_shift : int
        Bits every product is floored by before it is added (the model's ``product_shift``).
    out_parallel : bool
        Output stage with one requantizer per PE (``n_pe`` channels per cycle, every PE's
        accumulator read at once, ``n_pe`` bias read ports) instead of one channel per cycle;
        needs ``fm_lanes`` to be a multiple of ``n_pe``.
    """

    n_pe: int
    max_rows: int
    max_entries_per_pe: int
    max_pointers: int
    max_bias: int
    fm_words: int
    index_bits: int = 4
    run_bits: int = 4
    act_format: Format = Format(16, 10)
    weight_width: int = 16
    acc_bits: int = 32
    max_layers: int = 4
    fm_lanes: int = 8
    max_dim: int = 32
    max_pad: int = 2
    max_stride: int = 2
    max_pool: int = 2
    fifo_depth: int = 8
    memory: str = "bram"
    out_parallel: bool = False
    product_shift: int = 0
    pe_group: int = 1

    def __post_init__(self):
        check_int("n_pe", self.n_pe, 1)
        check_pe_group(self.pe_group, self.n_pe, self.index_bits + self.run_bits)
        check_int("index_bits", self.index_bits, 1, 8)
        check_int("run_bits", self.run_bits, 1, 8)
        check_formats(self.act_format, self.weight_width, self.acc_bits, self.product_shift)
        for name in ("max_rows", "max_entries_per_pe", "max_bias", "max_layers", "fm_words",
                     "max_dim", "max_stride", "fifo_depth"):
            check_int(name, getattr(self, name), 1)
        check_int("max_pointers", self.max_pointers, 2)
        check_int("max_pad", self.max_pad, 0, 15)
        check_int("max_pool", self.max_pool, 0, 4)
        lanes = check_int("fm_lanes", self.fm_lanes, 1, 64)
        if lanes & (lanes - 1):
            raise ValueError(f"`fm_lanes` must be a power of two, not {lanes}")
        if self.memory not in ("bram", "spram"):
            raise ValueError(f"`memory` must be 'bram' or 'spram', not {self.memory!r}")
        if not isinstance(self.out_parallel, bool):
            raise TypeError(f"`out_parallel` must be a bool, not {self.out_parallel!r}")
        if self.out_parallel and lanes % self.n_pe:
            raise ValueError(f"`out_parallel` needs `fm_lanes` ({lanes}) to be a multiple of "
                             f"`n_pe` ({self.n_pe})")

    @property
    def lane_bits(self) -> int:
        """``log2(fm_lanes)``."""
        return self.fm_lanes.bit_length() - 1

    def to_dict(self) -> dict:
        d = {name: getattr(self, name) for name in self.__dataclass_fields__}
        d["act_format"] = self.act_format.to_dict()
        if not self.product_shift:          # p = 0 configurations keep their keys
            del d["product_shift"]
        return d

    @classmethod
    def for_model(cls, model, n_pe=None, *, fm_lanes=8, fifo_depth=8, round_up=True,
                  **overrides) -> CnnConfig:
        """The smallest engine for ``model`` (a :class:`host.compressed.CompressedModel`),
        memory depths rounded up to powers of two (``round_up``) so similar models share a
        build."""
        n_pe = model.n_pe if n_pe is None else n_pe
        matrices = model.matrices()
        if not matrices:
            raise ValueError("the model has no conv or linear layer")
        enc = matrices[0][1].encoded
        bits = {"index_bits": enc.index_bits, "run_bits": enc.run_bits}
        bits.update({k: v for k, v in overrides.items() if k in bits})
        if "pe_group" in overrides:
            bits["pe_group"] = overrides["pe_group"]      # the probe sizes padded matrices
        probe = cls(n_pe=n_pe, max_rows=1 << 20, max_entries_per_pe=1 << 30,
                    max_pointers=1 << 30, max_bias=1 << 30, fm_words=1 << 30,
                    act_format=model.act_format, acc_bits=model.acc_bits,
                    product_shift=model.product_shift,
                    fm_lanes=fm_lanes, fifo_depth=fifo_depth, max_dim=1 << 12, max_pad=15,
                    max_layers=1 << 10, **bits)
        layers = plan_layers(model.layers, model.input_shape, probe)
        sizes = _sizes(probe, layers)

        def up(v):
            return 1 << max(1, (int(v) - 1).bit_length()) if round_up else max(1, int(v))
        params = dict(
            n_pe=n_pe, max_rows=max(ly.rows for ly in layers),
            max_entries_per_pe=up(sizes["entries"]), max_pointers=up(sizes["pointers"]),
            max_bias=up(sizes["bias"]), fm_words=up(sizes["fm_words"]),
            act_format=model.act_format, acc_bits=model.acc_bits, fm_lanes=fm_lanes,
            product_shift=model.product_shift, fifo_depth=fifo_depth, max_layers=len(layers),
            max_dim=max(max(*ly.in_shape[1:], *ly.kernel) for ly in layers),
            max_pad=max(max(ly.pad for ly in layers), 1),
            max_stride=max(max(ly.stride for ly in layers), 1),
            max_pool=max(max(ly.pool for ly in layers), 1), **bits)
        params.update(overrides)
        return cls(**params)


@dataclass
class HwLayer:
    """One hardware layer: a sparse product per output pixel (see the module docstring).

    Attributes
    ----------
    kind : str
        ``"conv"`` or ``"linear"``.
    name : str
        For messages, e.g. ``"layer 2 (conv 16->64 3x3)"``.
    matrix : SparseMatrix
        The layer's matrix in the golden model's column order.
    relu : bool
    in_shape : (C, H, W)
    kernel : (kh, kw)
    stride, pad : int
    pool : int
        Max-pool exponent (window ``2**pool``).
    conv_shape : (OH, OW)
        Conv output size before pooling.
    source : tuple of int
        Indices of the model layers this hardware layer computes.
    """

    kind: str
    name: str
    matrix: SparseMatrix
    relu: bool
    in_shape: tuple
    kernel: tuple
    stride: int
    pad: int
    pool: int = 0
    conv_shape: tuple = (1, 1)
    source: tuple = ()

    @property
    def rows(self) -> int:
        return self.matrix.rows

    @property
    def out_shape(self) -> tuple:
        """``(C_out, OH >> pool, OW >> pool)``."""
        oh, ow = self.conv_shape
        return (self.rows, oh >> self.pool, ow >> self.pool)

    @property
    def computed_shape(self) -> tuple:
        """Conv pixels the engine computes: ``OH, OW`` cropped to multiples of ``2**pool``."""
        oh, ow = self.out_shape[1:]
        return (oh << self.pool, ow << self.pool)


def _conv_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def plan_layers(layers, input_shape, config: CnnConfig) -> list[HwLayer]:
    """Hardware layers of a compressed model's layer list.

    Supported: ``QConv2d`` (then optional ``QReLU`` and ``QMaxPool2d`` layers, folded into the
    conv), ``QFlatten`` (free) and ``QLinear`` (then optional ``QReLU``).

    Raises
    ------
    ValueError
        For an unsupported layer sequence or a layer outside the engine's limits (the message
        names the layer and the limit).
    """
    supported = (QConv2d, QLinear, QReLU, QMaxPool2d, QFlatten)
    for i, layer in enumerate(layers):
        if not isinstance(layer, supported):
            raise ValueError(f"layer {i} ({getattr(layer, 'kind', type(layer).__name__)}) is "
                             f"not supported by the CNN engine (conv2d, relu, maxpool2d, "
                             f"flatten, linear)")
    shape = tuple(int(v) for v in input_shape)
    if len(shape) == 1:
        shape = (shape[0], 1, 1)
    if len(shape) != 3:
        raise ValueError(f"the CNN engine takes (C, H, W) or (N,) inputs, not {shape}")
    out: list[HwLayer] = []
    flat = False
    for i, layer in enumerate(layers):
        if isinstance(layer, QConv2d):
            if flat:
                raise ValueError(f"layer {i} (conv2d) follows a flatten: not supported")
            c, h, w = shape
            if layer.in_channels != c:
                raise ValueError(f"layer {i} (conv2d) expects {layer.in_channels} input "
                                 f"channels, gets {c}")
            k, s, p = layer.kernel, layer.stride, layer.padding
            oh, ow = _conv_size(h, k, s, p), _conv_size(w, k, s, p)
            name = f"layer {i} (conv {c}->{layer.matrix.rows} {k}x{k})"
            if oh < 1 or ow < 1:
                raise ValueError(f"{name}: no output pixels for a {h}x{w} input")
            out.append(HwLayer("conv", name, layer.matrix, bool(layer.relu), shape, (k, k),
                               s, p, 0, (oh, ow), (i,)))
            shape = (layer.matrix.rows, oh, ow)
        elif isinstance(layer, QLinear):
            c, h, w = shape
            name = f"layer {i} (linear {c * h * w}->{layer.matrix.rows})"
            if layer.matrix.cols != c * h * w:
                raise ValueError(f"{name}: the matrix has {layer.matrix.cols} columns, the "
                                 f"input has {c * h * w} activations")
            out.append(HwLayer("linear", name, layer.matrix, bool(layer.relu), shape,
                               (h, w), 1, 0, 0, (1, 1), (i,)))
            shape = (layer.matrix.rows, 1, 1)
        elif isinstance(layer, QReLU):
            if not out:
                raise ValueError(f"layer {i} (relu) on the input: not supported")
            out[-1].relu = True
            out[-1].source += (i,)
        elif isinstance(layer, QMaxPool2d):
            if not out or out[-1].kind != "conv" or flat:
                raise ValueError(f"layer {i} (maxpool2d) must follow a conv layer")
            last = out[-1]
            if last.pool + 1 > config.max_pool:
                raise ValueError(f"layer {i} (maxpool2d): {last.name} would pool "
                                 f"{2 ** (last.pool + 1)}x{2 ** (last.pool + 1)}, the engine "
                                 f"pools at most {2 ** config.max_pool}x{2 ** config.max_pool} "
                                 f"(`max_pool` = {config.max_pool})")
            c, h, w = shape
            if h < 2 or w < 2:
                raise ValueError(f"layer {i} (maxpool2d) needs a map of at least 2x2, gets "
                                 f"{h}x{w}")
            last.pool += 1
            last.source += (i,)
            shape = last.out_shape
        else:                                   # QFlatten: the layout needs no change
            flat = True
    if not out:
        raise ValueError("the model has no conv or linear layer")
    for ly in out:
        _check_limits(ly, config)
    return out


def _check_limits(ly: HwLayer, config: CnnConfig) -> None:
    c, h, w = ly.in_shape
    for what, value, limit, param in (
            ("input height", h, config.max_dim, "max_dim"),
            ("input width", w, config.max_dim, "max_dim"),
            ("kernel height", ly.kernel[0], config.max_dim, "max_dim"),
            ("kernel width", ly.kernel[1], config.max_dim, "max_dim"),
            ("padding", ly.pad, config.max_pad, "max_pad"),
            ("stride", ly.stride, config.max_stride, "max_stride"),
            ("pool exponent", ly.pool, config.max_pool, "max_pool"),
            ("output channels", ly.rows, config.max_rows, "max_rows")):
        if value > limit:
            raise ValueError(f"{ly.name}: {what} {value} exceeds the engine's `{param}` = "
                             f"{limit}")
    check_encoding(config, ly.matrix, ly.name)
    check_weights(config, ly.matrix, ly.name)


def groups(channels: int, lanes: int) -> int:
    """Words per pixel: ``ceil(channels / lanes)``."""
    return -(-channels // lanes)


def hw_columns(ly: HwLayer, lanes: int) -> np.ndarray:
    """Hardware column of every golden column ``c * kh * kw + ky * kw + kx`` (int64)."""
    c_in = ly.in_shape[0]
    kh, kw = ly.kernel
    ng = groups(c_in, lanes)
    c, ky, kx = np.meshgrid(np.arange(c_in), np.arange(kh), np.arange(kw), indexing="ij")
    return (((ky * kw + kx) * ng + c // lanes) * lanes + c % lanes).ravel().astype(np.int64)


def permute_columns(enc: EncodedMatrix, new_col: np.ndarray, n_cols: int) -> EncodedMatrix:
    """``enc`` with column ``j`` moved to ``new_col[j]`` of an ``n_cols``-column matrix (the
    other columns empty).  Entries keep their zero runs (they are relative to the column)."""
    new_col = np.asarray(new_col, dtype=np.int64)
    if len(new_col) != enc.cols or len(np.unique(new_col)) != enc.cols \
            or (len(new_col) and (new_col.min() < 0 or new_col.max() >= n_cols)):
        raise ValueError("`new_col` must map the columns one-to-one into 0..n_cols-1")
    order = np.full(n_cols, -1, dtype=np.int64)
    order[new_col] = np.arange(enc.cols)
    entries, pointers = [], []
    for p in range(enc.n_pe):
        ptr = np.asarray(enc.col_ptr[p], dtype=np.int64)
        lengths = np.zeros(n_cols, dtype=np.int64)
        used = order >= 0
        lengths[used] = ptr[order[used] + 1] - ptr[order[used]]
        new_ptr = np.concatenate([[0], np.cumsum(lengths)])
        pieces = [enc.entries[p][ptr[j]:ptr[j + 1]] for j in order if j >= 0]
        entries.append(np.concatenate(pieces).astype(np.uint16) if pieces
                       else np.zeros(0, np.uint16))
        pointers.append(new_ptr)
    return EncodedMatrix(enc.rows, n_cols, enc.n_pe, enc.index_bits, enc.run_bits, entries,
                         pointers)


def hw_matrix(ly: HwLayer, lanes: int, pe_group: int = 1) -> EncodedMatrix:
    """The layer's encoded matrix in hardware column order (``kh * kw * ng * G`` columns),
    padded for lockstep PE groups of ``pe_group`` (:func:`host.encoding.pad_groups`)."""
    kh, kw = ly.kernel
    n_cols = kh * kw * groups(ly.in_shape[0], lanes) * lanes
    enc = permute_columns(ly.matrix.encoded, hw_columns(ly, lanes), n_cols)
    return pad_groups(enc, pe_group)


def fm_words(shape, lanes: int) -> int:
    """Words a ``(C, H, W)`` map takes in a feature-map buffer."""
    c, h, w = shape
    return h * w * groups(c, lanes)


def _sizes(config: CnnConfig, layers) -> dict:
    entries = pointers = bias = words = 0
    for ly in layers:
        enc = hw_matrix(ly, config.fm_lanes, config.pe_group)
        entries += int(enc.entries_per_pe().max())
        pointers += enc.cols
        bias += ly.rows
        words = max(words, fm_words(ly.in_shape, config.fm_lanes),
                    fm_words(ly.out_shape, config.fm_lanes))
    return {"entries": entries, "pointers": pointers, "bias": bias, "fm_words": words}


@dataclass
class CnnImage:
    """Memory contents of one model.

    Attributes
    ----------
    entries : ndarray (E, n_pe) int64
    pointers : ndarray (K, n_pe) int64, relative to each layer's entry base
    codebooks : ndarray (layers, 2**index_bits) int64
    bias : ndarray (sum of C_out,) int64, wrapped to acc_bits
    descriptors : ndarray (layers, len(Field)) int64
    layers : list of HwLayer
    matrices : list of EncodedMatrix, hardware column order
    """

    entries: np.ndarray
    pointers: np.ndarray
    codebooks: np.ndarray
    bias: np.ndarray
    descriptors: np.ndarray
    layers: list = field(default_factory=list)
    matrices: list = field(default_factory=list)
    input_shape: tuple = ()

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def output_shape(self) -> tuple:
        return self.layers[-1].out_shape


def build_image(config: CnnConfig, model_or_layers, input_shape=None) -> CnnImage:
    """Lay out a model (``CompressedModel``, or a layer list with ``input_shape``).

    Raises
    ------
    ValueError
        If a layer is not supported or does not fit: the message names the layer and the
        memory (``fm_words``, ``max_entries_per_pe``, ``max_pointers``, ``max_bias``,
        ``max_layers``) or limit.
    """
    if input_shape is None:
        layers_in, input_shape = model_or_layers.layers, model_or_layers.input_shape
    else:
        layers_in = model_or_layers
    layers = plan_layers(layers_in, input_shape, config)
    if len(layers) > config.max_layers:
        raise ValueError(f"the model has {len(layers)} conv/linear layers, the engine's "
                         f"descriptor table holds `max_layers` = {config.max_layers}")
    g = config.fm_lanes
    memories = MatrixMemories(config.n_pe, config.acc_bits, config.max_entries_per_pe)
    descs, mats = [], []
    for n, ly in enumerate(layers):
        for what, shape in (("input", ly.in_shape), ("output", ly.out_shape)):
            need = fm_words(shape, g)
            if need > config.fm_words:
                c, h, w = shape
                raise ValueError(f"{ly.name}: the {what} feature map {c}x{h}x{w} needs {need} "
                                 f"words of {g} activations, the feature-map buffer holds "
                                 f"`fm_words` = {config.fm_words}")
        enc = hw_matrix(ly, g, config.pe_group)
        mats.append(enc)
        entry_base, ptr_base, bias_base = memories.place(enc, ly.matrix.codebook, ly.matrix.bias)
        if memories.entry_base > config.max_entries_per_pe:
            raise ValueError(f"{ly.name}: the entry memory needs {memories.entry_base} entries "
                             f"per PE up to this layer, the engine holds "
                             f"`max_entries_per_pe` = {config.max_entries_per_pe}")
        if memories.ptr_base > config.max_pointers:
            raise ValueError(f"{ly.name}: the pointer memory needs {memories.ptr_base} "
                             f"slots up to this layer, the engine holds `max_pointers` = "
                             f"{config.max_pointers}")
        if memories.bias_base > config.max_bias:
            raise ValueError(f"{ly.name}: the bias memory needs {memories.bias_base} words up "
                             f"to this layer, the engine holds `max_bias` = {config.max_bias}")
        descs.append(_descriptor(config, ly, n, entry_base, ptr_base, bias_base))
    return CnnImage(*memories.arrays(), np.stack(descs), layers, mats,
                    tuple(layers[0].in_shape))


def _descriptor(config, ly: HwLayer, n, entry_base, ptr_base, bias_base) -> np.ndarray:
    g = config.fm_lanes
    c_in, h, w = ly.in_shape
    kh, kw = ly.kernel
    ng_in, ng_out = groups(c_in, g), groups(ly.rows, g)
    last = c_in - (ng_in - 1) * g
    oh, ow = ly.computed_shape
    d = np.zeros(len(Field), dtype=np.int64)
    d[Field.ROWS] = ly.rows
    d[Field.ENTRY_BASE] = entry_base
    d[Field.PTR_BASE] = ptr_base
    d[Field.BIAS_BASE] = bias_base
    d[Field.CODEBOOK] = n
    d[Field.SHIFT] = requant_shift(ly.matrix.weight_format, config.product_shift)
    d[Field.RELU] = int(ly.relu)
    d[Field.IN_H], d[Field.IN_W] = h, w
    d[Field.KH], d[Field.KW] = kh, kw
    d[Field.STRIDE] = ly.stride
    d[Field.PAD] = ly.pad
    d[Field.IN_GROUPS] = ng_in
    d[Field.LAST_MASK] = (1 << last) - 1
    d[Field.ROW_STRIDE] = w * ng_in
    d[Field.KW_GROUPS] = kw * ng_in
    d[Field.COL_STEP] = ly.stride * ng_in
    d[Field.ROW_STEP] = ly.stride * w * ng_in
    d[Field.BASE0] = -(ly.pad * w + ly.pad) * ng_in
    d[Field.OUT_H], d[Field.OUT_W] = oh, ow
    d[Field.POOL] = ly.pool
    d[Field.OUT_GROUPS] = ng_out
    d[Field.OUT_ROW_STRIDE] = (ow >> ly.pool) * ng_out
    return d


def to_fm(x, lanes: int) -> np.ndarray:
    """A ``(C, H, W)`` map as a feature-map buffer's activations (flat, word * G + lane)."""
    x = np.asarray(x, dtype=np.int64)
    c, h, w = x.shape
    ng = groups(c, lanes)
    padded = np.zeros((ng * lanes, h, w), dtype=np.int64)
    padded[:c] = x
    return padded.transpose(1, 2, 0).reshape(-1)


def from_fm(flat, shape, lanes: int) -> np.ndarray:
    """Inverse of :func:`to_fm`: the ``(C, H, W)`` map from the buffer's first activations."""
    c, h, w = shape
    ng = groups(c, lanes)
    a = np.asarray(flat, dtype=np.int64)[:h * w * ng * lanes]
    return a.reshape(h, w, ng * lanes).transpose(2, 0, 1)[:c]


def input_addresses(shape, lanes: int) -> np.ndarray:
    """Activation addresses (word * G + lane) of a ``(C, H, W)`` map, in (C, H, W) order."""
    c, h, w = shape
    ng = groups(c, lanes)
    ci, yi, xi = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    return (((yi * w + xi) * ng + ci // lanes) * lanes + ci % lanes).ravel().astype(np.int64)


def output_addresses(image: CnnImage, lanes: int) -> np.ndarray:
    """Activation addresses of the last layer's output map in (C, H, W) order."""
    return input_addresses(image.output_shape, lanes)


def input_writes(config: CnnConfig, image: CnnImage, x) -> dict[str, np.ndarray]:
    """INPUT writes of one input map: every activation of the padded buffer image (pad lanes
    written with 0), ascending addresses."""
    x = np.asarray(x, dtype=np.int64).reshape(image.input_shape)
    flat = to_fm(x, config.fm_lanes)
    return {"region": np.full(len(flat), int(Region.INPUT), dtype=np.int64),
            "addr": np.arange(len(flat), dtype=np.int64), "data": flat}


def image_writes(config: CnnConfig, image: CnnImage) -> dict[str, np.ndarray]:
    """Loader writes of ``image``: arrays ``region``, ``addr``, ``data`` (signed values; the
    driver masks them to the port width) and ``lanes`` (n, n_pe), in write order."""
    writes = LoaderWrites(config.n_pe)
    writes.add_matrix_memories(Region, image, config.index_bits)
    for n, desc in enumerate(image.descriptors):
        writes.add(Region.DESCRIPTOR, (n << FIELD_BITS) + np.arange(len(desc)), data=desc)
    return writes.arrays()
