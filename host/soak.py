"""Soak test of the host driver and a board: many inferences, all checked, memory watched.

::

    python -m host.soak --count 10000                 # simulated board, bundled digits-mlp
    python -m host.soak --port /dev/ttyUSB1 --model mlp.spn --count 100000

Streams ``--count`` distinct inputs (the bundled model's test set with fresh noise each round)
through :meth:`host.driver.Accelerator.stream`, compares every output with the golden model
(a lost, duplicated or reordered result shows up as a mismatch or a missing count), samples the
process's resident memory (RSS) as it goes, and prints one JSON report: inferences, mismatches,
missing, throughput, link counters, RSS samples and growth, bytes per inference and the
throughput projected at the bitstream's baud rate, and (simulated board) simulation speed.
Exit status 1 if any result is wrong or missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .errors import SpineError

__all__ = ["main", "rss_kb", "soak"]

DEFAULT_MODEL = "digits-mlp"


def rss_kb() -> int:
    """Resident set size of this process in KiB (Linux ``/proc``; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _inputs(x_test: np.ndarray, count: int, seed: int):
    """``count`` distinct float inputs, generated chunk by chunk (never all in memory)."""
    rng = np.random.default_rng(seed)
    chunk = len(x_test)
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        yield x_test[:n] + rng.normal(0, 0.05, x_test[:n].shape)


def soak(acc, model, x_test, *, count: int, window: int, seed: int = 0,
         samples: int = 20) -> dict:
    """Run the soak on a connected, loaded ``acc``; return the report (see module docstring)."""
    from .golden import GoldenModel

    golden = GoldenModel(model)
    every = max(1, count // samples)
    rss = [(0, rss_kb())]
    received = mismatches = 0
    start = time.perf_counter()
    for x in _inputs(x_test, count, seed):
        q = acc.quantize(x)
        want = golden.forward_int(q)
        got = 0
        for i, out in enumerate(acc.stream_int(q, window=window)):
            mismatches += int(not np.array_equal(out, want[i]))
            got += 1
            received += 1
            if received % every == 0:
                rss.append((received, rss_kb()))
        if got != len(q):
            break
    seconds = time.perf_counter() - start
    info = acc.identify()
    n_out = int(want.shape[1])
    in_bytes = 7 + int(np.prod(model.input_shape)) * info.act_bytes
    out_bytes = 7 + 4 + n_out * info.act_bytes
    warm = [kb for n, kb in rss if n >= count // 10] or [rss[-1][1]]
    link = acc.link.stats.as_dict()
    return {
        "model": model.name, "port": str(acc.url), "inferences": received,
        "requested": count, "missing": count - received, "mismatches": mismatches,
        "window": window, "seconds": round(seconds, 3),
        "throughput_per_s": round(received / seconds, 2) if seconds else None,
        "request_bytes": in_bytes, "answer_bytes": out_bytes,
        "link_bytes_per_s": round((link["bytes_out"] + link["bytes_in"]) / seconds, 1)
        if seconds else None,
        "baud": info.baud,
        "projected_throughput_per_s_at_baud": round(info.baud / 10 / max(in_bytes, out_bytes),
                                                    1),
        "projected_unpipelined_per_s_at_baud": round(info.baud / 10 / (in_bytes + out_bytes),
                                                     1),
        "window_limit": acc.link.window_limit,
        "rss_kb": rss, "rss_growth_kb_after_warmup": int(warm[-1] - warm[0]),
        "link": link,
    }


def _compressed_default(folder: Path):
    from .modelsource import resolve_model
    from .package import save_package
    from .pipeline import CompressConfig, compress_model

    source = resolve_model(DEFAULT_MODEL)
    result = compress_model(source.model, CompressConfig(
        n_pe=8, density=source.defaults.get("density", 0.2)), calib_x=source.train[0])
    path = folder / f"{DEFAULT_MODEL}.spn"
    save_package(result.model, path)
    return result.model, path, source.test[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m host.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=10000, help="inferences (default 10000)")
    p.add_argument("--port", help="board URL; default: start the simulated board")
    p.add_argument("--model", help=f".spn package (default: the bundled {DEFAULT_MODEL}, "
                   f"compressed for 8 PEs); inputs then come from --input")
    p.add_argument("--input", help="float .npy (N, *input_shape) to draw inputs from "
                   "(default: the bundled model's test set)")
    p.add_argument("--window", type=int, default=1, help="requests in flight (default 1; more "
                   "needs a bitstream whose receive FIFO holds them, see docs/driver.md)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds before a re-send")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from .driver import Accelerator
    from .package import load_package
    from .run import load_inputs

    sim = None
    try:
        if args.count < 1:
            raise SpineError(f"--count must be at least 1, not {args.count}")
        with tempfile.TemporaryDirectory(prefix="spine-soak-") as tmp:
            if args.model:
                model = load_package(args.model)
                if not args.input:
                    raise SpineError("--model needs --input (inputs of that model)")
                x_test = load_inputs(args.input, model.input_shape)
            else:
                model, _, x_test = _compressed_default(Path(tmp))
                if args.input:
                    x_test = load_inputs(args.input, model.input_shape)
            url = args.port
            if url is None:
                from hdl.sim import start_board  # the application layer: the simulated board
                sim = start_board("icebreaker", model)
                url = sim.url
            with Accelerator(url, timeout=args.timeout) as acc:
                acc.load(model, progress=False)
                report = soak(acc, model, x_test, count=args.count, window=args.window,
                              seed=args.seed)
    except (SpineError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if sim is not None:
            sim.stop()
    if sim is not None and sim.stats:
        s = sim.stats
        report["sim"] = dict(s, uart_bytes_per_s=round((s["bytes_in"] + s["bytes_out"])
                                                       / max(s["seconds"], 1e-9), 1))
    print(json.dumps(report, indent=1))
    return 0 if report["mismatches"] == 0 and report["missing"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
