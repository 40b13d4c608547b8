"""Simulated spine board: the board's top level under Verilator, its UART on a TCP socket.

::

    python -m hdl.sim --board icebreaker --model mlp.spn --listen 127.0.0.1:7777

builds (once; cached) the top level of ``hdl/top.py`` in its simulation configuration (no PLL,
a UART of :data:`SIM_CLOCKS_PER_BIT` clocks per bit) together with ``hdl/sim_harness.cpp``, a
small C++ main that bit-bangs the bytes a TCP client sends onto the design's RX pin and decodes
its TX pin back into bytes for the client.  Any spine client then talks to it exactly as to a
board, e.g. the driver with ``Accelerator("socket://127.0.0.1:7777")``.

* One client at a time; a second one waits (in the listen backlog) until the first
  disconnects.  A client that disconnects, even mid-frame, is like an unplugged cable: the
  bytes it had queued are dropped and the design keeps running (its frame timeout clears the
  half-received frame).
* The engine is built for ``--model FILE.spn`` exactly as ``python -m hdl.build --model`` does
  (its PE count, field widths, formats, and memories just large enough; see
  :func:`board_top`), and the model is preloaded *through the driver* (a first client that
  loads and verifies it, then disconnects) before "ready" is printed, so the board starts
  loaded; clients use ``Accelerator.attach(model)`` (or ``python -m host.run --no-load``).
  ``--no-preload`` leaves loading to the client (``Accelerator.load``).
* SIGINT / SIGTERM stop the simulation; it prints one JSON line of statistics (cycles,
  seconds, cycles per second, bytes each way).

From Python, :class:`SimBoard` starts and stops the same thing
(``with SimBoard(build_harness(...)) as b: b.url``); :func:`build_harness` builds any Amaranth
component with a UART pin pair.

Builds live in ``build/sim/<name>-harness-<digest>`` (``$SPINE_SIM_BUILD`` moves them), keyed by
the Verilog, the harness source, the Verilator identity and the build flags; a ``flock``
serialises concurrent builders.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from .simulate import _digest, _locked, _tail, default_build_root, generate_verilog
from .toolchain import (
    ToolchainError,
    find_verilator,
    require_build_tools,
    verilator_env,
)

__all__ = [
    "SIM_CLOCKS_PER_BIT",
    "HarnessBuild",
    "SimBoard",
    "board_top",
    "build_harness",
    "free_port",
    "main",
]

#: UART bit time (clock cycles) of the simulated board: small so bytes move fast (the UART's
#: minimum, :data:`hdl.uart.MIN_DIVISOR`); the frame timeout scales with it.
SIM_CLOCKS_PER_BIT = 4
#: Seconds to wait for the harness to print where it listens.
START_TIMEOUT = 30.0

_HARNESS_SOURCE = Path(__file__).with_name("sim_harness.cpp")
_SCHEMA = 1
#: Verilator flags of harness builds (part of the cache key).
_FLAGS = ("-Wno-fatal", "--x-assign", "fast", "--x-initial", "fast", "-O3")
#: C++ optimisation of the model and harness (part of the cache key).  The wheel's
#: verilated.mk leaves ``CFG_CXXFLAGS_PCH_I`` empty, which breaks models large enough to be
#: split into several files (the precompiled header is then passed as a linker input); ``-include``
#: is what a configured Verilator puts there for GCC and Clang.
_MAKE_VARS = ("OPT_FAST=-O2", "OPT_SLOW=-O1", "OPT_GLOBAL=-O1", "CFG_CXXFLAGS_PCH_I=-include")
_MODULE = "spine_sim"


@dataclass(frozen=True)
class HarnessBuild:
    """A built simulated board: the executable and how to run it."""

    executable: Path
    clocks_per_bit: int
    directory: Path
    build_seconds: float | None = None


def _ports_header(rx: str, tx: str, clk: str, rst: str) -> str:
    return (f'#include "V{_MODULE}.h"\n#define TOP_CLASS V{_MODULE}\n#define PIN_CLK {clk}\n'
            f"#define PIN_RST {rst}\n#define PIN_RX {rx}\n#define PIN_TX {tx}\n")


def build_harness(component, *, clocks_per_bit: int, rx: str = "rx", tx: str = "tx",
                  name: str = "board", build_root: Path | None = None,
                  verbose: bool = True) -> HarnessBuild:
    """Verilate ``component`` with the TCP harness and compile it (cached).

    Parameters
    ----------
    component : amaranth.lib.wiring.Component
        A design with a ``sync`` domain and one-bit UART ports named ``rx`` (input) and ``tx``
        (output) in its Verilog (nested members are joined with ``__``).
    clocks_per_bit : int
        The design's UART bit time in clock cycles; the harness drives and samples at it.
    rx, tx : str
        Port names of the UART pins in the generated Verilog.
    name : str
        Build folder prefix.
    build_root : Path, optional
        Cache folder (default :func:`hdl.simulate.default_build_root`).

    Returns
    -------
    HarnessBuild

    Raises
    ------
    ToolchainError
        If Verilator, make or a C++ compiler is missing, or the build fails (with the log).
    """
    if not isinstance(clocks_per_bit, int) or clocks_per_bit < 2:
        raise ValueError(f"`clocks_per_bit` must be an integer >= 2, not {clocks_per_bit!r}")
    verilog = generate_verilog(component, _MODULE)
    for port in (rx, tx):
        if f" {port};" not in verilog and f" {port}," not in verilog:
            raise ValueError(f"the top level has no port {port!r}; pass rx=/tx= with the "
                             f"names of its UART pins in the generated Verilog")
    header = _ports_header(rx, tx, "clk", "rst")
    source = _HARNESS_SOURCE.read_text()
    info = find_verilator()
    digest = _digest(_SCHEMA, verilog, header, source, info.identity, list(_FLAGS),
                     list(_MAKE_VARS))
    root = Path(build_root).resolve() if build_root is not None else default_build_root()
    directory = root / f"{name}-harness-{digest[:16]}"
    executable = directory / "obj_dir" / "spine_sim_harness"
    marker = directory / ".complete"
    if marker.exists() and executable.exists():
        return HarnessBuild(executable, clocks_per_bit, directory, _seconds(marker))
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory / ".lock", f"the {name} simulated board"):
        if marker.exists() and executable.exists():
            return HarnessBuild(executable, clocks_per_bit, directory, _seconds(marker))
        require_build_tools()
        (directory / f"{_MODULE}.v").write_text(verilog)
        (directory / "sim_ports.h").write_text(header)
        (directory / "sim_harness.cpp").write_text(source)
        argv = [str(info.executable), "--cc", "--exe", "--build", "-j", "0", *_FLAGS,
                "--top-module", _MODULE, f"{_MODULE}.v", "sim_harness.cpp",
                "-CFLAGS", f"-I{directory}", "-o", "spine_sim_harness", "--Mdir", "obj_dir"]
        env = verilator_env()
        extra = " ".join(_MAKE_VARS)
        env["MAKEFLAGS"] = f"{env['MAKEFLAGS']} {extra}" if env.get("MAKEFLAGS") else extra
        if verbose:
            print(f"spine: building the simulated {name} ({len(verilog.splitlines())} lines of "
                  f"Verilog) with Verilator {info.version_text} in {directory} ...",
                  file=sys.stderr, flush=True)
        start = time.monotonic()
        proc = subprocess.run(argv, cwd=directory, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, check=False)
        (directory / "build.log").write_text(proc.stdout)
        if proc.returncode != 0 or not executable.exists():
            raise ToolchainError(f"Verilator build of the simulated {name} failed (exit "
                                 f"{proc.returncode}); log {directory / 'build.log'}:\n"
                                 f"{_tail(proc.stdout, 60)}")
        seconds = time.monotonic() - start
        marker.write_text(json.dumps({"seconds": round(seconds, 2), "verilator": info.identity}))
        if verbose:
            print(f"spine: simulated {name} built in {seconds:.1f} s", file=sys.stderr,
                  flush=True)
    return HarnessBuild(executable, clocks_per_bit, directory, seconds)


def _seconds(marker: Path) -> float | None:
    try:
        return float(json.loads(marker.read_text())["seconds"])
    except (OSError, ValueError, KeyError):
        return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class SimBoard:
    """A running simulated board (a harness process); a context manager.

    Parameters
    ----------
    build : HarnessBuild
        From :func:`build_harness` (or :func:`board_top` + :func:`build_harness`).
    host : str
        Address to listen on.
    port : int
        TCP port; 0 picks a free one (see :attr:`url`).
    quiet : bool
        Do not log client connections on stderr.

    Attributes
    ----------
    url : str
        ``socket://HOST:PORT`` for :func:`serial.serial_for_url` / the driver.
    stats : dict or None
        The harness's statistics after :meth:`stop`.
    """

    def __init__(self, build: HarnessBuild, *, host: str = "127.0.0.1", port: int = 0,
                 quiet: bool = True):
        self.build = build
        self.host = host
        self.port = port
        self.quiet = quiet
        self.process: subprocess.Popen | None = None
        self.stats: dict | None = None
        self.url = ""

    def start(self) -> SimBoard:
        argv = [str(self.build.executable), "--host", self.host, "--port", str(self.port),
                "--cpb", str(self.build.clocks_per_bit)]
        if self.quiet:
            argv.append("--quiet")
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                                        start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        line = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.2)
            if ready:
                line = self.process.stdout.readline()
                break
            if self.process.poll() is not None:
                break
        if "listening on" not in line:
            code = self.process.poll()
            self.stop()
            said = line.strip() or "no output"
            raise ToolchainError(f"the simulated board did not start ({said}; exit code "
                                 f"{code}); run {argv[0]} by hand to see why (is "
                                 f"{self.host}:{self.port} in use?)")
        address = line.split("listening on", 1)[1].split()[0]
        self.port = int(address.rsplit(":", 1)[1])
        self.url = f"socket://{self.host}:{self.port}"
        return self

    def stop(self) -> dict | None:
        """Stop the harness (SIGTERM, then SIGKILL after 10 s); return its statistics."""
        proc, self.process = self.process, None
        if proc is None:
            return self.stats
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                out, _ = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
        else:
            out, _ = proc.communicate()
        for line in (out or "").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    self.stats = json.loads(line)
        return self.stats

    def __enter__(self) -> Self:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------
# The board's top level


def board_top(board: str, model, *, pe_group: int | None = None):
    """The simulation configuration of ``board``'s top level with the engine
    ``python -m hdl.build --board BOARD --model`` builds for ``model`` (a
    :class:`CompressedModel` or ``.spn`` path; :func:`hdl.build.board_model_engine`: the
    board's PE groups, FIFO depth, entry memory and LSTM layout), its PEs in lockstep groups
    of ``pe_group`` if given (else the board's).

    The core is the one :mod:`hdl.build` puts in the bitstream (:class:`hdl.top.SpineCore`
    around :func:`hdl.build.make_backend`: :class:`hdl.top.EngineBackend` with an SpMV engine
    for an MLP, :class:`hdl.top.LstmBackend` with an LSTM engine for an LSTM package,
    :class:`hdl.top.CnnBackend` with a CNN engine for a package with conv layers),
    without the PLL/reset wrapper, its UART at :data:`SIM_CLOCKS_PER_BIT` clocks per bit;
    IDENTIFY reports the bitstream's clock (:func:`hdl.build.board_clock_hz`) and the board's
    baud rate.

    Returns
    -------
    (component, rx, tx, clocks_per_bit)

    Raises
    ------
    ValueError
        Unknown board, or a model no engine can run (neither an MLP, nor LSTM + classifier,
        nor a CNN the CNN engine supports).
    """
    from boards import get_board
    from host.driver import _as_model

    from .build import board_clock_hz, board_model_engine, make_backend
    from .top import SpineCore

    profile = get_board(board)
    model = _as_model(model)
    params = board_model_engine(profile, model, pe_group)
    if params.get("engine") == "cnn":
        if not params.get("uniform_fields", True):
            raise ValueError(f"model {model.name!r} uses different entry widths in different "
                             f"layers; one engine has one")
    elif params.get("engine") == "lstm":
        if not params.get("uniform_fields", True):
            raise ValueError(f"model {model.name!r} uses different entry widths in its LSTM "
                             f"and classifier matrices; one engine has one")
    elif not params.get("mlp", True) or not params.get("uniform_fields", True):
        from host.driver import _engine_layers
        _engine_layers(model)  # raises naming the layer the engine cannot run
        raise ValueError(f"model {model.name!r} uses different entry widths in different "
                         f"layers; one engine has one")
    core = SpineCore(make_backend(params), clock_hz=board_clock_hz(profile, params),
                     baud=int(profile.baud), divisor=SIM_CLOCKS_PER_BIT)
    return core, "rx", "tx", SIM_CLOCKS_PER_BIT


def start_board(board: str, model) -> SimBoard:
    """Build (cached) and start the simulated ``board`` with an engine for ``model``; the
    command-line tools' ``--sim`` (host/ reaches hdl/ only through this function).

    Raises
    ------
    host.errors.SpineError
        If the simulator cannot be built (the toolchain's message), or ``ValueError`` as
        :func:`board_top`.
    """
    from host.errors import SpineError

    from .toolchain import ToolchainError

    component, rx, tx, cpb = board_top(board, model)
    try:
        build = build_harness(component, clocks_per_bit=cpb, rx=rx, tx=tx, name=board)
        return SimBoard(build).start()
    except ToolchainError as error:
        raise SpineError(f"cannot start the simulated {board}: {error}") from None


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"--listen must be HOST:PORT (e.g. 127.0.0.1:7777), "
                                         f"not {text!r}")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hdl.sim", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--board", default="icebreaker", help="board whose top level to "
                        "simulate (default icebreaker)")
    parser.add_argument("--model", required=True, help=".spn package: the engine is built for "
                        "it (PEs, widths, formats, memory sizes) and it is preloaded")
    parser.add_argument("--no-preload", action="store_true", help="build for --model but leave "
                        "loading it to the client")
    parser.add_argument("--listen", type=_parse_listen, default=("127.0.0.1", 0),
                        help="HOST:PORT to listen on (port 0 = any free port; default "
                             "127.0.0.1:0)")
    parser.add_argument("--verbose", action="store_true", help="log client connections")
    args = parser.parse_args(argv)
    from host.errors import SpineError
    try:
        component, rx, tx, cpb = board_top(args.board, args.model)
        build = build_harness(component, clocks_per_bit=cpb, rx=rx, tx=tx, name=args.board)
        host, port = args.listen
        board = SimBoard(build, host=host, port=port, quiet=not args.verbose).start()
    except (ToolchainError, SpineError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    try:
        print(f"spine-sim: {args.board} simulated board at {board.url} "
              f"({cpb} clocks per bit)", flush=True)
        if not args.no_preload:
            from host.driver import Accelerator
            with Accelerator(board.url, timeout=5.0) as acc:
                acc.load(args.model, progress=False)
            print(f"spine-sim: loaded {args.model}", flush=True)
        print(f"spine-sim: ready; connect to {board.url} (Ctrl-C stops)", flush=True)
        while not stop and board.process is not None and board.process.poll() is None:
            time.sleep(0.2)
    except SpineError as error:
        print(f"error: {error}", file=sys.stderr)
        board.stop()
        return 1
    finally:
        stats = board.stop()
    if stats:
        print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
