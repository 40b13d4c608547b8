"""``python -m hdl.bench cnn``: a compressed CNN on the CnnEngine RTL, image after image.

Examples::

    python -m hdl.bench cnn --pes 8                       # bundled digits-cnn, its test split
    python -m hdl.bench cnn --model model.spn --pes 8 --samples 20 --json

Builds (or reuses) the Verilator model of an engine sized for the model
(:meth:`host.cnn_image.CnnConfig.for_model`), loads the model once and runs every input with one
``start`` per image (the whole network on chip).  Inputs: the test split of a bundled model
(``digits-cnn`` by default), random inputs for a ``.spn`` package (``--act-density`` of them
non-zero).  Prints the RTL's cycles per image against the ideal bound (sum over output pixels of
the busiest PE's entries), PE utilisation, what zero-activation skipping saves against
broadcasting every in-bounds activation (the cycle model with an all-non-zero input, exact for
this engine), a per-layer breakdown, and whether every output equals the golden model and every
cycle count the cycle model (:mod:`host.cnn_cycles`).  Exit status 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from . import fraction, positive_int

__all__ = ["add_parser", "run", "bench_cnn"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("cnn", help="a compressed CNN on the CnnEngine RTL",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="digits-cnn",
                   help="a .spn package or a bundled model name, compressed for --pes at its "
                        "default density (digits-cnn)")
    p.add_argument("--pes", type=positive_int, default=8, help="processing elements (8)")
    p.add_argument("--fifo", type=positive_int, default=8, help="broadcast FIFO depth (8)")
    p.add_argument("--lanes", type=int, choices=(1, 2, 4, 8, 16), default=8,
                   help="activations per feature-map word (8)")
    p.add_argument("--parallel-output", action="store_true",
                   help="one requantizer per PE: n_pe output channels per cycle "
                        "(CnnConfig.out_parallel)")
    p.add_argument("--samples", type=positive_int, default=None,
                   help="inputs to run (default: the whole test split, or 16 random ones)")
    p.add_argument("--act-density", type=fraction, default=0.5,
                   help="non-zero fraction of random inputs (0.5)")
    p.add_argument("--seed", type=int, default=0, help="random seed for random inputs (0)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    return p


def _load(name, pes):
    """``(model, x_test or None, y_test or None)``."""
    path = Path(name)
    if path.exists():
        from host.package import load_package
        return load_package(path), None, None
    from host.modelsource import resolve_model
    from host.pipeline import CompressConfig, compress_model
    source = resolve_model(name)
    config = CompressConfig(n_pe=pes, density=source.defaults.get("density", 0.25),
                            bits=source.defaults.get("bits", 4))
    model = compress_model(source.model, config, calib_x=source.train[0]).model
    x_test, y_test = source.test
    return model, x_test, y_test


def bench_cnn(model_name="digits-cnn", pes=8, fifo=8, lanes=8, samples=None, act_density=0.5,
              seed=0, parallel_output=False) -> dict:
    """Run the benchmark; returns the figures (see the module docstring)."""
    from host.cnn_image import CnnConfig, build_image
    from host.golden import GoldenModel

    from ..cnn import CnnEngine
    from ..cnn_sim import CnnCase, build_engine, run_cnn_cases

    wall = time.monotonic()
    model, x_test, y_test = _load(model_name, pes)
    if model.n_pe != pes:
        raise SystemExit(f"model {model_name!r} is encoded for {model.n_pe} PEs, not --pes {pes}")
    golden = GoldenModel(model)
    if x_test is not None:
        count = len(x_test) if samples is None else min(samples, len(x_test))
        q = golden.quantize_input(x_test[:count])
        y = np.asarray(y_test[:count])
    else:
        rng = np.random.default_rng(seed)
        shape = (16 if samples is None else samples,) + tuple(model.input_shape)
        fmt = model.act_format
        q = rng.integers(fmt.min_int // 2, fmt.max_int // 2 + 1, shape)
        q = np.where(rng.random(shape) < act_density, q, 0).astype(np.int64)
        y = None
    config = CnnConfig.for_model(model, pes, fm_lanes=lanes, fifo_depth=fifo,
                                 out_parallel=parallel_output)
    image = build_image(config, model)
    engine = CnnEngine(config)
    built = build_engine(engine)
    cases = [CnnCase(f"input {i}", image, model, q[i]) for i in range(len(q))]
    results, sim_seconds = run_cnn_cases(engine, built.build_dir, cases, check=False,
                                         dense=True)

    cycles = np.array([r.cycles for r in results], dtype=np.float64)
    ideal = np.array([r.expected.ideal for r in results], dtype=np.float64)
    mac = np.array([sum(r.layer_mac) for r in results], dtype=np.float64)
    busy = np.array([sum(int(ly.busy.sum()) for ly in r.expected.layers) for r in results],
                    dtype=np.float64)
    dense_mac = sum(ly.dense_mac for ly in results[0].expected.layers)
    dense_cycles = cycles - mac + dense_mac
    pushes = np.array([sum(ly.pushes for ly in r.expected.layers) for r in results])
    dense_pushes = sum(ly.dense_pushes for ly in results[0].expected.layers)
    hw_pred = np.array([int(np.argmax(r.outputs)) for r in results])
    gold_pred = np.argmax(np.stack([r.expected.outputs for r in results]), axis=1)
    layers = []
    for n, ly in enumerate(image.layers):
        exp = [r.expected.layers[n] for r in results]
        layers.append({
            "layer": ly.name, "pixels": exp[0].pixels,
            "cycles": float(np.mean([r.layer_cycles[n] for r in results])),
            "mac_cycles": float(np.mean([r.layer_mac[n] for r in results])),
            "ideal": float(np.mean([e.ideal for e in exp])),
            "broadcasts": float(np.mean([e.pushes for e in exp])),
            "dense_broadcasts": exp[0].dense_pushes,
            "dense_mac_cycles": exp[0].dense_mac,
        })
    out = {
        "model": model_name, "pes": pes, "fifo": fifo, "lanes": lanes,
        "parallel_output": parallel_output, "samples": len(q),
        "cycles_per_image": float(cycles.mean()),
        "cycles_min": int(cycles.min()), "cycles_max": int(cycles.max()),
        "ideal_cycles_per_image": float(ideal.mean()),
        "ratio": float(cycles.mean() / ideal.mean()) if ideal.mean() else None,
        "mac_cycles_per_image": float(mac.mean()),
        "pe_utilisation": float((busy / (cycles * pes)).mean()),
        "pe_utilisation_mac": float((busy / (mac * pes)).mean()),
        "broadcasts_per_image": float(pushes.mean()),
        "dense_broadcasts_per_image": int(dense_pushes),
        "dense_cycles_per_image": float(dense_cycles.mean()),
        "zero_skip_saving": float(1 - cycles.mean() / dense_cycles.mean()),
        "zero_skip_mac_saving": float(1 - mac.mean() / dense_mac),
        "matches_golden": all(r.matches_golden for r in results),
        "matches_model": all(r.matches_model for r in results),
        "predictions_match_golden": bool(np.array_equal(hw_pred, gold_pred)),
        "accuracy": float(np.mean(hw_pred == y)) if y is not None else None,
        "layers": layers,
        "engine": config.to_dict(),
        "sim_cycles_per_second": float(cycles.sum() / sum(r.run_seconds for r in results)),
        "simulator_seconds": round(sim_seconds, 2),
        "verilog_seconds": round(built.verilog_seconds, 1),
        "build_seconds": round(built.build_seconds, 1),
        "build_reused": built.reused,
        "wall_seconds": round(time.monotonic() - wall, 2),
    }
    return out


def _format(r: dict) -> str:
    lines = [
        (f"cnn {r['model']}, {r['pes']} PEs, FIFO {r['fifo']}, {r['lanes']} lanes per "
         f"feature-map word, output {r['pes'] if r['parallel_output'] else 1} channel(s) per "
         f"cycle, {r['samples']} inputs"),
        (f"  RTL cycles per image   {r['cycles_per_image']:.1f} (min {r['cycles_min']}, max "
         f"{r['cycles_max']}; MAC phases {r['mac_cycles_per_image']:.1f})"),
        f"  ideal cycles per image {r['ideal_cycles_per_image']:.1f}",
        f"  RTL / ideal            {r['ratio']:.3f}" if r["ratio"] else "  RTL / ideal n/a",
        (f"  PE utilisation         {r['pe_utilisation']:.3f} of all cycles, "
         f"{r['pe_utilisation_mac']:.3f} of MAC-phase cycles"),
        (f"  zero skipping          {r['broadcasts_per_image']:.1f} of "
         f"{r['dense_broadcasts_per_image']} activations broadcast; without skipping "
         f"{r['dense_cycles_per_image']:.1f} cycles per image: saves "
         f"{100 * r['zero_skip_saving']:.1f} % of all cycles, "
         f"{100 * r['zero_skip_mac_saving']:.1f} % of MAC cycles"),
        "  per layer (means)      cycles   MAC   ideal  broadcasts / in-bounds  MAC w/o skip",
    ]
    for ly in r["layers"]:
        lines.append(f"    {ly['layer']:<28} {ly['cycles']:7.0f} {ly['mac_cycles']:6.0f} "
                     f"{ly['ideal']:6.0f}  {ly['broadcasts']:7.1f} / {ly['dense_broadcasts']:<6}"
                     f"    {ly['dense_mac_cycles']}")
    acc = f", accuracy {100 * r['accuracy']:.2f} %" if r["accuracy"] is not None else ""
    lines += [
        (f"  matches golden         {r['matches_golden']} (predictions "
         f"{'equal' if r['predictions_match_golden'] else 'DIFFERENT'}{acc})"),
        f"  matches cycle model    {r['matches_model']}",
        (f"  simulation             {r['sim_cycles_per_second']:,.0f} cycles/s; wall "
         f"{r['wall_seconds']} s (simulator {r['simulator_seconds']} s, Verilog "
         f"{r['verilog_seconds']} s, Verilator build {r['build_seconds']} s"
         f"{', reused' if r['build_reused'] else ''})"),
    ]
    return "\n".join(lines)


def run(args) -> int:
    result = bench_cnn(args.model, args.pes, args.fifo, args.lanes, args.samples,
                       args.act_density, args.seed, args.parallel_output)
    print(json.dumps(result, indent=1) if args.json else _format(result))
    return 0 if result["matches_golden"] and result["matches_model"] else 1
