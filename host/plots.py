"""Plots of the compression report (matplotlib, optional: ``pip install 'spine[plot]'``)."""

from __future__ import annotations

from .errors import SpineError

__all__ = ["plot_compression"]


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SpineError("plots need matplotlib: pip install 'spine[plot]'") from None
    return plt


def plot_compression(report: dict, path) -> None:
    """Two panels: storage after every stage (log scale), and non-zeros per PE per layer
    under plain magnitude pruning vs load-balance-aware pruning."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    stages = ["dense", "pruned", "quantized", "huffman"]
    values = [report[f"{s}_bytes"] / 1024 for s in stages]
    bars = left.bar(["float32", "pruned", "shared\n(B-bit)", "Huffman"], values,
                    color=["#999", "#6a9", "#369", "#c63"])
    for bar, value in zip(bars, values):
        left.annotate(f"{report['dense_bytes'] / 1024 / value:.1f}x" if value else "",
                      (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom")
    left.set_yscale("log")
    left.set_ylabel("KiB")
    left.set_title(f"{report['model']}: storage per stage")
    width = 0.4
    for offset, key, label in ((-width / 2, "balance_before", "magnitude pruning"),
                               (width / 2, "balance_after", "load-balance-aware")):
        for n, layer in enumerate(report["layers"]):
            per_pe = layer[key]["per_pe"]
            xs = [n * (len(per_pe) + 1) + pe + offset for pe in range(len(per_pe))]
            right.bar(xs, per_pe, width, color="#c63" if "before" in key else "#369",
                      label=label if n == 0 else None)
    right.set_xticks([n * (len(report["layers"][0]["balance_after"]["per_pe"]) + 1)
                      + len(report["layers"][0]["balance_after"]["per_pe"]) / 2 - 0.5
                      for n in range(len(report["layers"]))])
    right.set_xticklabels([f"L{layer['index']} {layer['kind']}" for layer in report["layers"]])
    right.set_ylabel("non-zeros per PE")
    right.set_title(f"PE balance ({report['n_pe']} PEs)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
