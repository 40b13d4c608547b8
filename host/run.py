"""Run a compressed model on a spine board (or the simulated one) from the command line.

::

    python -m host.run --port /dev/ttyUSB1 --model lstm.spn --input x.npy --check
    python -m host.run --sim --model mlp.spn --input x.npy --labels y.npy --json
    python -m host.run --sim --model mlp.spn --input digits-mlp --check   # bundled test set
    python -m host.run --sim --model digits-cnn.spn --input digits-cnn --check   # CNN engine
    python -m host.run --sim --model lstm.spn --input x.npy --check --state h.npy  # and h_T

DATA (``--input``) is a float ``.npy`` of shape ``(batch, *input_shape)`` (or one input of
``input_shape``), or the name of a bundled example (its test set, with its labels); the
driver quantizes it like the golden model.  The model is loaded (written
and verified) first unless ``--no-load`` says the board already holds it.  The first few inputs
run one at a time to measure the round-trip latency, the rest pipelined (``--window``) to
measure throughput.  ``--check`` compares every output with the golden model; the exit status
is 1 if any differs.  ``--state FILE`` (LSTM engine) runs every input once more, one at a
time, reads the last LSTM layer's final output h_T (r_T with a projection) after each from the
STATE region and saves its integers ``(batch, S)``; with ``--check`` they are compared with the
golden model too.  ``--sim`` starts the simulated board (:mod:`hdl.sim`, built for the model)
on a free local port, runs, and stops it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .errors import SpineError

__all__ = ["load_inputs", "load_labels", "main", "run", "run_state"]

#: Inputs run one at a time (window 1) to measure latency.
LATENCY_SAMPLES = 8


def load_inputs(path, input_shape) -> np.ndarray:
    """Read ``path`` (``.npy``, float) and return it as ``(batch, *input_shape)`` float64.

    Raises
    ------
    SpineError
        For a missing or unreadable file, a non-numeric array, NaN/inf, or a wrong shape.
    """
    path = Path(path)
    if not path.is_file():
        raise SpineError(f"input file {str(path)!r} does not exist; give a .npy of shape "
                         f"(batch, {', '.join(map(str, input_shape))})")
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise SpineError(f"input file {str(path)!r} is not a readable .npy array ({error}); "
                         f"save it with numpy.save") from None
    if not isinstance(x, np.ndarray) or not (np.issubdtype(x.dtype, np.floating)
                                             or np.issubdtype(x.dtype, np.integer)):
        raise SpineError(f"input file {str(path)!r} holds {getattr(x, 'dtype', type(x))}, not "
                         f"numbers; expected float32 (batch, "
                         f"{', '.join(map(str, input_shape))})")
    shape = tuple(input_shape)
    if x.shape == shape:
        x = x[None]
    if x.shape[1:] != shape or len(x) == 0:
        raise SpineError(f"input file {str(path)!r} has shape {x.shape}; the model takes "
                         f"(batch, {', '.join(map(str, shape))}) with batch >= 1")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise SpineError(f"input file {str(path)!r} holds NaN or infinite values")
    return x


def load_labels(path, count: int) -> np.ndarray:
    """Integer labels ``(count,)`` from a ``.npy``; SpineError if missing or mismatched."""
    path = Path(path)
    try:
        y = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise SpineError(f"labels file {str(path)!r} cannot be read as .npy ({error})") from None
    if y.shape != (count,) or not np.issubdtype(y.dtype, np.integer):
        raise SpineError(f"labels file {str(path)!r} holds {y.dtype} {y.shape}; expected "
                         f"integers of shape ({count},), one per input")
    return y.astype(np.int64)


def run(acc, model, x, *, window: int = 1, check: bool = False, labels=None) -> tuple:
    """Infer every row of ``x`` on ``acc`` (model already loaded/attached).

    Returns
    -------
    (outputs, report)
        ``outputs``: int64 ``(batch, n_out)``; ``report``: the figures as a dict.
    """
    q = acc.quantize(x)
    n = len(q)
    lat_n = min(LATENCY_SAMPLES, n)
    outputs, cycles, latencies = [], [], []
    for i in range(lat_n):
        start = time.perf_counter()
        out, count = next(iter(acc.stream_int(q[i:i + 1], window=1, cycles=True)))
        latencies.append(time.perf_counter() - start)
        outputs.append(out)
        cycles.append(count)
    start = time.perf_counter()
    for out, count in acc.stream_int(q[lat_n:], window=window, cycles=True):
        outputs.append(out)
        cycles.append(count)
    pipelined = time.perf_counter() - start
    outputs = np.stack(outputs)
    info = acc.identify()
    in_bytes = 7 + int(np.prod(model.input_shape)) * info.act_bytes
    out_bytes = 7 + 4 + outputs.shape[1] * info.act_bytes
    per_inference = max(in_bytes, out_bytes)   # full duplex: the longer direction limits
    if n > lat_n:
        throughput = (n - lat_n) / pipelined
    else:
        throughput = lat_n / sum(latencies)
    report = {
        "model": model.name, "port": str(acc.url), "inferences": n, "window": window,
        "window_effective": min(window, acc.link.window_limit),
        "throughput_per_s": round(throughput, 2),
        "latency_ms": round(1e3 * float(np.mean(latencies)), 3),
        "engine_cycles_mean": round(float(np.mean(cycles)), 1),
        "engine_us_at_clock": round(1e6 * float(np.mean(cycles)) / info.clock_hz, 3),
        "request_bytes": in_bytes, "answer_bytes": out_bytes,
        "projected_throughput_per_s_at_baud": round(info.baud / 10 / per_inference, 1),
        "projected_unpipelined_per_s_at_baud": round(info.baud / 10 / (in_bytes + out_bytes),
                                                     1),
        "baud": info.baud, "mismatches": None,
        "link": acc.link.stats.as_dict(),
    }
    if check:
        from .driver import expected_cycles
        from .golden import GoldenModel
        golden = GoldenModel(model).forward_int(q)
        report["mismatches"] = int(np.count_nonzero((golden != outputs).any(axis=1)))
        predicted = expected_cycles(model, info, q)
        if predicted is not None:
            report["cycle_model_mean"] = round(float(np.mean(predicted)), 1)
            report["cycle_mismatches"] = int(np.count_nonzero(predicted != np.array(cycles)))
    if labels is not None:
        report["accuracy"] = round(float(np.mean(outputs.argmax(axis=1) == labels)), 4)
    return outputs, report


def run_state(acc, model, x, *, check: bool = False) -> tuple:
    """The final LSTM state of every row of ``x`` on ``acc`` (LSTM engine, model loaded): one
    INFER at a time, each followed by a READ of the STATE region
    (:meth:`host.driver.Accelerator.infer_int` with ``state=True``).

    Returns
    -------
    (ints, mismatches)
        ``ints``: int64 ``(batch, S)``, h_T (r_T with a projection) in the act format;
        ``mismatches``: inputs whose state differs from the golden model's (None without
        ``check``).
    """
    q = acc.quantize(x)
    ints = np.stack([acc.infer_int(one, state=True)[1].ints for one in q])
    mismatches = None
    if check:
        from .compressed import QLSTM
        from .golden import GoldenModel
        golden = GoldenModel(model)
        want = q
        for layer in model.layers:
            if isinstance(layer, QLSTM):
                want = golden.layer_forward(layer, want)
        mismatches = int(np.count_nonzero((want != ints).any(axis=1)))
    return ints, mismatches


def _example_data(name: str, input_shape):
    """``(x, y)`` of a bundled example's test set when ``name`` is an example name (and not a
    file), else ``(None, None)``."""
    from .examples import example_names
    if Path(name).exists() or name not in example_names():
        return None, None
    from .modelsource import resolve_model
    x, y = resolve_model(name).test
    if x.shape[1:] != tuple(input_shape):
        raise SpineError(f"the test set of {name!r} has inputs of shape {x.shape[1:]}; the "
                         f"model takes {tuple(input_shape)}")
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)


def _format(report: dict) -> str:
    lines = [
        f"{report['inferences']} inferences of {report['model']} on {report['port']}",
        (f"  throughput {report['throughput_per_s']:.1f}/s (window {report['window']}), "
         f"latency {report['latency_ms']:.2f} ms per inference (round trip)"),
        (f"  engine {report['engine_cycles_mean']:.0f} cycles per inference "
         f"({report['engine_us_at_clock']:.1f} us at the bitstream's clock)"),
        (f"  link: {report['request_bytes']} B per request, {report['answer_bytes']} B per "
         f"answer; at {report['baud']} baud at most "
         f"{report['projected_throughput_per_s_at_baud']:.0f} inferences/s pipelined, "
         f"{report['projected_unpipelined_per_s_at_baud']:.0f}/s one at a time"),
    ]
    if report.get("accuracy") is not None:
        lines.append(f"  accuracy {report['accuracy']:.2%}")
    if report["mismatches"] is not None:
        lines.append(f"  check: {report['mismatches']} outputs differ from the golden model")
    if report.get("cycle_mismatches") is not None:
        lines.append(f"  check: {report['cycle_mismatches']} cycle counts differ from the cycle "
                     f"model (mean {report['cycle_model_mean']:.0f})")
    if report.get("state_mismatches") is not None:
        lines.append(f"  check: {report['state_mismatches']} final states (h_T) differ from "
                     f"the golden model")
    link = report["link"]
    if link["retries"]:
        lines.append(f"  link retries {link['retries']} (bad CRC answers {link['bad_crc']}, "
                     f"device BAD_CRC {link['device_bad_crc']}, stalls {link['stalls']})")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m host.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial port or URL: /dev/ttyUSB1, COM3, "
                       "socket://127.0.0.1:7777 (python -m hdl.sim)")
    where.add_argument("--sim", action="store_true", help="start the simulated board for the "
                       "model on a free local port, run, stop it")
    p.add_argument("--model", required=True, help=".spn package (python -m host.compress)")
    p.add_argument("--input", required=True, help="float .npy, (batch, *input_shape); or the "
                   "name of a bundled example (digits-mlp, ...) for its test set and labels")
    p.add_argument("--labels", help="integer .npy (batch,): report accuracy")
    p.add_argument("--check", action="store_true", help="compare every output with the golden "
                   "model and every engine cycle count with the cycle model (SpMV and LSTM "
                   "engines; exit 1 on any difference)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--output", help="save the output integers to this .npy")
    p.add_argument("--state", metavar="FILE", help="LSTM engine: run every input once more, "
                   "one at a time, and save the last LSTM layer's final output h_T (r_T with "
                   "a projection) of each, act-format integers (batch, S), to this .npy")
    p.add_argument("--window", type=int, default=2, help="requests in flight (default 2: the "
                   "next request arrives while the engine runs; the 256-byte receive FIFO holds "
                   "one 135-byte request besides the one being executed, see docs/driver.md)")
    p.add_argument("--baud", type=int, default=None,
                   help="serial baud rate (default 1000000, the iCEBreaker bitstream's)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds before a request is "
                   "re-sent (default 2)")
    p.add_argument("--no-load", action="store_true", help="the board already holds the model "
                   "(e.g. python -m hdl.sim --model): check it instead of writing it")
    p.add_argument("--board", default="icebreaker", help="board of --sim (default icebreaker)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .driver import DEFAULT_BAUD, Accelerator
    from .package import load_package

    sim = None
    try:
        if args.window < 1:
            raise SpineError(f"--window must be at least 1, not {args.window}")
        model = load_package(args.model)
        x, labels = _example_data(args.input, model.input_shape)
        if x is None:
            x = load_inputs(args.input, model.input_shape)
        if args.labels:
            labels = load_labels(args.labels, len(x))
        url = args.port
        if args.sim:
            from hdl.sim import start_board  # the application layer: the simulated board
            sim = start_board(args.board, model)
            url = sim.url
        with Accelerator(url, baud=args.baud or DEFAULT_BAUD, timeout=args.timeout) as acc:
            if args.no_load:
                acc.attach(model)
            else:
                acc.load(model, progress=not args.json and sys.stderr.isatty())
            if args.state:
                states, state_mismatches = run_state(acc, model, x, check=args.check)
            outputs, report = run(acc, model, x, window=args.window, check=args.check,
                                  labels=labels)
        if args.output:
            np.save(args.output, outputs)
        if args.state:
            np.save(args.state, states)
            report["state_mismatches"] = state_mismatches
    except (SpineError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if sim is not None:
            stats = sim.stop()
            if stats and not args.json:
                print(f"simulated board: {stats['cycles']} cycles in {stats['seconds']} s "
                      f"({stats['cycles_per_s'] / 1e6:.2f} M cycles/s)", file=sys.stderr)
    if sim is not None:
        report["sim"] = sim.stats
    print(json.dumps(report, indent=1) if args.json else _format(report))
    return 1 if (report["mismatches"] or report.get("state_mismatches")
                 or report.get("cycle_mismatches")) else 0


if __name__ == "__main__":
    sys.exit(main())
