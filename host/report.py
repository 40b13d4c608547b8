"""Figures of a compression run: storage at every stage, balance, accuracy, as dict and text.

Storage is counted in bits of what spine stores, layer by layer:

* **dense**: every weight and bias as float32.
* **pruned**: the EIE entries (non-zeros plus padding) with float32 weights and ``run_bits``
  relative indices, the per-PE column entry counts, float32 biases.
* **quantized**: entries of ``bits + run_bits`` each, column counts, the codebook
  (``2**bits`` entries of the weight width), biases at accumulator width.  The
  ``compression_ratio`` is dense / quantized (pruning + weight sharing, before Huffman).
* **huffman**: the weight-index and zero-run streams and the column counts Huffman coded
  (plus one byte of code length per alphabet symbol), codebook and biases as above.

Column counts: per PE and column, ``ceil(log2(max count + 1))`` bits; the engine's 16-bit
pointers are their prefix sums, rebuilt when the model is loaded.
"""

from __future__ import annotations

import math

import numpy as np

from .compressed import CompressedModel
from .golden import GoldenModel
from .huffman import HuffmanCode
from .pipeline import CompressionResult

__all__ = ["storage_bits", "build_report", "format_report"]


def _count_bits(counts: np.ndarray) -> int:
    return max(1, math.ceil(math.log2(int(counts.max()) + 1))) if counts.size else 1


def _coded_bits(symbols: np.ndarray, code: HuffmanCode, alphabet: int) -> int:
    if symbols.size == 0:
        return 0
    return code.encoded_bits(symbols) + 8 * alphabet


def _huffman_bits(symbols: np.ndarray, alphabet: int) -> int:
    if symbols.size == 0:
        return 0
    return _coded_bits(symbols, HuffmanCode.from_symbols(symbols, alphabet), alphabet)


def storage_bits(model: CompressedModel) -> list[dict]:
    """Per weight layer: bits at each stage (see the module docstring)."""
    out = []
    for index, matrix in model.matrices():
        enc = matrix.encoded
        n_entries = int(enc.entries_per_pe().sum())
        counts = enc.column_lengths()
        count_bits = counts.size * _count_bits(counts)
        bias_count = matrix.rows
        dense = 32 * (enc.rows * enc.cols + bias_count)
        pruned = n_entries * (32 + enc.run_bits) + count_bits + 32 * bias_count
        tables = (1 << enc.index_bits) * matrix.weight_format.width \
            + bias_count * model.acc_bits
        quantized = n_entries * enc.entry_bits + count_bits + tables
        codes = matrix.entry_codes
        flat_counts = counts.ravel()
        count_alphabet = int(flat_counts.max()) + 1 if flat_counts.size else 1
        huffman = (_coded_bits(*codes["index"], 1 << enc.index_bits)
                   + _coded_bits(*codes["run"], 1 << enc.run_bits)
                   + min(count_bits, _huffman_bits(flat_counts, count_alphabet)) + tables)
        out.append({"layer": index, "dense_bits": dense, "pruned_bits": pruned,
                    "quantized_bits": quantized, "huffman_bits": huffman})
    return out


def _accuracy(predictions, labels) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def build_report(result: CompressionResult, eval_data=None) -> dict:
    """All figures of a run as a JSON-ready dict.

    ``eval_data`` is ``(x, y)`` in the model's input layout; with it the report carries
    ``accuracy_float``, ``accuracy_compressed`` and the golden model's diagnostics.
    """
    model = result.model
    sizes = storage_bits(model)
    totals = {key: sum(s[key] for s in sizes)
              for key in ("dense_bits", "pruned_bits", "quantized_bits", "huffman_bits")}
    report = {
        "model": model.name,
        "n_pe": model.n_pe,
        "config": result.config.to_dict(),
        "act_format": model.act_format.to_dict(),
        "acc_bits": model.acc_bits,
        "product_shift": model.product_shift,
        "shift_choice": result.shift.to_dict() if result.shift is not None else None,
        "dense_bytes": totals["dense_bits"] / 8,
        "pruned_bytes": totals["pruned_bits"] / 8,
        "quantized_bytes": totals["quantized_bits"] / 8,
        "huffman_bytes": totals["huffman_bits"] / 8,
        "compression_ratio": totals["dense_bits"] / totals["quantized_bits"],
        "compression_ratio_pruned": totals["dense_bits"] / totals["pruned_bits"],
        "compression_ratio_huffman": totals["dense_bits"] / totals["huffman_bits"],
        "layers": [],
    }
    for stats, size in zip(result.layers, sizes):
        report["layers"].append({
            "index": stats.index, "kind": stats.kind, "shape": list(stats.shape),
            "density": stats.density, "nonzeros": stats.nonzeros, "padding": stats.padding,
            "weight_format": stats.weight_format,
            "max_entries_per_pe": stats.max_entries_per_pe,
            "balance_before": stats.balance_before, "balance_after": stats.balance_after,
            **{k: v for k, v in size.items() if k != "layer"},
            "compression_ratio": size["dense_bits"] / size["quantized_bits"],
        })
    if eval_data is not None:
        x, y = eval_data
        golden = GoldenModel(model)
        float_pred = np.argmax(result.float_model.forward(x), axis=1)
        hw_pred = np.argmax(golden.forward(x), axis=1)
        report.update({
            "eval_samples": int(len(y)),
            "accuracy_float": _accuracy(float_pred, y),
            "accuracy_compressed": _accuracy(hw_pred, y),
            "agreement_with_float": _accuracy(hw_pred, float_pred),
            "accumulator_overflows": golden.diagnostics.accumulator_overflows,
            "saturations": golden.diagnostics.saturations,
        })
        report["accuracy_drop_points"] = 100 * (report["accuracy_float"]
                                                - report["accuracy_compressed"])
    return report


def _kb(nbytes: float) -> str:
    return f"{nbytes / 1024:8.2f} KiB"


def format_report(report: dict) -> str:
    """Human-readable text of :func:`build_report`'s dict."""
    act = report["act_format"]
    lines = [
        (f"spine compression report: {report['model']}  ({report['n_pe']} PEs, "
         f"{report['config']['bits']}-bit codebooks, activations Q"
         f"{act['width'] - act['frac'] - 1}.{act['frac']}, {report['acc_bits']}-bit accumulators)"),
        "",
        (f"  {'layer':<14}{'shape':>12}{'density':>9}{'nnz':>8}{'pad':>6}"
         f"{'PE nnz mean/max before':>24}{'after':>14}{'ratio':>8}"),
    ]
    for layer in report["layers"]:
        before, after = layer["balance_before"], layer["balance_after"]
        shape = "x".join(map(str, layer["shape"]))
        lines.append(
            f"  {str(layer['index']) + ' ' + layer['kind']:<14}{shape:>12}"
            f"{layer['density']:>9.3f}{layer['nonzeros']:>8}{layer['padding']:>6}"
            f"{before['mean']:>14.1f}/{before['max']:<6}{after['mean']:>10.1f}/{after['max']:<4}"
            f"{layer['compression_ratio']:>7.1f}x")
    lines += [
        "",
        f"  storage  dense (float32)       {_kb(report['dense_bytes'])}",
        (f"           after pruning         {_kb(report['pruned_bytes'])}   "
         f"{report['compression_ratio_pruned']:6.1f}x"),
        (f"           after weight sharing  {_kb(report['quantized_bytes'])}   "
         f"{report['compression_ratio']:6.1f}x   <- compression ratio"),
        (f"           after Huffman         {_kb(report['huffman_bytes'])}   "
         f"{report['compression_ratio_huffman']:6.1f}x"),
    ]
    choice = report.get("shift_choice")
    if choice is not None:
        how = "chosen from the calibration data" if choice["auto"] else "given"
        if choice["peak"] is None:
            margin = "no calibration data: overflow margin unknown"
        else:
            margin = (f"overflow margin {choice['margin_bits']:.2f} bits (peak accumulator "
                      f"{choice['peak']} of {choice['limit']} on the calibration data)")
        lines += ["", f"  product shift {choice['product_shift']} ({how}): {margin}"]
        if choice["act_frac_lowered"]:
            lines.append(f"  activation fraction bits lowered by {choice['act_frac_lowered']} "
                         f"so that the accumulators hold the pre-activations")
    if "accuracy_float" in report:
        lines += [
            "",
            (f"  accuracy on {report['eval_samples']} samples: float "
             f"{100 * report['accuracy_float']:.2f}%  ->  compressed (bit-exact hardware) "
             f"{100 * report['accuracy_compressed']:.2f}%  "
             f"({0.0 - report['accuracy_drop_points']:+.2f} points)"),
            (f"  fixed point: {report['accumulator_overflows']} accumulator overflows, "
             f"{report['saturations']} saturated outputs"),
        ]
    return "\n".join(lines)
