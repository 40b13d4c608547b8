"""The Deep Compression pipeline: float model in, :class:`CompressedModel` and figures out.

Per weight layer: (1) magnitude pruning to the target density, load-balance-aware over the PEs
by default (ESE); (2) weight sharing by k-means into ``2**bits`` codebook entries (entry 0 is
0.0), optionally fine-tuned with PyTorch (trained quantization); (3) fixed-point formats;
(4) EIE encoding per PE; (5) the product shift (:func:`choose_product_shift`: how far every
product is floored so that narrow accumulators hold the calibration data).  ReLU layers after
a Linear or Conv2d are fused into it.  An LSTM's projection ``W_hr`` (LSTMP) is a second
matrix of its layer, compressed the same way (same density, its own codebook, a zero bias).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .activations import TableSpec
from .compressed import (CompressedModel, QConv2d, QFlatten, QLinear, QLSTM, QMaxPool2d,
                         QReLU, SparseMatrix, acc_frac)
from .encoding import encode
from .errors import FitError, ModelError
from .fixedpoint import MAX_WIDTH, Format, quantize
from .floatmodel import (LSTM, Conv2d, Flatten, FloatModel, Linear, MaxPool2d, ReLU,
                         projection_matrix, weight_matrix, with_projection_matrix,
                         with_weight_matrix)
from .pruning import balanced_mask, magnitude_mask, pe_balance
from .sharing import share_weights

__all__ = ["CompressConfig", "LayerStats", "CompressionResult", "compress_model",
           "calibrate_act_frac", "weight_format_for", "apply_shared_weights",
           "choose_product_shift", "ShiftChoice", "OVERFLOW_MARGIN"]

#: Headroom the automatic product shift leaves: the largest true accumulator (bias included)
#: on the calibration data, times this factor, must fit the signed ``acc_bits`` accumulator
#: (25%, as the activation format's calibration).
OVERFLOW_MARGIN = 1.25

MAX_POINTER = (1 << 16) - 1
"""Largest per-PE entry count a 16-bit column pointer (EIE) can address."""


@dataclass
class CompressConfig:
    """Settings of one compression run (all validated by :meth:`validate`).

    Parameters
    ----------
    n_pe : int
        PEs the rows are interleaved over (1..1024).
    density : float
        Fraction of weights kept per layer, in (0, 1].
    bits : int
        Codebook index width B (1..8): ``2**B`` shared values including 0.
    run_bits : int
        EIE relative-index (zero-run) field width (1..8).
    balance : bool
        Load-balance-aware pruning (ESE); plain magnitude pruning when False.
    act_width, act_frac : int
        Activation format; ``act_frac=None`` picks the fraction bits from calibration data.
    weight_width : int
        Codebook entry width in bits (16 matches the iCE40 DSP).
    acc_bits : int
        Accumulator width in bits.
    product_shift : int or None
        Bits every product is floored by before it is added (:mod:`host.compressed`); None
        (default) chooses the smallest one whose accumulators hold the calibration data
        (:func:`choose_product_shift`; 0 for 32-bit accumulators in practice).
    layer_density : dict
        Per-layer density overrides, keyed by layer index of the float model.
    finetune_epochs : int
        Epochs of centroid fine-tuning (needs PyTorch and training data); 0 = off.
    """

    n_pe: int = 8
    density: float = 0.25
    bits: int = 4
    run_bits: int = 4
    balance: bool = True
    act_width: int = 16
    act_frac: int | None = None
    weight_width: int = 16
    acc_bits: int = 32
    product_shift: int | None = None
    layer_density: dict = field(default_factory=dict)
    finetune_epochs: int = 0
    table_spec: TableSpec = field(default_factory=TableSpec)

    def validate(self) -> CompressConfig:
        def integer(name, lo, hi):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise ValueError(f"`{name}` must be an integer from {lo} to {hi}, "
                                 f"not {value!r}")
        integer("n_pe", 1, 1024)
        integer("bits", 1, 8)
        integer("run_bits", 1, 8)
        integer("act_width", 4, MAX_WIDTH)
        integer("weight_width", 2, MAX_WIDTH)
        integer("acc_bits", 8, 48)
        integer("finetune_epochs", 0, 10_000)
        for where, value in [("density", self.density)] + [
                (f"layer_density[{k}]", v) for k, v in self.layer_density.items()]:
            if not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"`{where}` must be a number in (0, 1], not {value!r}")
        if self.act_frac is not None:
            integer("act_frac", 0, self.act_width - 2)
        if self.product_shift is not None:
            integer("product_shift", 0, self.act_width + self.weight_width - 1)
        if self.act_width + self.weight_width > self.acc_bits + 16:
            raise ValueError(f"`acc_bits` = {self.acc_bits} is too narrow for "
                             f"{self.act_width}-bit activations times "
                             f"{self.weight_width}-bit weights")
        return self

    def to_dict(self) -> dict:
        return {"n_pe": self.n_pe, "density": self.density, "bits": self.bits,
                "run_bits": self.run_bits, "balance": self.balance,
                "act_width": self.act_width, "act_frac": self.act_frac,
                "weight_width": self.weight_width, "acc_bits": self.acc_bits,
                "product_shift": self.product_shift,
                "layer_density": {str(k): v for k, v in self.layer_density.items()},
                "finetune_epochs": self.finetune_epochs}


@dataclass
class LayerStats:
    """Per-weight-layer figures of one compression run."""

    index: int
    kind: str
    shape: tuple
    density: float
    nonzeros: int
    padding: int
    balance_before: dict
    balance_after: dict
    weight_format: str
    max_entries_per_pe: int


@dataclass
class ShiftChoice:
    """How the product shift was chosen (:func:`choose_product_shift`).

    Attributes
    ----------
    product_shift : int
    auto : bool
        Chosen from calibration data (False: given in the config).
    peak : int or None
        Largest true accumulator magnitude on the calibration data (integer, bias included;
        None without data).
    limit : int
        Largest accumulator magnitude ``2**(acc_bits - 1) - 1``.
    act_frac_lowered : int
        Bits the calibrated activation fraction was lowered by so that the shift fits every
        layer's weight fraction bits (0: unchanged).
    """

    product_shift: int
    auto: bool
    peak: int | None
    limit: int
    act_frac_lowered: int = 0

    @property
    def margin_bits(self) -> float | None:
        """Headroom ``log2(limit / peak)`` in bits (None without data)."""
        if self.peak is None:
            return None
        return math.log2(self.limit / max(self.peak, 1))

    def to_dict(self) -> dict:
        return {"product_shift": self.product_shift, "auto": self.auto, "peak": self.peak,
                "limit": self.limit, "margin_bits": self.margin_bits,
                "act_frac_lowered": self.act_frac_lowered}


@dataclass
class CompressionResult:
    model: CompressedModel
    layers: list
    float_model: FloatModel
    config: CompressConfig
    shift: ShiftChoice | None = None


def calibrate_act_frac(model: FloatModel, x: np.ndarray | None, width: int) -> int:
    """Fraction bits of the activation format so that calibration activations fit.

    Looks at the inputs, every layer output that is not fed straight into a ReLU (those are
    clipped anyway), and LSTM cell states; leaves a 25% margin.  At least one integer bit is
    kept (sigmoid/tanh reach 1.0).  Without data, 8 fraction bits.
    """
    if x is None or len(x) == 0:
        return min(8, width - 2)
    x = np.asarray(x, dtype=np.float64)
    peak = float(np.abs(x).max())
    for index, layer in enumerate(model.layers):
        if isinstance(layer, LSTM):
            hs, cs = layer.sequences(x)
            peak = max(peak, float(np.abs(cs).max()))
            x = layer.output_of(hs)
        else:
            x = layer.forward(x)
        next_is_relu = index + 1 < len(model.layers) and isinstance(model.layers[index + 1], ReLU)
        if not next_is_relu:
            peak = max(peak, float(np.abs(x).max()))
    int_bits = max(1, math.ceil(math.log2(max(peak * 1.25, 1.0))))
    return int(np.clip(width - 1 - int_bits, 0, width - 2))


def weight_format_for(codebook: np.ndarray, width: int) -> Format:
    """Widest-fraction format of ``width`` bits that holds every codebook value."""
    peak = float(np.abs(codebook).max())
    if peak == 0:
        return Format(width, width - 1)
    frac = math.floor(math.log2(((1 << (width - 1)) - 1) / peak))
    return Format(width, int(np.clip(frac, 0, width - 1)))


def apply_shared_weights(model: FloatModel, codebooks: dict, indices: dict,
                         projections: dict | None = None) -> FloatModel:
    """The float model with every weight replaced by its (float) shared value;
    ``projections`` maps a layer index to the ``(codebook, indices)`` of its projection."""
    layers = []
    for i, layer in enumerate(model.layers):
        if i in indices:
            layer = with_weight_matrix(layer, codebooks[i][indices[i]])
        if projections and i in projections:
            book, idx = projections[i]
            layer = with_projection_matrix(layer, book[idx])
        layers.append(layer)
    return FloatModel(model.name, model.input_shape, layers)


def compress_model(model: FloatModel, config: CompressConfig, *, calib_x=None,
                   train=None, progress=None) -> CompressionResult:
    """Compress ``model``.

    Parameters
    ----------
    calib_x : ndarray, optional
        Inputs used to choose the activation format when ``config.act_frac`` is None.
    train : tuple (x, y), optional
        Training data for centroid fine-tuning (``config.finetune_epochs > 0``).
    progress : callable, optional
        Called with a short text for every stage (the CLI feeds a progress bar).

    Raises
    ------
    ModelError
        For a layer spine cannot map.
    FitError
        For a layer whose encoding exceeds the 16-bit column pointers of the engine.
    """
    config.validate()
    step = progress or (lambda text: None)
    weight_layers = [i for i, lay in enumerate(model.layers) if weight_matrix(lay) is not None]
    for index in config.layer_density:
        if index not in weight_layers:
            raise ValueError(f"`layer_density` names layer {index!r}, which is not a weight "
                             f"layer of {model.name!r} (weight layers: {weight_layers})")
    codebooks, indices, masks = {}, {}, {}
    projections = {}                  # layer index -> (codebook, indices, masks)

    def prune_and_share(matrix, density):
        plain = magnitude_mask(matrix, density)
        mask = balanced_mask(matrix, density, config.n_pe) if config.balance else plain
        mask &= matrix != 0
        book, idx = share_weights(matrix, mask, config.bits)
        return book, idx, (mask, plain)

    for index, layer in enumerate(model.layers):
        matrix = weight_matrix(layer)
        if matrix is None:
            continue
        step(f"layer {index} ({layer.kind}): prune and share")
        density = float(config.layer_density.get(index, config.density))
        codebooks[index], indices[index], masks[index] = prune_and_share(matrix, density)
        if projection_matrix(layer) is not None:
            projections[index] = prune_and_share(projection_matrix(layer), density)

    if config.finetune_epochs > 0 and projections:
        raise ValueError(f"centroid fine-tuning does not support LSTMs with a projection "
                         f"(layers {sorted(projections)} of {model.name!r}); use "
                         f"finetune_epochs=0 (--finetune 0)")
    if config.finetune_epochs > 0:
        if train is None:
            raise ValueError("centroid fine-tuning needs training data; this model has none "
                             "(use a bundled example, or give --data)")
        from .finetune import finetune_codebooks
        step("fine-tune centroids")
        assignments = [indices.get(i) for i in range(len(model.layers))]
        books = [codebooks.get(i) for i in range(len(model.layers))]
        tuned = finetune_codebooks(model, assignments, books, train[0], train[1],
                                   epochs=config.finetune_epochs)
        codebooks = {i: np.asarray(tuned[i], dtype=np.float64) for i in codebooks}

    act_frac = config.act_frac
    if act_frac is None:
        shared = apply_shared_weights(model, codebooks, indices,
                                      {i: p[:2] for i, p in projections.items()})
        act_frac = calibrate_act_frac(shared, calib_x, config.act_width)

    def build(frac, product_shift):
        act = Format(config.act_width, frac)
        layers, stats = _build_layers(model, codebooks, indices, masks, projections, act,
                                      config, product_shift, step)
        compressed = CompressedModel(model.name, model.input_shape, layers, config.n_pe, act,
                                     config.acc_bits, config.table_spec,
                                     info={"config": config.to_dict()},
                                     product_shift=product_shift)
        return compressed, stats

    weight_fracs = [weight_format_for(book, config.weight_width).frac
                    for book in list(codebooks.values())
                    + [p[0] for p in projections.values()]]
    step("product shift")
    choice, (compressed, stats) = choose_product_shift(
        build, act_frac, weight_fracs, config, calib_x,
        lower_act=config.act_frac is None)
    compressed.info["product_shift"] = choice.to_dict()
    return CompressionResult(compressed, stats, model, config, choice)


def _build_layers(model, codebooks, indices, masks, projections, act, config, product_shift,
                  step):
    """The quantized layers of ``model`` (ReLUs after Linear/Conv2d fused) and their stats."""
    layers, stats = [], []
    position = 0
    while position < len(model.layers):
        layer = model.layers[position]
        fuse_relu = (position + 1 < len(model.layers)
                     and isinstance(model.layers[position + 1], ReLU)
                     and isinstance(layer, (Linear, Conv2d)))
        if position in codebooks:
            step(f"layer {position} ({layer.kind}): encode")
            sparse, layer_stats = _encode_layer(position, layer, codebooks[position],
                                                indices[position], masks[position], act,
                                                config, product_shift=product_shift)
            stats.append(layer_stats)
            if isinstance(layer, Linear):
                layers.append(QLinear(sparse, relu=fuse_relu))
            elif isinstance(layer, Conv2d):
                layers.append(QConv2d(sparse, layer.weight.shape[1], layer.kernel,
                                      layer.stride, layer.padding, relu=fuse_relu))
            else:
                proj = None
                if position in projections:
                    book, idx, pmasks = projections[position]
                    proj, proj_stats = _encode_layer(position, layer, book, idx, pmasks, act,
                                                     config, projection=True,
                                                     product_shift=product_shift)
                    stats.append(proj_stats)
                layers.append(QLSTM(sparse, layer.input_size, layer.hidden,
                                    layer.return_sequences, proj))
        elif isinstance(layer, ReLU):
            layers.append(QReLU())
        elif isinstance(layer, MaxPool2d):
            layers.append(QMaxPool2d())
        elif isinstance(layer, Flatten):
            layers.append(QFlatten())
        else:
            raise ModelError(f"layer {position} ({type(layer).__name__}) cannot be compressed")
        position += 2 if fuse_relu else 1
    return layers, stats


def _peak_accumulator(model: CompressedModel, calib_x) -> int:
    """Largest true accumulator magnitude (bias included) of ``model`` on ``calib_x``, with
    accumulators wide enough not to wrap (so one overflow does not garble the next layer)."""
    from .golden import GoldenModel
    golden = GoldenModel(replace(model, acc_bits=62))
    golden.forward(calib_x)
    return golden.diagnostics.peak_accumulator


def choose_product_shift(build, act_frac: int, weight_fracs, config: CompressConfig,
                         calib_x=None, *, lower_act: bool = False):
    """The product shift of a compression run and the model built with it.

    ``config.product_shift`` given: that one.  Otherwise the smallest p such that, on the
    calibration inputs ``calib_x``, the largest true accumulator (bias included; golden model)
    times :data:`OVERFLOW_MARGIN` fits the signed ``config.acc_bits``; without data the
    smallest p whose accumulator format is valid (0 for 32-bit accumulators).  p never exceeds
    a layer's weight fraction bits (the requantization shift ``weight.frac - p`` is a right
    shift); when the accumulators would need more and the activation fraction bits were
    calibrated (``lower_act``), they are lowered by the missing bits instead.

    Parameters
    ----------
    build : callable
        ``build(act_frac, p) -> (CompressedModel, stats)``.
    act_frac : int
        Activation fraction bits.
    weight_fracs : list of int
        Every matrix's weight fraction bits.

    Returns
    -------
    (ShiftChoice, (CompressedModel, stats))

    Raises
    ------
    FitError
        When no product shift makes the accumulators hold the calibration data.
    """
    acc_bits = config.acc_bits
    limit = (1 << (acc_bits - 1)) - 1
    if config.product_shift is not None:
        p = config.product_shift
        bad = [f for f in weight_fracs if f < p]
        if bad:
            raise FitError(f"--product-shift {p} exceeds the {min(bad)} fraction bits of a "
                           f"layer's weights: the requantization shift (weight fraction bits "
                           f"- product shift) must not be negative; use at most {min(bad)}")
        built = build(act_frac, p)
        peak = _peak_accumulator(built[0], calib_x) if calib_x is not None \
            and len(calib_x) else None
        return ShiftChoice(p, False, peak, limit), built
    lowered = 0
    cache = {}

    def fits(frac, p):
        """(accumulators hold the data with the margin, peak, build(frac, p))."""
        if (frac, p) not in cache:
            built = build(frac, p)
            peak = _peak_accumulator(built[0], calib_x)
            cache[frac, p] = (peak * OVERFLOW_MARGIN <= limit, peak, built)
        return cache[frac, p]

    while True:
        p_max = min(weight_fracs, default=0)
        # Accumulator formats need fewer fraction bits than acc_bits.
        p_min = max(0, max((act_frac + f - acc_bits + 1 for f in weight_fracs), default=0))
        if p_min > p_max:
            raise FitError(f"{acc_bits}-bit accumulators cannot hold the {act_frac} activation "
                           f"fraction bits plus the layers' weight fraction bits even with a "
                           f"product shift; lower --act-frac or widen --acc-bits")
        if calib_x is None or not len(calib_x):
            return ShiftChoice(p_min, True, None, limit, lowered), build(act_frac, p_min)
        ok, peak, built = fits(act_frac, p_min)
        if ok:
            return ShiftChoice(p_min, True, peak, limit, lowered), built
        lo, p = p_min, p_min
        while not ok and p < p_max:
            # Every bit of shift halves the accumulators: jump to the estimate, then bisect.
            need = max(1, math.ceil(math.log2(peak * OVERFLOW_MARGIN / limit)))
            lo, p = p, min(p + need, p_max)
            ok, peak, built = fits(act_frac, p)
        if ok:
            hi = p
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if fits(act_frac, mid)[0]:
                    hi = mid
                else:
                    lo = mid
            ok, peak, built = fits(act_frac, hi)
            return ShiftChoice(hi, True, peak, limit, lowered), built
        missing = max(1, math.ceil(math.log2(peak * OVERFLOW_MARGIN / limit)))
        if not lower_act or act_frac - missing < 0:
            raise FitError(f"{acc_bits}-bit accumulators overflow on the calibration data "
                           f"even with the largest product shift {p_max} (the smallest "
                           f"weight fraction bits; peak accumulator {peak}, limit {limit} "
                           f"with a {OVERFLOW_MARGIN:g}x margin): lower --act-frac by "
                           f"{missing} or widen --acc-bits")
        act_frac -= missing
        lowered += missing


def _encode_layer(index, layer, codebook, idx, masks, act, config, projection=False,
                  product_shift=0):
    """Encode one matrix of layer ``index`` (``projection``: an LSTM's ``W_hr``, zero bias)."""
    mask, plain = masks
    wfmt = weight_format_for(codebook, config.weight_width)
    codebook_q = quantize(codebook, wfmt)
    codebook_q[0] = 0
    kind = "lstm proj" if projection else layer.kind
    if projection:
        bias = np.zeros(idx.shape[0])
    elif isinstance(layer, LSTM):
        bias = layer.b_ih + layer.b_hh
    else:
        bias = layer.bias
    frac = acc_frac(act, wfmt, product_shift)
    if frac >= config.acc_bits:
        raise FitError(f"layer {index} ({kind}): accumulator of {config.acc_bits} bits "
                       f"cannot hold {frac} fraction bits; raise --acc-bits, "
                       f"--product-shift or lower --weight-width")
    acc_fmt = Format(config.acc_bits, frac)
    encoded = encode(idx, config.n_pe, index_bits=config.bits, run_bits=config.run_bits)
    per_pe = encoded.entries_per_pe()
    if per_pe.max() > MAX_POINTER:
        raise FitError(f"layer {index} ({kind}): PE {int(per_pe.argmax())} holds "
                       f"{int(per_pe.max())} entries, more than the 16-bit column pointers "
                       f"address ({MAX_POINTER}); use more PEs or a lower density")
    sparse = SparseMatrix(encoded, codebook_q, wfmt, quantize(bias, acc_fmt))
    stats = LayerStats(index, kind, tuple(idx.shape), float(mask.mean()),
                       int(np.count_nonzero(idx)), encoded.padding_count(),
                       pe_balance(plain, config.n_pe).to_dict(),
                       pe_balance(mask, config.n_pe).to_dict(), str(wfmt), int(per_pe.max()))
    return sparse, stats
