"""Cycle model of the sparse CNN engine (``hdl/cnn.py``) and the expectations of a run.

Per output pixel of a layer the engine runs a **setup** (``pixel_setup`` cycles: patch bounds,
start addresses), a **MAC phase** and an **output phase** (``rows + output_overhead`` cycles:
one output channel per cycle through bias, requantize, ReLU and the max-pool read-modify-write).
Per layer ``layer_setup`` cycles load the descriptor.  The MAC phase, cycle 0 = its first cycle:

* **Window generator**: reads the patch's in-bounds feature-map words (``G`` activations each)
  in ``(ky, kx, group)`` order, one read per cycle; word 0's data is there in cycle 1.  A word
  with no non-zero lane occupies one cycle; a word with ``m`` non-zero lanes pushes them one per
  cycle (lowest lane first), and the next word's data arrives the cycle after its last push.
  So with ``t`` the cycle a word's data arrives, its pushes ``c`` happen at::

      B[c] = max(t, B[c-1] + 1, max_p pop_p[c-F] + 1)        (then t = B[c] + 1)

  and a zero word moves ``t`` on by one.  Padding positions are never read.
* **PEs**: exactly :mod:`host.cyclemodel`'s rules (``pop_p[c] = max(B[c] + 1,
  pop_p[c-1] + pop_interval, E_p[c-1] - fetch_latency)``,
  ``E_p[c] = pop_p[c] + fetch_latency + w_p[c]``).
* **Done**: ``M = max(scan_end, max_p E_p[last] + drain_latency)`` where ``scan_end`` is the
  ``t`` after the last word (0 when the patch has no in-bounds word); the MAC phase lasts
  ``M + 1`` cycles.

The *ideal bound* of a pixel is the busiest PE's entries over the broadcast columns; of a layer
or image, the sum over its pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .cnn_image import CnnConfig, CnnImage, groups
from .compressed import CompressedModel
from .memory_map import DRAIN_LATENCY, FETCH_LATENCY, POP_INTERVAL

__all__ = ["CnnTiming", "PixelCycles", "LayerCycles", "CnnRun", "layer_words", "mac_cycles",
           "expected_runs", "layer_inputs", "model_for"]


@dataclass(frozen=True)
class CnnTiming:
    """Cycle constants of the CNN engine (see the module docstring).

    Parameters
    ----------
    fifo_depth, fetch_latency, drain_latency : int
        As :class:`host.cyclemodel.Timing`.
    layer_setup : int
        Cycles per layer before its first pixel (descriptor load, counter init).
    pixel_setup : int
        Cycles per pixel before its MAC phase.
    output_overhead : int
        Output phase cycles beyond ``ceil(rows / output_rows)`` (pipeline + finish; includes
        the requantizer's latency).
    output_rows : int
        Output channels requantized per cycle (1, or ``n_pe`` with ``out_parallel``).
    """

    fifo_depth: int = 8
    fetch_latency: int = FETCH_LATENCY
    drain_latency: int = DRAIN_LATENCY
    layer_setup: int = 2
    pixel_setup: int = 2
    output_overhead: int = 2
    output_rows: int = 1
    #: Fewest cycles between two pops of one PE (:class:`host.cyclemodel.Timing`).
    pop_interval: int = POP_INTERVAL


def layer_words(ly, x, lanes: int):
    """The window generator's reads, per computed output pixel (raster order).

    Yields ``(n_words, word_pos, columns)``: the patch's in-bounds word count, and for every
    non-zero activation (broadcast order) the position of its word in the read sequence and its
    hardware column ``word_index * G + lane``.
    """
    c_in, h, w = ly.in_shape
    kh, kw = ly.kernel
    s, p = ly.stride, ly.pad
    ng = groups(c_in, lanes)
    xp = np.zeros((ng * lanes, h, w), dtype=np.int64)
    xp[:c_in] = np.asarray(x, dtype=np.int64).reshape(c_in, h, w)
    xw = xp.reshape(ng, lanes, h, w).transpose(2, 3, 0, 1)     # (h, w, ng, lanes)
    oh, ow = ly.computed_shape
    for oy in range(oh):
        iy0 = oy * s - p
        ky_lo, ky_hi = max(0, -iy0), min(kh, h - iy0)
        for ox in range(ow):
            ix0 = ox * s - p
            kx_lo, kx_hi = max(0, -ix0), min(kw, w - ix0)
            if ky_lo >= ky_hi or kx_lo >= kx_hi:
                yield 0, np.zeros(0, np.int64), np.zeros(0, np.int64)
                continue
            slab = xw[iy0 + ky_lo:iy0 + ky_hi, ix0 + kx_lo:ix0 + kx_hi].reshape(-1, lanes)
            ky, kx, g = np.meshgrid(np.arange(ky_lo, ky_hi), np.arange(kx_lo, kx_hi),
                                    np.arange(ng), indexing="ij")
            wi = ((ky * kw + kx) * ng + g).ravel()
            pos, lane = np.nonzero(slab)
            yield len(slab), pos, wi[pos] * lanes + lane


@dataclass
class PixelCycles:
    cycles: int          # MAC phase M (the phase lasts M + 1 cycles)
    ideal: int           # busiest PE's entries
    busy: np.ndarray     # entries per PE
    pushes: int          # broadcast activations


def mac_cycles(col_len: np.ndarray, n_words: int, word_pos, columns,
               timing: CnnTiming) -> PixelCycles:
    """MAC phase of one pixel: ``col_len`` (n_pe, hw columns) entry counts, the pixel's word
    count and its pushes (:func:`layer_words`)."""
    n_pe = col_len.shape[0]
    word_pos = np.asarray(word_pos, dtype=np.int64)
    columns = np.asarray(columns, dtype=np.int64)
    if n_words == 0:
        return PixelCycles(0, 0, np.zeros(n_pe, np.int64), 0)
    work = col_len[:, columns]                           # (n_pe, pushes)
    busy = work.sum(axis=1)
    depth, fetch = timing.fifo_depth, timing.fetch_latency
    neg = -(1 << 40)
    last_pop = np.full(n_pe, neg, dtype=np.int64)
    end = np.full(n_pe, neg, dtype=np.int64)
    max_pop = []
    t = 1
    prev_word = -1
    for c in range(len(columns)):
        wp = int(word_pos[c])
        if wp != prev_word:
            t += wp - prev_word - 1                        # zero words in between
            prev_word = wp
        b = t
        if c >= depth:
            b = max(b, max_pop[c - depth] + 1)
        pop = np.maximum(np.maximum(last_pop + timing.pop_interval, end - fetch), b + 1)
        last_pop = pop
        end = pop + fetch + work[:, c]
        max_pop.append(int(pop.max()))
        t = b + 1
    t += n_words - 1 - prev_word                           # trailing zero words
    m = t
    if len(columns):
        m = max(m, int(end.max()) + timing.drain_latency)
    return PixelCycles(m, int(busy.max()), busy, len(columns))


@dataclass
class LayerCycles:
    """Cycles of one hardware layer on one input."""

    cycles: int                  # whole layer (setup, every pixel's setup, MAC and output)
    mac: int                     # sum of MAC phases (M + 1 per pixel)
    ideal: int                   # sum over pixels of the busiest PE's entries
    busy: np.ndarray             # entries per PE, all pixels
    pushes: int                  # broadcast activations
    pixels: int
    dense_mac: int | None = None  # MAC cycles when every in-bounds activation is broadcast
    dense_pushes: int | None = None  # in-bounds activations (broadcasts without zero skipping)


def layer_cycles(config: CnnConfig, ly, matrix, x, timing: CnnTiming) -> LayerCycles:
    """:class:`LayerCycles` of hardware layer ``ly`` (``matrix``: its hardware-order
    :class:`EncodedMatrix`) on its input map ``x``."""
    col_len = matrix.column_lengths()
    g = config.fm_lanes
    mac = ideal = pushes = pixels = 0
    busy = np.zeros(config.n_pe, np.int64)
    for n_words, pos, cols in layer_words(ly, x, g):
        r = mac_cycles(col_len, n_words, pos, cols, timing)
        mac += r.cycles + 1
        ideal += r.ideal
        busy += r.busy
        pushes += r.pushes
        pixels += 1
    out = -(-ly.rows // timing.output_rows) + timing.output_overhead
    total = timing.layer_setup + pixels * (timing.pixel_setup + out) + mac
    return LayerCycles(total, mac, ideal, busy, pushes, pixels)


def model_for(config: CnnConfig, layers, input_shape, name="cnn") -> CompressedModel:
    """A :class:`CompressedModel` of ``layers`` with the engine's formats (for the golden
    model)."""
    return CompressedModel(name, tuple(input_shape), list(layers), config.n_pe,
                           config.act_format, config.acc_bits,
                           product_shift=config.product_shift)


def layer_inputs(image: CnnImage, model: CompressedModel, xs) -> tuple[list, np.ndarray]:
    """Golden input maps of every hardware layer and the model's outputs for a batch ``xs``
    (quantized, ``(B, *model.input_shape)``): ``(inputs, outputs)`` with ``inputs[n]`` of shape
    ``(B, *layers[n].in_shape)`` and ``outputs`` ``(B, -1)`` in (C, H, W) order."""
    from .golden import GoldenModel
    golden = GoldenModel(model)
    cur = np.asarray(xs, dtype=np.int64).reshape((-1,) + tuple(model.input_shape))
    batch = len(cur)
    last_of = {ly.source[-1]: n for n, ly in enumerate(image.layers)}
    inputs = [cur.reshape((batch,) + tuple(image.layers[0].in_shape))]
    for i, layer in enumerate(model.layers):
        cur = golden.layer_forward(layer, cur)
        n = last_of.get(i)
        if n is not None and n + 1 < len(image.layers):
            inputs.append(cur.reshape((batch,) + tuple(image.layers[n + 1].in_shape)))
    return inputs, cur.reshape(batch, -1)


@dataclass
class CnnRun:
    """What the engine must produce for one input."""

    outputs: np.ndarray                 # model output, (C, H, W) order flattened, int64
    layers: list = field(default_factory=list)   # LayerCycles per hardware layer

    @property
    def cycles(self) -> int:
        return sum(ly.cycles for ly in self.layers)

    @property
    def layer_cycles(self) -> np.ndarray:
        return np.array([ly.cycles for ly in self.layers], dtype=np.int64)

    @property
    def ideal(self) -> int:
        return sum(ly.ideal for ly in self.layers)


def expected_runs(config: CnnConfig, image: CnnImage, model: CompressedModel, xs,
                  timing: CnnTiming, dense: bool = False) -> list[CnnRun]:
    """Golden outputs and modelled cycles of ``image`` (built from ``model``) on every input of
    the batch ``xs``; ``dense`` also fills ``dense_mac``/``dense_pushes`` (every in-bounds
    activation broadcast, i.e. no zero skipping)."""
    inputs, outs = layer_inputs(image, model, xs)
    # Without zero skipping every in-bounds activation would be broadcast: an all-ones input.
    full = [layer_cycles(config, ly, mat, np.ones(ly.in_shape, np.int64), timing)
            for ly, mat in zip(image.layers, image.matrices)] if dense else None
    runs = []
    for b in range(len(outs)):
        layers = [layer_cycles(config, ly, mat, xin[b], timing)
                  for ly, mat, xin in zip(image.layers, image.matrices, inputs)]
        if full is not None:
            for ly, f in zip(layers, full):
                ly.dense_mac, ly.dense_pushes = f.mac, f.pushes
        runs.append(CnnRun(outs[b], layers))
    return runs
