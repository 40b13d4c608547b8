"""``python -m hdl.bench spmv``: one random sparse layer on the SpmvEngine RTL.

Example::

    python -m hdl.bench spmv --rows 512 --cols 512 --density 0.1 --act-density 0.5 \\
        --pes 8 --fifo 8 --balance

Builds (or reuses) the Verilator model of an engine sized for the layer, loads the layer and a
random activation vector, runs one product and prints the RTL's MAC cycles next to the ideal
bound (busiest PE's entries) and the cycle model (:func:`host.cyclemodel.spmv_cycles`), the
load-balance efficiency, the simulation speed and the wall time; the output is checked
bit-exactly against :func:`host.golden.spmv`.  Exit status 1 if the RTL disagrees with the
golden model or the cycle model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from . import fraction, positive_int

__all__ = ["add_parser", "run", "bench_spmv"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("spmv", help="one random sparse layer on the SpmvEngine RTL",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=positive_int, default=512, help="layer outputs (512)")
    p.add_argument("--cols", type=positive_int, default=512, help="layer inputs (512)")
    p.add_argument("--density", type=fraction, default=0.1,
                   help="fraction of non-zero weights (0.1)")
    p.add_argument("--act-density", type=fraction, default=0.5,
                   help="fraction of non-zero activations (0.5)")
    p.add_argument("--pes", type=positive_int, default=8, help="processing elements (8)")
    p.add_argument("--fifo", type=positive_int, default=8, help="broadcast FIFO depth (8)")
    p.add_argument("--balance", action="store_true",
                   help="load-balance-aware pruning (host.pruning.balanced_mask) instead of "
                        "uniform random sparsity")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    return p


def _engine_for(rows, cols, n_pe, fifo, entries):
    from hdl.spmv import SpmvEngine
    # Round the entry memory up to a power of two so layers of similar size share a build.
    depth = 1 << max(4, (int(entries) - 1).bit_length())
    return SpmvEngine(n_pe, max_rows=rows, max_cols=cols, max_entries_per_pe=depth,
                      fifo_depth=fifo, max_layers=1)


def bench_spmv(rows, cols, density, act_density, pes, fifo, balance=False, seed=0,
               progress=True) -> dict:
    """Run the benchmark; returns the figures (see the module docstring)."""
    from host.spmv_image import build_image, random_layer
    from hdl.spmv_sim import build_engine, run_engine_cases
    from host.fixedpoint import Format

    wall = time.monotonic()
    rng = np.random.default_rng(seed)
    layer = random_layer(rng, rows, cols, density, pes, weight_format=Format(16, 14),
                         balance=balance)
    act = Format(16, 10)
    x = rng.integers(-(1 << 12), 1 << 12, cols)
    x[x == 0] = 1
    x = np.where(rng.random(cols) < act_density, x, 0).astype(np.int64)
    engine = _engine_for(rows, cols, pes, fifo, layer.encoded.entries_per_pe().max())
    assert engine.act_format == act
    image = build_image(engine, [(layer, False)])
    built = build_engine(engine)
    build = built.build_dir

    progress_file = Path(tempfile.mkstemp(prefix="spine-progress-")[1])
    total_writes = len(image.entries) + len(image.pointers) + image.codebooks.size \
        + len(image.bias) + image.descriptors.size + cols
    outcome = {}

    def work():
        try:
            outcome["results"] = run_engine_cases(engine, build, [("bench", image, x)],
                                                  check=False, extra_env={
                                                      "SPINE_PROGRESS": str(progress_file)})
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total_writes, desc="load", unit="word", file=sys.stderr,
                   leave=False, disable=None)
    while thread.is_alive():
        thread.join(0.2)
        if bar is not None:
            try:
                done = int(progress_file.read_text().split()[0] or 0)
            except (OSError, ValueError, IndexError):
                done = 0
            bar.update(max(0, done - bar.n))
    if bar is not None:
        bar.close()
    progress_file.unlink(missing_ok=True)
    if "error" in outcome:
        raise outcome["error"]
    (result,), sim_seconds = outcome["results"]
    report = result.expected.reports[0]
    rtl = int(result.layer_cycles[0])
    ideal = int(report.ideal)
    busy = report.busy
    return {
        "rows": rows, "cols": cols, "density": density, "act_density": act_density,
        "pes": pes, "fifo": fifo, "balance": balance, "seed": seed,
        "nonzero_weights": int(layer.nonzeros()),
        "entries_per_pe_max": int(layer.encoded.entries_per_pe().max()),
        "padding_entries": int(layer.encoded.padding_count()),
        "active_columns": int(np.count_nonzero(x)),
        "rtl_cycles": rtl,
        "ideal_cycles": ideal,
        "ratio": rtl / ideal if ideal else None,
        "load_balance_efficiency": float(busy.sum() / (rtl * pes)) if rtl else 1.0,
        "model_cycles": int(report.cycles),
        "run_cycles": int(result.cycles),
        "matches_golden": result.matches_golden,
        "matches_model": result.matches_model,
        "sim_cycles_per_second": rtl / result.run_seconds if result.run_seconds else None,
        "load_seconds": round(result.load_seconds, 2),
        "simulator_seconds": round(sim_seconds, 2),
        "verilog_seconds": round(built.verilog_seconds, 1),
        "build_seconds": round(built.build_seconds, 1),
        "build_reused": built.reused,
        "wall_seconds": round(time.monotonic() - wall, 2),
    }


def _format(r: dict) -> str:
    ratio = f"{r['ratio']:.4f}" if r["ratio"] is not None else "n/a"
    speed = f"{r['sim_cycles_per_second']:,.0f}" if r["sim_cycles_per_second"] else "n/a"
    return "\n".join([
        (f"spmv {r['rows']}x{r['cols']}, weight density {r['density']}, activation density "
         f"{r['act_density']}, {r['pes']} PEs, FIFO {r['fifo']}, "
         f"{'balanced' if r['balance'] else 'uniform'} pruning, seed {r['seed']}"),
        (f"  non-zero weights     {r['nonzero_weights']} (busiest PE {r['entries_per_pe_max']} "
         f"entries, {r['padding_entries']} padding), {r['active_columns']} active columns"),
        (f"  RTL cycles           {r['rtl_cycles']} (MAC phase; whole run incl. output "
         f"stage {r['run_cycles']})"),
        f"  ideal cycles         {r['ideal_cycles']}",
        f"  RTL / ideal          {ratio}",
        f"  load balance eff.    {r['load_balance_efficiency']:.4f}",
        (f"  model cycles         {r['model_cycles']} "
         f"({'equal' if r['matches_model'] else 'DIFFERENT'})"),
        f"  matches golden       {r['matches_golden']}",
        f"  simulation speed     {speed} cycles/s (MAC phase)",
        (f"  wall time            {r['wall_seconds']} s (load {r['load_seconds']} s, "
         f"simulator {r['simulator_seconds']} s, Verilog {r['verilog_seconds']} s, "
         f"Verilator build {r['build_seconds']} s"
         f"{', reused' if r['build_reused'] else ''})"),
    ])


def run(args) -> int:
    result = bench_spmv(args.rows, args.cols, args.density, args.act_density, args.pes,
                        args.fifo, args.balance, args.seed, progress=not args.json)
    print(json.dumps(result, indent=1) if args.json else _format(result))
    return 0 if result["matches_golden"] and result["matches_model"] else 1
