"""One-way dependency: hdl/ imports host/, host/ never imports hdl/.

The host package (driver, image builders, golden model) must work without Amaranth: the memory
map lives in :mod:`host.memory_map` and the gateware imports it.  The only exception is the
command-line applications' ``--sim`` option, which starts the simulated board through
:func:`hdl.sim.start_board` from inside a function (never at import time).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOST = ROOT / "host"
#: host modules allowed to import ``hdl.sim.start_board`` lazily (the CLIs' ``--sim``).
SIM_CLIENTS = {"run.py", "soak.py"}


def _hdl_imports(path: Path):
    """``(line, module, names, at_module_level)`` of every import of hdl in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "hdl" or alias.name.startswith("hdl."):
                    found.append((node.lineno, alias.name, (), id(node) in top_level))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and (node.module == "hdl" or node.module.startswith("hdl.")):
            found.append((node.lineno, node.module, tuple(a.name for a in node.names),
                          id(node) in top_level))
    return found


def test_host_never_imports_hdl():
    files = sorted(HOST.rglob("*.py"))
    assert len(files) > 20, "host/ not found"
    bad = []
    for path in files:
        rel = path.relative_to(ROOT)
        for line, module, names, top in _hdl_imports(path):
            allowed = (path.name in SIM_CLIENTS and path.parent == HOST and not top
                       and module == "hdl.sim" and names == ("start_board",))
            if not allowed:
                bad.append(f"{rel}:{line} imports {module} {', '.join(names)}".rstrip())
    assert not bad, ("host/ must not import hdl/ (move the shared definition into host/, "
                     "e.g. host/memory_map.py, and import it from hdl/):\n" + "\n".join(bad))


def test_checker_sees_imports(tmp_path):
    """The check above catches every spelling of an hdl import."""
    path = tmp_path / "m.py"
    path.write_text("import hdl\nimport hdl.spmv as s\nfrom hdl import top\n"
                    "def f():\n    from hdl.spmv_image import build_image\n"
                    "from .hdl import x\nimport hdlx\n")
    found = _hdl_imports(path)
    assert [(line, module, top) for line, module, _, top in found] == [
        (1, "hdl", True), (2, "hdl.spmv", True), (3, "hdl", True), (5, "hdl.spmv_image", False)]


def test_host_imports_without_amaranth():
    """Importing the host package's modules loads neither hdl nor Amaranth."""
    modules = sorted(f"host.{p.stem}" for p in HOST.glob("*.py")
                     if p.stem not in ("__init__", "__main__"))
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('hdl', 'amaranth'))\n"
            "print(' '.join(bad))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing host loaded {result.stdout.strip()}"


def test_hdl_reexports_the_host_memory_map():
    from hdl import lstm, spmv
    from host import memory_map as mm

    assert spmv.Region is mm.Region and spmv.Field is mm.Field
    assert spmv.DESCRIPTOR_FIELDS is mm.DESCRIPTOR_FIELDS
    assert lstm.LstmRegion is mm.LstmRegion and lstm.LstmField is mm.LstmField
    assert lstm.GATES == mm.GATES == 4


def test_engines_expose_their_params():
    from hdl.lstm import LstmEngine
    from hdl.spmv import SpmvEngine
    from host.memory_map import LstmParams, SpmvParams

    e = SpmvEngine(3, max_rows=20, max_cols=30, max_entries_per_pe=100, max_layers=2)
    assert e.params == SpmvParams(n_pe=3, max_rows=20, max_cols=30, max_entries_per_pe=100,
                                  max_layers=2)
    # One pointer word per column: max_layers * max_cols slots of 7 (start) + 3 (length) bits.
    assert (e.params.max_pointers, e.params.max_bias) == (60, 40)
    assert (e.data_width, e.lane_width, e.addr_width) == (32, 10, 7)
    assert e.timing() == e.params.timing()
    lstm = LstmEngine(2, hidden_max=8, input_max=4, steps_max=3, max_entries_per_pe=50)
    assert lstm.params == LstmParams(n_pe=2, hidden_max=8, input_max=4, steps_max=3,
                                     max_entries_per_pe=50)
    assert lstm.config() == lstm.params.config()
    assert (lstm.max_rows, lstm.max_pointers, lstm.max_bias, lstm.pe_bits) == (32, 20, 48, 1)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_pe": 0}, "`n_pe` must be a positive integer, not 0"),
    ({"max_pointers": 1}, "`max_pointers` must be an integer >= 2, not 1"),
    ({"acc_bits": 8}, "`acc_bits` must be an integer from 16 to"),
    ({"pe_group": 3}, "`pe_group` must be 1 or 2, not 3"),
    ({"pe_group": 2, "n_pe": 3}, "`pe_group` 2 needs an even `n_pe`, not 3"),
    ({"pe_group": 2, "run_bits": 5}, "`pe_group` 2 needs entries of at most 8 bits"),
])
def test_spmv_params_validate(kwargs, message):
    from host.memory_map import SpmvParams

    args = {"n_pe": 2, "max_rows": 4, "max_cols": 4, "max_entries_per_pe": 8} | kwargs
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        SpmvParams(**args)


def test_lstm_params_validate():
    from host.fixedpoint import Format
    from host.memory_map import LstmParams

    with pytest.raises(ValueError, match="cannot hold 1.0"):
        LstmParams(n_pe=1, hidden_max=2, input_max=2, steps_max=2, max_entries_per_pe=4,
                   act_format=Format(8, 7))
    with pytest.raises(ValueError, match="`ew_lanes` must be 1, 2 or 4 and at most `n_pe`"):
        LstmParams(n_pe=1, hidden_max=2, input_max=2, steps_max=2, max_entries_per_pe=4,
                   ew_lanes=2)
