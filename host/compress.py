"""``python -m host.compress MODEL``: compress a model, print the report, write a ``.spn``.

Examples::

    python -m host.compress digits-lstm --pes 8 -o lstm.spn
    python -m host.compress my_model.npz --data eval.npz --density 0.1 --bits 4 --json
"""

from __future__ import annotations

import argparse
import json
import sys

from tqdm import tqdm

from .errors import SpineError
from .modelsource import load_data, resolve_model
from .package import save_package
from .pipeline import CompressConfig, compress_model
from .report import build_report, format_report

__all__ = ["main", "build_parser"]


def _density(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"density must be a number, not {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"density must be in (0, 1], not {value}")
    return value


def _layer_density(text: str) -> tuple[int, float]:
    index, sep, value = text.partition("=")
    if not sep or not index.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected LAYER=DENSITY (e.g. 0=0.5), not {text!r}")
    return int(index), _density(value)


def _int_range(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, not {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi}, not {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m host.compress",
        description="Prune, weight-share, quantize and EIE-encode a neural network for spine's "
                    "sparse engines; print a report and write a .spn package.")
    parser.add_argument("model", help="bundled example (digits-mlp, digits-lstm, digits-cnn), "
                                      "a .npz float model or a PyTorch .pt checkpoint")
    parser.add_argument("-o", "--output", help="write the compressed package to this .spn file")
    parser.add_argument("--pes", type=_int_range(1, 1024), default=8,
                        help="processing elements the rows are interleaved over (default 8)")
    parser.add_argument("--density", type=_density, default=None,
                        help="fraction of weights kept per layer (default: the example's "
                             "recommendation, else 0.25)")
    parser.add_argument("--layer-density", type=_layer_density, action="append", default=[],
                        metavar="LAYER=D", help="density of one layer (repeatable)")
    parser.add_argument("--bits", type=_int_range(1, 8), default=4,
                        help="codebook index bits: 2^B shared values incl. zero (default 4)")
    parser.add_argument("--run-bits", type=_int_range(1, 8), default=4,
                        help="EIE relative-index (zero run) bits (default 4)")
    parser.add_argument("--no-balance", action="store_true",
                        help="plain magnitude pruning instead of ESE load-balance-aware")
    parser.add_argument("--act-width", type=_int_range(4, 32), default=16,
                        help="activation width in bits (default 16)")
    parser.add_argument("--act-frac", type=_int_range(0, 30), default=None,
                        help="activation fraction bits (default: from calibration data)")
    parser.add_argument("--weight-width", type=_int_range(2, 32), default=16,
                        help="codebook entry width in bits (default 16, the iCE40 DSP width)")
    parser.add_argument("--acc-bits", type=_int_range(8, 48), default=32,
                        help="accumulator width in bits (default 32; 16 fits one iCE40 block "
                             "RAM per PE, see --product-shift)")
    parser.add_argument("--product-shift", type=_int_range(0, 63), default=None, metavar="P",
                        help="floor every product by P bits before it is added (default: the "
                             "smallest P whose accumulators hold the calibration data with a "
                             "25%% margin; 0 for 32-bit accumulators)")
    parser.add_argument("--finetune", type=_int_range(0, 10000), default=0, metavar="EPOCHS",
                        help="fine-tune the centroids with PyTorch for EPOCHS (needs training "
                             "data, i.e. a bundled example)")
    parser.add_argument("--data", help=".npz with arrays x, y to evaluate (and calibrate) "
                                       "a model that is not a bundled example")
    parser.add_argument("--input-shape", type=lambda s: tuple(int(v) for v in s.split(",")),
                        help="input shape of a PyTorch checkpoint, e.g. 8,8")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--plot", metavar="PNG",
                        help="save a plot of storage per stage and PE balance (matplotlib)")
    return parser


def run(args) -> dict:
    source = resolve_model(args.model, input_shape=args.input_shape)
    if args.data:
        x, y = load_data(args.data, source.model.input_shape)
        source.test = (x, y)
    density = args.density if args.density is not None else source.defaults.get("density", 0.25)
    config = CompressConfig(
        n_pe=args.pes, density=density, bits=args.bits, run_bits=args.run_bits,
        balance=not args.no_balance, act_width=args.act_width, act_frac=args.act_frac,
        weight_width=args.weight_width, acc_bits=args.acc_bits,
        product_shift=args.product_shift, layer_density=dict(args.layer_density),
        finetune_epochs=args.finetune)
    calib = source.train[0] if source.train else (source.test[0] if source.test else None)
    with tqdm(desc="compress", unit="step", file=sys.stderr, leave=False,
              disable=None) as bar:
        def progress(text):
            bar.set_postfix_str(text)
            bar.update()
        result = compress_model(source.model, config, calib_x=calib, train=source.train,
                                progress=progress)
        progress("evaluate")
        report = build_report(result, source.test)
    report["source"] = source.origin
    result.model.info.update({"source": source.origin, "report": {
        k: report[k] for k in report if k not in ("layers", "config")}})
    if args.output:
        report["package_bytes"] = save_package(result.model, args.output)
        report["package"] = args.output
    if args.plot:
        from .plots import plot_compression
        plot_compression(report, args.plot)
        report["plot"] = args.plot
    return report


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        report = run(args)
    except (SpineError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        if "package" in report:
            print(f"\n  wrote {report['package']} ({report['package_bytes']} bytes)")
        else:
            print("\n  no package written (add -o FILE.spn)")
        if "plot" in report:
            print(f"  plot: {report['plot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
