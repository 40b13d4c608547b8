"""``python -m hdl.bench lstm``: an LSTM sequence on the LstmEngine RTL.

Examples::

    python -m hdl.bench lstm --model digits-lstm --pes 8
    python -m hdl.bench lstm --model model.spn --pes 8 --steps 8 --json
    python -m hdl.bench lstm --hidden 128 --input 128 --density 0.1 --pes 8 --steps 4
    python -m hdl.bench lstm --hidden 64 --layers 2 --proj 32 --pes 8 --json

Builds (or reuses) the Verilator model of an engine sized for the LSTM, loads it and a random
input sequence, runs the sequence and prints the cycles per time step (a step of one layer;
stacked layers run layer after layer) split into the matrix-vector part (the MAC phases of
the LSTM matrix and the projection, without waiting) and the element-wise part that the
overlap does not hide (drain, waits, descriptor and done cycles, projection output), the
element-wise unit's own cycles, the ideal bound (busiest PE's entries over the broadcast
columns), dense-equivalent operations per cycle (``2 * 4H * (I + S) + 2 * P * H`` per step),
and whether the last output (and the classifier outputs) match the golden model and the
cycles match :mod:`host.lstm_cycles`.  Exit status 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from . import fraction, positive_int

__all__ = ["add_parser", "add_arguments", "run", "bench_lstm"]


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--model", help="a .spn package (QLSTM [+ QLinear]) or a bundled model "
                                   "name (e.g. digits-lstm, compressed for --pes at its "
                                   "default density); default: a random LSTM")
    p.add_argument("--hidden", type=positive_int, default=128, help="hidden units (128)")
    p.add_argument("--input", type=positive_int, default=None,
                   help="input size (default: = hidden)")
    p.add_argument("--layers", type=positive_int, default=1,
                   help="stacked LSTM layers of the random model (1)")
    p.add_argument("--proj", type=int, default=0,
                   help="projection size P of every random layer (0: none)")
    p.add_argument("--density", type=fraction, default=0.1,
                   help="fraction of non-zero weights (0.1)")
    p.add_argument("--act-density", type=fraction, default=1.0,
                   help="fraction of non-zero inputs x_t (1.0)")
    p.add_argument("--pes", type=positive_int, default=8, help="processing elements (8)")
    p.add_argument("--fifo", type=positive_int, default=8, help="broadcast FIFO depth (8)")
    p.add_argument("--lanes", type=int, choices=(1, 2, 4), default=None,
                   help="element-wise lanes (accumulator reads per cycle; default: 4, or "
                        "the largest of 1, 2, 4 not above --pes)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="time steps (model's sequence length, or 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("lstm", help="an LSTM sequence on the LstmEngine RTL",
                              description=__doc__.split("\n\n")[0])
    return add_arguments(p)


def _load_model(name, pes):
    from host.compressed import QLinear, QLSTM
    path = Path(name)
    if path.exists():
        from host.package import load_package
        model = load_package(path)
    else:
        from host.modelsource import resolve_model
        from host.pipeline import CompressConfig, compress_model
        source = resolve_model(name)
        config = CompressConfig(n_pe=pes, density=source.defaults.get("density", 0.25),
                                bits=source.defaults.get("bits", 4))
        model = compress_model(source.model, config, calib_x=source.train[0]).model
    layers = list(model.layers)
    cls = layers.pop() if layers and isinstance(layers[-1], QLinear) else None
    if not layers or not all(isinstance(layer, QLSTM) for layer in layers):
        raise SystemExit(f"model {name!r}: the LSTM engine runs QLSTM layers [+ QLinear], "
                         f"not {[type(layer).__name__ for layer in model.layers]}")
    if model.n_pe != pes:
        raise SystemExit(f"model {name!r} is encoded for {model.n_pe} PEs, not --pes {pes}")
    return model, layers, cls


def bench_lstm(*, model=None, hidden=128, input_size=None, density=0.1, act_density=1.0,
               pes=8, fifo=8, steps=None, seed=0, lanes=None, layers=1, proj=0) -> dict:
    """Run the benchmark; returns the figures (see the module docstring)."""
    from hdl.lstm import LstmEngine
    from hdl.lstm_sim import build_engine, run_lstm_cases
    from host.activations import TableSpec
    from host.fixedpoint import Format
    from host.lstm_image import build_image, random_lstm
    from host.lstm_cycles import MAC_OVERHEAD, OUTPUT_OVERHEAD

    wall = time.monotonic()
    if lanes is None:
        lanes = max(v for v in (1, 2, 4) if v <= pes)
    rng = np.random.default_rng(seed)
    if model is not None:
        cm, stack, cls = _load_model(model, pes)
        act, acc_bits, spec = cm.act_format, cm.acc_bits, cm.table_spec
        steps = steps or int(cm.input_shape[0])
        label = str(model)
    else:
        act, acc_bits, spec = Format(16, 10), 32, TableSpec()
        input_size = input_size or hidden
        stack, cls = random_lstm(rng, input_size, hidden, density, pes, bias_scale=0.5,
                                 layers=layers, proj=proj)
        stack = stack if isinstance(stack, list) else [stack]
        steps = steps or 4
        label = "random"
    enc0 = stack[0].matrix.encoded
    index_bits, run_bits = enc0.index_bits, enc0.run_bits
    matrices = [m for layer in stack for m in (layer.matrix, layer.projection) if m is not None]
    matrices += [cls.matrix] if cls is not None else []
    entries = sum(int(m.encoded.entries_per_pe().max()) for m in matrices)
    depth = 1 << max(4, (entries - 1).bit_length())
    engine = LstmEngine(pes, hidden_max=max(layer.hidden for layer in stack),
                        input_max=max(layer.input_size for layer in stack), steps_max=steps,
                        classes_max=cls.matrix.rows if cls is not None else 0,
                        index_bits=index_bits, run_bits=run_bits, act_format=act,
                        acc_bits=acc_bits, table_spec=spec, max_entries_per_pe=depth,
                        fifo_depth=fifo, ew_lanes=lanes, layers_max=len(stack),
                        proj_max=max(layer.proj_size for layer in stack))
    image = build_image(engine, stack, cls)
    first = stack[0]
    span = max(1, act.max_int // 4)
    x = rng.integers(-span, span + 1, (steps, first.input_size))
    x = np.where(rng.random(x.shape) < act_density, x, 0).astype(np.int64)
    build, build_now, build_first = build_engine(engine)
    (result,), sim_seconds = run_lstm_cases(engine, build, [("bench", image, x)],
                                            check=False)
    rep = result.expected.cycles
    mac = np.asarray(result.mac, dtype=np.int64) + np.asarray(result.pmac, dtype=np.int64)
    ew = np.asarray(result.ew, dtype=np.int64)
    n_steps = len(mac)
    # matrix-vector cycles without the state part's wait for the element-wise unit (the RTL's
    # MAC phases equal the model's, checked by matches_model)
    free = np.asarray(rep.matvec, dtype=np.int64)
    cls_cycles = (int(result.cls_mac) + MAC_OVERHEAD + cls.matrix.rows + OUTPUT_OVERHEAD
                  if cls is not None else 0)
    per_step = (result.cycles - cls_cycles) / n_steps
    matvec = float(free.mean())
    dense_ops = sum(2 * 4 * layer.hidden * (layer.input_size + layer.output_size)
                    + 2 * layer.proj_size * layer.hidden for layer in stack) * steps
    nonzeros = sum(m.nonzeros() for m in matrices if cls is None or m is not cls.matrix)
    dense = sum(4 * layer.hidden * (layer.input_size + layer.output_size)
                + layer.proj_size * layer.hidden for layer in stack)
    return {
        "model": label, "layers": len(stack), "hidden": first.hidden,
        "input": first.input_size, "proj": first.proj_size, "steps": steps, "pes": pes,
        "fifo": fifo, "seed": seed, "ew_lanes": lanes,
        "density": float(nonzeros / dense),
        "nonzero_weights": int(nonzeros),
        "entries_per_pe_max": entries,
        "cycles_per_step": per_step,
        "matvec_cycles_per_step": matvec,
        "elementwise_cycles_per_step": per_step - matvec,
        "elementwise_unit_cycles_per_step": float(ew.mean()),
        "elementwise_ratio": (per_step - matvec) / matvec if matvec else None,
        "ideal_cycles_per_step": float(rep.ideal.mean()),
        "matvec_over_ideal": float(free.sum() / rep.ideal.sum()) if rep.ideal.sum() else None,
        "dense_ops_per_cycle": dense_ops / (per_step * n_steps),
        "mac_cycles": [int(v) for v in result.mac],
        "projection_mac_cycles": [int(v) for v in result.pmac],
        "elementwise_cycles": [int(v) for v in ew],
        "classifier_mac_cycles": int(result.cls_mac),
        "total_cycles": int(result.cycles),
        "model_total_cycles": int(rep.total),
        "matches_golden": result.matches_golden,
        "matches_model": result.matches_model,
        "sim_cycles_per_second": result.cycles / result.run_seconds if result.run_seconds
        else None,
        "simulator_seconds": round(sim_seconds, 2),
        "build_seconds": round(build_first, 1),
        "build_reused": build_now < 0.5 * build_first,
        "wall_seconds": round(time.monotonic() - wall, 2),
    }


def _format(r: dict) -> str:
    ratio = f"{r['elementwise_ratio']:.3f}" if r["elementwise_ratio"] is not None else "n/a"
    lines = [
        (f"lstm {r['model']}: {r['layers']} layer(s), hidden {r['hidden']}, input "
         f"{r['input']}, projection {r['proj']}, {r['steps']} steps, {r['pes']} PEs, FIFO "
         f"{r['fifo']}, {r['ew_lanes']} element-wise lane(s), weight density "
         f"{r['density']:.3f}"),
        (f"  cycles per step      {r['cycles_per_step']:.1f} = matvec "
         f"{r['matvec_cycles_per_step']:.1f} + element-wise (not hidden) "
         f"{r['elementwise_cycles_per_step']:.1f}"),
        (f"  element-wise / MAC   {ratio} (the unit itself: "
         f"{r['elementwise_unit_cycles_per_step']:.1f} cycles per step)"),
        (f"  ideal matvec         {r['ideal_cycles_per_step']:.1f} per step (RTL / ideal "
         f"{r['matvec_over_ideal']:.3f})"),
        f"  dense-equiv. ops/cyc {r['dense_ops_per_cycle']:.1f}",
        (f"  total cycles         {r['total_cycles']} (model {r['model_total_cycles']}, "
         f"{'equal' if r['matches_model'] else 'DIFFERENT'}; classifier MAC "
         f"{r['classifier_mac_cycles']})"),
        f"  matches golden       {r['matches_golden']}",
        (f"  wall time            {r['wall_seconds']} s (simulator {r['simulator_seconds']} s, "
         f"Verilator build {r['build_seconds']} s{', reused' if r['build_reused'] else ''})"),
    ]
    return "\n".join(lines)


def run(args) -> int:
    result = bench_lstm(model=args.model, hidden=args.hidden, input_size=args.input,
                        density=args.density, act_density=args.act_density, pes=args.pes,
                        fifo=args.fifo, steps=args.steps, seed=args.seed, lanes=args.lanes,
                        layers=args.layers, proj=args.proj)
    print(json.dumps(result, indent=1) if args.json else _format(result))
    return 0 if result["matches_golden"] and result["matches_model"] else 1


if __name__ == "__main__":
    import sys
    parser = add_arguments(argparse.ArgumentParser(prog="python -m hdl.bench.lstm",
                                                   description=__doc__.split("\n\n")[0]))
    sys.exit(run(parser.parse_args()))
