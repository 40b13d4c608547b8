"""Build a spine bitstream for a board: capacity check, synthesis, place and route, report.

::

    python -m hdl.build --board icebreaker [--model FILE.spn] [--pes N] [--pe-group G]
                        [--acc-bits A] [--freq MHZ] [--baud B] [--name NAME] [--seed S]
                        [--out DIR]

1. The engine is sized: for ``--model``, exactly for that model's matrices (PEs, field widths,
   formats, rows, columns, entries per PE, layers; with ``--pe-group 2`` for the pair-padded
   encodings); without, the board's default engine (``--pes``, ``--pe-group`` and
   ``--acc-bits`` override its PE count, PE grouping and accumulator width).
2. Capacity check, before any synthesis: the engine's and the shell's memories are counted in
   block RAMs (each memory mapped to the best EBR shape) and multipliers in DSPs, against the
   board budget.  A model that does not fit is refused naming the memory and the overflow.
3. Amaranth's build plan (``platform.build(..., do_build=False)``) is executed with the tools
   from :mod:`hdl.toolchain` (system or YoWASP Yosys/nextpnr); progress is shown per stage.
   nextpnr runs with ``--report`` (JSON utilisation and Fmax) and ``--timing-allow-fail`` so
   that a timing miss is reported (and fails the command) instead of aborting without a report.
4. Outputs ``bitstreams/<board>/<name>.bin``, ``<name>.json`` (machine-readable report: keys
   ``fmax_mhz``, ``target_mhz``, ``timing_met``, ``utilisation``, ...) and ``<name>.txt``.

Exit status: 0 built and timing met; 1 does not fit / timing missed / tool failure (message on
stderr); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BuildError", "CapacityError", "MemoryUse", "engine_for_model", "default_engine",
           "is_cnn", "cnn_config",
           "make_engine", "make_backend", "lstm_ew_lanes",
           "memory_inventory", "check_capacity", "model_pe_group", "board_entry_memory",
           "board_lstm_layout", "board_model_engine", "board_clock_hz", "dsp_paths",
           "MAC16_COMB_NS",
           "build_bitstream", "parse_nextpnr_report",
           "tool_overrides", "abc_dff_for", "ICE40_NO_READ_FIRST", "main"]

_REPO_ROOT = Path(__file__).resolve().parents[1]


class BuildError(RuntimeError):
    """The build cannot be done or failed; the message says why."""


class CapacityError(BuildError):
    """The design (model) does not fit the board."""


# ------------------------------------------------------------------------------------------------
# Engine sizing


def _mlp_layers(model):
    """The model's matrices as ``(QLinear, relu)`` layers of an MLP; ValueError otherwise."""
    from host.compressed import QLinear
    layers = []
    for i, layer in enumerate(model.layers):
        kind = type(layer).__name__
        if isinstance(layer, QLinear):
            layers.append(layer)
        elif kind in ("QReLU",) and layers or kind == "QFlatten" and not layers:
            continue
        else:
            raise ValueError(f"layer {i} of {model.name!r} is {kind}; the SPMV engine runs "
                             f"only linear layers with ReLU (an MLP)")
    if not layers:
        raise ValueError(f"model {model.name!r} has no linear layer")
    return layers


def _lstm_layers(model):
    """``([QLSTM, ...], QLinear classifier)`` of an LSTM package; ValueError otherwise (the
    driver's rule, :func:`host.driver._lstm_layers`)."""
    from host.driver import _lstm_layers
    return _lstm_layers(model)


def lstm_ew_lanes(n_pe: int) -> int:
    """Element-wise lanes of an LSTM engine built for ``n_pe`` PEs: 4 (or the most <= n_pe)."""
    return max(lanes for lanes in (1, 2, 4) if lanes <= n_pe)


def _padded(encs, pe_group):
    """The encodings as the image builders lay them out for ``pe_group`` (padded per group)."""
    from host.encoding import pad_groups
    return [pad_groups(e, pe_group) for e in encs] if pe_group > 1 else list(encs)


def _lstm_engine_for_model(model, stack, cls, pe_group=1):
    from host.memory_map import LstmParams, common_entries

    from .lstm import GATES
    matrices = [m for lstm in stack for m in (lstm.matrix, lstm.projection) if m is not None]
    matrices.append(cls.matrix)
    encs = _padded([m.encoded for m in matrices], pe_group)
    fields = {(e.index_bits, e.run_bits) for e in encs}
    steps = int(model.input_shape[0])
    hidden = max(lstm.hidden for lstm in stack)
    inputs = max(lstm.input_size for lstm in stack)
    proj = max(lstm.proj_size for lstm in stack)
    classes = cls.matrix.rows
    sizes = LstmParams(n_pe=model.n_pe, hidden_max=hidden, input_max=inputs, steps_max=steps,
                       classes_max=classes, max_entries_per_pe=16, layers_max=len(stack),
                       proj_max=proj)
    return dict(
        engine="lstm", n_pe=model.n_pe, hidden_max=hidden, input_max=inputs, steps_max=steps,
        classes_max=classes, index_bits=max(f[0] for f in fields),
        run_bits=max(f[1] for f in fields), act_width=model.act_format.width,
        act_frac=model.act_format.frac,
        weight_width=max(m.weight_format.width for m in matrices),
        acc_bits=model.acc_bits, table_spec=model.table_spec.to_dict(),
        max_entries_per_pe=max(16, sum(int(e.entries_per_pe().max()) for e in encs)),
        ew_lanes=lstm_ew_lanes(model.n_pe), layers_max=len(stack), proj_max=proj,
        **common_entries(model),
        # the SpMV-style keys (messages, IDENTIFY): as LstmBackend reports them
        max_rows=GATES * hidden, max_cols=inputs + hidden, max_layers=sizes.max_layers,
        max_pointers=sizes.max_pointers, max_bias=sizes.max_bias,
        mlp=False, uniform_fields=len(fields) == 1, pe_group=pe_group)


def is_cnn(model) -> bool:
    """Whether ``model`` has a conv layer (then it runs on the CNN engine)."""
    from host.compressed import QConv2d
    return any(isinstance(layer, QConv2d) for layer in model.layers)


def _cnn_engine_for_model(model, pe_group=1):
    """:class:`hdl.cnn.CnnEngine` parameters for a conv package: ``engine == "cnn"``, the
    IDENTIFY parameters (:func:`hdl.top.cnn_params`) and ``cnn_config``, the
    :class:`host.cnn_image.CnnConfig` fields (:meth:`~host.cnn_image.CnnConfig.for_model`).
    ValueError (naming the layer) if the CNN engine cannot run the model."""
    from host.cnn_image import CnnConfig, build_image

    from .top import cnn_params
    config = CnnConfig.for_model(model, pe_group=pe_group)
    build_image(config, model)          # refuses what the engine cannot run, naming the layer
    encs = [matrix.encoded for _, matrix in model.matrices()]
    fields = {(e.index_bits, e.run_bits) for e in encs}
    return dict(cnn_params(config), engine="cnn", cnn_config=config.to_dict(), mlp=False,
                uniform_fields=len(fields) == 1)


def cnn_config(params):
    """The :class:`host.cnn_image.CnnConfig` of CNN engine ``params``
    (:func:`engine_for_model`)."""
    from host.cnn_image import CnnConfig
    from host.fixedpoint import Format
    fields = dict(params["cnn_config"])
    fields["act_format"] = Format(**fields["act_format"])
    return CnnConfig(**fields)


def engine_for_model(model, *, max_layers=None, pe_group=1):
    """Engine keyword arguments sized exactly for ``model``'s matrices (with ``pe_group`` 2:
    for the pair-padded encodings, :func:`host.encoding.pad_groups`).

    A package with a conv layer gets an :class:`hdl.cnn.CnnEngine` (``engine == "cnn"``,
    :meth:`host.cnn_image.CnnConfig.for_model`).  An LSTM package (one QLSTM on a ``(T, I)``
    input, then one QLinear classifier) gets an
    :class:`hdl.lstm.LstmEngine` (``engine == "lstm"`` in the dict; :func:`make_engine` builds
    it).  Anything else gets :class:`hdl.spmv.SpmvEngine` arguments; that works for any model
    with matrices (so the capacity check is meaningful), but only MLPs run on it: ``mlp`` in
    the returned dict says whether it does.
    """
    from host.memory_map import common_entries
    if is_cnn(model):
        return _cnn_engine_for_model(model, pe_group)
    try:
        stack, cls = _lstm_layers(model)
    except ValueError:
        pass
    else:
        return _lstm_engine_for_model(model, stack, cls, pe_group)
    matrices = [matrix for _, matrix in model.matrices()]
    if not matrices:
        raise ValueError(f"model {model.name!r} has no weight matrices")
    encs = _padded([m.encoded for m in matrices], pe_group)
    fields = {(e.index_bits, e.run_bits) for e in encs}
    index_bits = max(f[0] for f in fields)
    run_bits = max(f[1] for f in fields)
    try:
        _mlp_layers(model)
        mlp = True
    except ValueError:
        mlp = False
    return dict(
        n_pe=model.n_pe, index_bits=index_bits, run_bits=run_bits,
        act_width=model.act_format.width, act_frac=model.act_format.frac,
        weight_width=max(m.weight_format.width for m in matrices), acc_bits=model.acc_bits,
        max_rows=max(e.rows for e in encs), max_cols=max(e.cols for e in encs),
        max_entries_per_pe=max(16, sum(int(e.entries_per_pe().max()) for e in encs)),
        max_layers=max(max_layers or 1, len(encs)),
        max_pointers=max(2, sum(e.cols for e in encs)),
        max_bias=max(1, sum(e.rows for e in encs)), mlp=mlp,
        uniform_fields=len(fields) == 1, **common_entries(model), pe_group=pe_group)


def model_pe_group(board, model, requested=None):
    """PEs per lockstep group of a build of ``model`` for ``board``: ``requested`` (the
    ``--pe-group`` option) if given, else the board's default engine's group when it divides
    the model's PE count, else 1."""
    if requested is not None:
        return requested
    group = board.default_engine.get("pe_group", 1)
    return group if model.n_pe % group == 0 else 1


def board_entry_memory(board, params):
    """``{"memory": "spram"}`` when a model-sized SpMV engine (``params`` from
    :func:`engine_for_model`) can keep its entries where the board's default engine keeps them:
    in the SB_SPRAM256KA blocks (one per lockstep group, at most
    :data:`hdl.ice40_spram.SPRAM_DEPTH` entries per PE); ``{}`` otherwise (block RAM).  The
    LSTM and CNN engines size their own memories."""
    from .ice40_spram import SPRAM_DEPTH
    if board.default_engine.get("memory") != "spram" or params.get("engine") in ("lstm", "cnn"):
        return {}
    groups = params["n_pe"] // params.get("pe_group", 1)
    if groups > board.budget.spram_blocks or params["max_entries_per_pe"] > SPRAM_DEPTH:
        return {}
    return {"memory": "spram"}


def board_lstm_layout(board, params):
    """The board's LSTM layout (``board.lstm_layout``: for the iCEBreaker the serial
    element-wise unit with its data in the SPRAMs, docs/lstm-engine.md) for an LSTM engine
    ``params`` (from :func:`engine_for_model`) when the engine can take it: no projection (the
    serial unit has none); the element-wise data in the SPRAMs only when the board has one per
    lockstep group and the engine accepts the placement (four groups, 16-bit accumulators, at
    most :data:`hdl.spram_share.EW_BASE` entries per PE below the data, ...: the engine's own
    check); ``{}`` otherwise (the engine's defaults; the capacity check then says what does
    not fit)."""
    layout = dict(board.lstm_layout)
    if not layout or params.get("engine") != "lstm" or params.get("proj_max", 0):
        return {}
    if layout.get("memory") == "spram":
        groups = params["n_pe"] // params.get("pe_group", 1)
        if groups > board.budget.spram_blocks or not _engine_accepts(dict(params, **layout)):
            layout.pop("memory")
    return layout


def board_model_engine(board, model, pe_group=None):
    """The engine parameters of ``board``'s build for ``model``: sized by
    :func:`engine_for_model`, its PEs in :func:`model_pe_group` lockstep groups (``pe_group``
    overrides the board's), the board's broadcast FIFO depth, entry memory
    (:func:`board_entry_memory`) and LSTM layout (:func:`board_lstm_layout`).

    ``python -m hdl.build --model`` and the simulated board (:func:`hdl.sim.board_top`) both
    take their engine from here, so the simulated board runs the engine of the bitstream:
    same outputs, same cycle counts, same configuration hash."""
    params = engine_for_model(model, pe_group=model_pe_group(board, model, pe_group))
    params["fifo_depth"] = board.fifo_depth
    params.update(board_entry_memory(board, params))
    params.update(board_lstm_layout(board, params))
    return params


def board_clock_hz(board, params) -> int:
    """The engine clock (Hz) of ``board``'s build of engine ``params`` without ``--freq``:
    ``board.lstm_clock_hz`` for an LSTM engine when the board sets one, else
    ``board.clock_hz``.  The simulated board reports the same clock in IDENTIFY."""
    if params.get("engine") == "lstm" and board.lstm_clock_hz:
        return int(board.lstm_clock_hz)
    return int(board.clock_hz)


def _engine_accepts(params) -> bool:
    """Whether the engine of ``params`` can be built (its own checks raise ValueError); the
    engine is built only to be checked, never elaborated."""
    try:
        engine = make_engine(params)
    except ValueError:
        return False
    engine._MustUse__silence = True
    return True


def default_engine(board, n_pe=None):
    """The engine parameters of a build for ``board`` without a model (``n_pe`` PEs if
    given)."""
    params = dict(board.default_engine)
    if n_pe is not None:
        params["n_pe"] = n_pe
    params.setdefault("fifo_depth", board.fifo_depth)
    params.setdefault("mlp", True)
    params.setdefault("uniform_fields", True)
    return params


#: LstmEngine keyword arguments a board's ``lstm_layout`` may set (:func:`board_lstm_layout`).
_LSTM_LAYOUT_KEYS = ("overlap", "step_stats", "memory")


def make_engine(params):
    """The engine of ``params`` (:func:`engine_for_model` / :func:`default_engine`)."""
    from host.fixedpoint import Format

    if params.get("engine") == "cnn":
        from .cnn import CnnEngine
        return CnnEngine(cnn_config(params))
    if params.get("engine") == "lstm":
        from host.activations import TableSpec

        from .lstm import LstmEngine
        return LstmEngine(params["n_pe"], hidden_max=params["hidden_max"],
                          input_max=params["input_max"], steps_max=params["steps_max"],
                          classes_max=params["classes_max"], index_bits=params["index_bits"],
                          run_bits=params["run_bits"],
                          act_format=Format(params["act_width"], params["act_frac"]),
                          weight_width=params["weight_width"], acc_bits=params["acc_bits"],
                          table_spec=TableSpec(**params["table_spec"]),
                          max_entries_per_pe=params["max_entries_per_pe"],
                          ew_lanes=params["ew_lanes"],
                          layers_max=params.get("layers_max", 1),
                          proj_max=params.get("proj_max", 0),
                          fifo_depth=params.get("fifo_depth", 8),
                          product_shift=params.get("product_shift", 0),
                          pe_group=params.get("pe_group", 1),
                          **{key: params[key] for key in _LSTM_LAYOUT_KEYS if key in params})
    from .spmv import SpmvEngine
    return SpmvEngine(params["n_pe"], index_bits=params["index_bits"],
                      run_bits=params["run_bits"],
                      act_format=Format(params["act_width"], params["act_frac"]),
                      weight_width=params["weight_width"], acc_bits=params["acc_bits"],
                      max_rows=params["max_rows"], max_cols=params["max_cols"],
                      max_entries_per_pe=params["max_entries_per_pe"],
                      max_layers=params["max_layers"],
                      max_pointers=params.get("max_pointers"), max_bias=params.get("max_bias"),
                      fifo_depth=params.get("fifo_depth", 8),
                      memory=params.get("memory", "bram"),
                      product_shift=params.get("product_shift", 0),
                      pe_group=params.get("pe_group", 1))


def make_backend(params):
    """The :mod:`hdl.top` back end of engine ``params``: :class:`hdl.top.CnnBackend` for a CNN
    engine, :class:`hdl.top.LstmBackend` for an LSTM engine, else
    :class:`hdl.top.EngineBackend`."""
    from .top import CnnBackend, EngineBackend, LstmBackend
    engine = make_engine(params)
    if params.get("engine") == "cnn":
        return CnnBackend(engine)
    return LstmBackend(engine) if params.get("engine") == "lstm" else EngineBackend(engine)


# ------------------------------------------------------------------------------------------------
# Capacity


#: iCE40 EBR shapes (depth, width) of a 4 kbit block.
_EBR_SHAPES = ((256, 16), (512, 8), (1024, 4), (2048, 2))
#: Memories smaller than this many bits are expected in logic (Yosys maps them to LUTs/FFs);
#: measured on the iCE40 flow: 650-bit pointer memories and even 8 x 16-bit (128-bit)
#: accumulator memories go to EBR (the 8-PE pair build), so the limit is low.
_LOGIC_MEMORY_BITS = 128


def ebr_blocks(width: int, depth: int, shapes=_EBR_SHAPES) -> int:
    """Block RAMs for a ``width`` x ``depth`` memory (best of ``shapes``, default iCE40 EBR)."""
    return min(math.ceil(depth / d) * math.ceil(width / w) for d, w in shapes)


@dataclass
class MemoryUse:
    name: str
    width: int
    depth: int
    copies: int = 1
    shapes: tuple = _EBR_SHAPES
    #: forced into block RAM however small (a ``ram_style`` attribute in the HDL)
    block: bool = False

    @property
    def bits(self) -> int:
        return self.width * self.depth * self.copies

    @property
    def blocks(self) -> int:
        if self.width * self.depth < _LOGIC_MEMORY_BITS and not self.block:
            return 0
        return ebr_blocks(self.width, self.depth, self.shapes) * self.copies


def _info_memory_bytes(identify_bytes):
    """Bytes of the shell decoder's info memory (:mod:`hdl.command`): the IDENTIFY answer
    (padded to a power of two), then the STATUS answer and the CONTROL words."""
    from .command import CTRL_OFFSET
    return (1 << max(6, (identify_bytes - 1).bit_length())) + CTRL_OFFSET + 16


def _pe_array_memories(*, n_pe, group, entry_bits, entries, ptr_bits, pointers, weight_width,
                       codebook_words, acc_bits, rows_per_pe, spram=False):
    """The PE array's memories (:mod:`hdl.pe`): per lockstep group of ``group`` PEs one entry
    memory (``group`` entries of ``entry_bits`` per word; none in block RAM with ``spram``) and
    one pointer memory; per PE a codebook and the accumulators."""
    who = "(per PE)" if group == 1 else f"(per group of {group} PEs)"
    return [
        MemoryUse(f"entry memory {who}", group * entry_bits, 0 if spram else entries,
                  n_pe // group),
        MemoryUse(f"pointer memory {who}", ptr_bits, pointers, n_pe // group),
        MemoryUse("codebook (per PE)", weight_width, codebook_words, n_pe),
        MemoryUse("accumulators (per PE)", acc_bits, rows_per_pe, n_pe),
    ]


def _shell_memories(rx_fifo_depth, identify_bytes):
    """The UART shell's memories (:mod:`hdl.command`)."""
    from host.protocol import MAX_PAYLOAD
    return [
        MemoryUse("UART payload buffer", 8, MAX_PAYLOAD),
        MemoryUse("IDENTIFY + STATUS memory", 8, _info_memory_bytes(identify_bytes)),
        MemoryUse("UART RX FIFO", 8, max(0, rx_fifo_depth - 1)),
    ]


def memory_inventory(params, *, rx_fifo_depth=256, identify_bytes=128):
    """The memories of engine ``params`` + shell, as :class:`MemoryUse` (the same shapes
    ``hdl/spmv.py``, ``hdl/pe.py`` and ``hdl/command.py`` instantiate)."""
    from amaranth.utils import ceil_log2
    from host.encoding import pointer_fields

    if params.get("engine") == "lstm":
        return _lstm_inventory(params, rx_fifo_depth=rx_fifo_depth,
                               identify_bytes=identify_bytes)
    if params.get("engine") == "cnn":
        return _cnn_inventory(params, rx_fifo_depth=rx_fifo_depth,
                              identify_bytes=identify_bytes)
    n_pe = params["n_pe"]
    entries = params["max_entries_per_pe"]
    max_rows, max_cols, layers = params["max_rows"], params["max_cols"], params["max_layers"]
    pointers = params.get("max_pointers") or layers * max_cols
    bias = params.get("max_bias") or layers * max_rows
    list_depth = max(max_rows, max_cols)
    col_bits = max(1, ceil_log2(list_depth))
    rows_per_pe = -(-max_rows // n_pe)
    inventory = _pe_array_memories(
        n_pe=n_pe, group=params.get("pe_group", 1),
        entry_bits=params["index_bits"] + params["run_bits"], entries=entries,
        ptr_bits=sum(pointer_fields(entries, rows_per_pe)), pointers=pointers,
        weight_width=params["weight_width"], codebook_words=layers << params["index_bits"],
        acc_bits=params["acc_bits"], rows_per_pe=rows_per_pe,
        spram=params.get("memory", "bram") == "spram")      # entries in SB_SPRAM256KA
    inventory += [
        MemoryUse("bias memory", params["acc_bits"], bias),
        MemoryUse("non-zero activation lists (both banks)", col_bits + params["act_width"],
                  2 << col_bits),
        MemoryUse("output buffer", params["act_width"], max_rows),
    ] + _shell_memories(rx_fifo_depth, identify_bytes)
    return [m for m in inventory if m.depth > 0]


def _lstm_inventory(params, *, rx_fifo_depth, identify_bytes):
    """The memories of an :class:`hdl.lstm.LstmEngine` (``params`` from
    :func:`engine_for_model`, with :func:`board_lstm_layout`'s keys) + shell, as
    ``hdl/lstm.py`` and ``hdl/pe.py`` instantiate them."""
    from host.memory_map import LstmParams
    n_pe, lanes = params["n_pe"], params["ew_lanes"]
    p = LstmParams(n_pe=n_pe, hidden_max=params["hidden_max"], input_max=params["input_max"],
                   steps_max=params["steps_max"], classes_max=params["classes_max"],
                   max_entries_per_pe=params["max_entries_per_pe"],
                   index_bits=params["index_bits"], run_bits=params["run_bits"],
                   layers_max=params.get("layers_max", 1), proj_max=params.get("proj_max", 0))
    entries = params["max_entries_per_pe"]
    acc, act = params["acc_bits"], params["act_width"]
    pointers = params["max_pointers"]
    table = params.get("table_spec") or {}
    entries_tbl = 1 << int(table.get("index_bits", 9))
    per_lane = p.groups_max
    overlap = params.get("overlap", True)
    spram = params.get("memory", "bram") == "spram"
    # the element-wise unit's data (bias, tables, c, h, output buffer) live in the pairs'
    # SPRAMs in the serial layout (overlap=False, memory="spram"): no block RAM
    ew_in_spram = spram and not overlap
    inventory = _pe_array_memories(
        n_pe=n_pe, group=params.get("pe_group", 1),
        entry_bits=params["index_bits"] + params["run_bits"], entries=entries,
        ptr_bits=p.ptr_bits, pointers=pointers, weight_width=params["weight_width"],
        codebook_words=p.n_codebooks << params["index_bits"], acc_bits=acc,
        rows_per_pe=p.rows_per_pe, spram=spram)
    if overlap:
        inventory += [
            # drained gate sums, plus the save area of the ceil(proj_max / N) rows a
            # projection uses (hdl/lstm.py)
            MemoryUse("gate buffers (per PE)", acc, p.rows_per_pe + -(-p.proj_max // n_pe),
                      n_pe),
            MemoryUse("bias memory (per lane + output stage)", acc, params["max_bias"],
                      lanes + 1),
            MemoryUse("x list", p.col_bits + act, p.max_xlist),
            MemoryUse("state lists", p.col_bits + act, p.state_max, 2),
        ]
    else:
        # serial element-wise unit: one bias port; the x list and the state list (both
        # banks are one, LstmParams.list_bank_base) in one memory
        inventory += [
            MemoryUse("bias memory", acc, 0 if ew_in_spram else params["max_bias"]),
            MemoryUse("x list + state list", p.col_bits + act, p.list_depth),
        ]
    ew_depth = 0 if ew_in_spram else 1
    inventory += [
        # (serial: a block RAM however small, hdl.lstm.XEND_BLOCK_RAM)
        MemoryUse("x step ends", p.xlist_bits, p.gsteps_max, block=not overlap),
        MemoryUse("dense h (per lane)", act, per_lane * ew_depth, lanes),
        MemoryUse("c memory (per lane)", act, per_lane * ew_depth, lanes),
        MemoryUse("dense r (projection)", act, p.proj_max),
        MemoryUse("step statistics", 32, p.gsteps_max if params.get("step_stats", True) else 0,
                  3),
        MemoryUse("gate table, sigmoid + tanh (per lane)", act, 2 * entries_tbl * ew_depth,
                  lanes),
        MemoryUse("cell table, tanh (per lane)", act, entries_tbl * ew_depth, lanes),
        MemoryUse("output buffer", act, max(1, p.classes_max) * ew_depth),
    ] + _shell_memories(rx_fifo_depth, identify_bytes)
    return [m for m in inventory if m.depth > 0]


def _cnn_inventory(params, *, rx_fifo_depth, identify_bytes):
    """The memories of an :class:`hdl.cnn.CnnEngine` (``params`` from :func:`engine_for_model`)
    + shell, as ``hdl/cnn.py`` and ``hdl/pe.py`` instantiate them (the broadcast FIFOs and
    descriptor registers are logic)."""
    from host.encoding import pointer_fields

    c = cnn_config(params)
    n_pe, entries, pointers = c.n_pe, c.max_entries_per_pe, c.max_pointers
    rows_per_pe = -(-c.max_rows // n_pe)
    inventory = _pe_array_memories(
        n_pe=n_pe, group=c.pe_group, entry_bits=c.index_bits + c.run_bits, entries=entries,
        ptr_bits=sum(pointer_fields(entries, rows_per_pe)), pointers=pointers,
        weight_width=c.weight_width, codebook_words=c.max_layers << c.index_bits,
        acc_bits=c.acc_bits, rows_per_pe=rows_per_pe, spram=c.memory == "spram")
    inventory += [
        MemoryUse("bias memory" + (" (per read port)" if c.out_parallel else ""), c.acc_bits,
                  c.max_bias, n_pe if c.out_parallel else 1),
        MemoryUse("feature-map buffers", c.fm_lanes * c.act_format.width, c.fm_words, 2),
    ] + _shell_memories(rx_fifo_depth, identify_bytes)
    return [m for m in inventory if m.depth > 0]


def _narrow_accumulator_hint(inventory) -> str:
    """``"; 16-bit accumulators would save N blocks (...)"`` when the PEs' accumulators are
    wider than 16 bits and narrower ones would take fewer blocks, else ``""``."""
    saved = 0
    for m in inventory:
        if m.name.startswith("accumulators") and m.width > 16 and m.blocks:
            narrow = MemoryUse(m.name, 16, m.depth, m.copies, m.shapes, m.block)
            saved += m.blocks - narrow.blocks
    if not saved:
        return ""
    return (f"; 16-bit accumulators would save {saved} blocks (compress with --acc-bits 16: "
            f"the products are then floored by a product shift, docs/compression.md)")


def check_capacity(board, params, *, model_name=None):
    """Raise :class:`CapacityError` if the engine ``params`` (+ shell) do not fit ``board``.

    Returns ``{"bram_blocks": used, "dsp": used, "inventory": [...]}`` (estimates).
    """
    budget = board.budget
    inventory = memory_inventory(params)
    for m in inventory:
        m.shapes = budget.bram_shapes
    used = sum(m.blocks for m in inventory)
    what = f"model {model_name!r}" if model_name else "the engine"
    problems = []
    if used > budget.bram_blocks:
        top = sorted((m for m in inventory if m.blocks), key=lambda m: -m.blocks)
        detail = "; ".join(
            f"{m.name}: {m.copies} x {m.width} bit x {m.depth} = {m.blocks} blocks"
            if m.copies > 1 else f"{m.name}: {m.width} bit x {m.depth} = {m.blocks} blocks"
            for m in top[:4])
        problems.append(f"block RAM overflows: {used} blocks of {budget.bram_bits // 1024} kbit "
                        f"needed, the "
                        f"{board.device} has {budget.bram_blocks} ({used - budget.bram_blocks} "
                        f"too many); largest: {detail}" + _narrow_accumulator_hint(inventory))
    group = params.get("pe_group", 1)
    spram_used = params["n_pe"] // group
    if params.get("memory", "bram") == "spram" and spram_used > budget.spram_blocks:
        per = "PE" if group == 1 else f"group of {group} PEs"
        problems.append(f"SPRAM overflows: entries in SPRAM need one SB_SPRAM256KA per {per}, "
                        f"{params['n_pe']} PEs need {spram_used}, the {board.device} has "
                        f"{budget.spram_blocks} ({spram_used - budget.spram_blocks} too many;"
                        f" use memory='bram', pe_group=2 or fewer PEs)")
    # the overlapped LSTM engine's element-wise lanes have their own multipliers; the serial
    # one (overlap=False) multiplies on a PE's DSP
    lanes = (params.get("ew_lanes", 0)
             if params.get("engine") == "lstm" and params.get("overlap", True) else 0)
    dsp = params["n_pe"] + lanes
    if dsp > budget.dsp:
        who = (f"{params['n_pe']} PEs + {lanes} element-wise lanes" if lanes
               else f"{params['n_pe']} PEs")
        problems.append(f"DSP overflows: {who} need {dsp} multipliers, the "
                        f"{board.device} has {budget.dsp} ({dsp - budget.dsp} too many)")
    if problems:
        sizes = (f"{params['n_pe']} PEs, {params['max_entries_per_pe']} entries per PE, "
                 f"{params['max_rows']} rows x {params['max_cols']} cols, "
                 f"{params['max_layers']} layers")
        if params.get("engine") == "cnn":
            sizes = (f"CNN engine, {params['n_pe']} PEs, {params['max_entries_per_pe']} entries "
                     f"per PE, feature maps 2 x {params['fm_words']} words of "
                     f"{params['fm_lanes']} activations, {params['max_layers']} layers")
        raise CapacityError(f"{what} does not fit the {board.name} ({sizes}):\n  "
                            + "\n  ".join(problems))
    spram_used = spram_used if params.get("memory", "bram") == "spram" else 0
    return {"bram_blocks": used, "dsp": dsp, "spram_blocks": spram_used,
            "inventory": [dict(name=m.name, width=m.width, depth=m.depth, copies=m.copies,
                               blocks=m.blocks) for m in inventory]}


# ------------------------------------------------------------------------------------------------
# Reports


_NEXTPNR_UTILISATION = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", re.M)


def _placement_overflow(log_path: Path, board) -> str | None:
    """The message for a design that nextpnr could not place because it needs more cells of a
    kind than the device has (its log's "Device utilisation" table), else None.  The capacity
    check counts memories and multipliers before synthesis; logic cells are only known after
    it, so this is where a design too large in logic is refused."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    names = {"logic_cells": "logic cells", "bram": "block RAMs", "spram": "SPRAMs",
             "dsp": "DSPs"}
    over, fine = [], []
    for cell, used, available in _NEXTPNR_UTILISATION.findall(text):
        key = board.budget.nextpnr_cells.get(cell)
        if key is None:
            continue
        used, available = int(used), int(available)
        what = f"{names[key]} {used} of {available} ({100 * used // available} %)"
        (over if used > available else fine).append(what)
    if not over:
        return None
    return (f"the design does not fit the {board.device}: {', '.join(over)} after synthesis "
            f"({', '.join(fine)}); the capacity check counts memories and multipliers only, "
            f"logic is known once Yosys has run.  Try fewer PEs (recompress with --pes), a "
            f"smaller model, or a larger board (--board ulx3s); docs/ice40-resources.md has "
            f"the measured logic per block.")


#: Propagation delay (ns) through an iCE40 UltraPlus SB_MAC16 used as a combinational 16 x 16
#: multiplier (no input, pipeline or output register), inputs ``A``/``B`` to output ``O``.
#: nextpnr has no timing for this arc: it treats every DSP port as a register port, and a DSP
#: without registers has its clock tied to ground, so the paths into and out of it land in a
#: ``$PACKER_GND_NET`` clock domain that nextpnr reports but never checks.  The slowest arcs in
#: Project IceStorm's UP5K timing table (``icefuzz/timings_up5k.txt``, from the vendor's timing
#: library) are about 8.8 ns (``B[3] -> O[31]``: 8.67 / 8.76 ns rise / fall); 9.0 ns keeps a
#: margin.  :func:`dsp_paths` adds it to the worst path into and the worst path out of the DSPs.
MAC16_COMB_NS = 9.0

#: nextpnr's name for the clock of a cell whose clock input is tied to a constant.
_GND_CLOCK = "$PACKER_GND_NET"


def dsp_paths(report: dict) -> dict | None:
    """The register-to-register paths through combinational DSPs that nextpnr leaves unchecked.

    nextpnr (iCE40) reports the worst path *into* the DSPs (``posedge clk -> posedge
    $PACKER_GND_NET...``: source register, routing, DSP input) and the worst path *out of* them
    (DSP output, routing, destination register) as cross-domain paths, with a 0.1 ns setup and
    clock-to-out standing in for the multiplier.  The real path is the sum of the two plus the
    multiplier's own delay (:data:`MAC16_COMB_NS`).  The worst input and the worst output may
    belong to different DSPs, so the sum is an upper bound: safe, possibly pessimistic.

    Returns ``None`` when the report has no such paths (no combinational DSP, or another
    family), else ``{"into_ns", "out_ns", "multiplier_ns", "total_ns", "fmax_mhz"}`` (ns: the
    path delays as nextpnr reports them, 0.1 ns model setup / clock-to-out included).
    """
    into = out = None
    for path in report.get("critical_paths", []):
        src, dst = path.get("from", ""), path.get("to", "")
        delay = sum(float(step.get("delay", 0.0)) for step in path.get("path", []))
        if _GND_CLOCK in dst and _GND_CLOCK not in src:
            into = max(into or 0.0, delay)
        elif _GND_CLOCK in src and _GND_CLOCK not in dst:
            out = max(out or 0.0, delay)
    if into is None and out is None:
        return None
    into, out = into or 0.0, out or 0.0
    total = into + MAC16_COMB_NS + out
    return {"into_ns": round(into, 2), "out_ns": round(out, 2), "multiplier_ns": MAC16_COMB_NS,
            "total_ns": round(total, 2), "fmax_mhz": round(1000.0 / total, 2)}


def parse_nextpnr_report(report: dict, budget) -> dict:
    """Utilisation and Fmax from nextpnr's ``--report`` JSON.

    Returns ``{"utilisation": {key: {"used", "available", "percent"}}, "clocks": {net:
    {"achieved_mhz", "constraint_mhz"}}, "dsp_paths", "fmax_mhz", "constraint_mhz",
    "timing_met"}``.  ``dsp_paths`` is :func:`dsp_paths` (or ``None``); when present its Fmax
    bounds the engine clock's: ``fmax_mhz`` is the lower of the two and ``timing_met`` needs
    both, so a path nextpnr does not check cannot make a bitstream that fails on the board.
    """
    util = {}
    cells = report.get("utilization", {})
    for cell, key in budget.nextpnr_cells.items():
        entry = cells.get(cell, {"used": 0, "available": budget.total(key)})
        used, available = int(entry["used"]), int(entry["available"])
        util[key] = {"used": used, "available": available,
                     "percent": round(100.0 * used / available, 1) if available else 0.0}
    for cell, entry in cells.items():
        if cell not in budget.nextpnr_cells and entry.get("used"):
            util[cell] = {"used": int(entry["used"]), "available": int(entry["available"]),
                          "percent": round(100.0 * entry["used"] / entry["available"], 1)
                          if entry.get("available") else 0.0}
    clocks = {}
    for net, entry in report.get("fmax", {}).items():
        clocks[net] = {"achieved_mhz": round(float(entry["achieved"]), 2),
                       "constraint_mhz": round(float(entry["constraint"]), 2)}
    dsp = dsp_paths(report)
    if clocks:
        worst = min(clocks.values(), key=lambda c: c["achieved_mhz"] / c["constraint_mhz"])
        fmax, constraint = worst["achieved_mhz"], worst["constraint_mhz"]
        met = all(c["achieved_mhz"] >= c["constraint_mhz"] for c in clocks.values())
        if dsp is not None:
            # The DSPs sit on the engine clock (the only clock that drives logic).
            fmax = min(fmax, dsp["fmax_mhz"])
            met = met and dsp["fmax_mhz"] >= constraint
    else:
        fmax, constraint, met = None, None, False
    return {"utilisation": util, "clocks": clocks, "dsp_paths": dsp, "fmax_mhz": fmax,
            "constraint_mhz": constraint, "timing_met": met}


def _dsp_lines(dsp: dict | None) -> list[str]:
    if not dsp:
        return []
    line = (f"  DSP paths      into {dsp['into_ns']} ns + multiplier {dsp['multiplier_ns']} ns"
            f" + out {dsp['out_ns']} ns = {dsp['total_ns']} ns ({dsp['fmax_mhz']} MHz; "
            f"nextpnr does not check these)")
    return [line]


def format_report(rep: dict) -> str:
    lines = [f"spine bitstream {rep['name']} for {rep['board']} ({rep['device']})",
             f"  bitstream      {rep['bitstream']}",
             f"  engine         {rep['engine_summary']}",
             f"  model          {rep.get('model') or '(none: default engine)'}",
             (f"  clock          target {rep['target_mhz']:g} MHz, "
              f"{'PLL' if rep.get('pll') else 'oscillator'} {rep['clock_mhz']:.3f} "
              f"MHz; Fmax {rep['fmax_mhz']} MHz -> timing "
              f"{'MET' if rep['timing_met'] else 'MISSED'}"),
             *_dsp_lines(rep.get("dsp_paths")),
             f"  UART           {rep['baud']} baud ({rep['divisor']} clocks per bit)",
             f"  config hash    {rep['config_hash']}",
             "  utilisation:"]
    for key, u in rep["utilisation"].items():
        lines.append(f"    {key:14s} {u['used']:6d} / {u['available']:6d}  ({u['percent']:5.1f} %)")
    est = rep.get("estimate", {})
    if est:
        lines.append(f"  pre-synthesis estimate: {est['bram_blocks']} block RAMs, "
                     f"{est['dsp']} DSPs")
    lines.append("  stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in rep["stages"].items())
                 + f"; total {rep['build_seconds']:.1f} s")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# Build


#: Yosys command run right after ``read_rtlil`` on iCE40: every synchronous memory read port
#: returns undefined data when it reads the word its memory's write port writes in the same
#: cycle.  Amaranth's ``read_port()`` is not transparent (old data on a collision) and the
#: iCE40 EBR model in Yosys gives no collision behaviour, so without this ``memory_libmap``
#: emulates read-first for every memory: the write is delayed by a cycle and a bypass (hold
#: register, address comparator, output mux) added, ~2 x width FFs each: 702 LCs of the
#: 4839-LC 2-PE build (docs/ice40-resources.md, section 1.2).  No spine design uses the data of
#: such a collision: the PE's accumulator forwards the colliding write through its own
#: register; the loader writes entry, pointer, codebook, bias and list memories only while the
#: engine is idle; a layer reads one non-zero list bank and writes the other; the shell's RX
#: FIFO reads only words written in earlier cycles; its payload buffer is never read in a cycle
#: that writes it.  (All these memories have one write port; the 1-bit mask covers it.)
ICE40_NO_READ_FIRST = "setparam -set COLLISION_X_MASK 1 t:$memrd_v2"


def tool_overrides(family: str, *, report_file: str, seed: int, abc_dff: bool = False) -> dict:
    """Amaranth build-template overrides for ``family`` (``"ice40"`` / ``"ecp5"``): Yosys and
    nextpnr options of :func:`build_bitstream`.  ``abc_dff`` (iCE40): ``synth_ice40 -dff``,
    ABC optimises with the flip-flops (:func:`abc_dff_for`)."""
    overrides = {"nextpnr_opts": ["--report", report_file, "--timing-allow-fail",
                                  "--seed", str(seed)]}
    if family == "ice40":
        overrides["synth_opts"] = ["-dsp"] + (["-dff"] if abc_dff else [])
        overrides["script_after_read"] = ICE40_NO_READ_FIRST
    else:
        overrides["synth_opts"] = []
    return overrides


class _Progress:
    """Stage messages with elapsed time; a spinner line on a terminal."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.start = time.monotonic()
        self.stage = None
        self.stage_start = self.start
        self.stages = {}
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self._stop = threading.Event()
        self._thread = None

    def elapsed(self):
        return time.monotonic() - self.start

    def begin(self, stage):
        self.end()
        self.stage = stage
        self.stage_start = time.monotonic()
        self._write(f"[{self.elapsed():7.1f} s] {stage} ...", newline=True)

    def end(self):
        if self.stage is not None:
            seconds = time.monotonic() - self.stage_start
            self.stages[self.stage] = round(seconds, 1)
            self.stage = None

    def _write(self, text, newline=False):
        if self.stream is None:
            return
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if newline else ""))
        elif newline:
            self.stream.write(text + "\n")
        self.stream.flush()

    def spin(self):
        def run():
            frames = "|/-\\"
            n = 0
            while not self._stop.wait(0.5):
                if self.tty and self.stage:
                    self._write(f"{frames[n % 4]} {self.stage}: "
                                f"{time.monotonic() - self.stage_start:6.1f} s")
                n += 1
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self):
        self.end()
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self.tty:
            self._write("")


_ENGINE_CLASS = {"lstm": "LstmEngine", "cnn": "CnnEngine"}


def abc_dff_for(params) -> bool:
    """Whether :func:`build_bitstream` synthesises engine ``params`` with ``synth_ice40 -dff``
    (ABC sees the flip-flops, e.g. merges sequentially equivalent registers).  Measured on the
    iCEBreaker (docs/ice40-resources.md, section 8): the digits-lstm build 4741 -> 4687 LCs,
    clock 26.98 -> 27.48 MHz, DSP path 46.73 -> 44.03 ns; the SpMV default 3718 -> 3720 LCs,
    clock 41.52 -> 37.89 MHz.  So LSTM engines only."""
    return params.get("engine") == "lstm"


def build_bitstream(board, *, params, model=None, model_path=None, freq_mhz=None, baud=None,
                    name=None, seed=1, out_dir=None, build_root=None, progress=True,
                    memories_only=False):
    """Build ``board``'s bitstream; returns the report dict (also written as JSON and text).

    Without ``freq_mhz`` the engine runs at :func:`board_clock_hz` (the board's clock, or its
    LSTM clock for an LSTM engine), as on the command line.

    Raises :class:`BuildError` on tool failure; does *not* raise on a timing miss (the report
    says ``timing_met: false``; :func:`main` turns that into exit status 1).
    """

    from .toolchain import apply_fpga_tool_env, describe_toolchain, fpga_tool_env
    from .top import BoardTop, MemoriesBackend, SpineCore

    prog = _Progress() if progress else _Progress(None)
    freq_hz = (freq_mhz * 1e6 if freq_mhz else
               board.clock_hz if memories_only else board_clock_hz(board, params))
    baud = baud or board.baud
    name = name or "spine"
    out_dir = Path(out_dir) if out_dir else _REPO_ROOT / "bitstreams" / board.name
    build_dir = Path(build_root) if build_root else _REPO_ROOT / "build" / "fpga" / board.name
    build_dir = build_dir / name

    prog.begin("elaborating (Amaranth)")
    apply_fpga_tool_env()

    def core_factory(clock_hz):
        backend = MemoriesBackend() if memories_only else make_backend(params)
        return SpineCore(backend, clock_hz=int(round(clock_hz)), baud=baud)

    if board.family not in ("ice40", "ecp5"):
        raise BuildError(f"board family {board.family!r} is not supported by this build yet")
    use_pll = abs(freq_hz - board.osc_hz) > 1
    if use_pll and board.family != "ice40":
        raise BuildError(f"the {board.name} runs at its {board.osc_hz / 1e6:g} MHz oscillator "
                         f"(no PLL support for {board.family} yet); --freq must be "
                         f"{board.osc_hz / 1e6:g}")
    try:
        top = BoardTop(core_factory, osc_hz=board.osc_hz, freq_hz=freq_hz, use_pll=use_pll)
    except ValueError as error:
        raise BuildError(str(error)) from None
    platform = board.platform()
    report_file = f"{name}.report.json"
    plan = platform.build(top, name=name, build_dir=str(build_dir), do_build=False,
                          **tool_overrides(board.family, report_file=report_file, seed=seed,
                                           abc_dff=not memories_only and abc_dff_for(params)))
    if build_dir.exists():
        shutil.rmtree(build_dir)
    plan.extract(str(build_dir))

    placed, packer, product = (("asc", "icepack", "bin") if board.family == "ice40"
                               else ("config", "ecppack", "bit"))
    log_path = build_dir / "build.log"
    script = build_dir / f"build_{name}.sh"
    env = fpga_tool_env()
    prog.begin("synthesis (yosys)")
    prog.spin()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["sh", script.name], cwd=build_dir, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        stage = "synthesis (yosys)"
        while proc.poll() is None:
            time.sleep(0.5)
            if stage.startswith("synthesis") and (build_dir / f"{name}.tim").exists():
                stage = f"place and route (nextpnr-{board.family})"
                prog.begin(stage)
            if stage.startswith("place") and (build_dir / f"{name}.{placed}").exists():
                stage = f"bitstream ({packer})"
                prog.begin(stage)
    prog.stop()
    if proc.returncode != 0:
        overflow = _placement_overflow(build_dir / f"{name}.tim", board)
        if overflow:
            raise BuildError(overflow)
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise BuildError(f"the FPGA tools failed (exit {proc.returncode}); log {log_path}:\n"
                         f"{tail}")

    nextpnr = json.loads((build_dir / report_file).read_text())
    parsed = parse_nextpnr_report(nextpnr, board.budget)
    core = top.core
    out_dir.mkdir(parents=True, exist_ok=True)
    bitstream = out_dir / f"{name}.{product}"
    shutil.copyfile(build_dir / f"{name}.{product}", bitstream)
    target_mhz = round(freq_hz / 1e6, 3)
    engine_summary = ("memories only (no engine)" if memories_only else
                      f"{_ENGINE_CLASS.get(params.get('engine'), 'SpmvEngine')} "
                      f"{params['n_pe']} PEs, index/run {params['index_bits']}/"
                      f"{params['run_bits']} bits, act Q{params['act_width']}.{params['act_frac']},"
                      f" weights {params['weight_width']} bits, acc {params['acc_bits']} bits, "
                      f"{params['max_rows']}x{params['max_cols']} max, "
                      f"{params['max_entries_per_pe']} entries/PE, {params['max_layers']} layers, "
                      f"FIFO depth {params.get('fifo_depth', 8)}, entries in "
                      f"{params.get('memory', 'bram').upper()}")
    toolchain = describe_toolchain()
    rep = {
        "name": name, "board": board.name, "device": board.device,
        "bitstream": str(bitstream), "model": str(model_path) if model_path else None,
        "engine": {k: v for k, v in params.items()}, "engine_summary": engine_summary,
        "target_mhz": target_mhz, "clock_mhz": round(top.clock_hz / 1e6, 3),
        "pll": top.pll, "fmax_mhz": parsed["fmax_mhz"], "timing_met": parsed["timing_met"],
        "clocks": parsed["clocks"], "dsp_paths": parsed["dsp_paths"],
        "utilisation": parsed["utilisation"],
        "baud": baud, "divisor": core.divisor,
        "config_hash": core.decoder.config_hash.hex(),
        "estimate": check_capacity(board, params) if not memories_only else {},
        "stages": prog.stages, "build_seconds": round(prog.elapsed(), 1), "seed": seed,
        "tools": {k: v.get("version") for k, v in toolchain.get("fpga", {}).items()
                  if isinstance(v, dict)},
    }
    (out_dir / f"{name}.json").write_text(json.dumps(rep, indent=2) + "\n")
    (out_dir / f"{name}.txt").write_text(format_report(rep))
    return rep


# ------------------------------------------------------------------------------------------------
# CLI


def _positive(kind, name):
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a positive number, not {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{name} must be positive, not {text}")
        return value
    return convert


def _name(text):
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        raise argparse.ArgumentTypeError(f"--name must be an identifier (letters, digits, _), "
                                         f"not {text!r}")
    return text


def make_parser():
    parser = argparse.ArgumentParser(
        prog="python -m hdl.build", description="Build a spine bitstream for a board.",
        epilog="Outputs bitstreams/<board>/<name>.bin, .json and .txt.  See docs/boards.md.")
    parser.add_argument("--board", default="icebreaker", help="board profile (default "
                        "icebreaker)")
    parser.add_argument("--model", help=".spn package the engine is sized for, or a bundled "
                        "example (digits-lstm, digits-mlp, digits-cnn: compressed for the board "
                        "first, the .spn written beside the bitstream); default: the board's "
                        "default engine")
    parser.add_argument("--pes", type=_positive(int, "--pes"), help="processing elements "
                        "(must match the model's)")
    parser.add_argument("--pe-group", type=int, choices=(1, 2), help="PEs per lockstep group "
                        "(2: PE pairs share a pointer memory and an SPRAM word; default: the "
                        "board's)")
    parser.add_argument("--acc-bits", type=_positive(int, "--acc-bits"), help="accumulator "
                        "width of a build without --model (default: the board's)")
    parser.add_argument("--freq", type=_positive(float, "--freq"), help="engine clock in MHz "
                        "(default: the board's)")
    parser.add_argument("--baud", type=_positive(int, "--baud"), help="UART baud rate "
                        "(default: the board's)")
    parser.add_argument("--name", type=_name, default="spine", help="output name (default "
                        "spine)")
    parser.add_argument("--seed", type=int, default=1, help="nextpnr placement seed")
    parser.add_argument("--out", help="output folder (default bitstreams/<board>)")
    parser.add_argument("--memories-only", action="store_true", help="the shell with plain "
                        "memories instead of the engine (bring-up of the UART link)")
    parser.add_argument("--check-only", action="store_true", help="stop after the capacity "
                        "check")
    return parser


def prepare(args):
    """Resolve board, engine parameters and model from parsed ``args``; raises BuildError /
    CapacityError / ValueError with a message."""
    from boards import get_board

    from .uart import baud_divisor
    board = get_board(args.board)
    model = None
    if args.model and not _is_bundled(args.model) and args.acc_bits is not None:
        raise BuildError(f"--acc-bits {args.acc_bits}: a build with --model takes the model's "
                         f"accumulator width (compress the model for other accumulators)")
    if args.model:
        from host.package import load_package
        path = Path(args.model)
        if _is_bundled(args.model):
            path = compress_bundled(board, args.model, n_pe=args.pes, acc_bits=args.acc_bits,
                                    out_dir=args.out, name=args.name)
            args.model = str(path)
        elif not path.is_file():
            from host.examples import example_names
            raise BuildError(f"--model {args.model}: no such file (and not a bundled example: "
                             f"{', '.join(example_names())})")
        try:
            model = load_package(path)
        except Exception as error:  # the package reader's own message
            raise BuildError(f"--model {args.model}: {error}") from None
        params = board_model_engine(board, model, args.pe_group)
        if args.pes is not None and args.pes != model.n_pe:
            raise BuildError(f"--pes {args.pes} does not match the model, which is encoded for "
                             f"{model.n_pe} PEs (recompress it with --pes {args.pes})")
    else:
        params = default_engine(board, args.pes)
        if args.acc_bits is not None:
            params["acc_bits"] = args.acc_bits
    if args.pe_group is not None and not args.model:
        params["pe_group"] = args.pe_group
    if args.freq is None and not args.memories_only:
        args.freq = board_clock_hz(board, params) / 1e6
        if args.freq != board.clock_hz / 1e6:
            print(f"engine clock {args.freq:g} MHz: the {board.name}'s clock for this engine "
                  f"(--freq overrides)", file=sys.stderr)
    freq_hz = (args.freq or board.clock_hz / 1e6) * 1e6
    if board.family != "ice40" and abs(freq_hz - board.osc_hz) > 1:
        raise BuildError(f"the {board.name} runs at its {board.osc_hz / 1e6:g} MHz oscillator "
                         f"(no PLL support for {board.family} yet); --freq must be "
                         f"{board.osc_hz / 1e6:g}")
    if board.family == "ice40" and abs(freq_hz - board.osc_hz) > 1:
        from .top import pll_config
        freq_hz = pll_config(board.osc_hz, freq_hz)["f_out_hz"]   # ValueError if impossible
    baud_divisor(freq_hz, args.baud or board.baud)     # ValueError naming clock, baud, error
    estimate = None
    if not args.memories_only:
        estimate = check_capacity(board, params, model_name=model.name if model else None)
        if not params.get("mlp", True) and params.get("engine") not in ("lstm", "cnn"):
            print(f"warning: model {model.name!r} is not an MLP; the engine is sized for its "
                  f"matrices but cannot run it", file=sys.stderr)
    return board, params, model, estimate


def _is_bundled(name) -> bool:
    """``name`` is a bundled example (``host.examples``) and no file of that name exists."""
    from host.examples import example_names
    return name in example_names() and not Path(name).exists()


def compress_bundled(board, example, *, n_pe=None, acc_bits=None, out_dir=None, name=None):
    """Compress the bundled ``example`` for ``board`` (``python -m host.compress EXAMPLE --pes
    N --acc-bits A -o OUT/NAME.spn``, N and A from the board's default engine unless given) and
    return the package's path: the bitstream built for it and the model the driver loads onto
    it come from the same file, beside the bitstream.  The compression report goes to stderr."""
    from host.compress import main as compress_main
    out_dir = Path(out_dir) if out_dir else _REPO_ROOT / "bitstreams" / board.name
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name or 'spine'}.spn"
    n_pe = n_pe or board.default_engine["n_pe"]
    acc_bits = acc_bits or board.default_engine.get("acc_bits", 32)
    print(f"compressing the bundled {example} for the {board.name}: {n_pe} PEs, "
          f"{acc_bits}-bit accumulators -> {path}", file=sys.stderr)
    argv = [example, "--pes", str(n_pe), "--acc-bits", str(acc_bits), "-o", str(path)]
    with contextlib.redirect_stdout(sys.stderr):
        code = compress_main(argv)
    if code != 0:
        raise BuildError(f"--model {example}: compressing the bundled example failed "
                         f"(python -m host.compress {' '.join(argv)})")
    return path


def main(argv=None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        board, params, model, estimate = prepare(args)
    except (BuildError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if estimate:
        print(f"capacity check: {estimate['bram_blocks']} of {board.budget.bram_blocks} block RAM "
              f"blocks, {estimate['dsp']} of {board.budget.dsp} DSPs (estimate): fits",
              file=sys.stderr)
    if args.check_only:
        return 0
    try:
        rep = build_bitstream(board, params=params, model=model, model_path=args.model,
                              freq_mhz=args.freq, baud=args.baud, name=args.name,
                              seed=args.seed, out_dir=args.out,
                              memories_only=args.memories_only)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_report(rep), end="")
    util = rep["utilisation"]
    over = [k for k, u in util.items() if u["used"] > u["available"]]
    if over:
        print(f"error: does not fit: {', '.join(over)}", file=sys.stderr)
        return 1
    if not rep["timing_met"]:
        dsp = rep.get("dsp_paths")
        limit = ""
        if dsp and rep["fmax_mhz"] is not None and dsp["fmax_mhz"] <= rep["fmax_mhz"]:
            limit = (f" (limited by the path through a DSP multiplier, {dsp['total_ns']} ns: "
                     f"{dsp['into_ns']} ns into it, {dsp['multiplier_ns']} ns through it, "
                     f"{dsp['out_ns']} ns out of it)")
        print(f"error: timing missed: Fmax {rep['fmax_mhz']} MHz < target "
              f"{rep['target_mhz']} MHz{limit} (try --freq "
              f"{math.floor(rep['fmax_mhz'] or 1)})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
