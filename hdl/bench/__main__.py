"""``python -m hdl.bench {spmv,lstm,cnn} ...``: run an engine's RTL under Verilator, report cycles.

Subcommands register themselves through ``add_parser(subparsers)`` in their module.
"""

from __future__ import annotations

import argparse
import sys

from . import cnn, lstm, spmv

SUBCOMMANDS = {"spmv": spmv, "lstm": lstm, "cnn": cnn}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hdl.bench",
                                     description="Benchmark spine's engines on the RTL "
                                                 "(Verilator), checked against the golden "
                                                 "and cycle models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return SUBCOMMANDS[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
